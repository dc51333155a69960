"""Kinship-aware preference pairs: UltraFeedback responses paired by the behaviour of their models.

    python -m karma.data.kinship --ultrafeedback data/UltraFeedback --scores benchmark.csv --out runs/kinship
    python -m karma.data.kinship --ultrafeedback uf.jsonl --scores runs/eval/results.json --strategy sup sim \\
        --min-similarity 0.9 --out runs/kinship

The method (Jung, Park & Jung 2025, "ZEBRA: Leveraging Model-Behavioral Knowledge for
Zero-Annotation Preference Dataset Construction", Findings of EMNLP 2025; arXiv 2502.18744, whose
v1 was titled KARMA; code: github.com/Jeesu-Jung/ZEBRA, files binarize.score.py,
binarize.similarity.py, binarize.combined.py and benchmark.csv). Automatic preference data often
pairs a strong model's answer with a weak one's: the contrast is obvious and teaches little. Here
every model is described by its public benchmark scores, and the pairs are built from that
description alone, with no per-response judge:

  behaviour vector  v_i = [s_i^1 .. s_i^m], s_i^k = model i's score on benchmark k, min-max
                    normalised across the models:  s = (x - min_k) / (max_k - min_k)  in [0, 1]
  MB-SUP(i)         = mean_k v_i^k                              (superiority: how good a model is)
  MB-SIM(i, j)      = v_i . v_j / (|v_i| |v_j|)                 (similarity: cosine, "kinship")
  preference        Pref(r_i, r_j) = 1  iff  MB-SUP(M_i) > MB-SUP(M_j)

For each prompt x, C(x) = the prompt's models that have a usable completion AND a behaviour vector.
One pair per prompt, by strategy:
  sup      the two highest MB-SUP in C(x): chosen = the top one, rejected = the second
           (the authors' binarize.score.py, "quality first")
  sim      the pair of C(x) with the highest MB-SIM; the member with the higher MB-SUP is chosen
           (binarize.similarity.py, "similarity first")
  sup_sim  chosen = the highest MB-SUP in C(x), rejected = the model of C(x) most MB-SIM-similar to
           it (binarize.combined.py; see "choices" for the score that ranks "best")
Baselines:
  random                   two models of C(x) drawn uniformly (seeded per prompt); the higher
                           MB-SUP is chosen, so only the pairing differs from the strategies above
  ultrafeedback_binarized  HuggingFaceH4/ultrafeedback_binarized (the dataset card): chosen = the
                           completion with the highest `overall_score`, rejected = one of the
                           remaining completions at random. GPT-4's per-response ratings, i.e. the
                           instance-wise RLAIF labels the paper compares against.

Choices where the sources are silent or disagree (each one is a decision of this module):
- Normalisation: min-max per benchmark over the models that have that score, as the authors'
  scripts. A trailing "%" is dropped (benchmark.csv mixes 85.37, 86.40% and 0.6371; units do not
  matter after per-column min-max). A benchmark on which fewer than two distinct values remain
  (every model ties, or one model has it) is DROPPED and listed in the stats: it cannot rank models,
  and a constant column would only shrink every MB-SUP gap and inflate every cosine (the scripts
  would divide 0 by 0 there).
- Lower-is-better benchmarks (e.g. toxicity) are negated before normalising, so 1 is always best.
- Missing values: the column mean of the normalised scores (the authors' `df.fillna(df.mean())`).
  MB-SUP is the mean of that FILLED vector, as binarize.score.py computes it; binarize.similarity.py
  and binarize.combined.py average before filling (pandas skips NaN). Both agree on the authors'
  benchmark.csv, where the only gap is a model with no scores at all.
- A model with no score at all (ultralm-65b in benchmark.csv), or absent from the table, has no
  vector: it is never paired (the scripts hard-code "ultralm-65b"); its completions are counted.
- Cosine with an all-zero vector (a model last on every benchmark) is 0, as sklearn's
  cosine_similarity, which the scripts use.
- "Best" in sup_sim is MB-SUP: binarize.combined.py ranks by a per-row `scores` field of an
  unreleased file (likely per-response ratings); MB-SUP keeps the method free of annotation.
- Ties never depend on the order of rows or completions (the scripts take numpy's first argmax in
  the row's order): MB-SUP ties go to the model name that sorts first; among equally similar pairs
  the first in model-name order wins; overall_score ties likewise by model name. Exact MB-SUP ties
  between chosen and rejected (identical vectors) are kept, as in the scripts, and counted.
- --min-similarity tau: the paper's text keeps pairs with MB-SIM >= 0.1, the authors' README says
  0.9 and the scripts build a 0.9 mask without applying it, so the default is no threshold. When
  given, the pair a strategy picks is dropped (and counted) if its MB-SIM < tau; no other pair is
  tried. It applies to sup, sim, sup_sim and random, not to the binarized baseline.
- random: chosen = the higher MB-SUP (not a coin flip), so random differs from sup/sim only in
  which two models are paired, never in which way round.
- ultrafeedback_binarized: its candidates are the completions with a response and a rating (no
  behaviour vector needed, ultralm-65b included, as H4); the rejected one is drawn uniformly from
  ALL the others, so it may tie the chosen one's score (the card does not drop ties; they are
  counted). H4 also removed the truthful_qa prompts: --exclude-source truthful_qa does that.
  The rating is `overall_score` (the card's current recipe) or, with --rating fine_grained, the mean
  of the numeric annotation Ratings ("N/A" excluded), as UltraFeedback's fix_overall_score_issue.py.
- Randomness is seeded per prompt from (seed, strategy, prompt id), so a pair does not change with
  the file order, other rows or --limit.
- A model listed twice in one row: the first completion is kept, the others counted.
- Identical instructions: only the first row with that instruction is used, the later ones are
  skipped (duplicate_prompt), so a prompt id (the sha256 of the instruction, H4's prompt_id) is
  unique in an output file and the same prompt has the same id in every strategy's file.

Input. UltraFeedback rows as published (openbmb/UltraFeedback): JSONL (one object per line) or the
hub's parquet (needs pyarrow). Fields used: `instruction`, `source` (else the file's stem, as the
per-source files are named), `completions` [{`model`, `response`, `overall_score`, `annotations`
{aspect: {"Rating": "1".."5" or "N/A", ...}}, `fine-grained_score`}]. A completion is found by its
own `model` field, never by its position (`models` may be in another order, or list models whose
completion is missing). Scores: a CSV (a `model` column, any case, plus one column per benchmark)
or the results.json that eval.py writes, where each task's value is its primary metric
(TaskResult.primary: the metric eval.py's tables report) and TaskResult.higher_is_better gives the
direction; a model is a results label such as "pythia-1b/karmaBenign".

Accounting, per strategy: every row read ends as one pair or one skip reason, so
`pairs + sum(skipped) == rows_read`; the first file:line places of each reason are listed.
Row skip reasons: bad_json, not_object, no_instruction, empty_instruction, excluded_source,
duplicate_prompt, no_completions, fewer_than_two_candidates, below_min_similarity.
Completions dropped (counted, per reason): not_object, no_model, empty_response, duplicate_model,
and per strategy no_scores / not_in_table (no behaviour vector) or no_rating (binarized).

Output in out_dir (each file written to a temporary and renamed into place only when the whole run
succeeded; stats.json last; pairs files of strategies not in this run are removed):
  pairs-<strategy>.jsonl  {"id", "prompt": [{"role": "user", ...}], "chosen": [{"role":
      "assistant", ...}], "rejected": [...], "chosen_model", "rejected_model", "strategy",
      "similarity" (MB-SIM), "superiority_gap" (MB-SUP chosen - rejected), "score_chosen",
      "score_rejected" (the completions' ratings, null when absent), "source"}; similarity and gap
      are null for a binarized pair whose model has no vector. TRL's conversational preference format.
  stats.json  rows read, per strategy: pairs, skips, distributions (mean, quantiles, histogram) of
      the superiority gap, the similarity and the rating gap, agreement of the pair's order with the
      ratings, chosen/rejected counts per model; the behaviour table; the config.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import io
import math
import numbers
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from karma.checkpoint import atomic_write, atomic_write_json, read_json
from karma.records import input_files

STRATEGIES = ("sup", "sim", "sup_sim", "random", "ultrafeedback_binarized")
RATINGS = ("overall_score", "fine_grained")
MISSING = {"", "n/a", "na", "nan", "none", "null", "-"}  # score cells read as "no score"
EXTENSIONS = (".jsonl", ".parquet")  # looked for in directories
BATCH_ROWS = 256  # parquet rows converted to Python at a time


# ------------------------------------------------------------------------------ behaviour vectors

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


# ------------------------------------------------------------------------------ UltraFeedback rows

def find_files(paths) -> list[Path]:
    """Files named in `paths` (read as parquet when named *.parquet, else as JSONL), directories
    expanded (recursively, sorted) to their *.jsonl and *.parquet files; each file once."""
    return input_files(paths, EXTENSIONS)


def read_rows(path: Path):
    """Yield (location, row or None, skip reason or None): JSONL lines (blank lines ignored) or
    parquet rows."""
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield f"{path}:{n}", None, "bad_json"
                continue
            yield f"{path}:{n}", row, None if isinstance(row, dict) else "not_object"


def _parquet_rows(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    with open(path, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
        cols = [c for c in ("source", "instruction", "models", "completions") if c in pf.schema_arrow.names]
        i = 0
        try:
            for batch in pf.iter_batches(columns=cols, batch_size=BATCH_ROWS):
                for row in batch.to_pylist():
                    yield f"{path}:row {i}", row, None
                    i += 1
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable parquet data at row {i} ({e})") from None


class Completion(NamedTuple):
    model: str
    response: str
    rating: float | None  # overall_score or the fine-grained mean; None when absent


def _number(x) -> float | None:
    """A finite number from a number or a numeric string, else None (bools are not numbers)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def rating_of(completion: dict, rating: str) -> float | None:
    """The completion's rating: `overall_score`, or ("fine_grained") the mean of the numeric
    annotation Ratings with "N/A" left out (UltraFeedback's calculate_average_rating), falling back
    to its `fine-grained_score` field when there are no annotations."""
    if rating == "overall_score":
        return _number(completion.get("overall_score"))
    annotations = completion.get("annotations")
    if isinstance(annotations, dict) and annotations:
        values = [_number(a.get("Rating")) for a in annotations.values() if isinstance(a, dict)]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None
    return _number(completion.get("fine-grained_score"))


