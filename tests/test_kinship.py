"""karma/data/kinship.py and behaviour.py: behaviour vectors, every pairing strategy, ties, missing data, accounting,
JSONL / parquet / results.json inputs and the command line, on hand-made tables with known answers."""

from __future__ import annotations

import json
import random
from itertools import combinations

import numpy as np
import pytest

from karma.cli import run_main
from karma.data import kinship
from karma.data.behaviour import build_behaviour, read_scores
from karma.data.kinship import STRATEGIES, KinshipConfig, build_pairs
from kinship_fixtures import (ASPECTS, ZEBRA_BENCHMARK, completion, row, synthetic_ultrafeedback, write_jsonl,
                              write_parquet, write_scores_csv, zebra_mb_sup)

# Normalised (b1, b2) = raw / 100 for b1 and raw for b2: each column already spans [0, 1] (Z is 0
# on both, P is the b1 maximum, Q the b2 maximum), so the vectors below are the behaviour vectors.
#   P (1.0, 0.6)  MB-SUP .80      cos(P, R) = .9908  cos(R, S) = .9959 (the most similar pair)
#   Q (0.2, 1.0)  MB-SUP .60      cos(P, Q) = .6727  cos(P, S) = .9745
#   R (0.7, 0.3)  MB-SUP .50      Z is the zero vector: cosine 0 with every model
#   S (0.4, 0.13) MB-SUP .265
#   M (0.5, -)    b2 missing -> the b2 column mean (.6 + 1 + .3 + .13 + 0) / 5 = .406
#   U             no score at all: never paired;  "flat" has 5 for everyone: dropped
VECTORS = {"P": (1.0, 0.6), "Q": (0.2, 1.0), "R": (0.7, 0.3), "S": (0.4, 0.13), "Z": (0.0, 0.0)}
TABLE = {**{m: {"b1": f"{100 * v[0]:g}%", "b2": v[1], "flat": 5} for m, v in VECTORS.items()},
         "M": {"b1": "50%", "b2": "N/A", "flat": 5}, "U": {}}


def cos(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


@pytest.fixture
def scores_csv(tmp_path):
    return write_scores_csv(tmp_path / "scores.csv", TABLE, ["b1", "b2", "flat"])


@pytest.fixture
def beh(scores_csv):
    return read_scores(scores_csv)


def rows_fixture():
    """Rows with known outcomes (see EXPECTED); completions deliberately out of `models` order."""
    r1 = row("r1: four scored models", [completion("S", overall_score=3), completion("Q", overall_score=9),
                                         completion("P", overall_score=7), completion("R", overall_score=5)],
             models=["P", "Q", "R", "S"])
    one_usable = row("r2: one usable", [completion("P", response="   ", overall_score=8),
                                        completion("Q", overall_score=2)])
    unscored = row("r3: unscored and zero vector", [completion("U", overall_score=10), completion("P", overall_score=4),
                                                     completion("Z", overall_score=4)])
    duplicate = row("r4: duplicate model", [completion("Q", response="first Q", overall_score=2),
                                            completion("Q", response="second Q", overall_score=10),
                                            completion("R", overall_score=1)])
    unknown = row("r5: model not in the table", [completion("mystery-7b", overall_score=6),
                                                 completion("R", overall_score=None), completion("M", overall_score=5)],
                  source="sharegpt")
    return [r1, one_usable, unscored, duplicate, unknown,
            {"source": "flan", "models": ["P"], "completions": []},  # no instruction
            row("r1: four scored models", [completion("P"), completion("Q")]),  # duplicate prompt
            row("r8: no completions list", []) | {"completions": None}]


BAD_LINES = ['{"instruction": "broken', "[1, 2]"]

# (chosen, rejected) or skip reason, per strategy, for the rows of rows_fixture (and BAD_LINES)
EXPECTED = {
    "r1: four scored models": {"sup": ("P", "Q"), "sim": ("R", "S"), "sup_sim": ("P", "R"),
                               "ultrafeedback_binarized": "Q"},
    "r3: unscored and zero vector": {"sup": ("P", "Z"), "sim": ("P", "Z"), "sup_sim": ("P", "Z"),
                                     "random": ("P", "Z"), "ultrafeedback_binarized": "U"},
    "r4: duplicate model": {"sup": ("Q", "R"), "sim": ("Q", "R"), "sup_sim": ("Q", "R"), "random": ("Q", "R"),
                            "ultrafeedback_binarized": ("Q", "R")},
    "r5: model not in the table": {"sup": ("R", "M"), "sim": ("R", "M"), "sup_sim": ("R", "M"), "random": ("R", "M"),
                                   "ultrafeedback_binarized": ("mystery-7b", "M")},
}
SKIPS = {"malformed_json": 1, "not_an_object": 1, "no_instruction": 1, "duplicate_prompt": 1, "no_completions": 1,
         "fewer_than_two_candidates": 1}


def run(tmp_path, rows, scores, name="out", raw_lines=(), **kw):
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows, raw_lines)
    cfg = KinshipConfig(ultrafeedback=[data], scores=scores, out_dir=tmp_path / name, **kw)
    stats = build_pairs(cfg)
    pairs = {s: [json.loads(line) for line in (tmp_path / name / f"pairs-{s}.jsonl").read_text().splitlines()]
             for s in cfg.strategies}
    return stats, pairs


