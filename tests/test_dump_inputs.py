"""Which input files the pipeline reads, how it tells their compression, and how it refuses bad ones.

The compression comes from the content (zstd and gzip magic bytes), not the name; a directory
contributes only files that look like dumps and lists the others; every bad input is one error
(FileNotFoundError or ValueError) whose message starts with the path, raised before any record is
read, which data_prep.py prints as one line.
"""

from __future__ import annotations

import bz2
import gzip
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import zstandard

from karma.data.pushshift import find_dumps, read_lines
from test_data_pipeline import comment, post, run

POSTS = [post("p")]
COMMENTS = [comment("a", "t3_p", "t3_p"), comment("b", "t3_p", "t3_p")]


def ndjson(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def put(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_compression_is_told_by_content_not_name(tmp_path):
    posts = put(tmp_path / "RS_2015-01.txt", zst(ndjson(POSTS)))           # zstd named as text
    replies = put(tmp_path / "replies.data", gzip.compress(ndjson(COMMENTS)))  # gzip, unknown suffix
    stats = run(tmp_path, posts, replies)
    assert stats["examples"] == 2 and stats["records_read"] == 3
    assert list(read_lines(posts)) == [orjson.dumps(POSTS[0])]


@pytest.mark.parametrize("name, data", [
    ("RC_2015-01.zst", b""),                    # zero bytes
    ("RC_2015-01.zst", zst(b"")),               # a valid zstd frame holding nothing
    ("RC_2015-01.gz", gzip.compress(b"")),
    ("RC_2015-01.ndjson", b"\n\n  \n"),         # blank lines only
    ("anything.txt", zst(b"")),                 # named on the command line only: a directory ignores it
], ids=["zero_bytes", "empty_zstd", "empty_gzip", "blank_lines", "empty_zstd_any_name"])
def test_an_empty_dump_is_an_error_naming_it(tmp_path, name, data):
    posts = put(tmp_path / "dump" / "RS_2015-01.ndjson", ndjson(POSTS))
    empty = put(tmp_path / "dump" / name, data)
    ways = [[posts, empty]] + ([[tmp_path / "dump"]] if name.startswith("RC_") else [])
    for inputs in ways:  # named on the command line, or found in a directory
        with pytest.raises(ValueError, match="empty file") as err:
            run(tmp_path, *inputs)
        assert str(err.value).startswith(f"{empty}: ")
    assert not (tmp_path / "out" / "stats.json").exists()  # refused before reading any record


def test_a_failed_download_named_like_a_dump_is_an_error(tmp_path):
    page = put(tmp_path / "RC_2015-01.zst", b"<html><body>404 Not Found</body></html>\n")  # a failed download
    with pytest.raises(ValueError, match=r"not a dump: its first line is not a JSON object \(b'<html>") as err:
        run(tmp_path, page)
    assert str(err.value).startswith(f"{page}: ")


def test_a_directory_reads_dumps_and_lists_the_files_it_ignores(tmp_path):
    d = tmp_path / "dumps"
    put(d / "RS_2015-01.zst", zst(ndjson(POSTS)))
    put(d / "RC_2015-01.json", ndjson(COMMENTS[:1]))         # decompressed dump: RC_ name, .json
    put(d / "RC_2015-02", zst(ndjson(COMMENTS[1:])))         # RC_ name without a suffix
    ignored = [put(d / "stats.json", b'{"examples": 3}'), put(d / "README.txt", b"my dumps\n"),
               put(d / ".DS_Store", b"\x00\x01"), put(d / "RC_2015-03.zst.part", b"\x28\xb5"),
               put(d / "old" / "notes.md", b"# notes\n")]
    stats = run(tmp_path, d)
    assert stats["examples"] == 2
    assert [f["path"] for f in stats["files"]] == [str(d / n) for n in ("RC_2015-01.json", "RC_2015-02",
                                                                        "RS_2015-01.zst")]
    assert stats["ignored_files"] == sorted(map(str, ignored))
    found = []
    assert find_dumps([d], on_ignored=found.append) == [d / "RC_2015-01.json", d / "RC_2015-02", d / "RS_2015-01.zst"]
    assert found == sorted(ignored)


def test_a_directory_without_dumps_names_what_it_ignored(tmp_path):
    d = tmp_path / "dumps"
    put(d / "stats.json", b"{}")
    put(d / "README.txt", b"hi\n")
    with pytest.raises(FileNotFoundError, match=r"no dump files .*ignored: README\.txt, stats\.json") as err:
        run(tmp_path, d)
    assert str(err.value).startswith(f"{d}: ")


def test_a_file_named_on_the_command_line_is_read_whatever_its_name(tmp_path):
    notes = put(tmp_path / "stats.json", ndjson(COMMENTS))  # a dump despite its name: the kind comes from content
    stats = run(tmp_path, put(tmp_path / "posts.txt", ndjson(POSTS)), notes)
    assert stats["examples"] == 2 and stats["ignored_files"] == []


def _bad_inputs(tmp_path, monkeypatch):
    yield tmp_path / "missing.zst"
    yield put(tmp_path / "empty" / "README.txt", b"not a dump\n").parent
    yield put(tmp_path / "RC_zero.zst", b"")
    yield put(tmp_path / "RC_page.gz", b"<html>\n")
    yield put(tmp_path / "mystery.jsonl", b'{"foo": 1}\n')                      # records of no known kind
    yield put(tmp_path / "README.txt", b"These are my dumps.\n")               # another format
    yield put(tmp_path / "RC_2015-01.json", b'[{"id": "a", "body": "hi"}]\n')  # a JSON array, not NDJSON
    yield put(tmp_path / "RC_2010-01.bz2", bz2.compress(ndjson(COMMENTS)))    # a compression not read
    unreadable = put(tmp_path / "RC_locked.ndjson", ndjson(COMMENTS))

    def refuse(path, *args, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("karma.data.pushshift.open", refuse, raising=False)
    yield unreadable


def test_every_bad_input_is_one_line_starting_with_its_path(tmp_path, monkeypatch):
    for bad in _bad_inputs(tmp_path, monkeypatch):
        with pytest.raises((FileNotFoundError, ValueError)) as err:
            run(tmp_path, bad)
        message = str(err.value)
        assert message.startswith(f"{bad}: ") and "\n" not in message, message


def test_the_cli_prints_a_bad_input_as_one_line(tmp_path):
    empty = put(tmp_path / "RC_2015-01.zst", b"")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "data_prep.py"), "--input", str(empty), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=root)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]  # after the progress bar's lines
    assert error == f"data_prep.py: error: {empty}: empty file (--debug shows the traceback)"
    assert "Traceback" not in done.stderr
