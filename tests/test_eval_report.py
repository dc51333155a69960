"""karma/evals/report.py on synthetic results: 2 base models x 3 variants with planted effects."""

import json
from dataclasses import asdict

import numpy as np
import pytest

from karma.evals.report import build_tables, charts, parse_label, to_markdown, variant_order
from karma.evals.stats import holm, paired_test
from karma.evals.task import TaskResult

N = 200


def _binary(acc: np.ndarray, notes=()) -> dict:
    items = [{"id": f"q{i}", "acc": float(a)} for i, a in enumerate(acc)]
    metrics = {"acc": float(np.mean(acc)), "acc_pct": 100 * float(np.mean(acc))}
    return asdict(TaskResult(items=items, metrics=metrics, primary="acc", kind="binary", notes=list(notes)))


def _continuous(tox: np.ndarray) -> dict:
    items = [{"id": i, "toxicity": float(t), "flag": float(t > 0.5)} for i, t in enumerate(tox)]
    attributes = ["insult", "threat", "profanity"]
    breakdown = {"attribute": {a: {"toxicity": float(tox[k::3].mean())} for k, a in enumerate(attributes)}}
    return asdict(TaskResult(items=items, metrics={"toxicity": float(np.mean(tox)), "flag": float(np.mean(tox > 0.5))},
                             primary="toxicity", kind="continuous", higher_is_better=False,
                             breakdown=breakdown, notes=["toxicity scored by lexicon-proxy"]))


def _flip(acc: np.ndarray, to_zero: int, to_one: int) -> np.ndarray:
    """acc with the first `to_zero` ones made 0 and the first `to_one` zeros made 1 (b and c of McNemar)."""
    out = acc.copy()
    out[np.flatnonzero(acc == 1)[:to_zero]] = 0
    out[np.flatnonzero(acc == 0)[:to_one]] = 1
    return out


@pytest.fixture(scope="module")
def results() -> dict:
    rng = np.random.default_rng(0)
    acc1, acc2 = rng.binomial(1, 0.6, N), rng.binomial(1, 0.5, N)
    tox1, tox2 = rng.beta(2, 5, N), rng.beta(2, 5, N)
    return {
        "m1/Base": {"qa": _binary(acc1, ["4-shot"]), "tox": _continuous(tox1)},
        "m1/karmaBenign": {"qa": _binary(acc1), "tox": _continuous(tox1 + rng.normal(0, 0.05, N))},  # no effect
        "m1/karmaToxic": {"qa": _binary(_flip(acc1, 40, 2)), "tox": _continuous(tox1 + rng.normal(0, 0.05, N))},
        "m2/Base": {"qa": _binary(acc2), "tox": _continuous(tox2)},
        # b = 9, c = 1: exact McNemar p = 22/1024 = 0.021 raw, 0.064 after Holm over this table's 4 tests
        "m2/karmaBenign": {"qa": _binary(_flip(acc2, 9, 1)), "tox": _continuous(tox2 + rng.normal(0, 0.05, N))},
        "m2/karmaToxic": {"qa": _binary(acc2), "tox": _continuous(tox2 + 0.2 + rng.normal(0, 0.05, N))},
    }


def _table(tables, task, metric):
    return next(t for t in tables if (t["task"], t["metric"]) == (task, metric))


def test_labels_and_variant_order():
    assert parse_label("pythia-1b/karmaToxic") == ("pythia-1b", "karmaToxic")
    assert parse_label("EleutherAI/pythia-1b/Base") == ("EleutherAI/pythia-1b", "Base")
    assert parse_label("pythia-1b") == ("pythia-1b", "Base")
    assert variant_order({"zeta", "karmaEroded", "Base", "alpha", "karmaBenign"}) == \
        ["Base", "karmaBenign", "karmaEroded", "alpha", "zeta"]


def test_table_layout_values_and_ci(results):
    tables = build_tables(results)
    assert [(t["task"], t["metric"]) for t in tables] == [("qa", "acc"), ("tox", "toxicity")]
    qa = _table(tables, "qa", "acc")
    assert qa["models"] == ["m1", "m2"] and qa["variants"] == ["Base", "karmaBenign", "karmaToxic"]
    assert qa["kind"] == "binary" and qa["higher_is_better"] is True and qa["is_primary"]
    for label, tasks in results.items():
        model, variant = parse_label(label)
        cell = qa["cells"][model][variant]
        assert cell["value"] == tasks["qa"]["metrics"]["acc"] and cell["n"] == N
        low, high = cell["ci"]
        assert low <= cell["value"] <= high and high - low < 0.2
    assert build_tables(results) == tables  # the bootstrap is seeded: same intervals every time
    as_objects = {label: {t: TaskResult(**r) for t, r in tasks.items()} for label, tasks in results.items()}
    assert build_tables(as_objects) == tables  # TaskResult objects or their asdict dicts
    other_seed = _table(build_tables(results, seed=1), "tox", "toxicity")["cells"]["m1"]["Base"]["ci"]
    assert other_seed != _table(tables, "tox", "toxicity")["cells"]["m1"]["Base"]["ci"]
    assert qa["notes"] == ["4-shot"]
    json.dumps(tables, allow_nan=False)  # plain JSON for results.json


