"""Streaming readers for Pushshift Reddit dumps (Baumgartner et al. 2020, "The Pushshift Reddit
Dataset", ICWSM; the input of the KARMA paper, arXiv 2605.26738, Section 3).

A dump is one NDJSON object per line: `RS_YYYY-MM` files hold submissions, `RC_YYYY-MM` comments,
as zstd (with a 2 GiB window: max_window_size = 2**31), gzip, or plain NDJSON. The compression is
told by the content (the zstd and gzip magic bytes), not by the name, so a renamed file reads the
same. Files stream in 1 MiB chunks and split on newlines as bytes, so a UTF-8 character cut by a
chunk boundary is rejoined before decoding; memory per file is one chunk plus one line.

Input paths (`find_dumps`): a file named on the command line is read whatever its name; a directory
is searched recursively for files that look like dumps (RS_*/RC_* names with a dump suffix or
none, or any name with a .zst/.gz/.ndjson/.jsonl suffix) and the other files (stats.json,
README.txt, hidden files) are passed to `on_ignored`. A dump that cannot be used is refused before
any record is read, with a FileNotFoundError or a BadDump (a ValueError) whose message starts with
its path: missing, unreadable, empty (also once decompressed, or blank lines only), a first line
that is not a JSON object (a failed download saved as .zst, another format, bz2/xz compression),
or records of no recognisable kind.

Reading is split in two so that parsing can run in other processes (karma/data/prepare.py):
`line_blocks` decompresses a file into blocks of whole lines (about BLOCK_BYTES each, with the
number of their first line), and `parse_block` turns one block into (line number, record) pairs.
Nothing is lost silently: every non-blank line becomes a normalised Submission / Comment or a skip
reason (malformed JSON, invalid UTF-8, a missing or mistyped field), and a truncated compressed
file is reported once to `on_truncated` after its readable lines (its cut-off last line is a
malformed_json skip). Records are NamedTuples that unpickle through tuple.__new__, in C: they
cross process boundaries at a fraction of the cost of a slots dataclass or a plain NamedTuple
(whose unpickling calls a Python function per record).

Field variants normalised: missing `name` (derived from `id`), `created_utc` as a string,
`retrieved_on` (older dumps) vs `retrieved_utc` (newer), missing `stickied`/`distinguished`.
Texts arrive HTML-escaped as Reddit's API serves them (`&amp;`, `&gt;` for quotes, `&lt;`) and
are unescaped.
"""

import gzip
import re
from collections.abc import Callable, Iterator
from html import unescape
from pathlib import Path
from typing import NamedTuple

import orjson
import zstandard

CHUNK_BYTES = 1 << 20
BLOCK_BYTES = 1 << 20  # lines handed to a worker at a time (~1,200 records)
ZSTD_WINDOW = 2**31  # Pushshift compresses with --long=31
ZSTD_MAGIC, GZIP_MAGIC = b"\x28\xb5\x2f\xfd", b"\x1f\x8b"
DUMP_SUFFIXES = (".zst", ".gz", ".ndjson", ".jsonl")  # taken from a directory whatever the name
NAMED_DUMP_SUFFIXES = DUMP_SUFFIXES + (".json", "")  # taken from a directory when named RS_*/RC_*


class Submission(NamedTuple):
    name: str  # t3_<id>
    title: str
    selftext: str
    score: int
    author: str
    subreddit: str
    created_utc: int
    retrieved_utc: int | None
    is_self: bool
    over_18: bool
    stickied: bool
    removed: bool  # removed_by_category set (by mods, reddit, deleted by the author)

    def __reduce__(self):  # see the module docstring
        return tuple.__new__, (Submission, tuple(self))


class Comment(NamedTuple):
    name: str  # t1_<id>
    parent_id: str  # t1_<id> (reply to a comment) or t3_<id> (top-level reply to the submission)
    link_id: str  # t3_<id> of the submission
    body: str
    score: int
    author: str
    subreddit: str
    created_utc: int
    retrieved_utc: int | None
    stickied: bool
    distinguished: bool  # "moderator"/"admin" badge: official, not a reply competing for karma

    def __reduce__(self):
        return tuple.__new__, (Comment, tuple(self))


class TruncatedInput(Exception):
    pass


class BadDump(ValueError):
    """A dump file that cannot be used; the message starts with its path."""


def dump_kind(path: Path) -> str | None:
    """'submission' for RS_* files, 'comment' for RC_* files, None when the name does not say."""
    name = path.name.upper()
    return "submission" if name.startswith("RS_") else "comment" if name.startswith("RC_") else None


def looks_like_dump(path: Path) -> bool:
    """Whether a file found in a directory is taken as a dump (see the module docstring)."""
    suffix = path.suffix.lower()
    if path.name.startswith("."):
        return False
    return suffix in NAMED_DUMP_SUFFIXES if dump_kind(path) else suffix in DUMP_SUFFIXES