def usable_completions(row: dict, rating: str, drops: Counter) -> list[Completion]:
    """The row's completions that have a model name and a non-empty response, one per model (the
    first), in row order; every other completion is counted in `drops` by reason."""
    out, seen = [], set()
    for c in row["completions"]:
        if not isinstance(c, dict):
            drops["not_object"] += 1
            continue
        model, response = c.get("model"), c.get("response")
        if not isinstance(model, str) or not model.strip():
            drops["no_model"] += 1
        elif not isinstance(response, str) or not response.strip():
            drops["empty_response"] += 1
        elif model in seen:
            drops["duplicate_model"] += 1
        else:
            seen.add(model)
            out.append(Completion(model, response, rating_of(c, rating)))
    return out


# ------------------------------------------------------------------------------ strategies

def by_superiority(models, beh: Behaviour) -> list[str]:
    """Models best first: MB-SUP descending, ties by name."""
    return sorted(models, key=lambda m: (-beh.sup[m], m))


def orient(a: str, b: str, beh: Behaviour) -> tuple[str, str]:
    """(chosen, rejected): the higher MB-SUP first; a tie goes to the name that sorts first."""
    return tuple(by_superiority((a, b), beh))


def pick_sup(models: list[str], beh: Behaviour, rng: random.Random) -> tuple[str, str]:
    """SUP: the top two by MB-SUP."""
    ranked = by_superiority(models, beh)
    return ranked[0], ranked[1]


