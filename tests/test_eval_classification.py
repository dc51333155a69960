"""colbert_humor and msad: readers of the published CSVs, the exact prompts and requests, prediction
by the highest log-likelihood (and per character), accuracy / macro-F1 / per-class scores against
sklearn, the label distribution, stratified --limit, skipped empty texts."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

import karma
from karma.evals import report
from karma.evals.lm import EvalLM, Loglikelihood
from karma.evals.tasks import classification, get_task

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "eval-data"  # the full published files, where this machine has them
HUMOR, MSAD = classification.TASKS["colbert_humor"], classification.TASKS["msad"]


class StubLM:
    """log-likelihood = table[(text in the prompt, answer)]; records the requests."""

    def __init__(self, table: dict[tuple[str, str], float]):
        self.table, self.requests = table, []

    def loglikelihood(self, requests, desc=""):
        self.requests += requests
        return [Loglikelihood(self.table[(prompt.split("Text: ")[1].split("\nAnswer:")[0], x)], False, 1)
                for prompt, x in requests]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def msad_dir(tmp_path: Path, rows: list[list]) -> Path:
    write_csv(tmp_path / "msad" / "test_df.csv", ["id", "text", "label", "sentiment"], rows)
    return tmp_path


def humor_dir(tmp_path: Path, rows: list[list]) -> Path:
    write_csv(tmp_path / "colbert_humor" / "dev.csv", ["text", "humor"], rows)
    return tmp_path


def test_registered_with_the_exact_prompts():
    assert get_task("colbert_humor") is HUMOR and get_task("msad") is MSAD
    assert HUMOR.NAME == "colbert_humor" and MSAD.NAME == "msad"
    assert HUMOR.prompt("Why did the chicken cross the road?") == (
        "Is the following text humorous? Answer yes or no.\n\nText: Why did the chicken cross the road?\nAnswer:")
    assert MSAD.prompt("I love it") == (
        "What is the sentiment of the following text? Answer negative, neutral or positive.\n\n"
        "Text: I love it\nAnswer:")


def test_msad_reader_items_and_requests(tmp_path):
    rows = [[9236, " left a comment on your blog post", 1, "neutral"],
            [9236, "So sad {today}", 0, "negative"],  # ids are not unique upstream; braces are text
            [17, "  ", 2, "positive"],  # empty text: skipped, counted in notes
            [5, "Great day!", 2, "positive"]]
    items = MSAD.load(msad_dir(tmp_path, rows))
    assert items == [{"id": 0, "label": 1, "text": "left a comment on your blog post"},
                     {"id": 1, "label": 0, "text": "So sad {today}"}, {"id": 3, "label": 2, "text": "Great day!"}]
    table = {(t, " " + w): -1.0 for t in ("left a comment on your blog post", "So sad {today}", "Great day!")
             for w in ("negative", "neutral", "positive")}
    lm = StubLM(table)
    result = MSAD.evaluate(lm, items)
    prompt = MSAD.prompt("So sad {today}")
    assert prompt.endswith("Text: So sad {today}\nAnswer:")
    assert lm.requests[3:6] == [(prompt, " negative"), (prompt, " neutral"), (prompt, " positive")]
    assert len(lm.requests) == 9
    # all tied: the first class (negative) is predicted
    assert [r["pred"] for r in result.items] == [0, 0, 0]
    assert any("1 of 4 rows" in n and "test_df.csv" in n and "lines 4" in n for n in result.notes)


def test_a_classifier_answering_one_class_is_flagged_beside_the_majority_baseline(tmp_path):
    """The demo's MSAD: "negative" for every item, acc 0.30 under the 0.375 of always answering "neutral"."""
    rows = [[i, f"text {i}", label, classification.SENTIMENTS[label]] for i, label in enumerate([0, 1, 1, 2])]
    items = MSAD.load(msad_dir(tmp_path, rows))
    lm = StubLM({(f"text {i}", " " + w): -1.0 if w == "negative" else -2.0 for i in range(4)
                 for w in classification.SENTIMENTS})
    result = MSAD.evaluate(lm, items)
    assert [r["predicted"] for r in result.items] == ["negative"] * 4
    assert [r["class"] for r in result.items] == ["negative", "neutral", "neutral", "positive"]
    table = report.build_tables({"m/Base": {"msad": result}})[0]
    assert table["cells"]["m"]["Base"]["always"] == "negative" and table["baseline"] == {"m": 0.5}
    header, _, row = report.to_markdown([table]).split("\n")[2:5]
    assert header == "| model | majority class | Base |"
    assert row.startswith("| m | 0.500 | 0.250 [") and row.endswith(" **always negative** |")


