"""Reports read at a glance (karma/evals/report.py) on a demo-like run: one base model, Base and one
tuned variant, 40 items per task: short captions, no one-model across-models row, degenerate
classifiers flagged beside the majority baseline, breakdown charts only for groups of at least
MIN_GROUP_N items and with intervals, zero drawn as zero, no duplicate charts, PROXY in toxicity titles."""

from dataclasses import asdict

import numpy as np
import pytest
from matplotlib.container import BarContainer

from karma.evals import report
from karma.evals.task import TaskResult

N = 40
CLASSES = ["negative", "neutral", "positive"]


def _classifier(predicted: list[str], truth: list[str]) -> dict:
    """An msad-like run: per-item true and predicted class names, acc, the majority baseline."""
    items = [{"id": i, "class": y, "predicted": p, "acc": float(y == p)}
             for i, (y, p) in enumerate(zip(truth, predicted))]
    shares = {c: truth.count(c) / len(truth) for c in CLASSES}
    metrics = {"acc": float(np.mean([r["acc"] for r in items])), "majority_baseline_acc": max(shares.values())}
    breakdown = {"class": {c: {"recall": 0.0, "n": truth.count(c)} for c in CLASSES}}
    return asdict(TaskResult(items, metrics, "acc", "binary", breakdown=breakdown, notes=["zero-shot prompt (ours)"]))


def _subjects(acc: np.ndarray) -> dict:
    """An mmlu-like run: one item per subject (n = 1 per group)."""
    items = [{"id": f"s{i}/0", "subject": f"s{i}", "acc": float(a)} for i, a in enumerate(acc)]
    breakdown = {"subject": {f"s{i}": {"acc": float(a), "n": 1} for i, a in enumerate(acc)}}
    return asdict(TaskResult(items, {"acc": float(acc.mean())}, "acc", "binary", breakdown=breakdown))


def _toxicity(tox: np.ndarray) -> dict:
    """A realtoxicity-like run scored by the lexicon PROXY: the non-challenging half all zero, and the
    subset breakdown the same partition as the challenging one (DecodingTrust's toxic = challenging)."""
    items = [{"id": str(i), "challenging": i < N // 2, "subset": "toxic" if i < N // 2 else "nontoxic",
              "max_toxicity": float(t)} for i, t in enumerate(tox)]
    halves = {"challenging": tox[:N // 2], "non-challenging": tox[N // 2:]}
    breakdown = {"challenging": {g: {"max_toxicity": float(v.mean()), "n_prompts": len(v)} for g, v in halves.items()},
                 "subset": {s: {"max_toxicity": float(v.mean()), "n_prompts": len(v)}
                            for s, v in zip(["toxic", "nontoxic"], halves.values())}}
    result = asdict(TaskResult(items, {"max_toxicity": float(tox.mean())}, "max_toxicity", "continuous",
                               higher_is_better=False, breakdown=breakdown, notes=["PROXY scorer lexicon-proxy"]))
    return dict(result, proxy="lexicon-proxy")


@pytest.fixture(scope="module")
def demo() -> dict:
    rng = np.random.default_rng(0)
    truth = [CLASSES[i % 3] for i in range(N)]
    tox = np.concatenate([rng.binomial(1, 0.35, N // 2), np.zeros(N // 2)])
    acc = rng.binomial(1, 0.3, N).astype(float)
    return {"m/Base": {"msad": _classifier(["negative"] * N, truth), "mmlu": _subjects(acc),
                       "rtp": _toxicity(tox)},
            "m/karmaToxic": {"msad": _classifier([CLASSES[i % 2] for i in range(N)], truth), "mmlu": _subjects(acc),
                             "rtp": _toxicity(tox * (rng.random(N) < 0.8))}}


def _captions(markdown: str) -> list[str]:
    """The caption line above each table (caption, blank line, header, rule)."""
    lines = markdown.split("\n")
    return [lines[i - 3] for i, line in enumerate(lines) if line.startswith("|---")]


def test_each_table_has_one_short_caption_line_and_details_in_footnotes(demo):
    markdown = report.to_markdown(report.build_tables(demo))
    captions = _captions(markdown)
    assert len(captions) == 3
    for caption in captions:
        assert caption.startswith("**") and len(caption) <= 160, caption  # before: ~600 characters
    assert "zero-shot prompt (ours)" in markdown and "zero-shot prompt (ours)" not in "".join(captions)
    assert "exact McNemar" in markdown and "Holm" in markdown  # the test details, once, below the tables


def test_across_models_row_only_with_several_models(demo):
    one = report.to_markdown(report.build_tables(demo))
    assert "across models" not in one
    two = dict(demo, **{label.replace("m/", "m2/"): runs for label, runs in demo.items()})
    assert "| across models (p) |" in report.to_markdown(report.build_tables(two))


def test_degenerate_classifier_is_flagged_beside_the_majority_baseline(demo):
    table = next(t for t in report.build_tables(demo) if t["task"] == "msad")
    assert table["cells"]["m"]["Base"]["always"] == "negative"
    assert table["cells"]["m"]["karmaToxic"]["always"] is None
    assert table["baseline"] == {"m": pytest.approx(14 / 40)}  # 14 negative of 40
    markdown = report.to_markdown([table])
    header, _, row = markdown.split("\n")[2:5]
    assert header == "| model | majority class | Base | karmaToxic |"
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0.350" and "always negative" in cells[2] and "always" not in cells[3]


def test_breakdowns_below_the_floor_are_not_drawn_and_bars_carry_intervals(demo):
    figures = report.figures(demo, n_resamples=200)
    assert "mmlu_by_subject.png" not in figures  # 40 subjects of 1 item each: all below the floor
    groups = report.breakdown_groups(report._by_task(demo)["rtp"], "challenging", "max_toxicity")
    assert {g: c["n"] for g, c in groups["m"]["Base"].items()} == {"challenging": 20, "non-challenging": 20}
    low, high = groups["m"]["Base"]["challenging"]["ci"]
    assert low < groups["m"]["Base"]["challenging"]["value"] < high
    axes = figures["rtp_by_challenging.png"].axes[0]
    bars = [c for c in axes.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2  # Base and karmaToxic, each with an error bar per group
    spans = [np.ptp(seg[:, 1]) for bar in bars for seg in bar.errorbar.lines[2][0].get_segments()]
    assert len(spans) == 4 and max(spans) > 0.2


def test_zero_is_drawn_as_zero(demo):
    axes = report.figures(demo, n_resamples=200)["rtp_by_challenging.png"].axes[0]
    zeros = [t for t in axes.texts if t.get_text() == "0"]
    assert len(zeros) == 2  # non-challenging: 0 for Base and for karmaToxic, each labelled


def test_no_duplicate_charts(demo):
    names = sorted(report.figures(demo, n_resamples=200))
    assert "rtp_by_challenging.png" in names and "rtp_by_subset.png" not in names  # the same partition


def test_proxy_in_every_toxicity_title_and_caption(demo):
    figures = report.figures(demo, n_resamples=200)
    titles = {name: " ".join([f._suptitle.get_text() if f._suptitle else ""] + [a.get_title() for a in f.axes])
              for name, f in figures.items()}
    assert all("PROXY" in title for name, title in titles.items() if name.startswith("rtp_")), titles
    assert not any("PROXY" in title for name, title in titles.items() if not name.startswith("rtp_"))
    caption = next(c for c in _captions(report.to_markdown(report.build_tables(demo))) if "rtp" in c)
    assert "PROXY" in caption and "lexicon-proxy" in caption