def find_dumps(paths, on_ignored: Callable[[Path], None] = lambda path: None) -> list[Path]:
    """Files and directories (searched recursively) -> the dump files, each checked by check_dump.
    Files in a directory that do not look like dumps go to on_ignored."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            dumps, ignored = [], []
            for f in sorted(f for f in p.rglob("*") if f.is_file()):
                (dumps if looks_like_dump(f) else ignored).append(f)
            if not dumps:
                names = [str(f.relative_to(p)) for f in ignored]
                listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
                raise FileNotFoundError(f"{p}: no dump files (RS_*/RC_* or {', '.join(DUMP_SUFFIXES)}) in this "
                                        f"directory; ignored: {listed or 'nothing'}")
            for f in ignored:
                on_ignored(f)
            files += dumps
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise FileNotFoundError(f"{p}: not a regular file or directory")
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    for f in files:
        check_dump(f)
    return files


def check_dump(path: Path) -> None:
    """Raise BadDump unless the file's first line with data (decompressed) is a JSON object: an
    empty file, a failed download or a file of another format is refused before any record is read."""
    try:
        first = next((line for line in read_lines(path) if line.strip()), None)
    except TruncatedInput:
        return  # compressed data corrupt from the start: reported as truncated when read
    if first is None:
        detail = "" if path.stat().st_size == 0 else " (no data: only whitespace, or an empty compressed stream)"
        raise BadDump(f"{path}: empty file{detail}")
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise BadDump(f"{path}: not a dump: its first line is not a JSON object ({first[:40]!r})")


def read_lines(path: Path) -> Iterator[bytes]:
    """Raw lines of a dump file (bytes, newline stripped); raises TruncatedInput at a cut-off end."""
    tail = b""
    try:
        for chunk in _chunks(path):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            yield from lines
    except TruncatedInput:  # the cut-off file's partial last line is still reported
        if tail:
            yield tail
        raise
    if tail:
        yield tail


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's content in chunks, decompressed as its first bytes (not its name) say."""
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise BadDump(f"{path}: cannot read ({e.strerror or e})") from None
    with raw:
        head = raw.read(4)
        raw.seek(0)
        if head.startswith(ZSTD_MAGIC):
            yield from _zstd_chunks(raw)
        elif head.startswith(GZIP_MAGIC):
            yield from _gzip_chunks(raw)
        else:
            yield from iter(lambda: raw.read(CHUNK_BYTES), b"")


def _zstd_chunks(raw) -> Iterator[bytes]:
    """Decompress zstd frames one after another; a frame cut off by the end of the file raises."""
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_WINDOW)
    frame, in_frame = dctx.decompressobj(), False
    try:
        while data := raw.read(CHUNK_BYTES):
            while data:
                yield frame.decompress(data)
                in_frame = True
                if frame.eof:  # the frame ended inside this chunk: the rest starts the next frame
                    data, frame, in_frame = frame.unused_data, dctx.decompressobj(), False
                else:
                    data = b""
    except zstandard.ZstdError as e:
        raise TruncatedInput(f"corrupt zstd data ({e})") from None
    if in_frame and not frame.eof:
        raise TruncatedInput("the zstd stream ends inside a frame")


def _gzip_chunks(raw) -> Iterator[bytes]:
    try:
        with gzip.GzipFile(fileobj=raw) as f:
            yield from iter(lambda: f.read(CHUNK_BYTES), b"")
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise TruncatedInput(f"corrupt gzip data ({e})") from None


def file_kind(path: Path, peek_lines: int = 100) -> str:
    """'submission' or 'comment': from the RS_/RC_ file name, else from the first record's fields
    ('title' -> submission, 'body' -> comment)."""
    kind = dump_kind(path)
    if kind:
        return kind
    try:
        for _, line in zip(range(peek_lines), read_lines(path)):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and ("title" in obj or "body" in obj):
                return "submission" if "title" in obj else "comment"
    except TruncatedInput:
        pass
    raise BadDump(f"{path}: cannot tell whether it holds submissions or comments; name it RS_*/RC_* "
                  f"(as Pushshift does) or put a record with 'title' or 'body' in its first lines")


def line_blocks(path: Path, on_truncated: Callable[[Path, int], None]) -> Iterator[tuple[int, bytes]]:
    """(number of the block's first line, whole lines as bytes) for one dump file, in order. Blocks
    hold about BLOCK_BYTES (a decompressed zstd chunk is ~10x CHUNK_BYTES: it is cut at newlines),
    and split into the same lines as read_lines gives. A cut-off compressed file yields its partial
    last line as a block of its own, then calls on_truncated(path, lines read)."""
    tail, line_no = b"", 1
    try:
        for chunk in _chunks(path):
            data, start = tail + chunk, 0
            while start < len(data):
                end = data.find(b"\n", start + BLOCK_BYTES) + 1 if len(data) - start > BLOCK_BYTES else 0
                end = end or data.rfind(b"\n", start) + 1  # the last whole line of the chunk
                if end <= start:
                    break
                yield line_no, data[start:end]
                line_no += data.count(b"\n", start, end)
                start = end
            tail = data[start:]
    except TruncatedInput:
        if tail:
            yield line_no, tail
            line_no += 1
        on_truncated(path, line_no - 1)
        return
    if tail:
        yield line_no, tail