def pick_sim(models: list[str], beh: Behaviour, rng: random.Random) -> tuple[str, str]:
    """SIM: the most similar pair (argmax MB-SIM; ties: the first pair in name order), oriented by MB-SUP."""
    best = max(combinations(sorted(models), 2), key=lambda p: beh.sim(*p))  # max keeps the first maximum
    return orient(*best, beh)


def pick_sup_sim(models: list[str], beh: Behaviour, rng: random.Random) -> tuple[str, str]:
    """SUP+SIM: chosen = top MB-SUP, rejected = the other model most similar to it (ties: by name)."""
    chosen = by_superiority(models, beh)[0]
    rejected = max(sorted(m for m in models if m != chosen), key=lambda m: beh.sim(chosen, m))
    return chosen, rejected


def pick_random(models: list[str], beh: Behaviour, rng: random.Random) -> tuple[str, str]:
    """Random pairing baseline: two distinct models uniformly, oriented by MB-SUP."""
    a, b = rng.sample(sorted(models), 2)
    return orient(a, b, beh)


def pick_binarized(completions: list[Completion], rng: random.Random) -> tuple[Completion, Completion]:
    """H4 ultrafeedback_binarized: chosen = highest rating (ties: by model name), rejected = one
    of the other completions uniformly at random (it may tie the chosen rating)."""
    ranked = sorted(completions, key=lambda c: (-c.rating, c.model))
    return ranked[0], rng.choice(sorted(ranked[1:], key=lambda c: c.model))


