"""Zero-shot text classification by log-likelihood: ColBERT humor detection and MSAD sentiment.

Neither benchmark is in lm-eval, so the prompts are ours, in lm-eval's multiple-choice form: the
prompt is the template below, each class is the continuation " " + its word (lm-eval's default
target_delimiter " "), and

    pred      = argmax over classes of loglikelihood(prompt, " " + word)           (lm-eval acc)
    pred_norm = argmax over classes of loglikelihood(prompt, " " + word) / len(word) (lm-eval
                acc_norm: normalised by the word's length in characters)
with ties to the first class in the order listed. The text is stripped of surrounding whitespace.

    colbert_humor:  "Is the following text humorous? Answer yes or no.\\n\\nText: {text}\\nAnswer:"
                    humor True -> " yes", False -> " no"
    msad:           "What is the sentiment of the following text? Answer negative, neutral or
                    positive.\\n\\nText: {text}\\nAnswer:"
                    label 0 -> " negative", 1 -> " neutral", 2 -> " positive"

Metrics: acc, acc_norm, macro_f1 (the mean over the task's classes of F1 = 2 TP / (2 TP + FP + FN),
0 for a class never predicted nor present; = sklearn f1_score(average="macro", zero_division=0) when
every class occurs), per class precision / recall / F1 in breakdown["class"], the label
distribution (share_<class> = the accuracy of always answering that class) and
majority_baseline_acc (the largest share). Each item keeps its label and prediction (label values) and
their class names ("class", "predicted"), from which the report draws accuracy per class and flags a
model that answers one class for every item (with the acc of that class's share: no reading at all).

Data: ColBERT (Annamoradnejad & Zoghi 2020; github.com/Moradnejad/ColBERT-Using-BERT-Sentence-
Embedding-for-Humor-Detection, Data/dev.csv, columns text,humor with True/False; 40,000 rows) and
MSAD (huggingface.co/datasets/Sp1786/multiclass-sentiment-analysis-dataset, test_df.csv, columns
id,text,label,sentiment with 0 negative / 1 neutral / 2 positive; 5,206 rows, ids NOT unique, so
items are numbered by their row in the file). Rows with empty text are skipped and counted in the
result's notes.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from karma.evals.task import DataFile, TaskResult, locate, read_csv, stratified_limit

HUMOR_TEMPLATE = "Is the following text humorous? Answer yes or no.\n\nText: {text}\nAnswer:"
SENTIMENT_TEMPLATE = ("What is the sentiment of the following text? Answer negative, neutral or positive."
                      "\n\nText: {text}\nAnswer:")
SENTIMENTS = ("negative", "neutral", "positive")  # MSAD's label 0, 1, 2


def read_humor(path: Path) -> list[tuple[int, bool, str]]:
    """(line, label, text) of a ColBERT CSV (text,humor)."""
    rows = []
    for line, row in read_csv(path, ["text", "humor"]):
        if row["humor"] not in ("True", "False"):
            raise ValueError(f"{path}:{line}: humor {row['humor']!r} is not True or False")
        rows.append((line, row["humor"] == "True", row["text"]))
    return rows


def read_msad(path: Path) -> list[tuple[int, int, str]]:
    """(line, label, text) of an MSAD CSV (id,text,label,sentiment); label and sentiment must agree."""
    rows = []
    for line, row in read_csv(path, ["id", "text", "label", "sentiment"]):
        if row["label"] not in ("0", "1", "2") or SENTIMENTS[int(row["label"])] != row["sentiment"]:
            raise ValueError(f"{path}:{line}: label {row['label']!r} with sentiment {row['sentiment']!r}; "
                             f"expected 0 negative, 1 neutral or 2 positive")
        rows.append((line, int(row["label"]), row["text"]))
    return rows


def class_scores(labels: list, preds: list, classes: list) -> dict:
    """{class: {"precision", "recall", "f1", "n"}}; F1 = 2 TP / (2 TP + FP + FN), 0 when undefined."""
    scores = {}
    for c in classes:
        tp = sum(y == c and p == c for y, p in zip(labels, preds))
        fp = sum(y != c and p == c for y, p in zip(labels, preds))
        fn = sum(y == c and p != c for y, p in zip(labels, preds))
        scores[c] = {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
                     "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, "n": tp + fn}
    return scores


def argmax(values: list[float]) -> int:
    """Index of the largest value, the first on ties (numpy's, as lm-eval)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def skipped_note(path: Path, lines: list[int], n_rows: int) -> str:
    shown = ", ".join(map(str, lines[:20])) + (", ..." if len(lines) > 20 else "")
    return f"{len(lines)} of {n_rows} rows of {path} have empty text and were skipped (lines {shown})"


@dataclass
class ClassificationTask:
    NAME: str
    FILES: list[DataFile]
    template: str  # the prompt, with {text}
    classes: dict  # label -> (class name, answer word)
    read: Callable[[Path], list[tuple[int, object, str]]]
    load_notes: list[str] = field(default_factory=list)  # what load() skipped, for evaluate()'s notes

    def load(self, data_dir, limit: int | None = None, seed: int = 0) -> list[dict]:
        """Items {"id": row index in the file, "label", "text"}; --limit keeps each label's share."""
        path = locate(data_dir, self.FILES[0])
        rows = self.read(path)
        empty = [line for line, _, text in rows if not text.strip()]
        self.load_notes = [skipped_note(path, empty, len(rows))] if empty else []
        items = [{"id": i, "label": label, "text": text.strip()}
                 for i, (_, label, text) in enumerate(rows) if text.strip()]
        return stratified_limit(items, limit, "label", seed)

    def prompt(self, text: str) -> str:
        return self.template.format(text=text)

    def evaluate(self, lm, items: list[dict]) -> TaskResult:
        labels, words = list(self.classes), [word for _, word in self.classes.values()]
        requests = [(self.prompt(item["text"]), " " + word) for item in items for word in words]
        lls = [r.logprob for r in lm.loglikelihood(requests, desc=self.NAME)]
        per_item = [lls[i:i + len(words)] for i in range(0, len(lls), len(words))]  # [item][class]
        preds = [labels[argmax(scores)] for scores in per_item]
        preds_norm = [labels[argmax([ll / len(w) for ll, w in zip(scores, words)])] for scores in per_item]
        truth = [item["label"] for item in items]
        name = {label: class_name for label, (class_name, _) in self.classes.items()}
        scored = [{"id": item["id"], "label": y, "pred": p, "class": name[y], "predicted": name[p],
                   "acc": float(y == p), "acc_norm": float(y == q)}
                  for item, y, p, q in zip(items, truth, preds, preds_norm)]
        per_class = class_scores(truth, preds, labels)
        answers = ", ".join(f"{name} -> {' ' + word!r}" for name, word in self.classes.values())
        notes = [f"zero-shot prompt (ours): {self.template!r}; answers {answers}; prediction = the answer with "
                 f"the highest summed log-likelihood (acc), or per character of the answer word (acc_norm)",
                 *self.load_notes]
        return TaskResult(items=scored, metrics=self.metrics(scored, per_class), primary="acc", kind="binary",
                          breakdown={"class": {self.classes[c][0]: s for c, s in per_class.items()}}, notes=notes)

    def metrics(self, scored: list[dict], per_class: dict) -> dict:
        """acc, acc_norm, macro_f1, the label shares (share_<class>) and the majority-class baseline."""
        truth = [r["label"] for r in scored]
        shares = {f"share_{name}": truth.count(c) / len(truth) for c, (name, _) in self.classes.items()}
        return {"acc": sum(r["acc"] for r in scored) / len(scored),
                "acc_norm": sum(r["acc_norm"] for r in scored) / len(scored),
                "macro_f1": sum(s["f1"] for s in per_class.values()) / len(per_class),
                "majority_baseline_acc": max(shares.values()), **shares, "n": len(scored)}


TASKS = {
    "colbert_humor": ClassificationTask(
        NAME="colbert_humor",
        FILES=[DataFile("colbert_humor/dev.csv", source="https://github.com/Moradnejad/ColBERT-Using-BERT-Sentence-"
                                                        "Embedding-for-Humor-Detection (Data/dev.csv)")],
        template=HUMOR_TEMPLATE, classes={True: ("humorous", "yes"), False: ("not_humorous", "no")},
        read=read_humor),
    "msad": ClassificationTask(
        NAME="msad",
        FILES=[DataFile("msad/test_df.csv", hub_repo="Sp1786/multiclass-sentiment-analysis-dataset",
                        hub_filename="test_df.csv",
                        source="https://huggingface.co/datasets/Sp1786/multiclass-sentiment-analysis-dataset")],
        template=SENTIMENT_TEMPLATE, classes={i: (name, name) for i, name in enumerate(SENTIMENTS)},
        read=read_msad),
}