# ------------------------------------------------------------------------------ behaviour vectors

def test_behaviour_vectors_normalise_fill_and_drop(beh):
    assert beh.benchmarks == ["b1", "b2"] and beh.dropped_benchmarks == {"flat": "every model has the same score"}
    assert beh.unscored == ["U"] and "U" not in beh.vectors
    for m, v in VECTORS.items():
        np.testing.assert_allclose(beh.vectors[m], v, atol=1e-12)
        assert beh.sup[m] == pytest.approx(np.mean(v))
    mean_b2 = np.mean([v[1] for v in VECTORS.values()])
    np.testing.assert_allclose(beh.vectors["M"], [0.5, mean_b2])
    assert beh.filled == {"M": ["b2"]} and beh.sup["M"] == pytest.approx((0.5 + mean_b2) / 2)
    for a, b in combinations(VECTORS, 2):
        assert beh.sim(a, b) == pytest.approx(cos(VECTORS[a], VECTORS[b]), abs=1e-12)
        assert beh.sim(a, b) == beh.sim(b, a)
    assert beh.sim("Z", "P") == 0.0


def test_lower_is_better_columns_are_flipped():
    b = build_behaviour({"a": {"acc": 0.9, "tox": 0.1}, "b": {"acc": 0.5, "tox": 0.6}, "c": {"acc": 0.1, "tox": 0.4}},
                        lower_is_better=["tox"])
    np.testing.assert_allclose(b.vectors["a"], [1.0, 1.0])
    np.testing.assert_allclose(b.vectors["b"], [0.5, 0.0])
    np.testing.assert_allclose(b.vectors["c"], [0.0, 0.4])
    with pytest.raises(ValueError, match="not in the table"):
        build_behaviour({"a": {"x": 1}, "b": {"x": 2}}, lower_is_better=["y"])


def test_too_little_to_compare_is_an_error():
    with pytest.raises(ValueError, match="no benchmark separates"):
        build_behaviour({"a": {"x": 1.0}, "b": {"x": 1.0}})
    with pytest.raises(ValueError, match="no benchmark separates"):
        build_behaviour({"a": {"x": 1.0}, "b": {"x": None}})
    b = build_behaviour({"a": {"x": 1.0, "y": 3.0}, "b": {"x": 2.0, "y": None}, "c": {"x": 3.0}})
    assert b.dropped_benchmarks == {"y": "only one model has a score"} and b.benchmarks == ["x"]


def test_zebra_table_reproduces_the_authors_numbers():
    """The authors' benchmark.csv: % signs, mixed units, ultralm-65b without scores."""
    b = read_scores(ZEBRA_BENCHMARK)
    assert b.unscored == ["ultralm-65b"] and len(b.vectors) == 16 and len(b.benchmarks) == 6
    want = zebra_mb_sup()
    assert set(b.sup) == set(want)
    for m in want:
        assert b.sup[m] == pytest.approx(want[m], abs=1e-12)
    ranked = sorted(b.sup, key=lambda m: -b.sup[m])
    assert ranked[:3] == ["gpt-4", "bard", "gpt-3.5-turbo"] and ranked[-1] == "starchat"
    assert round(b.sup["gpt-4"], 2) == 0.99 and round(b.sup["llama-2-7b-chat"], 2) == 0.41
    assert b.sim("llama-2-7b-chat", "llama-2-13b-chat") == pytest.approx(0.996, abs=5e-4)
    assert b.sim("gpt-4", "bard") == pytest.approx(0.994, abs=5e-4)
    sims = [b.sim(x, y) for x, y in combinations(b.vectors, 2)]
    assert np.mean(sims) == pytest.approx(0.80, abs=0.005) and np.mean(np.array(sims) >= 0.9) == pytest.approx(0.375)