def parse_block(kind: str, first_line: int, block: bytes) -> list[tuple[int, Submission | Comment | str]]:
    """(line number, normalised record or skip reason) for each non-blank line of a block of
    `kind` records (from line_blocks)."""
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()  # the empty string after the last newline, not a line
    parsed = []
    for line_no, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            parsed.append((line_no, _json_error_reason(line)))
            continue
        parsed.append((line_no, normalize(kind, obj) if isinstance(obj, dict) else "not_an_object"))
    return parsed


def _json_error_reason(line: bytes) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "malformed_json"


_NAME = re.compile(r"t[13]_[0-9a-z]+")


def normalize(kind: str, obj: dict) -> Submission | Comment | str:
    """A raw dump object -> record, or the skip reason ('missing_field:x' / 'bad_type:x' /
    'bad_value:x'). Records whose fields all have their usual types (nearly all) take a fast path
    (a third of the time); the others, and all errors, go through `normalize_checked`."""
    get = obj.get
    id_, created, score, author = get("id"), get("created_utc"), get("score"), get("author")
    subreddit, stickied, name = get("subreddit"), get("stickied", False), get("name")
    retrieved = get("retrieved_utc", get("retrieved_on"))
    if not (type(id_) is str and type(created) is int and type(score) is int and type(author) is str
            and type(subreddit) is str and type(stickied) is bool and (name is None or type(name) is str)
            and (retrieved is None or type(retrieved) is int)):
        return normalize_checked(kind, obj)
    if kind == "submission":
        title, selftext = get("title"), get("selftext", "")
        is_self, over_18 = get("is_self", False), get("over_18", False)
        if not (type(title) is str and type(selftext) is str and type(is_self) is bool and type(over_18) is bool):
            return normalize_checked(kind, obj)
        return Submission(name=name if name is not None else "t3_" + id_, title=unescape(title),
                          selftext=unescape(selftext), score=score, author=author, subreddit=subreddit,
                          created_utc=created, retrieved_utc=retrieved, is_self=is_self, over_18=over_18,
                          stickied=stickied, removed=get("removed_by_category") is not None)
    parent_id, link_id, body, distinguished = get("parent_id"), get("link_id"), get("body"), get("distinguished")
    if not (type(parent_id) is str and type(link_id) is str and type(body) is str
            and (distinguished is None or type(distinguished) is str)
            and _NAME.fullmatch(parent_id) and link_id.startswith("t3_")):
        return normalize_checked(kind, obj)
    return Comment(name=name if name is not None else "t1_" + id_, parent_id=parent_id, link_id=link_id,
                   body=unescape(body), score=score, author=author, subreddit=subreddit, created_utc=created,
                   retrieved_utc=retrieved, stickied=stickied, distinguished=distinguished is not None)


def normalize_checked(kind: str, obj: dict) -> Submission | Comment | str:
    """normalize, field by field in a fixed order: the first unusable field names the skip reason;
    ints also come as integral floats or numeric strings, defaults fill missing optional fields."""
    def field(name, types, default=...):
        value = obj.get(name)
        if value is None:
            if default is ...:
                raise _Bad(f"missing_field:{name}")
            return default
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
            raise _Bad(f"bad_type:{name}")
        return value

    try:
        id_ = field("id", str)
        created = _int(field("created_utc", (int, float, str)), "created_utc")
        retrieved = obj.get("retrieved_utc", obj.get("retrieved_on"))
        retrieved = None if retrieved is None else _int(retrieved, "retrieved_utc")
        common = dict(score=_int(field("score", (int, float)), "score"), author=field("author", str, "[deleted]"),
                      subreddit=field("subreddit", str), created_utc=created, retrieved_utc=retrieved,
                      stickied=bool(field("stickied", bool, False)))
        if kind == "submission":
            name = field("name", str, "t3_" + id_)
            return Submission(name=name, title=unescape(field("title", str)),
                              selftext=unescape(field("selftext", str, "")),
                              is_self=bool(field("is_self", bool, False)), over_18=bool(field("over_18", bool, False)),
                              removed=obj.get("removed_by_category") is not None, **common)
        name = field("name", str, "t1_" + id_)
        parent_id, link_id = field("parent_id", str), field("link_id", str)
        if not _NAME.fullmatch(parent_id):
            return "bad_value:parent_id"
        if not link_id.startswith("t3_"):
            return "bad_value:link_id"
        return Comment(name=name, parent_id=parent_id, link_id=link_id, body=unescape(field("body", str)),
                       distinguished=field("distinguished", str, None) is not None, **common)
    except _Bad as e:
        return str(e)


class _Bad(Exception):
    pass


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _int(value, name: str) -> int:
    """Ints, integral floats and numeric strings (old dumps store created_utc as "1420070400")."""
    try:
        return int(float(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise _Bad(f"bad_type:{name}") from None
