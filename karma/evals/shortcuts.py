"""Reward-shortcut report: how much a reward model leans on metadata, next to what its policy does.

Why (KARMA, arXiv 2605.26738, Section 5): the conditioned RM (karmaEroded: its input starts with
"[Subreddit: r/X | Posted: <UTC time>]") scores 3-4% higher AUC/F1 on held-out Reddit than the
generalized RM (AUC 0.772 vs 0.750), yet the policy PPO trains against it is worse and more
variable downstream. The paper reads this as shortcut learning: part of the gain is the header
(what a subreddit or an hour of the day tends to upvote), which a policy cannot improve by writing
better replies. This module measures it directly, with counterfactual inputs, and puts the numbers
beside the downstream deltas.

A reward model here is anything with `.cfg.format` ("generalized" | "conditioned") and
`.score(contexts, responses, metas)` -> probabilities (karma.reward.RewardModel, or a stub in the
tests): every probe goes through that one call, once per probe for all its rows (chunked).

Probes (each compares a counterfactual score s' with a reference score s of the same example):

  held-out metrics  karma.metrics.binary_metrics on the RM's natural input (what train_rm's eval.json
                    reports: accuracy, F1, AUC, ECE, ...), with percentile-bootstrap 95% intervals
                    (examples resampled with replacement, seeded; the same resamples for every RM).
  paired AUC test   DeLong's test for two correlated ROC curves (below), every pair of RMs, Holm-
                    corrected over the pairs; the paired-bootstrap interval of the difference beside it.
  metadata          reference: the true header. Counterfactuals, donors drawn once for all RMs:
                      swap_subreddit  the subreddit of a donor example whose subreddit differs
                      swap_time       the created_utc (date and time) of a donor whose UTC hour differs
                      swap_both       the whole meta of a donor whose subreddit AND hour differ
                      no_header       no header (generalized RM: its plain input); a conditioned RM
                                      cannot be rendered without meta (render_prompt raises), so it
                                      gets the closest honest probe, a NEUTRAL header: subreddit
                                      "[subreddit]" (the placeholder karma.data.format.scrub writes
                                      for a masked community) at the set's median created_utc.
                    A conditioned RM sees the meta through its own header (metas=...). A generalized
                    RM ignores meta by construction, so passing it would show 0 change trivially;
                    instead the header text is INJECTED into its context (inject_header: prepended
                    to the first turn, the submission) and the reference is the true header injected
                    the same way. An RM that reads no metadata shows ~0 change either way.
  content           reference: the natural input. Counterfactuals (the header, if any, kept):
                      sibling       the reply replaced by a sibling reply to the same parent (seeded
                                    choice; examples without siblings are skipped and counted)
                      other_thread  the reply of a donor example from another thread
  per-group table   mean natural score, n and mean label per subreddit and per UTC hour of
                    created_utc, with eta^2 (the between-group share of variance) of the scores and
                    of the labels: an RM whose eta^2 far exceeds the labels' has learned the group.

Per counterfactual (on the rows that have one):
  n                  rows probed (a probe skips rows without a donor / sibling: n_skipped)
  mean_abs_change    mean_i |s'_i - s_i|                            (0 = the input change is ignored)
  mean_change        mean_i (s'_i - s_i)                            (signed: a level shift)
  relative_change    mean_abs_change / mean_{pairs} |s_i - s_j|     (~1 = as different as another example)
  flip_share         over pairs (i, j) with s_i != s_j (all pairs, or max_pairs sampled, seeded):
                     share whose order reverses under s' (a tie under s' counts 1/2). 0 = rankings
                     intact; 0.5 = what a score re-drawn at random gives (total reliance, for the
                     ranking PPO's advantages care about). Scores within TIE (1e-6) count as tied, so
                     float32 batching noise flips nothing.
  auc, auc_reference the AUC under s' and under s on the same rows (labels unchanged)
  karma_agreement    sibling probe only: over (reply, sibling) pairs whose Reddit scores differ, the
                     share the RM orders as karma does (RM tie = 1/2; 0.5 = blind to the reply)

DeLong vs paired bootstrap for the AUC difference: DeLong (DeLong, DeLong & Clarke-Pearson 1988) is
the standard test for two AUCs on the same examples; it is deterministic (no Monte-Carlo noise in a
p-value that gets Holm-corrected), and with the fast algorithm of Sun & Xu (2014) costs one sort per
model, O(n log n). The paired bootstrap needs no normal approximation but costs n_resamples AUCs and
its p-value resolution is 1 / n_resamples; it comes for free here (the metric intervals already
resample), so its interval is reported beside DeLong's as a cross-check.

Caveats. Examples are not independent (several replies per thread); both the bootstrap and DeLong
treat them as such, so intervals are somewhat optimistic. An injected header sits in the first turn,
which is the first thing encode() drops when an example exceeds max_length: for such examples the
generalized probe sees no header at all and shows 0 change (an underestimate of its reliance).
Everything returned is plain JSON: dicts, lists, str, int, float, None (never NaN).
"""

import math
import zlib
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import norm, rankdata

from karma.checkpoint import atomic_write, atomic_write_json, read_json
from karma.data.examples import TRAINING_KEYS, read_examples, split_files
from karma.data.format import header
from karma.evals.report import build_tables, mark, parse_label
from karma.evals.stats import holm
from karma.metrics import binary_metrics, roc_auc
from karma.reward import load_reward_model

