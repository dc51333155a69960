"""data_prep across worker processes, and language identification only where it can change an example.

The reference below is the single-pass pipeline this one replaced (every record through every
filter, language last, then the threads). The pipeline must give its examples exactly, and its
counts and skip locations exactly once the records it never identifies count as English; with 1
or 2 workers, byte for byte the same files.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import zstandard

from karma.data import prepare as prep
from karma.data import pushshift
from karma.data.filters import FilterConfig, comment_skip_reason, language_text, submission_skip_reason
from karma.data.format import context_messages, scrub
from karma.data.prepare import PrepConfig, Tally, prepare
from karma.data.pushshift import file_kind, find_dumps, line_blocks, normalize, normalize_checked, parse_block
from synthetic import write_dump
from karma.data.threads import ThreadConfig, _ancestors, is_rewarding
from test_data_pipeline import assert_accounted, comment, post, write

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
TIMING = {"seconds", "records_per_s"}


class StubDetector:
    """English unless the text holds "xyzzy"; records every text it is asked about."""

    def __init__(self):
        self.seen = []

    def are_english(self, texts, min_prob, prior_odds=10.0):
        self.seen += texts
        return ["xyzzy" not in t for t in texts]

    def is_english(self, text, min_prob, prior_odds=10.0):
        return self.are_english([text], min_prob, prior_odds)[0]


class OracleDetector(StubDetector):
    """The stub's verdict for the texts in `identified`, English for every other text."""

    def __init__(self, identified):
        super().__init__()
        self.identified = set(identified)

    def are_english(self, texts, min_prob, prior_odds=10.0):
        return [t not in self.identified or "xyzzy" not in t for t in texts]


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A small synthetic dump (350 posts) made messier: unique "xyzzy<n>" markers (non-English for the
    stub; n in letters, as the language check reads every digit as 0) in some posts and comments,
    broken lines, blank lines, duplicated comments (one whose first copy is non-English, so the
    second is kept), a duplicated post, a reply whose parent sits in another thread (a stray: it
    competes in that thread), a parent cycle."""
    d = tmp_path_factory.mktemp("messy")
    write_dump(d, n_posts=350, seed=3, compression="ndjson")
    rng = random.Random(0)
    marker = ("".join(chr(ord("a") + int(digit)) for digit in str(n)) for n in range(10**6))
    files = {p.name: [orjson.loads(line) for line in p.read_bytes().splitlines()] for p in sorted(d.iterdir())}
    for name, records in files.items():
        for r in records:
            if rng.random() < 0.12:
                field = "title" if name.startswith("RS_") else "body"
                r[field] += f" xyzzy{next(marker)}"
    jan, feb = files["RC_2015-01.ndjson"], files["RC_2015-02.ndjson"]
    twin = dict(jan[10], body=jan[10]["body"] + f" xyzzy{next(marker)}")  # first copy non-English ...
    feb.append(dict(jan[10], body="A second copy of this reply, edited, in the next month's file."))  # ... kept
    jan[10] = twin
    keeps = FilterConfig(detector=StubDetector())
    kept_posts = {p.name for r in files["RS_2015-01.ndjson"]
                  if not isinstance(p := normalize("submission", r), str) and not submission_skip_reason(p, keeps)}
    kept = next(r for r in jan[11:] if not isinstance(c := normalize("comment", r), str) and c.link_id in kept_posts
                and not comment_skip_reason(c, keeps))
    feb.append(dict(kept))  # a copy of a reply the filters keep: duplicate
    files["RS_2015-02.ndjson"].append(dict(files["RS_2015-01.ndjson"][5]))
    a, b = jan[21], jan[43]  # replies that become examples, in two threads
    jan.append(dict(a, id="xthread", name="t1_xthread", parent_id=b["link_id"], created_utc=0))  # a's thread, b's post
    jan.append(dict(a, id="cyc1", name="t1_cyc1", parent_id="t1_cyc2", body="Round and round we go, friends."))
    jan.append(dict(a, id="cyc2", name="t1_cyc2", parent_id="t1_cyc1", body="And round again, my good friend."))
    for name, records in files.items():
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        if name == "RC_2015-01.ndjson":
            lines = data.splitlines(keepends=True)
            lines[7:7] = [b'{"id": "broken", "body": \n', b"\n", b'{"id": "latin", "body": "caf\xe9"}\n']
            data = b"".join(lines)
        if name.startswith("RC_2015-02"):
            (d / name).unlink()
            (d / "RC_2015-02.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
        else:
            (d / name).write_bytes(data)
    return d


def reference(inputs, filters: FilterConfig, threads: ThreadConfig):
    """The single-pass pipeline, as it was: (tally, examples in order, files in reading order)."""
    files = find_dumps(inputs)
    kinds = {p: file_kind(p) for p in files}
    order = [p for p in files if kinds[p] == "submission"] + [p for p in files if kinds[p] == "comment"]
    tally, posts, comments = Tally(20), {}, {}
    for file, path in enumerate(order):
        kind = kinds[path]
        for first, block in line_blocks(path, lambda *_: None):
            for line, record in parse_block(kind, first, block):
                tally.read[kind] += 1
                if isinstance(record, str):
                    reason = record
                elif kind == "submission":
                    reason = "duplicate" if record.name in posts else submission_skip_reason(record, filters)
                else:
                    reason = ("post_unavailable" if record.link_id not in posts else
                              "duplicate" if record.name in comments else comment_skip_reason(record, filters))
                if reason:
                    tally.skip(kind, reason, (file, line))
                else:
                    (posts if kind == "submission" else comments)[record.name] = record
    return tally, list(reference_examples(posts, comments, threads, tally.outcome)), order


def reference_examples(posts, comments, cfg: ThreadConfig, on_outcome):
    """threads.build_examples as it was before threads could be built one by one (git show
    bf69d31:karma/data/threads.py), with every participant's name handed to every scrub."""
    children = defaultdict(list)
    for c in sorted(comments.values(), key=lambda c: (c.created_utc, c.name)):
        children[c.parent_id].append(c)
    by_thread = defaultdict(list)
    for c in comments.values():
        by_thread[c.link_id].append(c)
    for post in sorted(posts.values(), key=lambda p: (p.created_utc, p.name)):
        thread = sorted(by_thread.get(post.name, ()), key=lambda c: (c.created_utc, c.name))
        if len(children[post.name]) < cfg.min_responses:
            on_outcome("submission", "too_few_responses")
            for c in thread:
                on_outcome("comment", "thread_too_small")
            continue
        n_examples = 0
        for comment in thread:
            chain = _ancestors(comment, post, comments, cfg.max_depth)
            if isinstance(chain, str):
                on_outcome("comment", chain)
                continue
            n_examples += 1
            on_outcome("comment", None)
            siblings = [s for s in children[comment.parent_id] if s.name != comment.name][: cfg.max_siblings]
            people = [post.author, comment.author] + [c.author for c in chain] + [s.author for s in siblings]
            parent_score = chain[-1].score if chain else post.score
            yield {
                "id": comment.name, "thread_id": post.name, "parent_id": comment.parent_id,
                "messages": [{**m, "content": scrub(m["content"], people)}
                             for m in context_messages(post.title, post.selftext, [c.body for c in chain])],
                "response": scrub(comment.body.strip(), people),
                "label": int(is_rewarding(comment.score, parent_score, cfg.reward_ratio)),
                "score": comment.score, "parent_score": parent_score,
                "siblings": [{"id": s.name, "text": scrub(s.body.strip(), people), "score": s.score} for s in siblings],
                "meta": {"subreddit": post.subreddit, "created_utc": comment.created_utc},
            }
        on_outcome("submission", None if n_examples else "no_examples")