def test_metrics_against_sklearn(tmp_path):
    # (label, ll negative, ll neutral, ll positive); per character: len negative 8, neutral 7, positive 8
    cases = [(0, -1.0, -2.0, -3.0), (0, -2.0, -1.0, -3.0), (1, -5.0, -3.5, -3.6), (1, -2.0, -1.0, -1.5),
             (2, -3.0, -2.0, -1.0), (2, -1.0, -3.0, -2.0), (2, -4.0, -3.5, -3.6), (1, -1.0, -1.0, -2.0)]
    rows = [[i, f"text {i}", y, classification.SENTIMENTS[y]] for i, (y, *_) in enumerate(cases)]
    items = MSAD.load(msad_dir(tmp_path, rows))
    table = {(f"text {i}", " " + w): ll for i, (_, *lls) in enumerate(cases)
             for w, ll in zip(classification.SENTIMENTS, lls)}
    result = MSAD.evaluate(StubLM(table), items)
    labels = [c[0] for c in cases]
    preds = [0, 1, 1, 1, 2, 0, 1, 0]  # argmax, the first on ties (last case)
    preds_norm = [0, 1, 2, 1, 2, 0, 2, 0]  # -3.5/7 = -0.5 < -3.6/8 = -0.45
    assert [r["pred"] for r in result.items] == preds
    assert result.items[2] == {"id": 2, "label": 1, "pred": 1, "class": "neutral", "predicted": "neutral",
                               "acc": 1.0, "acc_norm": 0.0}
    m = result.metrics
    assert m["acc"] == pytest.approx(sum(y == p for y, p in zip(labels, preds)) / 8)
    assert m["acc_norm"] == pytest.approx(sum(y == p for y, p in zip(labels, preds_norm)) / 8)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    by_class = result.breakdown["class"]
    for score, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert [by_class[name][score] for name in classification.SENTIMENTS] == pytest.approx(
            list(fn(labels, preds, average=None, labels=[0, 1, 2], zero_division=0)))
    assert [by_class[name]["n"] for name in classification.SENTIMENTS] == [2, 3, 3]
    assert (m["share_negative"], m["share_neutral"], m["share_positive"]) == (2 / 8, 3 / 8, 3 / 8)
    assert m["majority_baseline_acc"] == 3 / 8 and m["n"] == 8
    assert (result.primary, result.kind, result.higher_is_better) == ("acc", "binary", True)


def test_macro_f1_with_a_class_never_predicted():
    labels, preds = [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 1, 0]
    scores = classification.class_scores(labels, preds, [0, 1, 2])
    assert scores[2] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 2}
    assert sum(s["f1"] for s in scores.values()) / 3 == pytest.approx(
        f1_score(labels, preds, average="macro", zero_division=0))