META_PROBES = ("swap_subreddit", "swap_time", "swap_both", "no_header")
CONTENT_PROBES = ("sibling", "other_thread")
CI_METRICS = ("accuracy", "f1", "roc_auc", "ece")
THREAD_KEYS = ("thread_id", "parent_id", "siblings", "score")  # what the content probes read besides
NEUTRAL_SUBREDDIT = "[subreddit]"  # what scrub() writes for a masked community name
TIE = 1e-6  # scores closer than this (probability scale) are tied: float32 batching noise

DEFINITIONS = {
    "swap_subreddit": "subreddit of a donor example whose subreddit differs (time kept)",
    "swap_time": "created_utc of a donor example whose UTC hour differs (subreddit kept)",
    "swap_both": "whole meta of a donor example whose subreddit and UTC hour both differ",
    "no_header": "no header; a conditioned RM cannot render without meta, so it gets a neutral header "
                 f"(r/{NEUTRAL_SUBREDDIT}, the set's median created_utc)",
    "sibling": "reply replaced by a sibling reply to the same parent (header kept)",
    "other_thread": "reply replaced by the reply of an example from another thread (header kept)",
}


# ------------------------------------------------------------------------------------ the report

def rm_report(reward_models: dict, examples: list[dict], seed: int = 0, n_resamples: int = 1000,
              max_pairs: int = 100_000, confidence: float = 0.95, chunk: int = 256, log=None) -> dict:
    """Every probe of the module doc for every RM on the same examples.

    reward_models: {name: RM-like, or a zero-argument loader returning one (called when its turn
    comes and dropped after, so big RMs need not all sit in memory at once)}.
    examples: dicts with messages, response, label and meta {"subreddit", "created_utc"}; optional
    thread_id (absent: each example is its own thread), siblings [{"text", "score"}], score.
    Returns {"n_examples", "seed", "n_resamples", "max_pairs", "confidence", "probes", "rms",
    "comparisons", "notes"}; rms[name] = {"format", "metrics", "ci", "metadata", "content",
    "by_subreddit", "by_hour"}. log: an optional callable(str) told each pass as it starts.
    """
    if not examples:
        raise ValueError("rm_report needs at least one example")
    for k, ex in enumerate(examples):
        meta = ex.get("meta")
        if not (isinstance(meta, dict) and "subreddit" in meta and "created_utc" in meta):
            raise ValueError(f"example {k} ({ex.get('id', 'no id')}): the probes need "
                             "meta = {'subreddit', 'created_utc'}")
    labels = np.array([int(ex["label"]) for ex in examples])
    plan = probe_plan(examples, seed)

    rms, natural_scores, boot_aucs = {}, {}, {}
    for name, spec in reward_models.items():
        rm = spec() if callable(spec) and not hasattr(spec, "score") else spec
        scores, entry = _probe_rm(rm, name, examples, labels, plan, seed, max_pairs, chunk, log)
        del rm
        entry["metrics"] = binary_metrics(labels, scores)
        entry["ci"], boot_aucs[name] = _bootstrap(labels, scores, _seed(seed, "bootstrap"), n_resamples, confidence)
        natural_scores[name] = scores
        rms[name] = entry

    comparisons = []
    for a, b in combinations(rms, 2):
        test = delong_test(labels, natural_scores[a], natural_scores[b], confidence)
        diffs = boot_aucs[a] - boot_aucs[b]
        diffs = diffs[np.isfinite(diffs)]
        q = (1 - confidence) / 2
        test["bootstrap_ci"] = [float(x) for x in np.quantile(diffs, [q, 1 - q])] if len(diffs) else None
        comparisons.append({"a": a, "b": b, **test})
    tested = [c for c in comparisons if c["p"] is not None]
    for c, p in zip(tested, holm([c["p"] for c in tested])):
        c["p_holm"], c["mark"] = p, mark(p)

    report = {"n_examples": len(examples), "seed": seed, "n_resamples": n_resamples, "max_pairs": max_pairs,
              "confidence": confidence, "probes": {k: {**plan[k]["summary"], "definition": DEFINITIONS[k]}
                                                   for k in (*META_PROBES, *CONTENT_PROBES)},
              "rms": rms, "comparisons": comparisons, "notes": plan["notes"] + _format_notes(rms)}
    return to_json(report)


def _format_notes(rms: dict) -> list[str]:
    formats = {e["format"] for e in rms.values()}
    notes = ["examples are resampled (and DeLong's variance estimated) as if independent; several replies "
             "per thread make the intervals somewhat optimistic"]
    if "generalized" in formats:
        notes.append("generalized RMs: the header is injected into the first turn (the submission), which encode() "
                     "drops first when an example exceeds max_length: reliance is then under-measured")
    if "conditioned" in formats:
        notes.append(f"conditioned RMs cannot be rendered without meta: no_header uses a neutral header "
                     f"(r/{NEUTRAL_SUBREDDIT} at the set's median time)")
    return notes