PICKERS = {"sup": pick_sup, "sim": pick_sim, "sup_sim": pick_sup_sim, "random": pick_random}


def prompt_rng(seed: int, strategy: str, prompt_id: str) -> random.Random:
    """A generator seeded by (seed, strategy, prompt id) alone: a pair never depends on other rows."""
    digest = hashlib.sha256(f"{seed}\0{strategy}\0{prompt_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_pair(strategy: str, completions: list[Completion], beh: Behaviour, rng: random.Random,
              min_similarity: float | None, drops: Counter):
    """(chosen, rejected) Completions for one prompt, or (None, skip reason); `drops` counts the
    completions that are not candidates for this strategy."""
    if strategy == "ultrafeedback_binarized":
        cands = [c for c in completions if c.rating is not None]
        drops["no_rating"] += len(completions) - len(cands)
        if len(cands) < 2:
            return None, "fewer_than_two_candidates"
        return pick_binarized(cands, rng), None
    cands = {c.model: c for c in completions if c.model in beh.vectors}
    for c in completions:
        if c.model not in beh.vectors:
            drops["no_scores" if c.model in beh.unscored else "not_in_table"] += 1
    if len(cands) < 2:
        return None, "fewer_than_two_candidates"
    chosen, rejected = PICKERS[strategy](list(cands), beh, rng)
    if min_similarity is not None and beh.sim(chosen, rejected) < min_similarity:
        return None, "below_min_similarity"
    return (cands[chosen], cands[rejected]), None


def pair_record(pid: str, instruction: str, source, strategy: str, chosen: Completion, rejected: Completion,
                beh: Behaviour) -> dict:
    both = chosen.model in beh.vectors and rejected.model in beh.vectors
    return {"id": pid, "prompt": [{"role": "user", "content": instruction}],
            "chosen": [{"role": "assistant", "content": chosen.response}],
            "rejected": [{"role": "assistant", "content": rejected.response}],
            "chosen_model": chosen.model, "rejected_model": rejected.model, "strategy": strategy,
            "similarity": beh.sim(chosen.model, rejected.model) if both else None,
            "superiority_gap": beh.sup[chosen.model] - beh.sup[rejected.model] if both else None,
            "score_chosen": chosen.rating, "score_rejected": rejected.rating, "source": source}


# ------------------------------------------------------------------------------ statistics

GAP_EDGES = np.linspace(-1.0, 1.0, 21)  # MB-SUP differences lie in [-1, 1] (vectors are in [0, 1])
SIM_EDGES = np.linspace(0.0, 1.0, 21)  # cosines of non-negative vectors lie in [0, 1]
RATING_EDGES = np.arange(-9.5, 10.0, 1.0)  # overall_score is 1..10, so differences are in [-9, 9]