def examples_by_split(examples, split):
    return [e for e in examples if prep.split_of(e["thread_id"], 10.0) == split]


def shard_rows(out, split):
    return [{k: v for k, v in json.loads(line).items() if k != "split"}
            for f in sorted(out.glob(f"{split}-*.jsonl")) for line in f.read_text().splitlines()]


def test_examples_exact_and_unidentified_records_count_as_english(tmp_path, messy):
    threads = ThreadConfig(max_depth=2)  # some synthetic reply chains are deeper: thread_too_deep happens
    stub = StubDetector()
    stats = prepare(PrepConfig(inputs=[messy], out_dir=tmp_path / "out", threads=threads,
                               filters=FilterConfig(detector=stub)))
    assert_accounted(stats)
    # examples: those of identifying every record
    every = StubDetector()
    _, truth, _ = reference([messy], FilterConfig(detector=every), threads)
    for split in ("train", "heldout"):
        assert shard_rows(tmp_path / "out", split) == examples_by_split(truth, split)
    # counts and locations: those of identifying every record, with the unidentified ones as English
    tally, _, order = reference([messy], FilterConfig(detector=OracleDetector(stub.seen)), threads)
    for kind in ("submission", "comment"):
        s = stats["by_kind"][kind]
        assert (s["read"], s["kept"], s["skipped"]) == (tally.read[kind], tally.kept[kind], dict(tally.skipped[kind]))
    assert stats["skip_locations"] == {r: [f"{order[f]}:{n}" for f, n in places]
                                       for r, places in sorted(tally.locations.items(), key=lambda kv: kv[1][:1])}
    # the fixture exercises what it is meant to
    comments = stats["by_kind"]["comment"]["skipped"]
    assert {"non_english", "duplicate", "parent_unavailable", "thread_too_deep", "thread_too_small",
            "post_unavailable", "malformed_json", "invalid_utf8"} <= set(comments)
    assert stats["by_kind"]["submission"]["skipped"]["duplicate"] == 1
    assert any(s["id"] == "t1_xthread" for e in truth for s in e["siblings"])  # a stray competes in b's thread
    assert len(stub.seen) < len(every.seen)  # fewer texts identified than by the reference


