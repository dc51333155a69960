"""karma.data.ultrachat: UltraChat-200k shards/JSONL -> PPO prompts (tiny files made here)."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest

from karma.data import ultrachat
from karma.data.prompts import read_prompts, write_prompts
from karma.data.ultrachat import read_ultrachat

import pyarrow as pa  # optional at run time, a test requirement: the parquet path is always tested
import pyarrow.parquet as pq


def sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row(prompt, answer="Sure.", **extra):
    """A row as in the dataset: prompt, its sha256 id, and the conversation starting with it."""
    r = {"prompt": prompt, "prompt_id": sha(prompt),
         "messages": [{"content": prompt, "role": "user"}, {"content": answer, "role": "assistant"}]}
    return r | extra


def write_parquet(path, rows, schema=None):
    schema = schema or pa.schema([
        ("prompt", pa.string()), ("prompt_id", pa.string()),
        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def write_jsonl(path, lines):
    """lines: objects (dumped as JSON) or raw strings (written as they are)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")


def texts(prompts):
    return [p["messages"][0]["content"] for p in prompts]


def check_invariant(stats):
    assert stats["rows_read"] == stats["kept"] + sum(stats["skipped"].values())


@pytest.fixture
def repo(tmp_path):
    """The hub layout: split-named shards under data/ (train_sft in two shards)."""
    data = tmp_path / "ultrachat_200k" / "data"
    write_parquet(data / "train_sft-00000-of-00002-aaaa.parquet", [row(f"train {i}") for i in range(5)])
    write_parquet(data / "train_sft-00001-of-00002-bbbb.parquet", [row(f"train {i}") for i in range(5, 9)])
    write_parquet(data / "test_sft-00000-of-00001-cccc.parquet", [row("test 0"), row("test 1")])
    write_parquet(data / "train_gen-00000-of-00001-dddd.parquet", [row("gen 0")])
    (tmp_path / "ultrachat_200k" / "README.md").write_text("# card\n")
    return tmp_path / "ultrachat_200k"


def test_reads_requested_split_in_shard_order(repo):
    prompts, stats = read_ultrachat(repo)
    assert texts(prompts) == [f"train {i}" for i in range(9)]
    assert prompts[0] == {"id": "ultrachat-" + sha("train 0"), "source": "ultrachat",
                          "messages": [{"role": "user", "content": "train 0"}]}
    assert [p.split("/")[-1] for p in stats["files"]] == [
        "train_sft-00000-of-00002-aaaa.parquet", "train_sft-00001-of-00002-bbbb.parquet"]
    assert stats["rows_read"] == stats["kept"] == 9 and stats["skipped"] == {} and stats["ids_derived"] == 0
    assert texts(read_ultrachat(repo / "data", split="test_sft")[0]) == ["test 0", "test 1"]
    assert len(read_ultrachat(repo, split=None)[0]) == 12  # every shard
    # a file named explicitly is read whatever its split
    assert texts(read_ultrachat(next((repo / "data").glob("train_gen*")))[0]) == ["gen 0"]


def test_first_user_turn_only(tmp_path):
    multi = row("What is 2+2?", "4")
    multi["messages"] += [{"content": "And 3+3?", "role": "user"}, {"content": "6", "role": "assistant"}]
    fallback = {"prompt": None, "prompt_id": "f" * 64, "messages": [
        {"content": "be brief", "role": "system"}, {"content": "first user", "role": "user"},
        {"content": "second user", "role": "user"}]}
    no_user = {"prompt": None, "prompt_id": "e" * 64, "messages": [{"content": "hi", "role": "assistant"}]}
    write_parquet(tmp_path / "train_sft-00000-of-00001.parquet", [multi, fallback, no_user])
    prompts, stats = read_ultrachat(tmp_path)
    assert [p["messages"] for p in prompts] == [[{"role": "user", "content": "What is 2+2?"}],
                                                [{"role": "user", "content": "first user"}]]
    assert prompts[1]["id"] == "ultrachat-" + "f" * 64
    assert stats["skipped"] == {"no_prompt": 1}
    assert stats["bad_examples"]["no_prompt"] == [f"{tmp_path / 'train_sft-00000-of-00001.parquet'}:row 2"]
    # the same rule on JSONL, where "prompt" may be absent altogether
    write_jsonl(tmp_path / "a.jsonl", [{"messages": fallback["messages"]}])
    prompts, stats = read_ultrachat(tmp_path / "a.jsonl")
    assert prompts[0]["id"] == "ultrachat-" + sha("first user") and stats["ids_derived"] == 1