def test_humor_reader_and_prediction(tmp_path):
    items = HUMOR.load(humor_dir(tmp_path, [["A pun walks into a bar", "True"], ["The meeting is at 3", "False"]]))
    assert items == [{"id": 0, "label": True, "text": "A pun walks into a bar"},
                     {"id": 1, "label": False, "text": "The meeting is at 3"}]
    lm = StubLM({("A pun walks into a bar", " yes"): -2.0, ("A pun walks into a bar", " no"): -3.0,
                 ("The meeting is at 3", " yes"): -3.3, ("The meeting is at 3", " no"): -3.0})
    result = HUMOR.evaluate(lm, items)
    assert lm.requests[:2] == [(HUMOR.prompt("A pun walks into a bar"), " yes"),
                               (HUMOR.prompt("A pun walks into a bar"), " no")]
    assert [r["pred"] for r in result.items] == [True, False]
    assert [r["acc_norm"] for r in result.items] == [1.0, 0.0]  # per character: -3.3/3 = -1.1 > -3.0/2
    assert result.metrics["acc"] == 1.0 and result.metrics["majority_baseline_acc"] == 0.5
    assert set(result.breakdown["class"]) == {"humorous", "not_humorous"}


def test_stratified_limit_by_label(tmp_path):
    rows = [[f"joke {i}", "True" if i % 4 else "False"] for i in range(20)]  # 15 True, 5 False
    items = HUMOR.load(humor_dir(tmp_path, rows), limit=8, seed=1)
    assert Counter(i["label"] for i in items) == {True: 6, False: 2}
    assert [i["id"] for i in items] == sorted(i["id"] for i in items)
    assert items == HUMOR.load(tmp_path, limit=8, seed=1) != HUMOR.load(tmp_path, limit=8, seed=2)


@pytest.mark.parametrize("task, header, rows, message", [
    ("colbert_humor", ["text", "humor"], [["ok", "True"], ["bad", "yes"]], r"dev.csv:3: humor 'yes'"),
    ("msad", ["id", "text", "label", "sentiment"], [[1, "ok", 0, "negative"], [2, "bad", 2, "neutral"]],
     r"test_df.csv:3: label '2' with sentiment 'neutral'"),
    ("msad", ["id", "text", "label", "sentiment"], [[1, "bad", 3, "positive"]], r"test_df.csv:2: label '3'"),
    ("msad", ["id", "text", "label"], [[1, "ok", 0]], r"missing column\(s\) \['sentiment'\]"),
])
def test_malformed_rows_name_file_and_line(tmp_path, task, header, rows, message):
    task = classification.TASKS[task]
    write_csv(tmp_path / task.FILES[0].path, header, rows)
    with pytest.raises(ValueError, match=message):
        task.load(tmp_path)


def test_missing_files_say_where_to_get_them(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # offline, empty cache
    with pytest.raises(FileNotFoundError, match="Moradnejad/ColBERT"):
        HUMOR.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="Sp1786/multiclass-sentiment-analysis-dataset"):
        MSAD.load(tmp_path)


def test_runs_through_a_tiny_model(checkpoint_factory, tmp_path):
    """The answers tokenize to non-empty continuations and every item gets a prediction."""
    path = str(checkpoint_factory("llama_tied").path)
    lm = EvalLM(karma.load_model(path, device="cpu"), karma.load_tokenizer(path), batch_size=4, progress=False)
    rows = [[i, f"text number {i}", i % 3, classification.SENTIMENTS[i % 3]] for i in range(6)]
    result = MSAD.evaluate(lm, MSAD.load(msad_dir(tmp_path, rows)))
    assert len(result.items) == 6 and {r["pred"] for r in result.items} <= {0, 1, 2}


@pytest.mark.skipif(not all((SHARED / t.FILES[0].path).exists() for t in (HUMOR, MSAD)),
                    reason="the published ColBERT / MSAD files are not on this machine")
def test_full_published_files():
    humor = HUMOR.load(SHARED)
    assert len(humor) == 40_000 and Counter(i["label"] for i in humor) == {True: 20_082, False: 19_918}
    msad = MSAD.load(SHARED)
    assert len(msad) == 5206 and Counter(i["label"] for i in msad) == {0: 1528, 1: 1971, 2: 1707}
    assert MSAD.load_notes == []  # no empty texts in the published test split
