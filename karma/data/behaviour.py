"""Behaviour vectors: each model described by its public benchmark scores, and MB-SUP / MB-SIM over them.

The model-behaviour half of Jung, Park & Jung 2025, "ZEBRA: Leveraging Model-Behavioral Knowledge
for Zero-Annotation Preference Dataset Construction", Findings of EMNLP 2025; arXiv 2502.18744,
whose v1 was titled KARMA; code: github.com/Jeesu-Jung/ZEBRA, files binarize.score.py,
binarize.similarity.py, binarize.combined.py and benchmark.csv. karma/data/kinship.py builds the
preference pairs from these numbers alone:

  behaviour vector  v_i = [s_i^1 .. s_i^m], s_i^k = model i's score on benchmark k, min-max
                    normalised across the models:  s = (x - min_k) / (max_k - min_k)  in [0, 1]
  MB-SUP(i)         = mean_k v_i^k                              (superiority: how good a model is)
  MB-SIM(i, j)      = v_i . v_j / (|v_i| |v_j|)                 (similarity: cosine, "kinship")

Choices where the sources are silent or disagree (each one is a decision of this module):
- Normalisation: min-max per benchmark over the models that have that score, as the authors'
  scripts. A trailing "%" is dropped (benchmark.csv mixes 85.37, 86.40% and 0.6371; units do not
  matter after per-column min-max). A benchmark on which fewer than two distinct values remain
  (every model ties, or one model has it) is DROPPED and listed in Behaviour.dropped_benchmarks: it
  cannot rank models, and a constant column would only shrink every MB-SUP gap and inflate every
  cosine (the scripts would divide 0 by 0 there).
- Lower-is-better benchmarks (e.g. toxicity) are negated before normalising, so 1 is always best.
- Missing values: the column mean of the normalised scores (the authors' `df.fillna(df.mean())`).
  MB-SUP is the mean of that FILLED vector, as binarize.score.py computes it; binarize.similarity.py
  and binarize.combined.py average before filling (pandas skips NaN). Both agree on the authors'
  benchmark.csv, where the only gap is a model with no scores at all.
- A model with no score at all (ultralm-65b in benchmark.csv), or absent from the table, has no
  vector (the scripts hard-code "ultralm-65b"): kinship.py never pairs it and counts its completions.
- Cosine with an all-zero vector (a model last on every benchmark) is 0, as sklearn's
  cosine_similarity, which the scripts use.

Input: a CSV (a `model` column, any case, plus one column per benchmark) or the results.json that
eval.py writes, where each task's value is its primary metric (TaskResult.primary: the metric
eval.py's tables report) and TaskResult.higher_is_better gives the direction; a model is a results
label such as "pythia-1b/karmaBenign".
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from karma.files import read_json

MISSING = {"", "n/a", "na", "nan", "none", "null", "-"}  # score cells read as "no score"


@dataclass
class Behaviour:
    """Behaviour vectors of the models that have scores, and MB-SUP / MB-SIM over them."""
    benchmarks: list[str]  # the benchmarks kept, in input order
    vectors: dict[str, np.ndarray]  # model -> normalised, filled vector [m], models sorted by name
    sup: dict[str, float]  # model -> MB-SUP
    unscored: list[str]  # models listed without any score: never paired
    dropped_benchmarks: dict[str, str] = field(default_factory=dict)  # benchmark -> why
    filled: dict[str, list[str]] = field(default_factory=dict)  # model -> benchmarks set to the mean
    lower_is_better: list[str] = field(default_factory=list)
    source: str = ""
    _cos: np.ndarray = field(init=False, repr=False)  # [n, n] cosine matrix, models in `vectors` order
    _index: dict[str, int] = field(init=False, repr=False)  # model -> row of _cos

    def __post_init__(self):
        names = list(self.vectors)
        self._index = {m: i for i, m in enumerate(names)}
        V = np.stack([self.vectors[m] for m in names])  # [n, m]
        norm = np.linalg.norm(V, axis=1, keepdims=True)
        unit = np.divide(V, norm, out=np.zeros_like(V), where=norm > 0)  # a zero vector stays 0
        cos = unit @ unit.T
        self._cos = (cos + cos.T) / 2  # exactly symmetric: sim(a, b) == sim(b, a) to the bit

    def sim(self, a: str, b: str) -> float:
        """MB-SIM(a, b): cosine similarity of the two behaviour vectors."""
        return float(self._cos[self._index[a], self._index[b]])

    def to_json(self) -> dict:
        models = {m: {"mb_sup": self.sup[m], "vector": [float(x) for x in v], "filled": self.filled.get(m, [])}
                  for m, v in self.vectors.items()}
        return {"source": self.source, "benchmarks": self.benchmarks, "dropped_benchmarks": self.dropped_benchmarks,
                "lower_is_better": self.lower_is_better, "unscored_models": self.unscored, "models": models,
                "similarity": {a: {b: round(self.sim(a, b), 6) for b in self.vectors} for a in self.vectors}}


def build_behaviour(table: dict[str, dict[str, float | None]], lower_is_better=(), source: str = "") -> Behaviour:
    """Behaviour vectors from raw scores {model: {benchmark: value or None}} (see the module docstring).

    Per benchmark k over the models that have it: x -> -x when lower is better, then
    s = (x - min) / (max - min); a benchmark with fewer than two distinct values is dropped; a
    missing s becomes the column mean of the others. MB-SUP = mean of the vector.
    """
    lower = set(lower_is_better)
    benchmarks = list(dict.fromkeys(b for scores in table.values() for b in scores))
    unknown = sorted(lower - set(benchmarks))
    if unknown:
        raise ValueError(f"{source or 'scores'}: lower-is-better benchmark(s) {unknown} not in the table "
                         f"(benchmarks: {benchmarks})")
    unscored = sorted(m for m, scores in table.items() if all(v is None for v in scores.values()))
    models = sorted(m for m in table if m not in unscored)
    columns, dropped = {}, {}
    for b in benchmarks:
        raw = {m: table[m].get(b) for m in models if table[m].get(b) is not None}
        if b in lower:
            raw = {m: -x for m, x in raw.items()}
        if len(set(raw.values())) < 2:
            dropped[b] = ("no model has a score" if not raw else "only one model has a score" if len(raw) == 1
                          else "every model has the same score")
            continue
        lo, hi = min(raw.values()), max(raw.values())
        columns[b] = {m: (x - lo) / (hi - lo) for m, x in raw.items()}
    kept = [b for b in benchmarks if b in columns]
    if not kept:
        raise ValueError(f"{source or 'scores'}: no benchmark separates the models ({len(models)} model(s) with "
                         f"scores; dropped: {dropped}); need at least two models with different scores")
    means = {b: float(np.mean(list(columns[b].values()))) for b in kept}
    vectors, filled = {}, {}
    for m in models:
        vectors[m] = np.array([columns[b].get(m, means[b]) for b in kept], dtype=np.float64)
        gaps = [b for b in kept if m not in columns[b]]
        if gaps:
            filled[m] = gaps
    sup = {m: float(v.mean()) for m, v in vectors.items()}
    return Behaviour(benchmarks=kept, vectors=vectors, sup=sup, unscored=unscored, dropped_benchmarks=dropped,
                     filled=filled, lower_is_better=sorted(lower), source=source)


def parse_score(text: str, where: str, column: str) -> float | None:
    """A score cell: a number, optionally with a trailing %; a blank, "N/A", "nan" or "-" is missing."""
    s = text.strip()
    if s.lower() in MISSING:
        return None
    try:
        x = float(s[:-1] if s.endswith("%") else s)
    except ValueError:
        raise ValueError(f"{where}: column {column!r}: {text!r} is not a number") from None
    return x if math.isfinite(x) else None


def read_score_csv(path: str | Path) -> dict[str, dict[str, float | None]]:
    """{model: {benchmark: value or None}} from a CSV with a `model` column (any case) and one
    column per benchmark; errors name the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file (expected a CSV of benchmark scores)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path}: empty file (expected a CSV with a 'model' column and one column per benchmark)")
    header = [h.strip() for h in header]
    key = next((i for i, h in enumerate(header) if h.lower() == "model"), None)
    if key is None:
        raise ValueError(f"{path}: no 'model' column; the header has {header}")
    benchmarks = [(i, h) for i, h in enumerate(header) if i != key]
    if not benchmarks or any(not h for _, h in benchmarks) or len({h for _, h in benchmarks}) < len(benchmarks):
        raise ValueError(f"{path}: need one uniquely named column per benchmark besides 'model'; header {header}")
    table = {}
    for cells in reader:
        where = f"{path}:{reader.line_num}"
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise ValueError(f"{where}: {len(cells)} fields, the header has {len(header)}")
        model = cells[key].strip()
        if not model:
            raise ValueError(f"{where}: empty model name")
        if model in table:
            raise ValueError(f"{where}: model {model!r} appears twice")
        table[model] = {h: parse_score(cells[i], where, h) for i, h in benchmarks}
    if not table:
        raise ValueError(f"{path}: no model rows")
    return table