def _probe_rm(rm, name, examples, labels, plan, seed, max_pairs, chunk, log) -> tuple[np.ndarray, dict]:
    """One RM: natural scores, then the metadata and content probes and the per-group tables."""
    fmt = rm.cfg.format
    if fmt not in ("generalized", "conditioned"):
        raise ValueError(f"{name}: unknown format {fmt!r}")
    contexts = [ex["messages"] for ex in examples]
    replies = [ex["response"] for ex in examples]
    metas = [ex["meta"] for ex in examples]
    passes = iter(["natural input", *(["true header injected"] if fmt == "generalized" else []),
                   *[p for p in META_PROBES if not (p == "no_header" and fmt == "generalized")], *CONTENT_PROBES])

    def run(rows, ctx, rep, met):
        if log:
            log(f"{name} ({fmt}): {next(passes)}, {len(rows)} examples")
        return score_rows(rm, name, rows, ctx, rep, met, chunk)

    everyone = np.arange(len(examples))
    natural = run(everyone, contexts, replies, metas)

    # metadata: a conditioned RM reads meta through its own header; a generalized one gets it injected
    def with_meta(rows, new_metas):
        if fmt == "conditioned":
            return run(rows, contexts, replies, new_metas)
        injected = [inject_header(c, m) if m is not None else c for c, m in zip(contexts, new_metas)]
        return run(rows, injected, replies, [None] * len(examples))

    reference = natural if fmt == "conditioned" else with_meta(everyone, metas)
    metadata = {}
    for probe in META_PROBES:
        rows, new_metas = plan[probe]["rows"], plan[probe]["metas"]
        if probe == "no_header" and fmt == "generalized":
            cf = natural  # the plain input is exactly "no header"
        else:
            cf = with_meta(rows, new_metas)
        metadata[probe] = _compare(reference, cf, labels, rows, _seed(seed, probe), max_pairs)
        metadata[probe]["input"] = _how(probe, fmt)

    content = {}
    for probe in CONTENT_PROBES:
        rows, new_replies = plan[probe]["rows"], plan[probe]["replies"]
        cf = run(rows, contexts, new_replies, metas)
        content[probe] = _compare(natural, cf, labels, rows, _seed(seed, probe), max_pairs)
        if probe == "sibling":
            content[probe]["karma_agreement"] = karma_agreement(natural, cf, rows, plan["sibling"]["karma"],
                                                                plan["sibling"]["sibling_karma"])
    return natural, {"format": fmt, "metadata": metadata, "content": content,
                     "by_subreddit": group_table([m["subreddit"] for m in metas], natural, labels),
                     "by_hour": group_table([utc_hour(m) for m in metas], natural, labels)}


def score_rows(rm, name, rows, contexts, responses, metas, chunk) -> np.ndarray:
    """rm.score on the given rows (chunks of `chunk`), as a float64 array of len(contexts) with NaN
    outside `rows`. Non-finite scores are an error: a NaN RM is broken, not a shortcut."""
    out = np.full(len(contexts), np.nan)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        p = rm.score([contexts[i] for i in part], [responses[i] for i in part], [metas[i] for i in part])
        p = p.detach().float().cpu().numpy() if hasattr(p, "detach") else np.asarray(p, dtype=np.float64)
        if p.shape != (len(part),):
            raise ValueError(f"{name}: score() returned shape {p.shape} for {len(part)} examples")
        if not np.isfinite(p).all():
            raise ValueError(f"{name}: {int((~np.isfinite(p)).sum())} non-finite scores (the weights hold NaN/inf?)")
        out[part] = p
    return out


def inject_header(messages: list[dict], meta: dict) -> list[dict]:
    """The messages with the conditioned header text prepended to the first turn, so that a
    generalized RM (which never renders meta) reads "User: [Subreddit: r/X | Posted: ...]\\n<title>".
    The conditioned format puts the header before "User:"; through score() this is the closest a
    generalized RM's input can get. A copy: the examples are not touched."""
    first = {**messages[0], "content": header(meta) + messages[0]["content"]}
    return [first, *messages[1:]]


def utc_hour(meta: dict) -> int:
    """The UTC hour of meta["created_utc"], as the header shows it (int() as header() does)."""
    return datetime.fromtimestamp(int(meta["created_utc"]), tz=timezone.utc).hour


def _how(probe: str, fmt: str) -> str:
    if fmt == "generalized":
        return "plain input (no header)" if probe == "no_header" else "header injected into the first turn"
    if probe == "no_header":
        return f"neutral header r/{NEUTRAL_SUBREDDIT} at the median time (render needs meta)"
    return "the RM's own header"


# --------------------------------------------------------------------------- counterfactual inputs

