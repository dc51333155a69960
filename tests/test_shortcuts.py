"""karma/evals/shortcuts.py: stub RMs with a planted reliance, DeLong against brute force, a real tiny RM on disk."""

import json
import math
import random
import re
import zlib
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest

from karma.data.format import render
from karma.evals.shortcuts import (FLIP_RANDOM, MEASURES, META_PROBES, derange, downstream_table, flip_share,
                                   group_table, inject_header, rm_report, utc_hour)
from karma.evals.shortcuts_report import plot, run_rm_report, to_markdown
from karma.evals.stats import delong_components, delong_test
from karma.evals.task import TaskResult
from karma.metrics import binary_metrics

SUBREDDITS = ["AskScience", "funny", "news", "gaming", "books", "history"]
GOOD = ["great question, here is why", "thanks, the source explains it", "good point and a clear answer"]
BAD = ["no idea lol", "who cares", "this is wrong"]
T0 = 1420070400  # 2015-01-01 00:00 UTC

# "near": a score that reads only what a probe changes is re-drawn by it, which flips about half of
# the pairwise rankings (0.5 = chance) and moves it about as far as the gap between two examples
# (relative change ~1); one that ignores it does not move at all (float64 stubs: exactly 0)
NEAR_TOTAL_FLIPS, NEAR_TOTAL_RELATIVE = 0.35, 0.7
NEAR_ZERO = 1e-12


def make_examples(n_threads=60, seed=0) -> list[dict]:
    """Threads of 1-5 replies: label readable from the reply's words, subreddit and hour random,
    siblings = the other replies of the thread (single-reply threads have none)."""
    rng = random.Random(seed)
    examples = []
    for t in range(n_threads):
        sub = rng.choice(SUBREDDITS)
        replies = []
        for r in range(rng.randint(1, 5)):
            label = rng.random() < 0.5
            replies.append({"id": f"t1_{t}_{r}", "thread_id": f"t3_{t}", "parent_id": f"t3_{t}",
                            "messages": [{"role": "user", "content": f"topic {t}: what do you think?"}],
                            "response": f"{rng.choice(GOOD if label else BAD)} {rng.randint(0, 9999)}",
                            "label": int(label), "score": rng.randint(0, 10) + (30 if label else 0), "parent_score": 30,
                            "meta": {"subreddit": sub, "created_utc": T0 + rng.randint(0, 90 * 86400)}})
        for ex in replies:
            ex["siblings"] = [{"id": o["id"], "text": o["response"], "score": o["score"]}
                              for o in replies if o is not ex]
        examples += replies
    return examples


def _effect(key: str) -> float:
    return (zlib.crc32(key.encode()) % 1000) / 250 - 2  # a fixed pseudo-random number in [-2, 2)


HEADER = re.compile(r"\[Subreddit: r/(\S+) \| Posted: \d{4}-\d\d-\d\d (\d\d):\d\d UTC\]")


class HeaderStub:
    """Reads only the header in its rendered input: sigmoid(effect(subreddit) + effect(hour)); 0.5
    without a header. In the generalized format it finds a header only where one was injected."""

    def __init__(self, fmt):
        self.cfg, self.calls = SimpleNamespace(format=fmt), 0

    def score(self, contexts, responses, metas):
        self.calls += 1
        out = []
        for c, r, m in zip(contexts, responses, metas):
            found = HEADER.search(render(c, r, m, self.cfg.format))
            z = _effect(found[1]) + _effect("hour" + found[2]) if found else 0.0
            out.append(1 / (1 + math.exp(-z)))
        return out


class TextStub:
    """Reads only the reply: GOOD words push the score up, plus a text hash (no ties)."""

    def __init__(self, fmt):
        self.cfg, self.calls = SimpleNamespace(format=fmt), 0

    def score(self, contexts, responses, metas):
        self.calls += 1
        z = [(1.5 if any(r.startswith(g) for g in GOOD) else -1.5) + _effect(r) / 2 for r in responses]
        return np.array([1 / (1 + math.exp(-v)) for v in z])


@pytest.fixture(scope="module")
def examples():
    return make_examples()


