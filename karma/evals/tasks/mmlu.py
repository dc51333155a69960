"""MMLU (Hendrycks et al. 2021, "Measuring Massive Multitask Language Understanding"), test split,
14,042 questions in 57 subjects, zero-shot, as lm-evaluation-harness scores it
(lm_eval/tasks/mmlu/default: _default_template_yaml, mmlu_<subject>.yaml, _mmlu.yaml):

    context = "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
              "{question.strip()}\\nA. {choice 0}\\nB. {choice 1}\\nC. {choice 2}\\nD. {choice 3}\\nAnswer:"
    continuations = " A", " B", " C", " D"        ({subject}: the file's subject with "_" -> " ")
    acc = 1 if the continuation with the highest summed log-likelihood is the answer, else 0
    MMLU acc = the mean over all questions (lm-eval's group score is weighted by size: a micro
    average), and per subject.

Data, first found: under --data-dir, mmlu/test/<subject>_test.csv or mmlu/<any folders>/test/
<subject>_test.csv, either as the original release (data.tar, people.eecs.berkeley.edu/~hendrycks/:
no header, columns question, A, B, C, D, answer letter) or as the CSV export of the hub's cais/mmlu
(header question,choice0,choice1,choice2,choice3,answer; answer 0-3); else the hub's cais/mmlu
parquet (config "all", split test: question, subject, choices, answer 0-3; needs pyarrow).
"""

import csv
import io
from pathlib import Path

from karma.evals.lm import EvalLM
from karma.evals.task import DataFile, TaskResult, locate, read_csv, read_text, record, stratified_limit

NAME = "mmlu"
PARQUET = DataFile(path="mmlu/all/test-00000-of-00001.parquet", hub_repo="cais/mmlu",
                   hub_filename="all/test-00000-of-00001.parquet",
                   source="https://people.eecs.berkeley.edu/~hendrycks/data.tar (data/test/*.csv, to put in "
                          "--data-dir/mmlu/test/) or the hub dataset cais/mmlu")
FILES = [PARQUET]
LETTERS = ["A", "B", "C", "D"]
EXPORT_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def prompt(item: dict) -> str:
    """lm-eval's zero-shot context: the subject's description, then doc_to_text."""
    subject = item["subject"].replace("_", " ")
    description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, item["choices"]))
    return f"{description}{item['question'].strip()}{options}\nAnswer:"


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def _item(subject: str, index: int, question: str, choices: list[str], answer: int) -> dict:
    return {"id": f"{subject}/{index}", "subject": subject, "question": question, "choices": choices,
            "answer": answer}


def read_subject_csv(path: Path) -> list[dict]:
    """One <subject>_test.csv, in either layout (a header row starting with "question" means the
    cais/mmlu export)."""
    subject = path.name.removesuffix("_test.csv")
    text = read_text(path)
    first = next(csv.reader(io.StringIO(text, newline="")), [])
    items = []
    if first[:1] == ["question"]:  # the cais/mmlu export: answer 0-3
        for line, row in read_csv(path, EXPORT_COLUMNS):
            if row["answer"] not in ("0", "1", "2", "3"):
                raise ValueError(f"{path}:{line}: answer {row['answer']!r} is not 0, 1, 2 or 3")
            items.append(_item(subject, len(items), row["question"], [row[f"choice{i}"] for i in range(4)],
                               int(row["answer"])))
        return items
    reader = csv.reader(io.StringIO(text, newline=""))  # the original release: no header, answer A-D
    for row in reader:
        if len(row) != 6:
            raise ValueError(f"{path}:{reader.line_num}: {len(row)} fields; expected 6 (question, 4 choices, "
                             f"answer letter) or the header {','.join(EXPORT_COLUMNS)}")
        if row[5] not in LETTERS:
            raise ValueError(f"{path}:{reader.line_num}: answer {row[5]!r} is not A, B, C or D")
        items.append(_item(subject, len(items), row[0], row[1:5], LETTERS.index(row[5])))
    return items


def read_parquet(path: Path) -> list[dict]:
    """The hub's cais/mmlu all/test parquet (all subjects in one file)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow), or put the MMLU CSV files in "
                          f"--data-dir/mmlu/test/") from None
    table = pq.read_table(record(path))
    missing = [c for c in ("question", "subject", "choices", "answer") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it has {table.column_names}")
    items, seen = [], {}
    for row_number, row in enumerate(table.select(["question", "subject", "choices", "answer"]).to_pylist()):
        if len(row["choices"]) != 4 or row["answer"] not in (0, 1, 2, 3):
            raise ValueError(f"{path}: row {row_number}: expected 4 choices and an answer 0-3, got "
                             f"{len(row['choices'])} choices and answer {row['answer']!r}")
        index = seen[row["subject"]] = seen.get(row["subject"], -1) + 1
        items.append(_item(row["subject"], index, row["question"], list(row["choices"]), row["answer"]))
    return items


def subject_files(data_dir) -> list[Path]:
    """mmlu/test/*_test.csv or mmlu/**/test/*_test.csv under data_dir (one folder only)."""
    if data_dir is None:
        return []
    files = sorted(Path(data_dir, "mmlu").glob("**/test/*_test.csv"))
    folders = sorted({f.parent for f in files})
    if len(folders) > 1:
        raise ValueError(f"MMLU test files in {len(folders)} folders ({', '.join(map(str, folders))}); "
                         f"keep one under {Path(data_dir, 'mmlu')}")
    return files


def load(data_dir, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Items {"id": "<subject>/<row>", "subject", "question", "choices", "answer" 0-3}, subjects in
    alphabetical order; `limit` keeps each subject's share."""
    files = subject_files(data_dir)
    items = [item for f in files for item in read_subject_csv(f)] if files else read_parquet(locate(data_dir, PARQUET))
    return stratified_limit(items, limit, key="subject", seed=seed)


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------

def evaluate(lm: EvalLM, items: list[dict]) -> TaskResult:
    requests = [(prompt(item), f" {letter}") for item in items for letter in LETTERS]
    scores = [r.logprob for r in lm.loglikelihood(requests, desc=NAME)]
    per_item = []
    for i, item in enumerate(items):
        lls = scores[4 * i:4 * i + 4]
        best = lls.index(max(lls))  # the first of equal maxima, as lm-eval's np.argmax
        per_item.append({"id": item["id"], "subject": item["subject"], "acc": float(best == item["answer"])})
    by_subject: dict[str, list[float]] = {}
    for row in per_item:
        by_subject.setdefault(row["subject"], []).append(row["acc"])
    return TaskResult(
        items=per_item,
        metrics={"acc": sum(row["acc"] for row in per_item) / len(per_item)},
        primary="acc", kind="binary",
        breakdown={"subject": {s: {"acc": sum(a) / len(a), "n": len(a)} for s, a in sorted(by_subject.items())}},
        notes=["zero-shot, lm-eval's MMLU prompt (lm_eval/tasks/mmlu/default); acc over all questions "
               "(a micro average, as lm-eval's size-weighted group score), also per subject"],
    )