def distribution(values, edges) -> dict:
    """n, mean, min, p10, p25, median, p75, p90, max and a histogram over fixed `edges` (values
    outside the edges are counted in below/above)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    counts, _ = np.histogram(x, bins=edges)
    return {"n": int(x.size), "mean": float(x.mean()), "min": float(x.min()), "p10": float(q[0]),
            "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "p90": float(q[4]), "max": float(x.max()),
            "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist(),
                          "below": int((x < edges[0]).sum()), "above": int((x > edges[-1]).sum())}}


class StrategyTally:
    """One strategy's pairs, skips (with locations), per-pair measurements and per-model counts."""

    def __init__(self, max_locations: int):
        self.pairs = 0
        self.skipped, self.drops = Counter(), Counter()
        self.locations = defaultdict(list)
        self.gaps, self.sims, self.rating_gaps = [], [], []
        self.agreement = Counter()
        self.superiority_ties = self.rating_ties = 0
        self.chosen, self.rejected = Counter(), Counter()
        self.max_locations = max_locations

    def skip(self, reason: str, location: str):
        self.skipped[reason] += 1
        if len(self.locations[reason]) < self.max_locations:
            self.locations[reason].append(location)

    def add(self, rec: dict):
        self.pairs += 1
        self.chosen[rec["chosen_model"]] += 1
        self.rejected[rec["rejected_model"]] += 1
        if rec["superiority_gap"] is not None:
            self.gaps.append(rec["superiority_gap"])
            self.sims.append(rec["similarity"])
            self.superiority_ties += rec["superiority_gap"] == 0
        a, b = rec["score_chosen"], rec["score_rejected"]
        if a is None or b is None:
            self.agreement["unknown"] += 1
        else:
            self.rating_gaps.append(a - b)
            self.agreement["agree" if a > b else "tie" if a == b else "disagree"] += 1
            self.rating_ties += a == b

    def to_json(self) -> dict:
        known = sum(self.agreement[k] for k in ("agree", "tie", "disagree"))
        return {"pairs": self.pairs, "skipped": dict(self.skipped.most_common()),
                "skip_locations": dict(self.locations), "completions_dropped": dict(self.drops.most_common()),
                "superiority_gap": distribution(self.gaps, GAP_EDGES),
                "similarity": distribution(self.sims, SIM_EDGES),
                "rating_gap": distribution(self.rating_gaps, RATING_EDGES),
                "rating_agreement": {**{k: self.agreement[k] for k in ("agree", "tie", "disagree", "unknown")},
                                     "agree_rate": self.agreement["agree"] / known if known else None},
                "superiority_ties": int(self.superiority_ties), "rating_ties": int(self.rating_ties),
                "models": {m: {"chosen": self.chosen[m], "rejected": self.rejected[m]}
                           for m in sorted(set(self.chosen) | set(self.rejected))}}


# ------------------------------------------------------------------------------ the pipeline

@dataclass
class KinshipConfig:
    ultrafeedback: list  # UltraFeedback files or directories
    scores: Path  # benchmark CSV or eval.py results.json
    out_dir: Path
    strategies: tuple = STRATEGIES
    min_similarity: float | None = None
    seed: int = 0
    limit: int | None = None  # at most this many rows read (unusable ones included)
    rating: str = "overall_score"
    exclude_sources: tuple = ()
    lower_is_better: tuple = ()
    max_locations: int = 20


def check_row(row: dict, path: Path, exclude: set, seen: set) -> tuple[str | None, str, str | None]:
    """(prompt id, source, skip reason or None) of a parsed row. The id is the sha256 of the
    instruction (H4's prompt_id); the source is the row's, else the file's stem. Reasons, checked
    in this order: no_instruction, empty_instruction, excluded_source, duplicate_prompt, no_completions."""
    instruction = row.get("instruction")
    source = row["source"] if isinstance(row.get("source"), str) else path.stem
    if not isinstance(instruction, str):
        return None, source, "no_instruction"
    pid = hashlib.sha256(instruction.encode("utf-8")).hexdigest()
    reason = ("empty_instruction" if not instruction.strip() else "excluded_source" if source in exclude
              else "duplicate_prompt" if pid in seen else None if isinstance(row.get("completions"), list)
              else "no_completions")
    return pid, source, reason


def _write_all(paths: list[Path], produce, tmps=()):
    """Call produce(tmp paths) once; then move every temporary onto its path. atomic_write for
    several files at once: each is renamed into place only after `produce` has returned."""
    if not paths:
        return produce(list(tmps))
    result = []
    atomic_write(paths[0], lambda tmp: result.append(_write_all(paths[1:], produce, (*tmps, tmp))))
    return result[0]