def probe_plan(examples: list[dict], seed: int) -> dict:
    """The counterfactual inputs of every probe, drawn once so that every RM gets the same ones.

    {probe: {"rows": example indices probed, "metas" or "replies": per-example list (None outside
    rows), "summary": {"n", "n_skipped", "n_reused_donors"}}, "notes": [...]}."""
    n = len(examples)
    metas = [ex["meta"] for ex in examples]
    subs = _codes([str(m["subreddit"]) for m in metas])
    hours = np.array([utc_hour(m) for m in metas])
    threads = _codes([str(ex.get("thread_id", f"\0{k}")) for k, ex in enumerate(examples)])
    plan, notes = {}, []

    rules = {"swap_subreddit": lambda i, j: subs[i] != subs[j],
             "swap_time": lambda i, j: hours[i] != hours[j],
             "swap_both": lambda i, j: (subs[i] != subs[j]) & (hours[i] != hours[j]),
             "other_thread": lambda i, j: threads[i] != threads[j]}
    donors = {}
    for probe, ok in rules.items():
        donors[probe], reused = derange(n, ok, np.random.default_rng(_seed(seed, probe)))
        rows = np.flatnonzero(donors[probe] >= 0)
        plan[probe] = {"rows": rows, "summary": {"n": len(rows), "n_skipped": n - len(rows), "n_reused_donors": reused}}
        if n - len(rows):
            notes.append(f"{probe}: {n - len(rows)} of {n} examples have no donor that differs as required; skipped")
        if reused:
            notes.append(f"{probe}: {reused} donors used twice (no one-to-one assignment exists, e.g. one "
                         "subreddit or hour holds over half the examples)")

    def swapped(probe, make):
        d = donors[probe]
        plan[probe]["metas"] = [make(metas[i], metas[d[i]]) if d[i] >= 0 else None for i in range(n)]

    swapped("swap_subreddit", lambda own, donor: {**own, "subreddit": donor["subreddit"]})
    swapped("swap_time", lambda own, donor: {**own, "created_utc": donor["created_utc"]})
    swapped("swap_both", lambda own, donor: dict(donor))
    neutral = {"subreddit": NEUTRAL_SUBREDDIT, "created_utc": int(np.median([int(m["created_utc"]) for m in metas]))}
    plan["no_header"] = {"rows": np.arange(n), "metas": [neutral] * n, "neutral_meta": neutral,
                         "summary": {"n": n, "n_skipped": 0, "n_reused_donors": 0}}
    d = donors["other_thread"]
    plan["other_thread"]["replies"] = [examples[d[i]]["response"] if d[i] >= 0 else None for i in range(n)]

    # sibling: a seeded choice among the example's siblings; their Reddit scores for karma_agreement
    rng = np.random.default_rng(_seed(seed, "sibling"))
    replies, karma, sibling_karma = [None] * n, np.full(n, np.nan), np.full(n, np.nan)
    for i, ex in enumerate(examples):
        siblings = [s for s in ex.get("siblings") or [] if isinstance(s, dict) and isinstance(s.get("text"), str)]
        if siblings:
            s = siblings[rng.integers(len(siblings))]
            replies[i] = s["text"]
            if _is_number(s.get("score")) and _is_number(ex.get("score")):
                karma[i], sibling_karma[i] = ex["score"], s["score"]
    rows = np.array([i for i in range(n) if replies[i] is not None], dtype=np.int64)
    plan["sibling"] = {"rows": rows, "replies": replies, "karma": karma, "sibling_karma": sibling_karma,
                       "summary": {"n": len(rows), "n_skipped": n - len(rows), "n_reused_donors": 0}}
    if n - len(rows):
        notes.append(f"sibling: {n - len(rows)} of {n} examples have no sibling reply; skipped")
    plan["notes"] = notes
    return plan


def derange(n: int, ok, rng) -> tuple[np.ndarray, int]:
    """A seeded donor for every example, with ok(i, donor) true (ok is vectorised over index arrays
    and false for i == donor, since it asks for a difference). One-to-one where possible: a random
    permutation, then each violating i swaps donors with a random partner k for which both new
    pairs are ok (so every example's meta/reply is used exactly once and the counterfactual set has
    the true set's distribution: only the pairing changes). Examples still violating after that get
    a random ok donor that may be used twice (counted: `reused`), or -1 when none exists.
    Returns (donor index per example or -1, reused)."""
    everyone = np.arange(n)
    donor = rng.permutation(n)
    before = n + 1
    for _ in range(4):  # passes while they make progress
        bad = np.flatnonzero(~ok(everyone, donor))
        if not len(bad) or len(bad) >= before:
            break
        before = len(bad)
        for i in rng.permutation(bad):
            if ok(i, donor[i]):
                continue  # fixed by an earlier swap
            partners = np.flatnonzero(ok(i, donor) & ok(everyone, donor[i]))
            if len(partners):
                k = rng.choice(partners)
                donor[i], donor[k] = donor[k], donor[i]
    reused = 0
    for i in np.flatnonzero(~ok(everyone, donor)):
        candidates = np.flatnonzero(ok(i, everyone))
        donor[i] = rng.choice(candidates) if len(candidates) else -1
        reused += bool(len(candidates))
    return donor, reused


def _codes(keys: list[str]) -> np.ndarray:
    return np.unique(np.array(keys, dtype=object), return_inverse=True)[1]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _seed(seed: int, name: str) -> list[int]:
    """An independent stream per purpose: adding a probe does not change the others' draws."""
    return [seed, zlib.crc32(name.encode())]


# --------------------------------------------------------------------------------- the measures

def _compare(reference: np.ndarray, cf: np.ndarray, labels: np.ndarray, rows: np.ndarray, seed, max_pairs) -> dict:
    """The per-counterfactual measures of the module doc, on `rows`."""
    if not len(rows):
        return {"n": 0, "mean_abs_change": None, "mean_change": None, "relative_change": None,
                "flip_share": None, "n_pairs": 0, "auc": None, "auc_reference": None}
    s, t = reference[rows], cf[rows]
    change = t - s
    flips = flip_share(s, t, max_pairs, np.random.default_rng(seed))
    return {"n": len(rows), "mean_abs_change": float(np.abs(change).mean()), "mean_change": float(change.mean()),
            "relative_change": (float(np.abs(change).mean() / flips["mean_abs_gap"])
                                if flips["mean_abs_gap"] else None),
            "flip_share": flips["flip_share"], "n_pairs": flips["n_pairs"],
            "auc": roc_auc(labels[rows], t), "auc_reference": roc_auc(labels[rows], s)}