@pytest.fixture(scope="module")
def report(examples):
    models = {"header": HeaderStub("conditioned"), "text": TextStub("conditioned"),
              "header_gen": HeaderStub("generalized"), "text_gen": TextStub("generalized")}
    out = rm_report(models, examples, seed=0, n_resamples=100)
    out["calls"] = {name: m.calls for name, m in models.items()}
    return out


def test_header_only_rm_shows_total_metadata_and_no_content_reliance(report):
    for name in ("header", "header_gen"):  # the generalized one sees the meta only through the injected header
        meta, content = report["rms"][name]["metadata"], report["rms"][name]["content"]
        for probe in ("swap_both", "no_header"):  # the whole header changes
            assert meta[probe]["flip_share"] > NEAR_TOTAL_FLIPS, (name, probe, meta[probe])
            assert meta[probe]["relative_change"] > NEAR_TOTAL_RELATIVE, (name, probe, meta[probe])
        for probe in ("swap_subreddit", "swap_time"):  # half of what it reads changes: partial, clearly > 0
            assert meta[probe]["flip_share"] > 0.15 and meta[probe]["relative_change"] > 0.3, (name, probe, meta[probe])
        for probe in ("sibling", "other_thread"):
            assert content[probe]["mean_abs_change"] < NEAR_ZERO
            # header_gen's natural input has no header: a constant score, no ranking to flip (None)
            assert content[probe]["flip_share"] == (0.0 if name == "header" else None)
        assert content["sibling"]["karma_agreement"]["share"] == 0.5  # blind to the reply: every pair tied
    assert report["rms"]["header"]["metadata"]["swap_both"]["input"] == "the RM's own header"
    assert report["rms"]["header_gen"]["metadata"]["swap_both"]["input"] == "header injected into the first turn"
    # it has learned the subreddit: scores vary between subreddits far more than the labels do
    eta = report["rms"]["header"]["by_subreddit"]["eta_squared"]
    assert eta["score"] > 0.3 and eta["label"] < 0.1


def test_text_only_rm_shows_no_metadata_and_total_content_reliance(report):
    for name in ("text", "text_gen"):
        meta, content = report["rms"][name]["metadata"], report["rms"][name]["content"]
        for probe in META_PROBES:
            assert meta[probe]["mean_abs_change"] < NEAR_ZERO and meta[probe]["flip_share"] == 0.0, (name, probe)
            assert meta[probe]["auc"] == meta[probe]["auc_reference"]
        for probe in ("sibling", "other_thread"):
            assert content[probe]["flip_share"] > NEAR_TOTAL_FLIPS, (name, probe, content[probe])
            assert content[probe]["relative_change"] > NEAR_TOTAL_RELATIVE, (name, probe, content[probe])
        # it reads the reply: another thread's reply no longer predicts this one's label
        other = content["other_thread"]
        assert other["auc_reference"] > 0.95 and other["auc"] < 0.7
        assert content["sibling"]["karma_agreement"]["share"] > 0.6  # orders reply vs sibling like karma
    assert report["rms"]["text"]["metrics"]["roc_auc"] > 0.95
    assert report["rms"]["text_gen"]["metadata"]["no_header"]["input"] == "plain input (no header)"
    assert report["rms"]["text"]["metadata"]["no_header"]["input"].startswith("mean over 4 headers of other examples")


def test_probe_inputs_are_counted_skipped_and_batched(report, examples):
    n = len(examples)
    no_sibling = sum(not ex["siblings"] for ex in examples)
    assert 0 < no_sibling < n
    assert report["probes"]["sibling"]["n"] == n - no_sibling and report["probes"]["sibling"]["n_skipped"] == no_sibling
    assert any("no sibling" in note for note in report["notes"])
    for name in ("header", "text"):
        assert report["rms"][name]["content"]["sibling"]["n"] == n - no_sibling
    for probe in ("swap_subreddit", "swap_time", "swap_both", "other_thread"):
        assert report["probes"][probe]["n"] == n  # 6 subreddits, 24 hours, 60 threads: a donor for everyone
    # one score() call per probe (n < chunk): natural, 3 swaps, sibling, other thread, and for a
    # conditioned RM 4 header draws (no_header); the generalized RM scores the injected true header
    # instead (its no_header is its natural input)
    assert report["calls"] == {"header": 10, "text": 10, "header_gen": 7, "text_gen": 7}


# ------------------------------------------------------------------- flips: noise is not reliance

