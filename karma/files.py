"""Files that are never half written: atomic writes of files and directories, JSON that is always
valid, and reads that name the file (and line) they fail on.

Atomic: write to a temporary file in the same directory, flush it to disk, then rename over the
target (os.replace is atomic within one filesystem), so a reader or a resumed run sees the old
file or the new one, never half of it. Directories (exports, data sets) are written whole into a
temporary sibling and swapped in with two renames (`<dir>` -> `.<dir>.old`, temporary -> `<dir>`);
if a process dies between the two, `recover_directory` puts the old one back.

Temporary names carry a dot (hidden) or `.tmp`: `.<name>.<random>.tmp` (files), `.<dir>.tmp-<pid>`
(directories). A run killed mid-write leaves them behind; the next run that takes the lock of the
same --out removes them (karma/checkpoint.py: remove_leftovers, which reads TEMPORARY and OLD below).
Nothing here follows a symbolic link when it deletes: a link is unlinked, its target left alone.
"""

import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

# atomic_write's `.<file>.<random>.tmp`, atomic_directory's `.<dir>.tmp-<pid>`
TEMPORARY = re.compile(r"\..+\.tmp(?:-(\d+))?")
OLD = re.compile(r"\.(.+)\.old")  # replace_directory's `.<dir>.old`


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path) to produce the content, then move it to `path` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def finite_json(obj):
    """`obj` with every non-finite float (NaN, +-inf) replaced by None, so it is valid JSON (the
    standard has no NaN); returns (clean object, sorted list of the dotted keys that were replaced)."""
    replaced = []

    def clean(x, where):
        if isinstance(x, float) and not math.isfinite(x):
            replaced.append(where)
            return None
        if isinstance(x, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return x

    return clean(obj, ""), sorted(replaced)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically; non-finite numbers become null and are listed under "nonfinite"."""
    obj, replaced = finite_json(obj)
    if replaced and isinstance(obj, dict):
        obj["nonfinite"] = replaced
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))


def read_json(path: str | os.PathLike):
    """Parse a JSON file; a missing file or bad JSON is an error naming the file (and line)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[tuple[str, object]]:
    """(raw line, parsed record) for every line of a JSONL log. A torn last line (a process killed
    while writing it, or one still writing) is left out; a bad line elsewhere is an error naming
    file:line. Lines end at "\n" only: str.splitlines would also break at U+2028, U+2029, U+0085 and
    the other Unicode line breaks, which JSON written as UTF-8 keeps raw inside strings (a sampled
    reply held one)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")  # the last is "" after a final "\n"
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append((line + "\n", json.loads(line)))
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not valid JSON") from None
    return records


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """On resume: drop the log records a killed run wrote after its last checkpoint (those with
    record[key] > last) and a torn last line, so the resumed run's records follow on without
    duplicates."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for line, record in read_jsonl(path) if record.get(key, -1) <= last]
    atomic_write(path, lambda p: Path(p).write_text("".join(kept)))


# ------------------------------------------------------------------------------ atomic directories

def remove_path(path: Path) -> None:
    """Delete a file, a directory tree or a symbolic link (only the link, never what it points to)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_directory(target: str | os.PathLike) -> None:
    """Undo a swap that a killed process left half done: `<dir>` gone, `.<dir>.old` still there."""
    target = Path(target)
    if not target.exists() and _old(target).exists():
        os.rename(_old(target), target)


def replace_directory(tmp: Path, target: Path) -> None:
    """Move the complete directory `tmp` to `target`, replacing what was there."""
    recover_directory(target)
    if os.path.lexists(target):  # a dangling link too
        remove_path(_old(target))
        os.rename(target, _old(target))
    os.rename(tmp, target)
    remove_path(_old(target))


@contextmanager
def atomic_directory(target: str | os.PathLike):
    """`with atomic_directory(d) as tmp:` write the files into `tmp`; on success `tmp` replaces `d`
    as a whole (readers see the old directory or the new one, never a mix), on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    remove_path(tmp)
    tmp.mkdir()
    try:
        yield tmp
        replace_directory(tmp, target)
    finally:
        remove_path(tmp)