def test_dedup_whitespace_and_case_keeps_first(tmp_path):
    write_parquet(tmp_path / "train_sft-00000-of-00001.parquet",
                  [row("Hello   World"), row(" hello\tworld\n"), row("Other")])
    write_jsonl(tmp_path / "z.jsonl", [row("HELLO WORLD"), row("hello world!")])
    prompts, stats = read_ultrachat(tmp_path)
    assert texts(prompts) == ["Hello   World", "Other", "hello world!"]  # stripped, inner spacing kept
    assert stats["skipped"] == {"duplicate": 2}
    assert stats["bad_examples"]["duplicate"] == [
        f"{tmp_path / 'train_sft-00000-of-00001.parquet'}:row 1", f"{tmp_path / 'z.jsonl'}:1"]
    check_invariant(stats)


def test_same_id_different_text_is_skipped(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row("one"), row("two", prompt_id=sha("one"))])
    prompts, stats = read_ultrachat(tmp_path)
    assert texts(prompts) == ["one"] and stats["skipped"] == {"duplicate_id": 1}


def test_limit_stops_reading_early(repo, monkeypatch):
    batches = []
    iter_batches = pq.ParquetFile.iter_batches

    def counting(self, *a, **k):
        for b in iter_batches(self, *a, **k):
            batches.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting)
    monkeypatch.setattr(ultrachat, "BATCH_ROWS", 2)
    prompts, stats = read_ultrachat(repo, limit=3)
    assert texts(prompts) == ["train 0", "train 1", "train 2"]
    assert stats["rows_read"] == stats["kept"] == 3
    assert batches == [2, 2] and len(stats["files"]) == 1  # third batch and second shard never read
    # the limit applies after dedup, and is a prefix of the full read
    full, _ = read_ultrachat(repo)
    for n in (0, 1, 5, 9, 100):
        assert read_ultrachat(repo, limit=n)[0] == full[:n]
    assert read_ultrachat(repo, limit=0)[1]["rows_read"] == 0


def test_limit_counts_unique_prompts(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row("a"), row("A"), row(" a "), row("b"), row("c")])
    prompts, stats = read_ultrachat(tmp_path / "a.jsonl", limit=2)
    assert texts(prompts) == ["a", "b"]
    assert stats["rows_read"] == 4 and stats["skipped"] == {"duplicate": 2}  # "c" never read


def test_min_max_chars(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row("hi"), row("  hello  "), row("x" * 11), row("   ")])
    prompts, stats = read_ultrachat(tmp_path, min_chars=3, max_chars=10)
    assert texts(prompts) == ["hello"]  # length of the stripped text
    assert stats["skipped"] == {"too_short": 1, "too_long": 1, "empty": 1}
    assert texts(read_ultrachat(tmp_path)[0]) == ["hi", "hello", "x" * 11]  # defaults: non-empty
    for bad in ({"min_chars": 5, "max_chars": 4}, {"max_chars": 0}, {"min_chars": -1}, {"limit": -1}):
        with pytest.raises(ValueError, match="bad limits"):
            read_ultrachat(tmp_path, **bad)


def test_bad_jsonl_rows_are_counted_with_locations(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [
        row("good one"),                               # 1
        '{"prompt": "unterminated',                    # 2 malformed_json
        '"just a string"',                             # 3 not_an_object
        "",                                            # 4 blank: not a row
        {"prompt": None, "prompt_id": "x"},            # 5 no_prompt
        {"prompt": 42},                                # 6 bad_type
        {"messages": "not a list"},                    # 7 bad_type
        row("good two", prompt_id=7),                  # 8 bad_type (prompt_id)
        {"prompt": "   \n"},                           # 9 empty
        {"prompt": None, "messages": [{"role": "user", "content": None}]},  # 10 no_prompt
        row("good three"),                             # 11
    ])
    with open(path, "ab") as f:
        f.write(b'{"prompt": "\xff\xfe"}\n')           # 12 not UTF-8: malformed_json
    prompts, stats = read_ultrachat(path)
    assert texts(prompts) == ["good one", "good three"]
    assert stats["skipped"] == {"malformed_json": 2, "not_an_object": 1, "no_prompt": 2, "bad_type": 3, "empty": 1}
    assert stats["bad_examples"] == {
        "malformed_json": [f"{path}:2", f"{path}:12"], "not_an_object": [f"{path}:3"],
        "no_prompt": [f"{path}:5", f"{path}:10"], "bad_type": [f"{path}:6", f"{path}:7", f"{path}:8"],
        "empty": [f"{path}:9"]}
    assert stats["rows_read"] == 11
    check_invariant(stats)


