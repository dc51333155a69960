"""Reading JSONL inputs so that nothing is lost silently: every unusable line is counted under a
reason, and the first few file:line places of each reason are kept for the report.

    skips = Skips()
    for where, obj in jsonl_objects(path, skips):   # malformed lines -> skips ("malformed_json", ...)
        problem = check(obj)
        if problem:
            skips.add(problem, where)
            continue
        ...
    stats = {"read": n_used + skips.total(), "used": n_used, **skips.report()}
"""

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


def jsonl_objects(path: Path, skips: Skips) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for every line of a JSONL file that holds a JSON object; blank lines
    are passed over, the others counted in `skips` as malformed_json (also invalid UTF-8) or
    not_an_object."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:  # also invalid UTF-8
                skips.add("malformed_json", where)
                continue
            if isinstance(obj, dict):
                yield where, obj
            else:
                skips.add("not_an_object", where)


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
