"""UltraFeedback (openbmb/UltraFeedback) rows and their usable completions, read from local files.

Rows as published: JSONL (one object per line) or the hub's parquet (needs pyarrow). Fields used:
`instruction`, `source`, `models`, `completions` [{`model`, `response`, `overall_score`,
`annotations` {aspect: {"Rating": "1".."5" or "N/A", ...}}, `fine-grained_score`}]. A completion is
found by its own `model` field, never by its position (`models` may be in another order, or list
models whose completion is missing).

A completion is usable when it names its model and has a non-empty response; a model listed twice
in one row keeps its first completion. Its rating is `overall_score` (the current recipe of
HuggingFaceH4/ultrafeedback_binarized) or, as "fine_grained", the mean of the numeric annotation
Ratings ("N/A" excluded), as UltraFeedback's fix_overall_score_issue.py. A bad JSONL line comes
back with its reason (malformed_json, not_an_object) and a dropped completion is counted by reason
(not_an_object, no_model, empty_response, duplicate_model), for karma/data/kinship.py to account for;
a parquet file that cannot be read (or pyarrow missing) is an error naming the file.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import NamedTuple


from karma.records import input_files, jsonl_rows, parquet_rows

RATINGS = ("overall_score", "fine_grained")
EXTENSIONS = (".jsonl", ".parquet")  # looked for in directories
BATCH_ROWS = 256  # parquet rows converted to Python at a time


def find_files(paths) -> list[Path]:
    """Files named in `paths` (read as parquet when named *.parquet, else as JSONL), directories
    expanded (recursively, sorted) to their *.jsonl and *.parquet files; each file once."""
    return input_files(paths, EXTENSIONS)


def read_rows(path: Path):
    """Yield (location, row or None, skip reason or None): JSONL lines (blank lines ignored; the
    reasons of karma.records.jsonl_rows) or parquet rows."""
    if path.suffix == ".parquet":
        return parquet_rows(path, ("source", "instruction", "models", "completions"), BATCH_ROWS)
    return jsonl_rows(path)


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
            drops["not_an_object"] += 1
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