def test_bad_examples_are_capped(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["{oops"] * 20 + ["[1, 2]"] * 5 + [row("fine")])
    prompts, stats = read_ultrachat(tmp_path)
    assert len(prompts) == 1 and stats["skipped"] == {"malformed_json": 20, "not_an_object": 5}
    assert len(stats["bad_examples"]["malformed_json"]) == ultrachat.MAX_EXAMPLES == 20
    write_jsonl(tmp_path / "a.jsonl", ["{oops"] * 25)
    stats = read_ultrachat(tmp_path)[1]
    assert stats["skipped"] == {"malformed_json": 25} and len(stats["bad_examples"]["malformed_json"]) == 20
    check_invariant(stats)


def test_bad_parquet_rows_and_files(tmp_path):
    write_parquet(tmp_path / "train_sft-0.parquet", [
        row("ok"), {"prompt": None, "prompt_id": None, "messages": None}, row("ok 2", prompt_id=None)])
    prompts, stats = read_ultrachat(tmp_path / "train_sft-0.parquet")
    assert texts(prompts) == ["ok", "ok 2"] and prompts[1]["id"] == "ultrachat-" + sha("ok 2")
    assert stats["skipped"] == {"no_prompt": 1} and stats["ids_derived"] == 1
    assert stats["bad_examples"]["no_prompt"] == [f"{tmp_path / 'train_sft-0.parquet'}:row 1"]
    check_invariant(stats)

    ints = tmp_path / "ints.parquet"
    int_schema = pa.schema([("prompt", pa.int64()), ("prompt_id", pa.string())])
    write_parquet(ints, [{"prompt": 1, "prompt_id": "a"}], int_schema)
    assert read_ultrachat(ints)[1]["skipped"] == {"bad_type": 1}
    other = tmp_path / "other.parquet"
    write_parquet(other, [{"text": "hi"}], pa.schema([("text", pa.string())]))
    with pytest.raises(ValueError, match=r"other\.parquet.*no 'prompt' or 'messages' column"):
        read_ultrachat(other)
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(ValueError, match=r"fake\.parquet: not a readable parquet file"):
        read_ultrachat(fake)


def test_missing_pyarrow_is_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    shard = tmp_path / "train_sft-00000-of-00001.parquet"
    shard.write_bytes(b"PAR1")
    message = r"train_sft-00000-of-00001\.parquet: reading parquet needs pyarrow: pip install pyarrow"
    with pytest.raises(ImportError, match=message):
        read_ultrachat(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", [row("no pyarrow needed")])
    assert texts(read_ultrachat(tmp_path / "a.jsonl")[0]) == ["no pyarrow needed"]


def test_wrong_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        read_ultrachat(tmp_path / "nope.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no .parquet"):
        read_ultrachat(tmp_path / "empty")
    (tmp_path / "gen" / "data").mkdir(parents=True)
    (tmp_path / "gen" / "data" / "train_gen-00000-of-00001.parquet").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="gen: .*split 'train_sft'"):
        read_ultrachat(tmp_path / "gen")


def test_write_read_round_trip(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row("Ça va? 日本語 🙂"), row("second")])
    prompts, _ = read_ultrachat(tmp_path / "a.jsonl")
    out = tmp_path / "out" / "prompts.jsonl"
    write_prompts(prompts, out)
    assert read_prompts(out) == prompts
    assert "日本語 🙂" in out.read_text(encoding="utf-8")  # ensure_ascii=False
    assert sorted(p.name for p in out.parent.iterdir()) == ["prompts.jsonl"]  # no temp file left


@pytest.mark.parametrize("line, msg", [
    ("{not json", "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "x"}]}', 'string "id"'),
    ('{"id": "a", "messages": []}', 'non-empty "messages"'),
    ('{"id": "a", "messages": [{"role": "user"}]}', '"content": str'),
    ('{"id": "p", "messages": [{"role": "user", "content": "dup"}]}', "duplicate id 'p'"),
])
def test_read_prompts_names_the_bad_line(tmp_path, line, msg):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "p", "messages": [{"role": "user", "content": "ok"}]}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"p\.jsonl:2: .*{msg}"):
        read_prompts(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_prompts(tmp_path / "missing.jsonl")