def read_results_json(path: str | Path) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    """({model label: {task: value or None}}, [lower-is-better tasks]) from eval.py's results.json.

    Layout: {"results": {label: {task: TaskResult as a dict}}}; the value of a task is
    result["metrics"][result["primary"]], the headline metric eval.py's tables report; a task's
    direction is its first result's `higher_is_better` (as karma.evals.report does). A value that
    is not a finite number (written as null) is missing.
    """
    path = Path(path)
    data = read_json(path)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results:
        raise ValueError(f"{path}: no \"results\" object of {{model label: {{task: result}}}} (is it eval.py's "
                         f"results.json?)")
    table, lower = {}, {}
    for label, tasks in results.items():
        if not isinstance(tasks, dict):
            raise ValueError(f"{path}: results[{label!r}] is not an object of tasks")
        table[label] = {}
        for task, result in tasks.items():
            if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict) or "primary" not in result:
                raise ValueError(f"{path}: results[{label!r}][{task!r}] has no \"metrics\" and \"primary\"")
            value = result["metrics"].get(result["primary"])
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            table[label][task] = float(value) if ok else None
            lower.setdefault(task, result.get("higher_is_better", True) is False)
    return table, sorted(t for t, low in lower.items() if low)


def read_scores(path: str | Path, lower_is_better=()) -> Behaviour:
    """Behaviour vectors from a scores CSV or an eval.py results.json (chosen by the .json suffix)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        table, lower = read_results_json(path)
        lower_is_better = set(lower_is_better) | set(lower)
    else:
        table = read_score_csv(path)
    return build_behaviour(table, lower_is_better, source=str(path))