def test_flip_share_is_zero_under_noise_one_under_reversal_and_half_when_redrawn():
    """Planted truth for the statistic itself: two reply classes (0.35 / 0.65) with a small spread
    inside each (SD ~0.15 overall); a counterfactual that moves every score by <= 0.0015 (what an RM
    that ignores the change does) must read 0 (the old all-pairs count read 0.083), one that
    reverses every clearly ordered pair 1 (the old count: 0.918), and re-dealing the scores at
    random the derived FLIP_RANDOM = 0.5."""
    rng = np.random.default_rng(0)
    base = np.where(rng.random(400) < 0.5, 0.35, 0.65) + rng.uniform(-0.004, 0.004, 400)
    s, noisy = base + rng.uniform(-0.0015, 0.0015, 400), base + rng.uniform(-0.0015, 0.0015, 400)
    ignored = flip_share(s, noisy, 100_000, np.random.default_rng(1))
    assert ignored["flip_share"] == 0.0 and ignored["n_pairs"] > 30_000
    assert ignored["min_gap"] == pytest.approx(0.2 * s.std())
    assert flip_share(s, 1 - base + rng.uniform(-0.0015, 0.0015, 400), 100_000, rng)["flip_share"] == 1.0
    redrawn = [flip_share(s, rng.permutation(noisy), 100_000, rng)["flip_share"] for _ in range(20)]
    assert FLIP_RANDOM == 0.5 and abs(np.mean(redrawn) - FLIP_RANDOM) < 0.01
    # ties under the counterfactual count 1/2, so a score collapsed to a constant is "random" too
    assert flip_share(s, np.full(400, 0.5), 100_000, rng)["flip_share"] == 0.5
    # a constant reference orders nothing
    assert flip_share(np.full(50, 0.3), s[:50], 100, rng)["flip_share"] is None


class NoisyTextStub(TextStub):
    """Reads only the reply, and its float noise differs from call to call: two classes (0.3 / 0.7),
    a small spread inside each from the reply's text, then up to +-0.0015 of fresh noise per call."""

    def __init__(self, fmt, seed=0):
        super().__init__(fmt)
        self.rng = np.random.default_rng(seed)

    def score(self, contexts, responses, metas):
        self.calls += 1
        level = np.array([0.7 if any(r.startswith(g) for g in GOOD) else 0.3 for r in responses])
        spread = np.array([_effect(r) / 1000 for r in responses])  # +-0.002
        return level + spread + self.rng.uniform(-0.0015, 0.0015, len(responses))


def test_noise_of_a_header_blind_rm_reads_no_metadata_reliance(examples):
    report = rm_report({"cond": NoisyTextStub("conditioned"), "gen": NoisyTextStub("generalized", seed=1)},
                       examples, seed=0, n_resamples=50)
    for name, e in report["rms"].items():
        for probe in META_PROBES:
            r = e["metadata"][probe]
            assert 0 < r["mean_abs_change"] < 0.0016, (name, probe)
            assert r["flip_share"] == 0.0 and r["ci"]["flip_share"] == [0.0, 0.0], (name, probe, r)
            assert r["flip_random"] == FLIP_RANDOM
        assert e["content"]["other_thread"]["flip_share"] > NEAR_TOTAL_FLIPS  # what it does read
        # reply vs sibling: ordered by the class, as karma does; within a class only noise (a tie, 1/2)
        assert e["content"]["sibling"]["karma_agreement"]["share"] > 0.6
    assert report["flip_random"] == FLIP_RANDOM and report["min_gap_sd"] == 0.2


# --------------------------------------------------------------- intervals: threads, not examples