def test_moved_reasons_are_only_from_language_to_thread_or_cheap_reasons(tmp_path, messy):
    """Against the reference with every record identified, only non_english (and post_unavailable,
    for the comments of a post nobody identified) lose records, to thread or cheap-filter reasons."""
    stats = prepare(PrepConfig(inputs=[messy], out_dir=tmp_path / "out", filters=FilterConfig(detector=StubDetector())))
    tally, _, _ = reference([messy], FilterConfig(detector=StubDetector()), ThreadConfig())
    for kind in ("submission", "comment"):
        new, old = stats["by_kind"][kind]["skipped"], tally.skipped[kind]
        assert stats["by_kind"][kind]["kept"] == tally.kept[kind]
        for reason in set(new) | set(old):
            moved = new.get(reason, 0) - old.get(reason, 0)
            if reason in ("non_english", "post_unavailable"):
                assert moved <= 0, reason
            else:
                assert moved >= 0 and (moved == 0 or reason not in ("duplicate", "malformed_json")), reason
    assert stats["by_kind"]["comment"]["skipped"]["non_english"] < tally.skipped["comment"]["non_english"]


def _without_timing(stats: dict) -> dict:
    stats = {k: v for k, v in stats.items() if k not in TIMING}
    stats["config"] = {k: v for k, v in stats["config"].items() if k not in ("workers", "out_dir")}
    return stats