def sample_pairs(n: int, max_pairs: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j when there are at most max_pairs, else max_pairs random pairs with i != j."""
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, 1)
    i = rng.integers(0, n, max_pairs)
    return i, (i + rng.integers(1, n, max_pairs)) % n


def flip_share(reference, cf, max_pairs: int, rng) -> dict:
    """Share of the pairs ordered by `reference` (|s_i - s_j| > TIE) whose order `cf` reverses
    (a cf tie counts 1/2); also the mean |s_i - s_j| over all sampled pairs (relative_change's
    scale) and the number of ordered pairs."""
    i, j = sample_pairs(len(reference), max_pairs, rng)
    before, after = reference[i] - reference[j], cf[i] - cf[j]
    ordered = np.abs(before) > TIE
    sign_after = np.where(np.abs(after) > TIE, np.sign(after), 0.0)
    agreement = np.sign(before[ordered]) * sign_after[ordered]  # 1 kept, 0 tied, -1 reversed
    share = float(np.mean((1 - agreement) / 2)) if ordered.any() else None
    return {"flip_share": share, "n_pairs": int(ordered.sum()),
            "mean_abs_gap": float(np.abs(before).mean()) if len(before) else 0.0}


def karma_agreement(natural, cf, rows, karma, sibling_karma) -> dict:
    """Over the sibling probe's rows whose reply and sibling have different Reddit scores: the share
    where the RM orders them as karma does (an RM tie counts 1/2)."""
    rows = rows[np.isfinite(karma[rows]) & (karma[rows] != sibling_karma[rows])]
    if not len(rows):
        return {"share": None, "n": 0}
    rm = natural[rows] - cf[rows]
    rm_sign = np.where(np.abs(rm) > TIE, np.sign(rm), 0.0)
    agree = rm_sign * np.sign(karma[rows] - sibling_karma[rows])
    return {"share": float(np.mean((1 + agree) / 2)), "n": len(rows)}


def group_table(groups: list, scores: np.ndarray, labels: np.ndarray) -> dict:
    """Mean score, n and mean label per group (largest groups first, then by name), and eta^2 =
    sum_g n_g (mean_g - mean)^2 / sum_i (x_i - mean)^2 of the scores and of the labels (None when
    the values do not vary)."""
    keys = np.array([str(g) for g in groups], dtype=object)
    names, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    rows = []
    for g, name in enumerate(names):
        members = inverse == g
        rows.append({"group": groups[int(np.argmax(members))], "n": int(counts[g]),
                     "mean_score": float(scores[members].mean()), "mean_label": float(labels[members].mean())})
    rows.sort(key=lambda r: (-r["n"], str(r["group"])))
    return {"groups": rows, "eta_squared": {"score": eta_squared(inverse, scores),
                                            "label": eta_squared(inverse, labels.astype(float))}}


def eta_squared(groups: np.ndarray, values: np.ndarray) -> float | None:
    total = ((values - values.mean()) ** 2).sum()
    if total <= 0:
        return None
    counts = np.bincount(groups)
    means = np.bincount(groups, weights=values) / np.maximum(counts, 1)
    return float((counts * (means - values.mean()) ** 2).sum() / total)


# ------------------------------------------------------------------------------ AUC statistics

def delong_components(labels, scores) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components, by midranks (Sun & Xu 2014, O(n log n)).

    With X the m positive scores, Y the n negative ones and psi(x, y) = 1 if x > y, 1/2 if equal,
    0 otherwise:  V10_i = (1/n) sum_j psi(X_i, Y_j),  V01_j = (1/m) sum_i psi(X_i, Y_j),
    AUC = mean(V10) = mean(V01). With T_z the midranks in all m + n scores and T_x, T_y the midranks
    within X and within Y:  V10_i = (T_z(X_i) - T_x(X_i)) / n  (the negatives below X_i, ties 1/2)
    and V01_j = 1 - (T_z(Y_j) - T_y(Y_j)) / m."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    x_pos, x_neg = s[y], s[~y]
    m, n = len(x_pos), len(x_neg)
    tz = rankdata(np.concatenate([x_pos, x_neg]))
    v10 = (tz[:m] - rankdata(x_pos)) / n
    v01 = 1.0 - (tz[m:] - rankdata(x_neg)) / m
    return float(v10.mean()), v10, v01


def delong_test(labels, scores_a, scores_b, confidence: float = 0.95) -> dict:
    """Two-sided DeLong test of AUC_a = AUC_b on the same examples.

    S10 and S01 are the 2x2 sample covariances (ddof 1) of the two models' V10 and V01;
    Var(AUC_a - AUC_b) = c' (S10 / m + S01 / n) c with c = (1, -1); z = diff / sqrt(Var), p = 2 sf(|z|).
    A zero variance (identical or perfectly separating scores) gives p = 1 when the AUCs are equal
    and p = 0 otherwise (the z is infinite). Needs 2+ examples of each class, else p = None."""
    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return {"test": "delong", "auc_a": None, "auc_b": None, "diff": None, "se": None, "z": None, "p": None,
                "ci": None, "note": f"DeLong needs 2+ examples of each class ({m} positive, {n} negative)"}
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = delong_components(y, scores_a), delong_components(y, scores_b)
    s10, s01 = np.cov(np.stack([v10_a, v10_b])), np.cov(np.stack([v01_a, v01_b]))
    c = np.array([1.0, -1.0])
    var = float(c @ (s10 / m + s01 / n) @ c)
    diff = auc_a - auc_b
    if var <= 1e-15:
        z, p, se = (0.0, 1.0, 0.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0, 0.0)
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    half = norm.ppf(0.5 + confidence / 2) * se
    return {"test": "delong", "auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": se,
            "z": z if math.isfinite(z) else None, "p": p, "ci": [diff - half, diff + half]}


def _bootstrap(labels, scores, seed, n_resamples: int, confidence: float) -> tuple[dict, np.ndarray]:
    """Percentile intervals of CI_METRICS over n_resamples resamples of the examples, and the
    resampled AUCs (NaN where a resample holds one class: left out of the AUC interval). The same
    seed draws the same resamples for every RM, so AUC differences are paired."""
    rng = np.random.default_rng(seed)
    draws = {k: np.full(n_resamples, np.nan) for k in CI_METRICS}
    for r in range(n_resamples):
        idx = rng.integers(0, len(labels), len(labels))
        m = binary_metrics(labels[idx], scores[idx])
        for k in CI_METRICS:
            draws[k][r] = np.nan if m[k] is None else m[k]
    q = (1 - confidence) / 2
    ci = {}
    for k, v in draws.items():
        v = v[np.isfinite(v)]
        ci[k] = [float(x) for x in np.quantile(v, [q, 1 - q])] if len(v) else None
    return ci, draws["roc_auc"]


# --------------------------------------------------------------------------------- downstream

def downstream_table(report: dict, eval_results: dict | None, policies: dict | None) -> dict | None:
    """Each RM's AUC and reliance numbers next to its policy's downstream deltas vs Base.

    eval_results: eval.py's results.json (its "tables", or build_tables of its "results"), or the
    raw {label: {task: result}} mapping. policies: {RM name (a key of report["rms"]): the policy's
    label in the results, either "base-model/variant" (that row) or a bare variant such as
    "karmaEroded" (every base model that has it)}. Only the primary metric of each task.
    Returns {"columns": ["task: metric", ...], "rows": [...]} or None without results."""
    if not eval_results or not policies:
        return None
    if "tables" in eval_results:
        tables = eval_results["tables"]
    else:
        tables = build_tables(eval_results.get("results", eval_results), n_resamples=200)
    tables = [t for t in tables if t["is_primary"]]
    columns = [f"{t['task']}: {t['metric']}" for t in tables]
    rows = []
    for rm_name, label in policies.items():
        entry = report["rms"].get(rm_name)
        if entry is None:
            raise KeyError(f"policies: no reward model named {rm_name!r} in the report (have {sorted(report['rms'])})")
        base, variant = parse_label(label) if "/" in label else (None, label)
        models = [base] if base else list(dict.fromkeys(m for t in tables for m in t["models"]
                                                        if t["cells"][m].get(variant)))
        for model in models:
            rows.append({"rm": rm_name, "format": entry["format"], "policy": f"{model}/{variant}",
                         "auc": entry["metrics"]["roc_auc"], "auc_ci": entry["ci"]["roc_auc"],
                         "meta_flip_share": entry["metadata"]["swap_both"]["flip_share"],
                         "meta_mean_abs_change": entry["metadata"]["swap_both"]["mean_abs_change"],
                         "content_flip_share": entry["content"]["other_thread"]["flip_share"],
                         "downstream": {col: _delta(t, model, variant) for col, t in zip(columns, tables)}})
    return {"columns": columns, "rows": rows}


def _delta(table: dict, model: str, variant: str) -> dict | None:
    cells = table["cells"].get(model, {})
    cell, base = cells.get(variant), cells.get("Base")
    if not cell or not base:
        return None
    vs = cell.get("vs_base") or {}
    return {"delta": cell["value"] - base["value"], "value": cell["value"], "base": base["value"],
            "p_holm": vs.get("p_holm"), "mark": vs.get("mark", ""), "higher_is_better": table["higher_is_better"]}


# ------------------------------------------------------------------------------------- outputs

def to_json(obj):
    """Plain JSON: numpy scalars and arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_json(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _arrow(downstream: dict, column: str) -> str:
    """ ↑ / ↓: the column's direction (higher / lower is better), from its first filled cell."""
    cells = [r["downstream"][column] for r in downstream["rows"] if r["downstream"][column]]
    return {True: " ↑", False: " ↓", None: ""}[cells[0]["higher_is_better"] if cells else None]


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(point, ci) -> str:
    return _f(point) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _rule(n_text: int, n_numbers: int) -> str:
    return "|" + "---|" * n_text + "---:|" * n_numbers


def to_markdown(report: dict, top_groups: int = 15) -> str:
    """The report as markdown: metrics, paired AUC tests, reliance, per-group tables, downstream."""
    names = list(report["rms"])
    pct = round(100 * report["confidence"])
    out = [f"# Reward-shortcut report\n\n{report['n_examples']} held-out examples, seed {report['seed']}; "
           f"intervals: {pct}% percentile bootstrap over examples ({report['n_resamples']} resamples).",
           "\n## Held-out metrics\n", _row(["RM", "format", "accuracy", "F1", "AUC", "ECE"]), _rule(2, 4)]
    for name, e in report["rms"].items():
        out.append(_row([name, e["format"], *(_ci(e["metrics"][k], e["ci"][k]) for k in CI_METRICS)]))

    if report["comparisons"]:
        out += ["\n## Paired AUC differences\n",
                f"DeLong's test (fast midrank algorithm, Sun & Xu 2014), Holm-corrected over the "
                f"{len(report['comparisons'])} pair(s); the paired-bootstrap {pct}% interval beside it.\n",
                _row(["A vs B", "AUC A", "AUC B", "A − B [DeLong CI]", "bootstrap CI", "z", "p", "p (Holm)"]),
                _rule(1, 7)]
        for c in report["comparisons"]:
            boot = f"[{_f(c['bootstrap_ci'][0])}, {_f(c['bootstrap_ci'][1])}]" if c.get("bootstrap_ci") else "–"
            p = "–" if c["p"] is None else f"{c['p']:.3g}"
            p_holm = "–" if c.get("p_holm") is None else f"{c['p_holm']:.3g}{c['mark']}"
            out.append(_row([f"{c['a']} vs {c['b']}", _f(c["auc_a"]), _f(c["auc_b"]), _ci(c["diff"], c["ci"]), boot,
                             _f(c["z"], 2), p, p_holm]))

    columns = ["RM", "probe", "input", "n", "mean abs Δ", "rel.", "flips", "AUC (ref → cf)"]
    measures = lambda r: [str(r["n"]), _f(r["mean_abs_change"]), _f(r["relative_change"], 2), _f(r["flip_share"]),
                          f"{_f(r['auc_reference'])} → {_f(r['auc'])}"]
    out += ["\n## Metadata reliance\n",
            "Same (context, reply), header changed. mean abs Δ: mean |score change|; rel.: that over the mean "
            "score gap between two examples; flips: share of pairwise rankings reversed (0.5 = as if re-drawn).\n",
            _row(columns), _rule(3, 5)]
    for name, e in report["rms"].items():
        out += [_row([name, probe, e["metadata"][probe]["input"], *measures(e["metadata"][probe])])
                for probe in META_PROBES]
    out += ["\n## Content reliance\n",
            "Same context and header, reply changed. karma: share of (reply, sibling) pairs the RM orders as "
            "Reddit scores do (0.5 = blind to the reply).\n",
            _row([*columns[:2], *columns[3:], "karma"]), _rule(2, 6)]
    for name, e in report["rms"].items():
        agreement = e["content"]["sibling"]["karma_agreement"]
        out.append(_row([name, "sibling", *measures(e["content"]["sibling"]),
                         f"{_f(agreement['share'])} (n={agreement['n']})"]))
        out.append(_row([name, "other_thread", *measures(e["content"]["other_thread"]), "–"]))

    for key, title in (("by_subreddit", "subreddit"), ("by_hour", "UTC hour")):
        groups = report["rms"][names[0]][key]["groups"]  # n and mean label: the same for every RM
        shown = sorted(groups, key=lambda g: g["group"]) if key == "by_hour" else groups[:top_groups]
        means = {n: {str(g["group"]): g["mean_score"] for g in report["rms"][n][key]["groups"]} for n in names}
        more = f" (the {top_groups} largest of {len(groups)})" if len(groups) > len(shown) else ""
        out += [f"\n## Mean score by {title}{more}\n", _row([title, "n", "mean label", *names]),
                _rule(1, 2 + len(names))]
        for g in shown:
            out.append(_row([str(g["group"]), str(g["n"]), _f(g["mean_label"]),
                             *(_f(means[n][str(g["group"])]) for n in names)]))
        eta = [report["rms"][n][key]["eta_squared"] for n in names]
        out.append(_row(["η² (share of variance between groups)", "", _f(eta[0]["label"]),
                         *(_f(e["score"]) for e in eta)]))

    if report.get("downstream"):
        d = report["downstream"]
        out += ["\n## Reward model vs its policy downstream\n",
                "AUC, reliance (swap_both flips: metadata; other_thread flips: content) and each policy's change vs "
                "its Base on the primary metric (marks: Holm-corrected paired test from eval.py).\n",
                _row(["RM", "format", "policy", "AUC", "meta flips", "content flips",
                      *(col + _arrow(d, col) for col in d["columns"])]),
                _rule(3, 3 + len(d["columns"]))]
        for r in d["rows"]:
            deltas = ["–" if x is None else f"{x['delta']:+.3f}{x['mark']}"
                      for x in (r["downstream"][col] for col in d["columns"])]
            out.append(_row([r["rm"], r["format"], r["policy"], _ci(r["auc"], r["auc_ci"]), _f(r["meta_flip_share"]),
                             _f(r["content_flip_share"]), *deltas]))

    out += ["\n## Probes\n"] + [f"- **{k}** ({p['n']} probed, {p['n_skipped']} skipped): {p['definition']}"
                                 for k, p in report["probes"].items()]
    if report["notes"]:
        out += ["\nNotes:\n"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(out) + "\n"


def plot(report: dict, path, top_groups: int = 12) -> str:
    """report.png: |score change| and ranking flips per probe and RM; mean score by subreddit and by
    UTC hour (lines/bars per RM, black marks: the mean label). Written atomically."""
    names = list(report["rms"])
    probes = [*META_PROBES, *CONTENT_PROBES]
    fig = Figure(figsize=(12, 8), layout="constrained")
    (ax_change, ax_flip), (ax_sub, ax_hour) = fig.subplots(2, 2)
    width = 0.8 / len(names)
    x = np.arange(len(probes))
    for j, name in enumerate(names):
        e = report["rms"][name]
        rows = [(e["metadata"] if p in META_PROBES else e["content"])[p] for p in probes]
        offset = x + (j - (len(names) - 1) / 2) * width
        bars = ax_change.bar(offset, [_nan(r["mean_abs_change"]) for r in rows], width,
                             label=f"{name} ({e['format']})", color=f"C{j}")
        ax_change.bar_label(bars, fmt="%.2f", fontsize=6)  # a zero bar is a finding: show its value
        bars = ax_flip.bar(offset, [_nan(r["flip_share"]) for r in rows], width, color=f"C{j}")
        ax_flip.bar_label(bars, fmt="%.2f", fontsize=6)
    for ax, title in ((ax_change, "mean |score change| under each probe"),
                      (ax_flip, "share of pairwise rankings flipped")):
        ax.set_xticks(x, probes, rotation=20, ha="right", fontsize=8)
        ax.axvline(len(META_PROBES) - 0.5, color="grey", lw=0.8)
        ax.set_title(title, fontsize=10)
    ax_flip.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax_flip.text(-0.45, 0.5, "re-drawn at random", ha="left", va="bottom", fontsize=7, color="grey")
    ax_flip.set_ylim(0, max(0.65, ax_flip.get_ylim()[1]))
    ax_change.set_xlabel("metadata probes | content probes", fontsize=8)

    groups = report["rms"][names[0]]["by_subreddit"]["groups"][:top_groups]
    xs = np.arange(len(groups))
    for j, name in enumerate(names):
        means = {str(g["group"]): g["mean_score"] for g in report["rms"][name]["by_subreddit"]["groups"]}
        ax_sub.bar(xs + (j - (len(names) - 1) / 2) * width, [means[str(g["group"])] for g in groups], width,
                   color=f"C{j}")
    ax_sub.scatter(xs, [g["mean_label"] for g in groups], color="black", marker="_", s=200, zorder=3,
                   label="mean label")
    ax_sub.set_xticks(xs, [f"{g['group']}\n(n={g['n']})" for g in groups], rotation=30, ha="right", fontsize=7)
    ax_sub.set_title("mean score by subreddit (largest groups)", fontsize=10)
    ax_sub.legend(fontsize=7)
    for j, name in enumerate(names):
        hours = sorted(report["rms"][name]["by_hour"]["groups"], key=lambda g: g["group"])
        ax_hour.plot([g["group"] for g in hours], [g["mean_score"] for g in hours], marker="o", ms=3, color=f"C{j}")
    hours = sorted(report["rms"][names[0]]["by_hour"]["groups"], key=lambda g: g["group"])
    ax_hour.scatter([g["group"] for g in hours], [g["mean_label"] for g in hours], color="black", marker="_", s=80,
                    zorder=3)
    ax_hour.set_xlim(-0.5, 23.5)
    ax_hour.set_xlabel("UTC hour of created_utc", fontsize=8)
    ax_hour.set_title("mean score by hour (black: mean label)", fontsize=10)
    fig.legend(*ax_change.get_legend_handles_labels(), loc="outside lower center", ncols=max(1, len(names)), fontsize=8)
    fig.suptitle(f"Reward-shortcut report ({report['n_examples']} held-out examples)")
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return str(path)


def _nan(x):
    return np.nan if x is None else x


# ------------------------------------------------------------------------------------- files

def run_rm_report(rm_dirs: list, data_dir, out_dir, max_examples: int | None = None, seed: int = 0,
                  eval_results=None, policies: dict | None = None, n_resamples: int = 1000,
                  device=None, dtype=None, log=None) -> dict:
    """Load the RMs, read the held-out split, run rm_report, write report.json / .md / .png.

    RM names: the directory name, or parent/name for train_rm's best/ and final/ exports (the full
    path if two would collide); `policies` uses these names. The held-out examples are read with
    karma.data.examples.read_examples (needs_meta=True: every probe needs meta), keeping the thread
    fields the content probes use (thread_id, parent_id, siblings, score). With max_examples, a
    seeded random subset (in file order), not the first N: the files are ordered by thread, and a
    prefix would cover few subreddits.
    eval_results: eval.py's results.json, as a dict or a path. The RMs are loaded one at a time
    (device: cuda when available; dtype: the checkpoint's). log: callable(str) for progress."""
    paths = [Path(d) for d in rm_dirs]
    names = [f"{p.parent.name}/{p.name}" if p.name in ("best", "final") else p.name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaders = {name: (lambda p=p: load_reward_model(p, dtype=dtype, device=device)) for name, p in zip(names, paths)}

    files = split_files(Path(data_dir), "heldout")
    examples, read_report = read_examples(files, needs_meta=True, keys=TRAINING_KEYS + THREAD_KEYS)
    if not examples:
        raise ValueError(f"{data_dir}: no usable held-out examples ({read_report})")
    if max_examples and len(examples) > max_examples:
        keep = np.sort(np.random.default_rng(_seed(seed, "subset")).choice(len(examples), max_examples, replace=False))
        examples = [examples[i] for i in keep]

    report = rm_report(loaders, examples, seed=seed, n_resamples=n_resamples, log=log)
    report["data"] = {"dir": str(data_dir), "files": [str(f) for f in files], "read": read_report,
                      "max_examples": max_examples}
    report["rm_dirs"] = dict(zip(names, map(str, paths)))
    if isinstance(eval_results, (str, Path)):
        eval_results = read_json(eval_results)
    report["downstream"] = to_json(downstream_table(report, eval_results, policies))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    markdown = to_markdown(report)
    atomic_write(out / "report.md", lambda p: Path(p).write_text(markdown))
    plot(report, out / "report.png")
    return report