def test_every_counterfactual_number_has_a_thread_clustered_interval(report, examples):
    assert report["n_threads"] == 60
    for name, e in report["rms"].items():
        for probe, r in {**e["metadata"], **e["content"]}.items():
            assert 0 < r["n_threads"] <= 60 and set(r["ci"]) == set(MEASURES), (name, probe)
            for k in MEASURES:
                if r[k] is None or r["ci"][k] is None:
                    assert r[k] is None or k in ("flip_share", "relative_change"), (name, probe, k)
                    continue
                low, high = r["ci"][k]
                assert low <= high and low - 0.05 <= r[k] <= high + 0.05, (name, probe, k, r[k], r["ci"][k])
    agreement = report["rms"]["text"]["content"]["sibling"]["karma_agreement"]
    assert agreement["ci"][0] <= agreement["share"] <= agreement["ci"][1]
    # one label and subreddit per thread: the same scores read as 168 independent examples give
    # narrower intervals than the 60 threads they are, wherever what is measured is shared by a
    # thread (what the cluster bootstrap is for)
    by_thread = {}
    for ex in examples:
        by_thread.setdefault(ex["thread_id"], int(ex["label"]))
    shared = [{**ex, "label": by_thread[ex["thread_id"]]} for ex in examples]
    alone = [{**ex, "thread_id": ex["id"]} for ex in shared]
    widths = {}
    for key, data in (("threads", shared), ("examples", alone)):
        r = rm_report({"h": HeaderStub("conditioned")}, data, seed=0, n_resamples=200)["rms"]["h"]
        swap = r["metadata"]["swap_subreddit"]["ci"]
        widths[key] = [np.diff(ci)[0] for ci in (r["ci"]["roc_auc"], swap["auc_reference"], swap["auc_change"],
                                                 swap["mean_change"])]
    assert all(t > 1.15 * x for t, x in zip(widths["threads"], widths["examples"])), widths


# ----------------------------------------------- no_header for a conditioned RM: only real headers

class RecordingHeaderStub(HeaderStub):
    """HeaderStub that records every meta it is given."""

    def __init__(self, fmt):
        super().__init__(fmt)
        self.seen = []

    def score(self, contexts, responses, metas):
        self.seen += metas
        return super().score(contexts, responses, metas)


def test_conditioned_no_header_marginalises_over_real_headers(examples):
    rm = RecordingHeaderStub("conditioned")
    report = rm_report({"h": rm, "t": TextStub("conditioned")}, examples, seed=0, n_resamples=20)
    for field in ("subreddit", "created_utc"):  # never a placeholder header (the swaps recombine real fields)
        assert {m[field] for m in rm.seen} <= {ex["meta"][field] for ex in examples}
    assert report["header_draws"] == 4 and "marginalised" in report["rms"]["h"]["metadata"]["no_header"]["input"]
    # the header removed: a header-only RM loses its ranking, a reply-only one keeps it exactly
    no_header = report["rms"]["h"]["metadata"]["no_header"]
    assert no_header["flip_share"] > NEAR_TOTAL_FLIPS and no_header["ci"]["flip_share"][1] > 0.45
    assert report["rms"]["t"]["metadata"]["no_header"]["mean_abs_change"] < NEAR_ZERO
    assert any("never trained without a header" in note for note in report["notes"])


def test_donors_differ_as_required_and_are_one_to_one_when_possible():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 5, 300)
    ok = lambda i, j: keys[i] != keys[j]
    donor, reused = derange(300, ok, np.random.default_rng(1))
    assert reused == 0 and sorted(donor) == list(range(300)) and (keys[donor] != keys).all()
    again, _ = derange(300, ok, np.random.default_rng(1))
    assert (again == donor).all()  # seeded
    # one key holds 3/4 of the examples: no one-to-one assignment; donors reused, counted
    keys = np.array([0] * 30 + [1] * 10)
    donor, reused = derange(40, lambda i, j: keys[i] != keys[j], np.random.default_rng(0))
    assert (keys[donor] != keys).all() and reused == 20
    # a single key: nobody has a donor
    keys = np.zeros(10, dtype=int)
    donor, reused = derange(10, lambda i, j: keys[i] != keys[j], np.random.default_rng(0))
    assert (donor == -1).all() and reused == 0


def test_swapped_metas_take_the_donors_fields(examples):
    from karma.evals.shortcuts import probe_plan
    plan = probe_plan(examples, seed=3)
    for i in plan["swap_subreddit"]["rows"][:20]:
        own, new = examples[i]["meta"], plan["swap_subreddit"]["metas"][i]
        assert new["created_utc"] == own["created_utc"] and new["subreddit"] != own["subreddit"]
        new = plan["swap_time"]["metas"][i]
        assert new["subreddit"] == own["subreddit"] and utc_hour(new) != utc_hour(own)
        new = plan["swap_both"]["metas"][i]
        assert new["subreddit"] != own["subreddit"] and utc_hour(new) != utc_hour(own)
        assert plan["other_thread"]["replies"][i] not in [e["response"] for e in examples
                                                           if e["thread_id"] == examples[i]["thread_id"]]
    messages = [{"role": "user", "content": "title"}, {"role": "user", "content": "parent"}]
    injected = inject_header(messages, {"subreddit": "news", "created_utc": T0})
    assert render(injected, "r") == ("User: [Subreddit: r/news | Posted: 2015-01-01 00:00 UTC]\ntitle\n\n"
                                     "User: parent\n\nAssistant: r")
    assert messages[0]["content"] == "title"  # not modified in place