@pytest.mark.parametrize("inputs", ["sample", "messy"])
def test_one_or_two_workers_write_the_same_bytes(tmp_path, messy, inputs):
    source = SAMPLE if inputs == "sample" else messy
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        stats = prepare(PrepConfig(inputs=[source], out_dir=out, workers=n, shard_size=400))
        assert_accounted(stats) and stats["config"]["workers"] == n
        outs[n] = out
    files = sorted(p.name for p in outs[1].iterdir())
    assert files == sorted(p.name for p in outs[2].iterdir()) and len(files) > 3
    for name in files:
        if name == "stats.json":
            a, b = (json.loads((outs[n] / name).read_text()) for n in (1, 2))
            assert _without_timing(a) == _without_timing(b)
        else:
            assert (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes(), name


def test_sample_examples_match_identifying_every_record(tmp_path):
    """On data/sample with the real fastText detector: the examples of the single-pass pipeline."""
    stats = prepare(PrepConfig(inputs=[SAMPLE], out_dir=tmp_path / "out"))
    _, truth, _ = reference([SAMPLE], FilterConfig(), ThreadConfig())
    for split in ("train", "heldout"):
        assert shard_rows(tmp_path / "out", split) == examples_by_split(truth, split)
    assert stats["examples"] == len(truth) > 1000


def test_language_id_skips_what_the_thread_check_drops(tmp_path):
    d = tmp_path / "dump"
    d.mkdir()
    posts = [post("live"), post("short", title="A post with one reply only, sadly enough"),
             post("link", is_self=False, selftext="")]
    cs = [comment("a", "t3_live", "t3_live"), comment("b", "t3_live", "t3_live"),
          comment("b1", "t1_b", "t3_live"),                          # parent chain intact: identified
          comment("orphan", "t1_gone", "t3_live"),                  # parent never read: parent_unavailable
          comment("orphan1", "t1_orphan", "t3_live"),               # below it: parent_unavailable
          comment("lone", "t3_short", "t3_short"),                  # 1 reply < min_responses 2
          comment("linked", "t3_link", "t3_link")]                  # post failed a cheap filter
    stub = StubDetector()
    stats = prepare(PrepConfig(inputs=[write(d / "RS_a.ndjson", posts), write(d / "RC_a.ndjson", cs)],
                               out_dir=tmp_path / "out", filters=FilterConfig(detector=stub)))
    assert_accounted(stats)
    identified = sorted(stub.seen)
    expected = sorted(language_text(t, 200) for t in [
        "What is the best way to learn cooking at home?\nI have tried a few recipes and would love advice "
        "from experienced people."] + [f"Start with simple recipes and practise your knife skills every day, "
                                       f"it really helps a lot. ({c})" for c in ("a", "b", "b1")])
    assert identified == expected
    assert stats["by_kind"]["comment"]["skipped"] == {"parent_unavailable": 2, "thread_too_small": 1,
                                                      "post_unavailable": 1}
    assert stats["by_kind"]["submission"]["skipped"] == {"too_few_responses": 1, "non_text": 1}


def test_skip_locations_stay_exact_across_blocks_and_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(pushshift, "BLOCK_BYTES", 2048)  # many blocks, lines cut at block ends
    d = tmp_path / "dump"
    d.mkdir()
    records = [orjson.dumps(comment(f"c{i}", "t3_p", "t3_p")) + b"\n" for i in range(300)]
    broken = {17, 18, 150, 299}
    lines = [b'{"id": "broken", \n' if i in broken else r for i, r in enumerate(records)]
    (d / "RC_a.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(b"".join(lines)))
    write(d / "RS_a.ndjson", [post("p")])
    expected = [f"{d / 'RC_a.zst'}:{i + 1}" for i in sorted(broken)]
    for n in (1, 2):
        stats = prepare(PrepConfig(inputs=[d], out_dir=tmp_path / f"out{n}", workers=n))
        assert stats["skip_locations"]["malformed_json"] == expected
        assert stats["examples"] == 300 - len(broken)


def test_normalize_fast_path_agrees_with_the_checked_one():
    rng = random.Random(0)
    objs = [(file_kind(p), orjson.loads(line)) for p in sorted(SAMPLE.glob("R*.zst"))
            for line in pushshift.read_lines(p)]
    values = [None, True, False, 0, 7, 1.0, 1.5, "1420070400", "", "t1_abc", "t3_abc", "x", [], {}]
    for kind, obj in rng.sample(objs, 60):
        assert normalize(kind, obj) == normalize_checked(kind, obj)
        for key in [*obj, "name", "retrieved_utc", "stickied", "distinguished", "selftext"]:
            for value in values:
                for variant in (dict(obj, **{key: value}), {k: v for k, v in obj.items() if k != key}):
                    fast, checked = normalize(kind, variant), normalize_checked(kind, variant)
                    assert fast == checked and type(fast) is type(checked), (key, value)


def test_workers_flag(capsys):
    import data_prep

    assert data_prep.parse_args(["--input", "x", "--out", "y"]).workers == prep.default_workers() >= 1
    assert data_prep.parse_args(["--input", "x", "--out", "y", "--workers", "3"]).workers == 3
    with pytest.raises(SystemExit) as e:
        data_prep.parse_args(["--input", "x", "--out", "y", "--workers", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(": error: --workers 0: must be at least 1")


def test_shards_stream_to_disk_atomically(tmp_path):
    (tmp_path / "train-00007.jsonl").write_text("from an earlier run\n")
    with prep.ShardWriter(tmp_path, shard_size=2) as writer:
        for i in range(3):
            writer.write("train", b'{"i": %d}' % i)
        assert [p.name for p in tmp_path.glob("*.jsonl")] == ["train-00000.jsonl"]  # stale one gone, next hidden
    assert writer.paths == ["train-00000.jsonl", "train-00001.jsonl", "heldout-00000.jsonl"]
    assert (tmp_path / "train-00001.jsonl").read_bytes() == b'{"i": 2}\n'
    assert (tmp_path / "heldout-00000.jsonl").read_bytes() == b""  # a split without examples: an empty shard
    failed = tmp_path / "failed"
    failed.mkdir()
    with pytest.raises(RuntimeError):
        with prep.ShardWriter(failed, shard_size=2) as writer:
            writer.write("train", b"{}")
            raise RuntimeError("stopped")
    assert list(failed.iterdir()) == []  # no shard, no temporary file
