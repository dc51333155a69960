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
                    reports: accuracy, F1, AUC, ECE, ...), with thread-clustered bootstrap intervals.
  paired AUC test   DeLong's test for two correlated ROC curves (below), every pair of RMs, Holm-
                    corrected over the pairs; the paired bootstrap interval of the difference beside it.
  metadata          reference: the true header. Counterfactuals, donors drawn once for all RMs:
                      swap_subreddit  the subreddit of a donor example whose subreddit differs
                      swap_time       the created_utc (date and time) of a donor whose UTC hour differs
                      swap_both       the whole meta of a donor whose subreddit AND hour differ
                      no_header       the score without the example's own header. A generalized RM:
                                      its plain input. A conditioned RM was never trained without a
                                      header, so any header-free input (no header line, or a
                                      placeholder such as r/[subreddit]) is one it never saw, and
                                      its score says how it reads that unseen input, not how much it
                                      relies on the header (a placeholder moved one RM's AUC 1 ->
                                      0.36 and another build's 1 -> 0.66). It gets the header
                                      MARGINALISED OUT instead: the mean of its scores under
                                      header_draws headers of other examples (seeded one-to-one
                                      reassignments of the set's metas), every one a header it could
                                      have met in training. This is the interventional expectation
                                      E_h[s(x, h)] that SHAP-style attributions use for a removed
                                      feature (Janzing, Minorics & Bloebaum 2020, "Feature relevance
                                      quantification in explainable AI: a causal problem", AISTATS).
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

Per counterfactual (on the rows that have one), each with a thread-clustered interval (below):
  n, n_threads       rows probed and their threads (a probe skips rows without a donor / sibling)
  mean_abs_change    mean_i |s'_i - s_i|                            (0 = the input change is ignored)
  mean_change        mean_i (s'_i - s_i)                            (signed: a level shift)
  relative_change    mean_abs_change / mean_{pairs} |s_i - s_j|     (~1 = as different as another example)
  flip_share         the share of CLEARLY ordered pairs (reference gap >= min_gap_sd SDs of the
                     scores) whose order the counterfactual reverses: 0 = rankings intact, 1 = every
                     clear order reversed; beside it flip_random = 0.5, what a score re-drawn at
                     random gives (definition, threshold and derivation: flip_share below)
  auc, auc_reference, auc_change   the AUC under s', under s, and their difference (same rows,
                     labels unchanged)
  karma_agreement    sibling probe only: over (reply, sibling) pairs whose Reddit scores differ, the
                     share the RM orders as karma does (a gap under min_gap counts 1/2; 0.5 = blind)

Intervals: examples are not independent (held-out threads hold about 6 replies each, and the
replies of one thread share their submission, subreddit and often their label), so every interval,
the held-out metrics' included, is a percentile bootstrap over THREADS
(stats.cluster_bootstrap_indices: whole threads resampled with replacement; the same resamples for
every RM and probe, so differences are paired). A statistic is recomputed in full on each resample, flip threshold
included; flip shares on a resample use at most BOOT_PAIRS sampled pairs.

DeLong vs paired bootstrap for the AUC difference: DeLong's test (DeLong, DeLong & Clarke-Pearson
1988; karma.evals.stats.delong_test) is the standard test for two AUCs on the same examples; it is
deterministic (no Monte-Carlo noise in a p-value that gets Holm-corrected), and with the fast
algorithm of Sun & Xu (2014) costs one sort per model, O(n log n). It treats examples as
independent, so with several replies per thread its p-values are optimistic; the thread bootstrap
interval of the difference beside it is the one to read when the two disagree.

Caveat: an injected header sits in the first turn, which is the first thing encode() drops when an
example exceeds max_length: for such examples the generalized probe sees no header at all and shows
0 change (an underestimate of its reliance).
Everything returned is plain JSON: dicts, lists, str, int, float, None (never NaN).
"""

import math
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from typing import Callable

import numpy as np

from karma.data.format import header
from karma.evals.report import build_tables, mark, parse_label
from karma.evals.stats import cluster_bootstrap_indices, delong_test, holm
from karma.metrics import binary_metrics, roc_auc

META_PROBES = ("swap_subreddit", "swap_time", "swap_both", "no_header")
CONTENT_PROBES = ("sibling", "other_thread")
CI_METRICS = ("accuracy", "f1", "roc_auc", "ece")
MEASURES = ("mean_abs_change", "mean_change", "relative_change", "flip_share", "auc", "auc_reference", "auc_change")
THREAD_KEYS = ("thread_id", "parent_id", "siblings", "score")  # what the content probes read besides
MIN_GAP_SD = 0.2  # a pair is clearly ordered when its reference gap is at least this many SDs of the scores
FLIP_RANDOM = 0.5  # flip_share of a counterfactual score re-drawn at random: derived in flip_share
HEADER_DRAWS = 4  # headers averaged for a conditioned RM's no_header probe
BOOT_PAIRS = 20_000  # pairs sampled per bootstrap resample for the flip share
TIE = 1e-6  # scores closer than this (probability scale) are tied: float32 batching noise

DEFINITIONS = {
    "swap_subreddit": "subreddit of a donor example whose subreddit differs (time kept)",
    "swap_time": "created_utc of a donor example whose UTC hour differs (subreddit kept)",
    "swap_both": "whole meta of a donor example whose subreddit and UTC hour both differ",
    "no_header": "no header: a generalized RM's plain input; a conditioned RM (never trained without one) gets "
                 "its mean score under headers of other examples (the header marginalised out, no placeholder)",
    "sibling": "reply replaced by a sibling reply to the same parent (header kept)",
    "other_thread": "reply replaced by the reply of an example from another thread (header kept)",
}


@dataclass
class Settings:
    """What every probe of one report shares. resamples() yields the thread-bootstrap index arrays,
    the same ones on every call."""
    seed: int
    max_pairs: int
    min_gap_sd: float
    confidence: float
    chunk: int
    header_draws: int
    threads: np.ndarray  # [N] thread code per example
    resamples: Callable


# ------------------------------------------------------------------------------------ the report

def rm_report(reward_models: dict, examples: list[dict], seed: int = 0, n_resamples: int = 1000,
              max_pairs: int = 100_000, confidence: float = 0.95, chunk: int = 256, log=None,
              min_gap_sd: float = MIN_GAP_SD, header_draws: int = HEADER_DRAWS) -> dict:
    """Every probe of the module doc for every RM on the same examples.

    reward_models: {name: RM-like, or a zero-argument loader returning one (called when its turn
    comes and dropped after, so big RMs need not all sit in memory at once)}.
    examples: dicts with messages, response, label and meta {"subreddit", "created_utc"}; optional
    thread_id (absent: each example is its own thread), siblings [{"text", "score"}], score.
    min_gap_sd: flip_share's threshold, in SDs of the reference scores; header_draws: headers
    averaged for a conditioned RM's no_header probe.
    Returns {"n_examples", "n_threads", "seed", "n_resamples", "max_pairs", "confidence",
    "min_gap_sd", "header_draws", "flip_random", "probes", "rms", "comparisons", "notes"};
    rms[name] = {"format", "metrics", "ci", "metadata", "content", "by_subreddit", "by_hour"}.
    log: an optional callable(str) told each pass as it starts.
    """
    if not examples:
        raise ValueError("rm_report needs at least one example")
    if not (min_gap_sd >= 0 and header_draws >= 1 and n_resamples >= 1):
        raise ValueError(f"rm_report: min_gap_sd {min_gap_sd} must be >= 0, header_draws {header_draws} and "
                         f"n_resamples {n_resamples} >= 1")
    for k, ex in enumerate(examples):
        meta = ex.get("meta")
        if not (isinstance(meta, dict) and "subreddit" in meta and "created_utc" in meta):
            raise ValueError(f"example {k} ({ex.get('id', 'no id')}): the probes need "
                             "meta = {'subreddit', 'created_utc'}")
    labels = np.array([int(ex["label"]) for ex in examples])
    plan = probe_plan(examples, seed, header_draws)
    st = Settings(seed, max_pairs, min_gap_sd, confidence, chunk, header_draws, plan["threads"],
                  lambda: cluster_bootstrap_indices(plan["threads"], n_resamples, stream_seed(seed, "bootstrap")))

    rms, natural_scores, boot_aucs = {}, {}, {}
    for name, spec in reward_models.items():
        rm = spec() if callable(spec) and not hasattr(spec, "score") else spec
        scores, entry = _probe_rm(rm, name, examples, labels, plan, st, log)
        del rm
        entry["metrics"] = binary_metrics(labels, scores)
        draws = _draws(lambda idx: _metrics(labels[idx], scores[idx]), np.arange(len(labels)), st)
        entry["ci"] = {k: percentile_interval(draws[k], confidence) for k in CI_METRICS}
        natural_scores[name], boot_aucs[name] = scores, draws["roc_auc"]
        rms[name] = entry

    comparisons = []
    for a, b in combinations(rms, 2):
        test = delong_test(labels, natural_scores[a], natural_scores[b], confidence)
        test["bootstrap_ci"] = percentile_interval(boot_aucs[a] - boot_aucs[b], confidence)
        comparisons.append({"a": a, "b": b, **test})
    tested = [c for c in comparisons if c["p"] is not None]
    for c, p in zip(tested, holm([c["p"] for c in tested])):
        c["p_holm"], c["mark"] = p, mark(p)

    probes = {k: {**plan[k]["summary"], "definition": DEFINITIONS[k]} for k in (*META_PROBES, *CONTENT_PROBES)}
    report = {"n_examples": len(examples), "n_threads": int(plan["threads"].max()) + 1, "seed": seed,
              "n_resamples": n_resamples, "max_pairs": max_pairs, "confidence": confidence, "min_gap_sd": min_gap_sd,
              "header_draws": header_draws, "flip_random": FLIP_RANDOM, "probes": probes, "rms": rms,
              "comparisons": comparisons, "notes": plan["notes"] + _format_notes(rms, st)}
    return to_json(report)


def _format_notes(rms: dict, st: Settings) -> list[str]:
    formats = {e["format"] for e in rms.values()}
    notes = ["intervals resample whole threads; DeLong's test treats examples as independent, so with several "
             "replies per thread its p-values are optimistic (read the bootstrap interval beside it)",
             f"flips count only pairs whose reference scores differ by at least {st.min_gap_sd} SD of those "
             f"scores; {FLIP_RANDOM} = what a score re-drawn at random gives"]
    if "generalized" in formats:
        notes.append("generalized RMs: the header is injected into the first turn (the submission), which encode() "
                     "drops first when an example exceeds max_length: reliance is then under-measured")
    if "conditioned" in formats:
        notes.append(f"conditioned RMs were never trained without a header: no_header is their mean score under "
                     f"{st.header_draws} headers of other examples (the header marginalised out), not a placeholder "
                     "header they never saw")
    return notes


def _metrics(labels, scores) -> dict:
    """CI_METRICS of one resample (None where undefined, e.g. one class)."""
    if not len(labels):
        return dict.fromkeys(CI_METRICS)
    m = binary_metrics(labels, scores)
    return {k: m[k] for k in CI_METRICS}


def _probe_rm(rm, name, examples, labels, plan, st: Settings, log) -> tuple[np.ndarray, dict]:
    """One RM: natural scores, then the metadata and content probes and the per-group tables."""
    fmt = rm.cfg.format
    if fmt not in ("generalized", "conditioned"):
        raise ValueError(f"{name}: unknown format {fmt!r}")
    contexts = [ex["messages"] for ex in examples]
    replies = [ex["response"] for ex in examples]
    metas = [ex["meta"] for ex in examples]

    def run(what, rows, ctx, rep, met):
        if log:
            log(f"{name} ({fmt}): {what}, {len(rows)} examples")
        return score_rows(rm, name, rows, ctx, rep, met, st.chunk)

    everyone = np.arange(len(examples))
    natural = run("natural input", everyone, contexts, replies, metas)

    # metadata: a conditioned RM reads meta through its own header; a generalized one gets it injected
    def with_meta(what, rows, new_metas):
        if fmt == "conditioned":
            return run(what, rows, contexts, replies, new_metas)
        injected = [inject_header(c, m) if m is not None else c for c, m in zip(contexts, new_metas)]
        return run(what, rows, injected, replies, [None] * len(examples))

    reference = natural if fmt == "conditioned" else with_meta("true header injected", everyone, metas)
    metadata = {}
    for probe in META_PROBES:
        rows = plan[probe]["rows"]
        if probe == "no_header" and fmt == "generalized":
            cf = natural  # the plain input is exactly "no header"
        elif probe == "no_header":
            draws = plan[probe]["draws"]
            cf = np.mean([with_meta(f"no_header (header {k + 1}/{len(draws)})", rows, m)
                          for k, m in enumerate(draws)], axis=0)
        else:
            cf = with_meta(probe, rows, plan[probe]["metas"])
        metadata[probe] = {**compare(reference, cf, labels, rows, probe, st), "input": _how(probe, fmt, st)}

    content = {}
    for probe in CONTENT_PROBES:
        rows = plan[probe]["rows"]
        cf = run(probe, rows, contexts, plan[probe]["replies"], metas)
        content[probe] = compare(natural, cf, labels, rows, probe, st)
        if probe == "sibling":
            content[probe]["karma_agreement"] = karma_agreement(natural, cf, rows, plan["sibling"]["karma"],
                                                                plan["sibling"]["sibling_karma"], st)
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


def _how(probe: str, fmt: str, st: Settings) -> str:
    if fmt == "generalized":
        return "plain input (no header)" if probe == "no_header" else "header injected into the first turn"
    if probe == "no_header":
        return f"mean over {st.header_draws} headers of other examples (header marginalised out)"
    return "the RM's own header"


# --------------------------------------------------------------------------- counterfactual inputs

def probe_plan(examples: list[dict], seed: int, header_draws: int = HEADER_DRAWS) -> dict:
    """The counterfactual inputs of every probe, drawn once so that every RM gets the same ones.

    {probe: {"rows": example indices probed, "metas" or "replies": per-example list (None outside
    rows), "summary": {"n", "n_skipped", "n_reused_donors"}}, "threads": thread code per example,
    "notes": [...]}; no_header has "draws": header_draws lists of metas (one-to-one reassignments)."""
    n = len(examples)
    metas = [ex["meta"] for ex in examples]
    subs = _codes([str(m["subreddit"]) for m in metas])
    hours = np.array([utc_hour(m) for m in metas])
    threads = _codes([str(ex.get("thread_id", f"\0{k}")) for k, ex in enumerate(examples)])
    plan, notes = {"threads": threads}, []

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
    # no_header (conditioned RMs): the set's headers reassigned at random, header_draws times; the
    # mean score over them estimates E_h[s(x, h)] over the held-out header distribution
    rng = np.random.default_rng(stream_seed(seed, "no_header"))
    plan["no_header"] = {"rows": np.arange(n), "draws": [[metas[j] for j in rng.permutation(n)]
                                                         for _ in range(header_draws)],
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

def compare(reference: np.ndarray, cf: np.ndarray, labels: np.ndarray, rows: np.ndarray, probe: str,
            st: Settings) -> dict:
    """The per-counterfactual measures of the module doc on `rows`, each with its thread-bootstrap
    interval in "ci"; flip_random beside flip_share."""
    if not len(rows):
        return {"n": 0, "n_threads": 0, **dict.fromkeys(MEASURES), "n_pairs": 0, "min_gap": None,
                "flip_random": FLIP_RANDOM, "ci": dict.fromkeys(MEASURES)}
    point = reliance(reference[rows], cf[rows], labels[rows], st.max_pairs, st.min_gap_sd,
                     np.random.default_rng(stream_seed(st.seed, probe)))
    rng = np.random.default_rng(stream_seed(st.seed, f"{probe}/bootstrap"))
    pairs = min(st.max_pairs, BOOT_PAIRS)
    draws = _draws(lambda idx: reliance(reference[idx], cf[idx], labels[idx], pairs, st.min_gap_sd, rng), rows, st)
    return {"n": len(rows), "n_threads": len(np.unique(st.threads[rows])), **point, "flip_random": FLIP_RANDOM,
            "ci": {k: percentile_interval(draws[k], st.confidence) for k in MEASURES}}


def reliance(s: np.ndarray, t: np.ndarray, labels: np.ndarray, max_pairs: int, min_gap_sd: float, rng) -> dict:
    """MEASURES of one counterfactual on aligned rows, plus n_pairs and min_gap (flip_share's):
    s the reference scores [n], t the counterfactual ones [n], labels [n]. None where undefined."""
    if not len(s):
        return {**dict.fromkeys(MEASURES), "n_pairs": 0, "min_gap": None}
    change = t - s
    flips = flip_share(s, t, max_pairs, rng, min_gap_sd)
    auc, auc_reference = roc_auc(labels, t), roc_auc(labels, s)
    return {"mean_abs_change": float(np.abs(change).mean()), "mean_change": float(change.mean()),
            "relative_change": float(np.abs(change).mean() / flips["mean_abs_gap"]) if flips["mean_abs_gap"] else None,
            "flip_share": flips["flip_share"], "n_pairs": flips["n_pairs"], "min_gap": flips["min_gap"],
            "auc": auc, "auc_reference": auc_reference,
            "auc_change": None if auc is None or auc_reference is None else auc - auc_reference}


def sample_pairs(n: int, max_pairs: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j when there are at most max_pairs, else max_pairs random pairs with i != j."""
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, 1)
    i = rng.integers(0, n, max_pairs)
    return i, (i + rng.integers(1, n, max_pairs)) % n


def flip_share(reference, cf, max_pairs: int, rng, min_gap_sd: float = MIN_GAP_SD) -> dict:
    """The share of CLEARLY ordered pairs whose order the counterfactual reverses.

    Over the pairs (i, j) (all, or max_pairs sampled with rng) whose reference gap is clear,
    |s_i - s_j| >= g with g = min_gap_sd * SD(s) (population SD of the reference scores given; at
    least TIE): a pair counts 1 when s' orders it the other way, 1/2 when s' ties it
    (|s'_i - s'_j| <= TIE), 0 when s' keeps the order. flip_share is the mean over those pairs.

    Why a threshold. Counting every pair with s_i != s_j counts noise as reliance: an RM's scores
    move a little under input changes it does not use (float32 batching, a token it attends to
    without using it), and pairs the reference barely orders flip under that movement. A reply-blind
    RM whose probabilities saturate within a subreddit read 0.24 "content" flips that way with a
    mean |change| of 0.0000. With the threshold, a counterfactual that moves every score by less
    than g/2 cannot reverse a clear pair (|s'_i - s'_j| >= |s_i - s_j| - 2 max|s' - s| > 0), so
    noise reads exactly 0, and reversing every clear pair reads exactly 1. g follows the scores'
    own spread, so saturated or compressed probability scales read alike. The default 0.2 SD is
    Cohen's (1988, "Statistical Power Analysis for the Behavioral Sciences") smallest conventional
    effect ("small", d = 0.2): pairs closer than that are practically tied; for normal scores it
    sets aside about 11% of the pairs (P(|Z| < 0.2 / sqrt 2)). Weighting each pair by its gap
    instead (a gap-weighted Kendall discordance) needs no parameter but is never exactly 0 under
    noise and is dominated by the few most distant pairs.

    The random reference, derived for this definition: if s' carries no information about the
    reference order (the counterfactual scores re-drawn at random, i.e. dealt to the rows by a
    random permutation independent of s), then for every pair the values (s'_i, s'_j) are
    exchangeable, so P(reversed) = P(kept) = (1 - P(tie)) / 2 and, a tie counting 1/2, each pair's
    expected count is 1/2 whatever g, the ties or the score distribution: FLIP_RANDOM = 0.5.
    0 = rankings intact; 0.5 = the ranking (what PPO's advantages use) is lost; above 0.5 the
    counterfactual anti-correlates (e.g. a swap that must change the subreddit when the subreddits
    carry the label).

    Returns {"flip_share" (None without a clear pair), "n_pairs" (the clear pairs), "min_gap" (g),
    "mean_abs_gap" (mean |s_i - s_j| over all sampled pairs: relative_change's scale)}."""
    i, j = sample_pairs(len(reference), max_pairs, rng)
    before, after = reference[i] - reference[j], cf[i] - cf[j]
    min_gap = max(min_gap_sd * float(np.std(reference)), TIE)
    clear = np.abs(before) >= min_gap
    sign_after = np.where(np.abs(after) > TIE, np.sign(after), 0.0)
    agreement = np.sign(before[clear]) * sign_after[clear]  # 1 kept, 0 tied, -1 reversed
    share = float(np.mean((1 - agreement) / 2)) if clear.any() else None
    return {"flip_share": share, "n_pairs": int(clear.sum()), "min_gap": min_gap,
            "mean_abs_gap": float(np.abs(before).mean()) if len(before) else 0.0}


def karma_agreement(natural, cf, rows, karma, sibling_karma, st: Settings) -> dict:
    """Over the sibling probe's rows whose reply and sibling have different Reddit scores: the share
    where the RM orders them as karma does, with its thread-bootstrap interval. An RM gap under
    flip_share's threshold (min_gap_sd SDs of the natural scores on the rows) counts 1/2, so an RM
    blind to the reply reads 0.5 whatever its noise."""
    rows = rows[np.isfinite(karma[rows]) & (karma[rows] != sibling_karma[rows])]
    if not len(rows):
        return {"share": None, "n": 0, "ci": None}
    karma_sign = np.sign(karma - sibling_karma)  # [N], NaN outside the probed rows

    def share(idx):
        if not len(idx):
            return {"share": None}
        gap = natural[idx] - cf[idx]
        min_gap = max(st.min_gap_sd * float(natural[idx].std()), TIE)
        rm_sign = np.where(np.abs(gap) >= min_gap, np.sign(gap), 0.0)
        return {"share": float(np.mean((1 + rm_sign * karma_sign[idx]) / 2))}

    draws = _draws(share, rows, st)["share"]
    return {**share(rows), "n": len(rows), "ci": percentile_interval(draws, st.confidence)}


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

def _draws(statistic, rows: np.ndarray, st: Settings) -> dict[str, np.ndarray]:
    """statistic(idx) -> {key: number or None} on every thread-bootstrap resample (st.resamples),
    each restricted to `rows`: {key: [n_resamples] draws, NaN where None}. The same resamples, in
    the same order, for every RM and probe: draws of two RMs are paired."""
    in_rows = np.zeros(len(st.threads), dtype=bool)
    in_rows[rows] = True
    draws = {}
    for idx in st.resamples():
        for k, v in statistic(idx[in_rows[idx]]).items():
            draws.setdefault(k, []).append(np.nan if v is None else v)
    return {k: np.asarray(v, dtype=np.float64) for k, v in draws.items()}


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
        meta, content = entry["metadata"]["swap_both"], entry["content"]["other_thread"]
        for model in models:
            rows.append({"rm": rm_name, "format": entry["format"], "policy": f"{model}/{variant}",
                         "auc": entry["metrics"]["roc_auc"], "auc_ci": entry["ci"]["roc_auc"],
                         "meta_flip_share": meta["flip_share"], "meta_flip_ci": meta["ci"]["flip_share"],
                         "meta_mean_abs_change": meta["mean_abs_change"],
                         "content_flip_share": content["flip_share"], "content_flip_ci": content["ci"]["flip_share"],
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