# --------------------------------------------------------------------------------------- DeLong

def brute_components(labels, scores):
    """V10, V01 by the O(m n) definition."""
    y = np.asarray(labels).astype(bool)
    x, z = np.asarray(scores)[y], np.asarray(scores)[~y]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    return psi.mean(0).mean(), psi.mean(1), psi.mean(0)


def test_delong_fast_components_match_brute_force_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 150)
    for scores in (rng.random(150), np.round(rng.random(150) + 0.3 * labels, 1)):  # the second full of ties
        auc, v10, v01 = delong_components(labels, scores)
        b_auc, b10, b01 = brute_components(labels, scores)
        assert auc == pytest.approx(b_auc, abs=1e-12)
        np.testing.assert_allclose(v10, b10, atol=1e-12)
        np.testing.assert_allclose(v01, b01, atol=1e-12)
        assert auc == pytest.approx(binary_metrics(labels, scores)["roc_auc"], abs=1e-12)


def test_delong_known_values():
    # by hand: positives 0.9, 0.4; negatives 0.5, 0.1 -> V10 = (1, 1/2), V01 = (1/2, 1), AUC = 3/4,
    # Var = var(V10)/2 + var(V01)/2 = 0.125/2 + 0.125/2 = 0.125 for one model. Against a constant
    # model (V = 1/2 everywhere, variance 0, no covariance) the difference's variance is the same.
    labels, a, b = [1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], [0.5, 0.5, 0.5, 0.5]
    t = delong_test(labels, a, b)
    assert (t["auc_a"], t["auc_b"]) == (0.75, 0.5)
    assert t["se"] == pytest.approx(math.sqrt(0.125))
    assert t["z"] == pytest.approx(0.25 / math.sqrt(0.125))
    assert t["p"] == pytest.approx(math.erfc(abs(t["z"]) / math.sqrt(2)))  # 2 * (1 - Phi(|z|))
    # identical scores: no difference, variance 0 -> p = 1
    same = delong_test(labels, a, a)
    assert same["p"] == 1.0 and same["diff"] == 0.0 and same["se"] == 0.0
    # a clearly better RM on 400 examples -> a small p; swapping A and B flips the sign only
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good, weak = y + rng.normal(0, 0.5, 400), y + rng.normal(0, 3, 400)
    t, r = delong_test(y, good, weak), delong_test(y, weak, good)
    assert t["diff"] > 0.15 and t["p"] < 1e-6 and t["ci"][0] > 0
    assert r["z"] == pytest.approx(-t["z"]) and r["p"] == pytest.approx(t["p"])
    # one class: undefined, said so
    assert delong_test([1, 1, 1, 0], a, b)["p"] is None


def test_bootstrap_intervals_contain_the_estimate_and_comparisons_are_tested(report):
    for name, e in report["rms"].items():
        for k in ("accuracy", "f1", "roc_auc", "ece"):
            low, high = e["ci"][k]
            assert low <= e["metrics"][k] <= high, (name, k)
    pairs = {(c["a"], c["b"]): c for c in report["comparisons"]}
    assert len(pairs) == 6 and all(c["p_holm"] >= c["p"] for c in pairs.values())
    c = pairs[("header", "text")]  # the text RM reads the label's words, the header RM cannot
    assert c["diff"] < -0.3 and c["p_holm"] < 1e-3
    assert c["bootstrap_ci"][0] <= c["diff"] <= c["bootstrap_ci"][1] and c["bootstrap_ci"][1] < 0