def build_pairs(cfg: KinshipConfig, beh: Behaviour | None = None) -> dict:
    """Read the rows, write pairs-<strategy>.jsonl per strategy and stats.json; returns the stats."""
    start = time.perf_counter()
    strategies = list(dict.fromkeys(cfg.strategies))
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; expected one of {STRATEGIES}")
    if cfg.rating not in RATINGS:
        raise ValueError(f"unknown rating {cfg.rating!r}; expected one of {RATINGS}")
    beh = beh if beh is not None else read_scores(cfg.scores, cfg.lower_is_better)
    files = find_files(cfg.ultrafeedback)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tallies = {s: StrategyTally(cfg.max_locations) for s in strategies}
    drops, unscored_seen, not_listed = Counter(), Counter(), 0
    seen_prompts: set[str] = set()
    rows_read = 0
    exclude = set(cfg.exclude_sources)

    def skip_all(reason, loc):
        for t in tallies.values():
            t.skip(reason, loc)

    def run(tmps):
        nonlocal rows_read, not_listed
        outs = {s: open(tmp, "wb") for s, tmp in zip(strategies, tmps)}
        try:
            for path in files:
                rows = read_rows(path)
                for loc, row, reason in rows:
                    if cfg.limit is not None and rows_read >= cfg.limit:
                        break
                    rows_read += 1
                    if reason is None:
                        pid, source, reason = check_row(row, path, exclude, seen_prompts)
                    if reason is not None:
                        skip_all(reason, loc)
                        continue
                    seen_prompts.add(pid)
                    completions = usable_completions(row, cfg.rating, drops)
                    listed = row.get("models")
                    if isinstance(listed, list):
                        not_listed += sum(c.model not in listed for c in completions)
                    for c in completions:
                        if c.model not in beh.vectors:
                            unscored_seen[c.model] += 1
                    for s in strategies:
                        t = tallies[s]
                        pair, reason = make_pair(s, completions, beh, prompt_rng(cfg.seed, s, pid),
                                                 cfg.min_similarity, t.drops)
                        if pair is None:
                            t.skip(reason, loc)
                            continue
                        rec = pair_record(pid, row["instruction"], source, s, *pair, beh)
                        outs[s].write(orjson.dumps(rec) + b"\n")
                        t.add(rec)
                rows.close()  # closes the file now, even when --limit stopped early
                if cfg.limit is not None and rows_read >= cfg.limit:
                    break
        finally:
            for f in outs.values():
                f.close()

    names = {s: out_dir / f"pairs-{s}.jsonl" for s in strategies}
    _write_all([names[s] for s in strategies], run)
    for s in STRATEGIES:  # pairs of strategies not in this run are stale
        if s not in names and (out_dir / f"pairs-{s}.jsonl").exists():
            (out_dir / f"pairs-{s}.jsonl").unlink()

    per = {s: tallies[s].to_json() for s in strategies}
    for s, t in per.items():
        t["completions_dropped"] = dict((drops + Counter(t["completions_dropped"])).most_common())
        assert t["pairs"] + sum(t["skipped"].values()) == rows_read, (s, t["pairs"], t["skipped"], rows_read)
    stats = {"rows_read": rows_read, "files": [str(p) for p in files],
             "outputs": {s: p.name for s, p in names.items()}, "strategies": per,
             "completions_without_vector": dict(unscored_seen.most_common()),
             "completions_not_in_models_field": not_listed,
             "behaviour": beh.to_json(), "seconds": round(time.perf_counter() - start, 3),
             "config": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "ultrafeedback" else v)
                        for k, v in asdict(cfg).items()}}
    atomic_write_json(out_dir / "stats.json", stats)
    return stats


def summary(stats: dict) -> str:
    """A few lines for the terminal: per strategy, pairs, skips and the gap / similarity medians."""
    beh = stats["behaviour"]
    lines = [f"read {stats['rows_read']:,} rows from {len(stats['files'])} file(s); {len(beh['models'])} models with "
             f"behaviour vectors over {len(beh['benchmarks'])} benchmarks"
             + (f"; never paired (no scores): {', '.join(beh['unscored_models'])}" if beh["unscored_models"] else "")]
    for s, t in stats["strategies"].items():
        skips = ", ".join(f"{r} {n:,}" for r, n in t["skipped"].items()) or "none"
        g, m = t["superiority_gap"], t["similarity"]
        med = (f"; MB-SUP gap median {g['median']:.3f}, MB-SIM median {m['median']:.3f}" if g["n"] else "")
        lines.append(f"  {s}: {t['pairs']:,} pairs{med}; skipped: {skips}")
    return "\n".join(lines)