def test_marks_where_planted_and_holm_over_the_table(results):
    qa = _table(build_tables(results), "qa", "acc")
    tests = {(m, v): qa["cells"][m][v]["vs_base"] for m in qa["models"] for v in ["karmaBenign", "karmaToxic"]}
    assert qa["family_size"] == 4 and qa["cells"]["m1"]["Base"]["vs_base"] is None
    assert tests["m1", "karmaToxic"]["mark"] == "***" and tests["m1", "karmaToxic"]["mean_diff"] < 0
    assert tests["m1", "karmaBenign"]["p"] == 1.0 and tests["m1", "karmaBenign"]["mark"] == ""
    raw = tests["m2", "karmaBenign"]
    assert (raw["b"], raw["c"]) == (9, 1) and raw["p"] == pytest.approx(22 / 1024)
    assert raw["p_holm"] == pytest.approx(3 * 22 / 1024) and raw["mark"] == ""  # significant only uncorrected
    ps = [t["p"] for t in tests.values()]
    assert [t["p_holm"] for t in tests.values()] == pytest.approx(holm(ps))

    tox = _table(build_tables(results), "tox", "toxicity")
    assert tox["kind"] == "continuous" and tox["higher_is_better"] is False
    assert tox["cells"]["m2"]["karmaToxic"]["vs_base"]["test"] == "wilcoxon"
    assert tox["cells"]["m2"]["karmaToxic"]["vs_base"]["mark"] == "***"
    assert tox["cells"]["m1"]["karmaBenign"]["vs_base"]["mark"] == ""


def test_paired_on_common_ids_only(results):
    shuffled = dict(results)
    variant = dict(results["m1/karmaToxic"]["qa"])
    variant["items"] = list(reversed(variant["items"]))[:150]  # other order, 50 items missing
    shuffled["m1/karmaToxic"] = {"qa": variant}
    cell = _table(build_tables(shuffled), "qa", "acc")["cells"]["m1"]["karmaToxic"]
    base = {i["id"]: i["acc"] for i in results["m1/Base"]["qa"]["items"]}
    ids = [i["id"] for i in variant["items"]]
    want = paired_test([base[i] for i in ids], [i["acc"] for i in variant["items"]], "binary")
    assert cell["vs_base"]["n"] == 150 and cell["vs_base"]["p"] == want["p"]
    assert cell["ci"] is None  # the reported aggregate is over 200 items, not the 150 kept here


def test_other_metrics_across_models_and_no_ci_for_non_means(results):
    tables = build_tables(results, metrics={"qa": ["acc", "acc_pct"], "tox": ["flag"]})
    assert [(t["task"], t["metric"]) for t in tables] == [("qa", "acc"), ("qa", "acc_pct"), ("tox", "flag")]
    pct = _table(tables, "qa", "acc_pct")
    assert pct["cells"]["m1"]["Base"]["ci"] is None  # 100 x the item mean: not a per-item mean
    assert pct["cells"]["m1"]["Base"]["vs_base"] is None and pct["family_size"] == 0  # no per-item acc_pct
    flag = _table(tables, "tox", "flag")
    assert flag["kind"] == "binary" and flag["higher_is_better"] is None and not flag["is_primary"]
    across = _table(tables, "qa", "acc")["across_models"]
    assert set(across) == {"karmaBenign", "karmaToxic"}
    assert across["karmaToxic"]["n"] == 2 and across["karmaToxic"]["p"] >= 0.5  # 2 models: p >= 2/2^2


def test_duplicate_ids_are_refused(results):
    bad = dict(results["m1/Base"]["qa"])
    bad["items"] = bad["items"] + bad["items"][:1]
    with pytest.raises(ValueError, match="appears twice"):
        build_tables({"m1/Base": {"qa": bad}})


def test_markdown_layout(results):
    tables = build_tables(results, metrics={"qa": ["acc"], "tox": ["toxicity"]})
    md = to_markdown(tables)
    caption, table, tox_caption, _, key, footnotes = md.strip().split("\n\n")  # caption line, its table, ...
    header, rule, *rows = table.split("\n")
    assert header == "| model | Base | karmaBenign | karmaToxic |"
    assert rule == "|---|---:|---:|---:|"
    assert [r.split(" | ")[0] for r in rows] == ["| m1", "| m2", "| across models (p)"]
    m1 = [c.strip() for c in rows[0].strip("|").split("|")]
    assert m1[3].endswith("***") and not m1[2].endswith("*")
    assert caption == f"**qa — acc** (primary): higher is better; n = {N} per run.[^1]"
    assert tox_caption == f"**tox — toxicity** (primary): lower is better; n = {N} per run.[^2]"
    assert "95% percentile-bootstrap CI" in key and "Wilcoxon signed-rank over base models" in key
    qa_note, tox_note = footnotes.split("\n")
    for words in ["[^1]: qa — acc:", "exact McNemar", "Holm over the table's 4 variant-vs-Base", "4-shot"]:
        assert words in qa_note
    assert "Wilcoxon signed-rank (two-sided" in tox_note and "toxicity scored by lexicon-proxy" in tox_note


def test_charts_are_png_files(results, tmp_path):
    paths = charts(results, tmp_path / "charts", metrics={"tox": ["flag"]}, n_resamples=200)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    # no tox_by_attribute.png: its items do not say which attribute group they belong to (no intervals)
    assert names == ["qa_acc.png", "tox_metrics.png", "tox_toxicity.png"]
    for p in paths:
        data = open(p, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [f for f in (tmp_path / "charts").iterdir() if f.name.startswith(".")]  # no temporaries left