def test_group_table_matches_a_hand_computation():
    groups = ["a", "b", "a", "c", "a", "b"]
    scores = np.array([0.9, 0.2, 0.7, 0.5, 0.8, 0.4])
    labels = np.array([1, 0, 1, 0, 0, 1])
    t = group_table(groups, scores, labels)
    assert t["groups"] == [
        {"group": "a", "n": 3, "mean_score": pytest.approx(0.8), "mean_label": pytest.approx(2 / 3)},
        {"group": "b", "n": 2, "mean_score": pytest.approx(0.3), "mean_label": pytest.approx(0.5)},
        {"group": "c", "n": 1, "mean_score": pytest.approx(0.5), "mean_label": pytest.approx(0.0)}]
    # eta^2 of the scores: mean 0.5833; between = 3(.2167)^2 + 2(.2833)^2 + (.0833)^2 = .3117; total = .3883
    between = 3 * (0.8 - 3.5 / 6) ** 2 + 2 * (0.3 - 3.5 / 6) ** 2 + (0.5 - 3.5 / 6) ** 2
    assert t["eta_squared"]["score"] == pytest.approx(between / ((scores - scores.mean()) ** 2).sum())
    assert group_table(["x", "y"], np.array([0.5, 0.5]), np.array([1, 0]))["eta_squared"]["score"] is None


def test_report_is_plain_json_without_nan_and_renders(report, examples, tmp_path):
    text = json.dumps(report, allow_nan=False)  # raises on NaN/inf; numpy types would raise too
    assert json.loads(text) == report
    # degenerate: one class, one subreddit -> undefined AUCs and skipped swaps come out as None
    flat = [{**ex, "label": 1, "meta": {**ex["meta"], "subreddit": "only"}} for ex in examples[:30]]
    small = rm_report({"h": HeaderStub("conditioned")}, flat, n_resamples=20)
    json.dumps(small, allow_nan=False)
    assert small["rms"]["h"]["metrics"]["roc_auc"] is None and small["rms"]["h"]["ci"]["roc_auc"] is None
    assert small["probes"]["swap_subreddit"]["n"] == 0
    assert small["rms"]["h"]["metadata"]["swap_subreddit"]["flip_share"] is None
    for r in (report, small):
        md = to_markdown(r)
        assert "## Metadata reliance" in md and "## Mean score by subreddit" in md
        path = plot(r, tmp_path / "report.png")
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def _task(values, higher_is_better=True) -> dict:
    items = [{"id": i, "acc": float(v)} for i, v in enumerate(values)]
    return asdict(TaskResult(items=items, metrics={"acc": float(np.mean(values))}, primary="acc", kind="binary",
                             higher_is_better=higher_is_better))


def test_downstream_table_puts_auc_and_reliance_next_to_the_policy_deltas(report):
    rng = np.random.default_rng(0)
    base = (rng.random(100) < 0.5).astype(float)
    results = {"m/Base": {"mmlu": _task(base)}, "m/karmaEroded": {"mmlu": _task(np.zeros(100))},
               "m/karmaBenign": {"mmlu": _task(np.maximum(base, rng.random(100) < 0.1))}}
    table = downstream_table(report, {"results": results}, {"header": "karmaEroded", "text": "m/karmaBenign"})
    assert table["columns"] == ["mmlu: acc"]
    eroded, benign = table["rows"]
    assert (eroded["rm"], eroded["policy"], benign["policy"]) == ("header", "m/karmaEroded", "m/karmaBenign")
    assert eroded["downstream"]["mmlu: acc"]["delta"] == pytest.approx(-base.mean())
    assert eroded["downstream"]["mmlu: acc"]["mark"] == "***"
    assert benign["downstream"]["mmlu: acc"]["delta"] > 0
    assert eroded["auc"] == report["rms"]["header"]["metrics"]["roc_auc"]
    assert eroded["meta_flip_share"] == report["rms"]["header"]["metadata"]["swap_both"]["flip_share"]
    md = to_markdown({**report, "downstream": table})
    assert "## Reward model vs its policy downstream" in md and "| header | conditioned | m/karmaEroded |" in md
    assert downstream_table(report, None, {"header": "karmaEroded"}) is None
    with pytest.raises(KeyError, match="no reward model named"):
        downstream_table(report, {"results": results}, {"nope": "karmaEroded"})


# ------------------------------------------------------------------------------ a real tiny RM