HELP = "\n\n".join(__doc__.split("\n\n")[:2]) + """

Strategies (one pair per prompt over C(x), the prompt's models with a completion and scores):
  sup      chosen = highest MB-SUP (mean normalised benchmark score), rejected = the second
  sim      the pair with the highest MB-SIM (cosine of the score vectors); higher MB-SUP chosen
  sup_sim  chosen = highest MB-SUP, rejected = the model most MB-SIM-similar to it
  random   two models at random (seeded per prompt); higher MB-SUP chosen
  ultrafeedback_binarized  H4's recipe: chosen = top overall_score, rejected = a random other one
Outputs in --out: pairs-<strategy>.jsonl (TRL's conversational prompt/chosen/rejected, plus models,
MB-SIM, MB-SUP gap, ratings) and stats.json (skips by reason, gap and similarity distributions).
Method, sources and every choice where they are silent: the docstring of karma/data/kinship.py."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="data_prep.py kinship", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ultrafeedback", nargs="+", required=True, type=Path, metavar="PATH",
                   help="UltraFeedback JSONL or parquet files (openbmb/UltraFeedback as published), or directories "
                        "holding them; parquet needs pyarrow")
    p.add_argument("--scores", required=True, type=Path,
                   help="benchmark scores: a CSV with a 'model' column and one column per benchmark (higher is "
                        "better; '%%' allowed; blank/N/A = missing), or eval.py's results.json (each task's primary "
                        "metric)")
    p.add_argument("--strategy", nargs="+", default=list(STRATEGIES), choices=STRATEGIES, metavar="NAME",
                   help=f"one output file per strategy: {', '.join(STRATEGIES)} (default: all)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--min-similarity", type=float, default=None, metavar="TAU",
                   help="drop a kinship pair whose MB-SIM (cosine) is below TAU (default: none; the paper's text "
                        "uses 0.1, the authors' README 0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random and binarized draws (default 0)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many rows (default: all)")
    p.add_argument("--rating", choices=RATINGS, default="overall_score",
                   help="per-completion rating for the binarized baseline and the agreement stats: overall_score "
                        "(default, H4's) or fine_grained (mean of the numeric annotation Ratings)")
    p.add_argument("--exclude-source", nargs="*", default=[], metavar="SOURCE",
                   help="skip rows of these sources (H4 drops truthful_qa)")
    p.add_argument("--lower-is-better", nargs="*", default=[], metavar="BENCHMARK",
                   help="CSV benchmarks where lower is better (results.json gives the direction itself)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (also: KARMA_DEBUG=1)")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit {args.limit}: must be at least 1")
    if args.min_similarity is not None and not -1.0 <= args.min_similarity <= 1.0:
        p.error(f"--min-similarity {args.min_similarity}: a cosine threshold must be in [-1, 1]")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    files = find_files(args.ultrafeedback)  # a bad path fails before anything is written
    if any(f.suffix == ".parquet" for f in files):
        try:
            importlib.import_module("pyarrow.parquet")
        except ImportError:
            raise ValueError(f"{next(f for f in files if f.suffix == '.parquet')}: reading parquet needs pyarrow: "
                             f"pip install pyarrow") from None
    beh = read_scores(args.scores, args.lower_is_better)
    cfg = KinshipConfig(ultrafeedback=args.ultrafeedback, scores=args.scores, out_dir=args.out,
                        strategies=tuple(args.strategy), min_similarity=args.min_similarity, seed=args.seed,
                        limit=args.limit, rating=args.rating, exclude_sources=tuple(args.exclude_source),
                        lower_is_better=tuple(args.lower_is_better))
    stats = build_pairs(cfg, beh)
    print(summary(stats))
    print(f"pairs and stats.json in {args.out}")
    return stats


if __name__ == "__main__":
    from karma.cli import run_main

    sys.exit(run_main(main, prog="kinship"))
