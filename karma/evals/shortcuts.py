"""Reward-shortcut report: how much a reward model leans on metadata, next to what its policy does.

Why (KARMA, arXiv 2605.26738, Section 5): the conditioned RM (karmaEroded: its input starts with
"[Subreddit: r/X | Posted: <UTC time>]") scores 3-4% higher AUC/F1 on held-out Reddit than the
generalized RM (AUC 0.772 vs 0.750), yet the policy PPO trains against it is worse and more
variable downstream. The paper reads this as shortcut learning: part of the gain is the header
(what a subreddit or an hour of the day tends to upvote), which a policy cannot improve by writing
better replies. This module measures it directly, with counterfactual inputs, and puts the numbers
beside the downstream deltas; shortcuts_report.py renders them and writes the report's files
(run_rm_report, what `eval.py rm` calls).

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

DeLong vs paired bootstrap for the AUC difference: DeLong's test (DeLong, DeLong & Clarke-Pearson
1988; karma.evals.stats.delong_test) is the standard test for two AUCs on the same examples; it is
deterministic (no Monte-Carlo noise in a p-value that gets Holm-corrected), and with the fast
algorithm of Sun & Xu (2014) costs one sort per model, O(n log n). The paired bootstrap needs no
normal approximation but costs n_resamples AUCs and its p-value resolution is 1 / n_resamples; it
comes for free here (the metric intervals already resample), so its interval is reported beside
DeLong's as a cross-check.

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

import numpy as np

from karma.data.format import header
from karma.evals.report import build_tables, mark, parse_label
from karma.evals.stats import delong_test, holm
from karma.metrics import binary_metrics, roc_auc

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
        entry["ci"], boot_aucs[name] = _bootstrap_metrics(labels, scores, stream_seed(seed, "bootstrap"), n_resamples,
                                                          confidence)
        natural_scores[name] = scores
        rms[name] = entry

    comparisons = []
    for a, b in combinations(rms, 2):
        test = delong_test(labels, natural_scores[a], natural_scores[b], confidence)
        test["bootstrap_ci"] = percentile_interval(boot_aucs[a] - boot_aucs[b], confidence)
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
        metadata[probe] = _compare(reference, cf, labels, rows, stream_seed(seed, probe), max_pairs)
        metadata[probe]["input"] = _how(probe, fmt)

    content = {}
    for probe in CONTENT_PROBES:
        rows, new_replies = plan[probe]["rows"], plan[probe]["replies"]
        cf = run(rows, contexts, new_replies, metas)
        content[probe] = _compare(natural, cf, labels, rows, stream_seed(seed, probe), max_pairs)
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
        donors[probe], reused = derange(n, ok, np.random.default_rng(stream_seed(seed, probe)))
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
    rng = np.random.default_rng(stream_seed(seed, "sibling"))
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


def stream_seed(seed: int, name: str) -> list[int]:
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
    """The share of the variance of `values` between the groups (integer codes 0..G-1): the squared
    correlation ratio (Pearson 1905), eta^2 = sum_g n_g (mean_g - mean)^2 / sum_i (x_i - mean)^2.
    None when the values do not vary."""
    total = ((values - values.mean()) ** 2).sum()
    if total <= 0:
        return None
    counts = np.bincount(groups)
    means = np.bincount(groups, weights=values) / np.maximum(counts, 1)
    return float((counts * (means - values.mean()) ** 2).sum() / total)


# --------------------------------------------------------------------------- bootstrap intervals

def _bootstrap_metrics(labels, scores, seed, n_resamples: int, confidence: float) -> tuple[dict, np.ndarray]:
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
    return {k: percentile_interval(v, confidence) for k, v in draws.items()}, draws["roc_auc"]


def percentile_interval(draws: np.ndarray, confidence: float) -> list[float] | None:
    """The (1 - confidence)/2 and (1 + confidence)/2 quantiles of the finite draws (None if none):
    the percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13)."""
    draws = draws[np.isfinite(draws)]
    q = (1 - confidence) / 2
    return [float(x) for x in np.quantile(draws, [q, 1 - q])] if len(draws) else None


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


# ------------------------------------------------------------------------------------ plain JSON

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