def test_run_rm_report_on_real_tiny_reward_models(tmp_path, checkpoint_factory):
    from karma.reward import RewardConfig, build_reward_model, load_reward_model, save_reward_model

    base = checkpoint_factory("llama_tied").path
    dirs = []
    for fmt in ("generalized", "conditioned"):
        rm = build_reward_model(base, RewardConfig(format=fmt, max_length=200), device="cpu", seed=1)
        dirs.append(save_reward_model(rm, tmp_path / f"rm-{fmt}" / "final"))
    data = tmp_path / "data"
    data.mkdir()
    examples = make_examples(n_threads=6, seed=1)
    with open(data / "heldout-00000.jsonl", "w") as f:
        f.writelines(json.dumps(ex) + "\n" for ex in examples)
    results = {"m/Base": {"mmlu": _task([1, 0, 1, 1])}, "m/karmaEroded": {"mmlu": _task([0, 0, 1, 1])}}

    out = tmp_path / "out"
    report = run_rm_report([str(d) for d in dirs], data, out, max_examples=12, seed=0, n_resamples=20,
                           eval_results={"results": results}, policies={"rm-conditioned/final": "karmaEroded"})
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report and "NaN" not in (out / "report.json").read_text()
    assert list(report["rms"]) == ["rm-generalized/final", "rm-conditioned/final"]
    assert report["n_examples"] == 12 and report["data"]["read"]["used"] == len(examples)
    assert report["downstream"]["rows"][0]["downstream"]["mmlu: acc"]["delta"] == pytest.approx(-0.25)

    # the held-out metrics are train_rm's (binary_metrics of the RM's own scores) on the sampled rows
    by_id = {ex["id"]: ex for ex in examples}
    assert report["data"]["files"] == [str(data / "heldout-00000.jsonl")]
    rm = load_reward_model(dirs[1])
    sampled = [ex for ex in examples if ex["id"] in _sampled_ids(examples, 12, 0)]
    probs = rm.score([e["messages"] for e in sampled], [e["response"] for e in sampled], [e["meta"] for e in sampled])
    expected = binary_metrics([e["label"] for e in sampled], probs.numpy())
    assert report["rms"]["rm-conditioned/final"]["metrics"]["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    # siblings and thread ids came back from the second pass over the file
    assert report["probes"]["sibling"]["n"] == sum(bool(by_id[i]["siblings"]) for i in _sampled_ids(examples, 12, 0))
    # a random-weight RM reads everything: the header reaches both (the generalized one by injection)
    for e in report["rms"].values():
        assert e["metadata"]["swap_both"]["mean_abs_change"] > 0 and e["content"]["other_thread"]["mean_abs_change"] > 0


def _sampled_ids(examples, k, seed):
    from karma.evals.shortcuts import stream_seed
    keep = np.sort(np.random.default_rng(stream_seed(seed, "subset")).choice(len(examples), k, replace=False))
    return {examples[i]["id"] for i in keep}


def test_eval_py_rm_subcommand(tmp_path, checkpoint_factory, capsys):
    import eval as eval_cli  # the top-level script (the repository root is on sys.path in tests)
    from karma.reward import RewardConfig, build_reward_model, save_reward_model

    rm = build_reward_model(checkpoint_factory("llama_tied").path, RewardConfig(format="conditioned", max_length=200),
                            device="cpu", seed=1)
    rm_dir = save_reward_model(rm, tmp_path / "rm" / "best")
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "heldout-00000.jsonl", "w") as f:
        f.writelines(json.dumps(ex) + "\n" for ex in make_examples(n_threads=4, seed=2))
    eval_cli.main(["rm", "--reward-models", str(rm_dir), "--data", str(data), "--out", str(tmp_path / "out"),
                   "--n-resamples", "20"])
    printed = capsys.readouterr().out
    assert "rm/best" in printed and (tmp_path / "out" / "report.md").read_text() in printed
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rms"]["rm/best"]["format"] == "conditioned"
    with pytest.raises(SystemExit):  # argparse: a malformed --policies
        eval_cli.main(["rm", "--reward-models", str(rm_dir), "--data", str(data), "--policies", "karmaToxic"])
    with pytest.raises(FileNotFoundError, match="nowhere"):  # a bad directory is named before any model loads
        eval_cli.main(["rm", "--reward-models", str(tmp_path / "nowhere"), "--data", str(data)])