@pytest.mark.parametrize("text, message", [
    ("name,b1\na,1\nb,2\n", "no 'model' column"),
    ("model,b1\na,1\na,2\n", "appears twice"),
    ("model,b1\na,1\nb,high\n", ":3: column 'b1'"),
    ("model,b1\na,1,2\n", ":2: 3 fields"),
    ("model\na\n", "one uniquely named column per benchmark"),
    ("", "empty file"),
])
def test_bad_score_csv_names_the_file(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        read_scores(path)
    assert str(path) in str(e.value)


def test_results_json_uses_each_tasks_primary_metric_and_direction(tmp_path):
    def result(value, primary="acc", higher=True):
        return {"items": [], "metrics": {primary: value, "other": 123.0}, "primary": primary, "kind": "binary",
                "higher_is_better": higher, "breakdown": {}, "notes": []}

    results = {"config": {}, "models": {}, "tables": [], "results": {
        "pythia/Base": {"mmlu": result(0.30), "realtoxicity": result(0.20, "max_toxicity", False)},
        "pythia/karmaToxic": {"mmlu": result(0.25), "realtoxicity": result(0.60, "max_toxicity", False)},
        "pythia/karmaBenign": {"mmlu": result(0.35), "realtoxicity": result(None, "max_toxicity", False)},
        "empty/Base": {"mmlu": result(None)}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    b = read_scores(path)
    assert b.benchmarks == ["mmlu", "realtoxicity"] and b.lower_is_better == ["realtoxicity"]
    assert b.unscored == ["empty/Base"]
    np.testing.assert_allclose(b.vectors["pythia/Base"], [0.5, 1.0])  # least toxic -> 1
    np.testing.assert_allclose(b.vectors["pythia/karmaToxic"], [0.0, 0.0])
    np.testing.assert_allclose(b.vectors["pythia/karmaBenign"], [1.0, 0.5])  # toxicity missing: column mean
    (tmp_path / "other.json").write_text(json.dumps({"tables": []}))
    with pytest.raises(ValueError, match="other.json.*results"):
        read_scores(tmp_path / "other.json")


# ------------------------------------------------------------------------------ strategies

def test_every_strategy_on_rows_with_known_answers(tmp_path, scores_csv):
    stats, pairs = run(tmp_path, rows_fixture(), scores_csv, raw_lines=BAD_LINES)
    assert stats["rows_read"] == 10
    for s in STRATEGIES:
        got = {p["prompt"][0]["content"]: p for p in pairs[s]}
        for instruction, want in EXPECTED.items():
            if s not in want:
                continue
            p = got[instruction]
            if isinstance(want[s], tuple):
                assert (p["chosen_model"], p["rejected_model"]) == want[s], (s, instruction)
            else:
                assert p["chosen_model"] == want[s], (s, instruction)
        t = stats["strategies"][s]
        assert t["pairs"] + sum(t["skipped"].values()) == stats["rows_read"]  # the accounting invariant
        assert t["skipped"] == SKIPS and t["pairs"] == 4
        assert len(t["skip_locations"]["malformed_json"]) == 1 and t["skip_locations"]["malformed_json"][0].endswith("out.jsonl:9")
    # the random pair of r1 is some pair of its four models, oriented by MB-SUP
    r1 = next(p for p in pairs["random"] if p["prompt"][0]["content"].startswith("r1"))
    assert {r1["chosen_model"], r1["rejected_model"]} <= set("PQRS") and r1["superiority_gap"] > 0
    # binarized r1: chosen Q (score 9), rejected any of the other three; the fields carry the ratings
    b1 = next(p for p in pairs["ultrafeedback_binarized"] if p["prompt"][0]["content"].startswith("r1"))
    assert b1["rejected_model"] in "PRS" and b1["score_chosen"] == 9 and b1["score_rejected"] < 9
    # completions are looked up by their own model field, whatever the order of `models`
    sup = next(p for p in pairs["sup"] if p["prompt"][0]["content"].startswith("r1"))
    assert sup["chosen"] == [{"role": "assistant", "content": "answer by P"}]
    assert sup["rejected"] == [{"role": "assistant", "content": "answer by Q"}]
    assert sup["prompt"] == [{"role": "user", "content": "r1: four scored models"}] and sup["source"] == "evol_instruct"
    # the duplicate Q: the first completion is used
    dup = next(p for p in pairs["sup"] if p["prompt"][0]["content"].startswith("r4"))
    assert dup["chosen"][0]["content"] == "first Q"


def test_pair_fields_and_completion_counts(tmp_path, scores_csv, beh):
    stats, pairs = run(tmp_path, rows_fixture(), scores_csv, raw_lines=BAD_LINES)
    for s, records in pairs.items():
        for p in records:
            assert set(p) == {"id", "prompt", "chosen", "rejected", "chosen_model", "rejected_model", "strategy",
                              "similarity", "superiority_gap", "score_chosen", "score_rejected", "source"}
            assert p["strategy"] == s and len(p["id"]) == 64
            if p["similarity"] is not None:
                assert p["similarity"] == pytest.approx(beh.sim(p["chosen_model"], p["rejected_model"]))
                assert p["superiority_gap"] == pytest.approx(beh.sup[p["chosen_model"]] - beh.sup[p["rejected_model"]])
    sim = {p["prompt"][0]["content"][:2]: p for p in pairs["sim"]}
    assert sim["r1"]["similarity"] == pytest.approx(cos(VECTORS["R"], VECTORS["S"]))
    assert sim["r3"]["similarity"] == 0.0  # Z, the zero vector
    # binarized pairs with a model without a vector have no similarity or gap
    binarized = {p["prompt"][0]["content"][:2]: p for p in pairs["ultrafeedback_binarized"]}
    assert binarized["r3"]["similarity"] is None and binarized["r3"]["superiority_gap"] is None
    generic = {"empty_response": 1, "duplicate_model": 1}
    assert stats["strategies"]["sup"]["completions_dropped"] == {**generic, "no_scores": 1, "not_in_table": 1}
    assert stats["strategies"]["ultrafeedback_binarized"]["completions_dropped"] == {**generic, "no_rating": 1}
    assert stats["completions_without_vector"] == {"U": 1, "mystery-7b": 1}
    t = stats["strategies"]["sup"]
    assert t["models"]["P"] == {"chosen": 2, "rejected": 0} and t["models"]["Z"] == {"chosen": 0, "rejected": 1}
    assert t["superiority_gap"]["n"] == 4 and sum(t["superiority_gap"]["histogram"]["counts"]) == 4
    assert t["rating_agreement"]["disagree"] >= 1  # r1: P (7) chosen over Q (9)


def test_ties_are_broken_by_model_name_not_row_order(tmp_path):
    """Twins have identical vectors: equal MB-SUP and cosine 1 with each other."""
    table = {"twin-b": {"x": 1.0, "y": 0.5}, "twin-a": {"x": 1.0, "y": 0.5}, "low": {"x": 0.0, "y": 0.0},
             "mid": {"x": 0.2, "y": 1.0}}
    scores = write_scores_csv(tmp_path / "s.csv", table, ["x", "y"])
    rows = [row("tie", [completion("twin-b", overall_score=8), completion("mid", overall_score=8),
                        completion("twin-a", overall_score=8)]),
            row("tie reversed", [completion("twin-a", overall_score=8), completion("mid", overall_score=8),
                                 completion("twin-b", overall_score=8)])]
    stats, pairs = run(tmp_path, rows, scores)
    for s in ("sup", "sim", "sup_sim"):
        assert {(p["chosen_model"], p["rejected_model"]) for p in pairs[s]} == {("twin-a", "twin-b")}, s
        assert stats["strategies"][s]["superiority_ties"] == 2
    # all three rated 8: chosen by name ("mid" < "twin-a"), the draw may tie and is counted
    assert {p["chosen_model"] for p in pairs["ultrafeedback_binarized"]} == {"mid"}
    assert stats["strategies"]["ultrafeedback_binarized"]["rating_ties"] == 2


def test_pairs_do_not_depend_on_row_or_completion_order(tmp_path, scores_csv):
    rows = synthetic_rows()
    shuffled = [dict(r, completions=list(reversed(r["completions"]))) for r in reversed(rows)]
    _, a = run(tmp_path, rows, scores_csv, name="a")
    _, b = run(tmp_path, shuffled, scores_csv, name="b")
    for s in STRATEGIES:
        key = lambda p: (p["id"], p["chosen_model"], p["rejected_model"])  # noqa: E731
        assert sorted(map(key, a[s])) == sorted(map(key, b[s])), s
    _, c = run(tmp_path, rows, scores_csv, name="c", seed=1)
    assert [p["rejected_model"] for p in c["random"]] != [p["rejected_model"] for p in a["random"]]


def synthetic_rows(n=40, seed=0):
    """Rows over the P..Z, M, U table: 4 random models each, random ratings ("N/A" included)."""
    rng = random.Random(seed)
    models = list(VECTORS) + ["M", "U"]
    return [row(f"prompt {i}", [completion(m, overall_score=rng.randint(1, 10),
                                           ratings={a: rng.choice("12345") if rng.random() < 0.8 else "N/A"
                                                    for a in ASPECTS})
                                for m in rng.sample(models, 4)])
            for i in range(n)]


def test_min_similarity_drops_and_counts(tmp_path, scores_csv):
    stats, pairs = run(tmp_path, rows_fixture()[:1], scores_csv, min_similarity=0.99)
    t = stats["strategies"]
    assert t["sup"]["skipped"] == {"below_min_similarity": 1}  # P-Q: .67
    assert [(p["chosen_model"], p["rejected_model"]) for p in pairs["sim"]] == [("R", "S")]  # .9959
    assert [(p["chosen_model"], p["rejected_model"]) for p in pairs["sup_sim"]] == [("P", "R")]  # .9908
    assert t["ultrafeedback_binarized"]["pairs"] == 1  # the baseline ignores the threshold


def test_fine_grained_rating_skips_na(tmp_path, scores_csv):
    rows = [row("ratings", [completion("P", overall_score=1, ratings={"honesty": "N/A", "helpfulness": "2",
                                                                      "truthfulness": "N/A"}),
                            completion("Q", overall_score=9, ratings={"honesty": "3", "helpfulness": "1"}),
                            completion("R", overall_score=5, ratings={"honesty": "N/A", "truthfulness": "N/A"})])]
    stats, pairs = run(tmp_path, rows, scores_csv, rating="fine_grained", strategies=("ultrafeedback_binarized",))
    (p,) = pairs["ultrafeedback_binarized"]
    assert (p["chosen_model"], p["score_chosen"]) == ("P", 2.0)  # N/A ignored: mean of "2" alone, tie 2.0 with Q
    assert p["rejected_model"] == "Q" and p["score_rejected"] == 2.0  # R (all N/A) has no rating
    assert stats["strategies"]["ultrafeedback_binarized"]["completions_dropped"] == {"no_rating": 1}


def test_exclude_source_and_limit(tmp_path, scores_csv):
    rows = [row(f"p{i}", [completion("P"), completion("Q")], source="truthful_qa" if i % 2 else "flan")
            for i in range(10)]
    stats, pairs = run(tmp_path, rows, scores_csv, exclude_sources=("truthful_qa",), limit=7, strategies=("sup",))
    assert stats["rows_read"] == 7
    assert stats["strategies"]["sup"]["skipped"] == {"excluded_source": 3} and len(pairs["sup"]) == 4


@pytest.mark.parametrize("rating", ["overall_score", "fine_grained"])
def test_parquet_reads_like_jsonl(tmp_path, scores_csv, rating):
    pytest.importorskip("pyarrow")
    rows = synthetic_rows(20)
    parquet = write_parquet(tmp_path / "uf" / "train.parquet", rows)
    _, want = run(tmp_path, rows, scores_csv, name="jsonl", rating=rating)
    stats = build_pairs(KinshipConfig(ultrafeedback=[parquet.parent], scores=scores_csv, out_dir=tmp_path / "pq",
                                      rating=rating))
    assert stats["files"] == [str(parquet)] and stats["rows_read"] == 20
    for s in STRATEGIES:
        got = [json.loads(x) for x in (tmp_path / "pq" / f"pairs-{s}.jsonl").read_text().splitlines()]
        assert got == want[s], s


def test_missing_pyarrow_is_a_clear_error(tmp_path, scores_csv, monkeypatch, capsys):
    (tmp_path / "uf.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)  # import fails
    with pytest.raises(ImportError, match="pip install pyarrow"):
        list(kinship.read_rows(tmp_path / "uf.parquet"))
    argv = ["--ultrafeedback", str(tmp_path / "uf.parquet"), "--scores", str(scores_csv), "--out", str(tmp_path / "o")]
    assert run_main(kinship.main, argv, prog="kinship") == 2
    assert "pip install pyarrow" in capsys.readouterr().err


# ------------------------------------------------------------------------------ command line

def test_cli_writes_files_and_stats(tmp_path, scores_csv, capsys):
    data = write_jsonl(tmp_path / "uf" / "a.jsonl", rows_fixture(), BAD_LINES)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "pairs-random.jsonl").write_text("stale\n")
    stats = kinship.main(["--ultrafeedback", str(data.parent), "--scores", str(scores_csv), "--out", str(out),
                          "--strategy", "sup", "sim", "--seed", "3"])
    assert sorted(p.name for p in out.iterdir()) == ["pairs-sim.jsonl", "pairs-sup.jsonl", "stats.json"]
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["rows_read"] == 10 == stats["rows_read"] and set(on_disk["strategies"]) == {"sup", "sim"}
    assert on_disk["config"]["seed"] == 3 and on_disk["behaviour"]["unscored_models"] == ["U"]
    for name in ("superiority_gap", "similarity"):
        d = on_disk["strategies"]["sim"][name]
        assert d["n"] == 4 and d["p10"] <= d["median"] <= d["p90"]
    assert "sup: 4 pairs" in capsys.readouterr().out


def test_cli_bad_scores_file_is_one_line_naming_it(tmp_path, capsys):
    data = write_jsonl(tmp_path / "a.jsonl", rows_fixture())
    bad = tmp_path / "scores.csv"
    bad.write_text("model,b1\na,1\nb,lots\n")
    code = run_main(kinship.main, ["--ultrafeedback", str(data), "--scores", str(bad), "--out", str(tmp_path / "o")],
                    prog="kinship")
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}:3" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are known good
    code = run_main(kinship.main, ["--ultrafeedback", str(data), "--scores", str(tmp_path / "nope.csv"), "--out",
                                   str(tmp_path / "o")], prog="kinship")
    assert code == 2 and "nope.csv: no such file" in capsys.readouterr().err
    code = run_main(kinship.main, ["--ultrafeedback", str(tmp_path / "missing"), "--scores", str(bad), "--out",
                                   str(tmp_path / "o")], prog="kinship")
    assert code == 2 and "missing: no such file" in capsys.readouterr().err


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as e:
        kinship.main(["--help"])
    assert e.value.code == 0 and "sup_sim" in capsys.readouterr().out


def test_synthetic_set_statistics(tmp_path):
    """On 200 synthetic prompts over the ZEBRA table: SIM pairs are the most similar, SUP the best."""
    rows = synthetic_ultrafeedback(200, seed=0)
    stats, _ = run(tmp_path, rows, ZEBRA_BENCHMARK)
    t = stats["strategies"]
    assert all(t[s]["pairs"] == 200 for s in STRATEGIES)  # ultralm-65b leaves at least 3 candidates
    sim = {s: t[s]["similarity"]["mean"] for s in STRATEGIES}
    assert sim["sim"] == max(sim.values()) and sim["sim"] > sim["random"]
    assert t["sup"]["superiority_gap"]["min"] > 0 and t["random"]["superiority_gap"]["min"] >= 0
    assert t["ultrafeedback_binarized"]["superiority_gap"]["min"] < 0  # GPT-4-style ratings disagree at times


def test_malformed_rows_and_completions_are_counted(tmp_path, scores_csv):
    rows = [row("  ", [completion("P"), completion("Q")]),
            row("odd completions", [completion("P"), "not a dict", {"response": "no model"},
                                    completion("Q", response=""), completion("R")])]
    stats, pairs = run(tmp_path, rows, scores_csv, strategies=("sup",))
    t = stats["strategies"]["sup"]
    assert t["skipped"] == {"empty_instruction": 1} and t["pairs"] == 1
    assert t["completions_dropped"] == {"not_an_object": 1, "no_model": 1, "empty_response": 1}
    assert [(p["chosen_model"], p["rejected_model"]) for p in pairs["sup"]] == [("P", "R")]


def test_data_prep_kinship_subcommand(tmp_path, scores_csv, capsys):
    import data_prep  # the top-level script (the repository root is on sys.path in tests)

    data = write_jsonl(tmp_path / "uf" / "a.jsonl", rows_fixture(), BAD_LINES)
    data_prep.main(["kinship", "--ultrafeedback", str(data), "--scores", str(scores_csv), "--out", str(tmp_path / "out"),
                    "--strategy", "sup_sim"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pairs-sup_sim.jsonl", "stats.json"]
    assert "sup_sim: 4 pairs" in capsys.readouterr().out
