"""Reading JSONL inputs so that nothing is lost silently: every unusable line is counted under a
reason, and the first few file:line places of each reason are kept for the report.

    skips = Skips()
    for where, obj in jsonl_objects(path, skips):   # bad lines -> skips ("malformed_json", ...)
        problem = check(obj)
        if problem:
            skips.add(problem, where)
            continue
        ...
    stats = {"read": n_used + skips.total(), "used": n_used, **skips.report()}
"""

import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson


class Skips:
    """Counts of skipped records by reason, with the first `max_locations` places of each."""

    def __init__(self, max_locations: int = 20):
        self.counts = Counter()
        self.locations: dict[str, list[str]] = {}
        self.max_locations = max_locations

    def add(self, reason: str, where: str | None = None) -> None:
        self.counts[reason] += 1
        places = self.locations.setdefault(reason, [])
        if where is not None and len(places) < self.max_locations:
            places.append(where)

    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> dict:
        """{"skipped": {reason: n} (most frequent first), "skip_locations": {reason: ["file:line", ...]}}"""
        return {"skipped": dict(self.counts.most_common()), "skip_locations": dict(self.locations)}


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict | None, str | None]]:
    """("file:line", object, None) for every line of a JSONL file that holds a JSON object, and
    ("file:line", None, reason) for any other non-blank line: malformed_json (also invalid UTF-8)
    or not_an_object. Blank lines are passed over."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:  # also invalid UTF-8
                yield where, None, "malformed_json"
                continue
            yield (where, obj, None) if isinstance(obj, dict) else (where, None, "not_an_object")


def jsonl_objects(path: Path, skips: Skips) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for every line of a JSONL file that holds a JSON object; the other
    non-blank lines are counted in `skips` (jsonl_rows' reasons)."""
    for where, obj, reason in jsonl_rows(path):
        if reason is None:
            yield where, obj
        else:
            skips.add(reason, where)


def require_pyarrow(files: list[Path]) -> None:
    """A ValueError naming the first parquet file of `files`, before anything is read, if pyarrow is missing."""
    if any(f.suffix == ".parquet" for f in files):
        try:
            importlib.import_module("pyarrow.parquet")
        except ImportError:
            raise ValueError(f"{next(f for f in files if f.suffix == '.parquet')}: reading parquet needs pyarrow: "
                             f"pip install pyarrow") from None


def parquet_rows(path: Path, columns: tuple[str, ...], batch_rows: int, to_rows=None,
                 required_any: tuple[str, ...] = ()) -> Iterator[tuple[str, dict, None]]:
    """("file:row i", row, None) per row of a parquet file (jsonl_rows' shape), reading those of
    `columns` it has, batch_rows rows at a time (memory stays bounded whatever the file's size);
    to_rows(batch) turns a pyarrow RecordBatch into row dicts (default: batch.to_pylist()). A missing
    pyarrow, an unreadable file, a file without any of `required_any` and data that cannot be read
    or converted are errors naming the file (and the row)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    with open(path, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            raise ValueError(f"{path}: not a readable parquet file ({e})") from None
        names = pf.schema_arrow.names
        if required_any and not set(required_any) & set(names):
            raise ValueError(f"{path}: no {' or '.join(map(repr, required_any))} column (columns: {names})")
        i = 0
        try:
            for batch in pf.iter_batches(columns=[c for c in columns if c in names], batch_size=batch_rows):
                for row in (to_rows or (lambda b: b.to_pylist()))(batch):
                    yield f"{path}:row {i}", row, None
                    i += 1
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable parquet data at row {i} ({e})") from None


def input_files(paths, suffixes: tuple[str, ...], keep: Callable[[Path], bool] = lambda f: True,
                kept: str = "") -> list[Path]:
    """Files named in `paths` (taken whatever their name), directories expanded recursively (sorted
    by path) to their files with one of `suffixes` that `keep` accepts (`kept` says which, for the
    error); each file once. A missing path, or a directory without such files, is a
    FileNotFoundError naming it."""
    files, seen = [], set()
    for p in map(Path, [paths] if isinstance(paths, (str, Path)) else paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes and keep(f))
            if not found:
                raise FileNotFoundError(f"{p}: no {'/'.join(suffixes)} files in this directory{kept}")
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                files.append(f)
    return files
