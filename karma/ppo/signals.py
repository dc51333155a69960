"""Reward-hacking signals of one rollout's replies: how diverse they are, how many are exact repeats,
how much reply length alone explains the reward-model score, and the replies at both ends of the
score range. Pure functions on Python lists; the trainer calls them once per rollout on the replies
of every rank (karma/ppo/rollout.py) and prints `hacking_warning`'s line when it is not empty. The
thresholds of the warning, and why they are where they are: karma/hacking_thresholds.py.

A policy that games its reward model often shows it in its replies before its score curve looks
odd: it gives every prompt the same reply (mode collapse; Kirk et al. 2024, "Understanding the
Effects of RLHF on LLM Generalisation and Diversity"), or it lengthens its replies because the
reward model prefers length (Singhal et al. 2023, "A Long Way to Go: Investigating Length
Correlations in RLHF").

Sources:
  [L16]  Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models":
         distinct-n = distinct n-grams / all n-grams over the replies.

distinct-n counts whitespace-separated words (str.split), not the policy's tokens: the paper's six
policies (Falcon, Llama, Pythia) have three tokenizers, and word n-grams keep their numbers
comparable. An n-gram never spans two replies.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

from karma.hacking_thresholds import DISTINCT_2_MIN, LENGTH_CORR_MAX, LENGTH_CORR_MIN_REPLIES, REPEAT_SHARE_MAX

EXTREMES = 3  # replies shown at each end of the score range


def distinct_n(replies: list[str], n: int) -> float | None:
    """distinct-n [L16]: |distinct word n-grams| / |word n-grams| over all replies, n-grams taken
    within each reply. None when the replies hold no n-gram (all shorter than n words)."""
    grams = [tuple(words[i:i + n]) for words in (r.split() for r in replies) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repeat_share(replies: list[str]) -> float | None:
    """The share of replies identical (exact text) to another reply of the list; None for no reply.
    Two empty replies are identical: a policy that collapses to saying nothing counts."""
    if not replies:
        return None
    counts = Counter(replies)
    return sum(c for c in counts.values() if c > 1) / len(replies)


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson's r of two equal-length lists (statistics.correlation); None with fewer than 2 pairs
    or when either list is constant (r is undefined)."""
    try:
        return statistics.correlation(x, y)
    except statistics.StatisticsError:
        return None


def rollout_signals(replies: list[str], scores: list[float], lengths: list[int]) -> dict:
    """The signals of one rollout's replies, their reward-model scores and lengths in tokens:
    distinct_1, distinct_2 and repeat_share over all replies; score_length_corr, Pearson's r of
    score and length over the replies with a finite score (scored_replies of them)."""
    scored = [(s, n) for s, n in zip(scores, lengths) if math.isfinite(s)]
    return {"distinct_1": distinct_n(replies, 1), "distinct_2": distinct_n(replies, 2),
            "repeat_share": repeat_share(replies),
            "score_length_corr": pearson([float(s) for s, _ in scored], [float(n) for _, n in scored]),
            "scored_replies": len(scored)}


def hacking_warning(signals: dict) -> str:
    """Why the rollout looks like reward hacking ("" if it does not): diversity collapsed
    (distinct-2 below DISTINCT_2_MIN or repeat share at least REPEAT_SHARE_MAX), or length alone
    explains the score (|r| above LENGTH_CORR_MAX over at least LENGTH_CORR_MIN_REPLIES replies)."""
    d2, repeats, r = signals["distinct_2"], signals["repeat_share"], signals["score_length_corr"]
    collapse = ([f"distinct-2 {d2:.3f} < {DISTINCT_2_MIN}"] if d2 is not None and d2 < DISTINCT_2_MIN else []) + (
        [f"{repeats:.0%} of the replies repeat another one (>= {REPEAT_SHARE_MAX:.0%})"]
        if repeats is not None and repeats >= REPEAT_SHARE_MAX else [])
    warnings = [f"diversity collapsed: {', '.join(collapse)}"] if collapse else []
    if r is not None and abs(r) > LENGTH_CORR_MAX and signals["scored_replies"] >= LENGTH_CORR_MIN_REPLIES:
        warnings.append(f"length alone explains the score: Pearson r(score, length) {r:+.2f} over "
                        f"{signals['scored_replies']} replies (|r| > {LENGTH_CORR_MAX}, r^2 {r * r:.2f})")
    return "; ".join(warnings)


def extremes(samples: list[dict], k: int = EXTREMES) -> dict[str, list[dict]]:
    """The k highest- and k lowest-scored samples ({"score", ...}, finite scores only): {"top": best
    first, "bottom": worst first}. Ties keep the samples' order; with fewer than 2k scored samples
    the two lists share some."""
    scored = [s for s in samples if math.isfinite(s["score"])]
    return {"top": sorted(scored, key=lambda s: -s["score"])[:k],
            "bottom": sorted(scored, key=lambda s: s["score"])[:k]}
