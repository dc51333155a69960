"""The Reddit data pipeline on hand-built dumps: filters, labels, threads, formats, splits, bad input."""

from __future__ import annotations

import gzip
import json

import orjson
import pytest
import zstandard

from karma.data.format import render, render_prompt, scrub
from karma.data.prepare import PrepConfig, prepare, split_of
from karma.data.threads import ThreadConfig, is_rewarding

T0 = 1420070400  # 2015-01-01 00:00 UTC
LATER = T0 + 90 * 86400  # retrieved three months later: scores are mature
ENGLISH = "Start with simple recipes and practise your knife skills every day, it really helps a lot."


def post(id, **kw):
    record = dict(id=id, name=f"t3_{id}", title="What is the best way to learn cooking at home?",
                  selftext="I have tried a few recipes and would love advice from experienced people.",
                  is_self=True, url=f"https://reddit.com/r/AskCooking/{id}", score=100, over_18=False,
                  author=f"op_{id}", subreddit="AskCooking", created_utc=T0, retrieved_on=LATER, stickied=False)
    record.update(kw)
    return record


def comment(id, parent, link, **kw):
    record = dict(id=id, name=f"t1_{id}", parent_id=parent, link_id=link, body=f"{ENGLISH} ({id})", score=50,
                  author=f"user_{id}", subreddit="AskCooking", created_utc=T0 + 60, retrieved_on=LATER,
                  distinguished=None, stickied=False)
    record.update(kw)
    return record


def write(path, records, raw_lines=()):
    data = b"".join(orjson.dumps(r) + b"\n" for r in records) + b"".join(raw_lines)
    if path.suffix == ".zst":
        data = zstandard.ZstdCompressor(level=3).compress(data)
    elif path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def run(tmp_path, *inputs, **kw):
    return prepare(PrepConfig(inputs=list(inputs), out_dir=tmp_path / "out", **kw))


def examples(tmp_path, split=None):
    files = sorted((tmp_path / "out").glob(f"{split or '*'}-*.jsonl"))
    return {e["id"]: e for f in files if not f.name.startswith("prompts")
            for e in map(json.loads, f.read_text().splitlines())}


def assert_accounted(stats):
    assert stats["records_kept"] + stats["records_skipped"] == stats["records_read"]
    for s in stats["by_kind"].values():
        assert s["kept"] + sum(s["skipped"].values()) == s["read"]


def test_every_filter_is_counted_under_its_reason(tmp_path):
    d = tmp_path / "dump"
    d.mkdir()
    posts = [post("ok"), post("nsfw", over_18=True), post("link", is_self=False, selftext=""),
             post("gone", selftext="[removed]"), post("pin", stickied=True),
             post("short", title="Hi?", selftext=""), post("young", retrieved_on=T0 + 30),
             post("de", title="Wie lernt man am besten zu Hause kochen?",
                  selftext="Ich habe schon einige Rezepte ausprobiert und hätte gern Ratschläge."),
             post("lonely")]
    link = "t3_ok"
    comments = [comment("c1", link, link), comment("c2", link, link),
                comment("del", link, link, body="[deleted]"), comment("rm", link, link, body="[removed]"),
                comment("auto", link, link, author="AutoModerator"),
                comment("bot", link, link, author="helpful_Bot"), comment("sticky", link, link, stickied=True),
                comment("mod", link, link, distinguished="moderator"), comment("tiny", link, link, body="lol"),
                comment("fresh", link, link, retrieved_on=T0 + 120),
                comment("fr", link, link, body="Je pense que c'est une très bonne idée de commencer par des recettes simples."),
                comment("orphan", "t3_nowhere", "t3_nowhere"), comment("deadparent", "t1_del", link),
                comment("only", "t3_lonely", "t3_lonely"),
                # replies enough for the German post's thread, so its language decides (a post short of
                # replies is too_few_responses whatever its language: karma/data/prepare.py)
                comment("de1", "t3_de", "t3_de"), comment("de2", "t3_de", "t3_de")]
    stats = run(tmp_path, write(d / "RS_2015-01.ndjson", posts), write(d / "RC_2015-01.ndjson", comments))
    assert_accounted(stats)
    assert stats["by_kind"]["submission"]["skipped"] == {
        "explicit": 1, "non_text": 1, "deleted_or_removed": 1, "stickied": 1,
        "too_short": 1, "score_not_mature": 1, "non_english": 1, "too_few_responses": 1}
    assert stats["by_kind"]["comment"]["skipped"] == {
        "deleted_or_removed": 2, "bot": 2, "stickied": 1, "distinguished": 1,
        "too_short": 1, "score_not_mature": 1, "non_english": 1, "post_unavailable": 3,
        "parent_unavailable": 1, "thread_too_small": 1}
    assert set(examples(tmp_path)) == {"t1_c1", "t1_c2"}
    assert stats["posts"] == 1 and stats["comments"] == 2 and stats["subreddits"] == 1


def test_records_without_retrieval_time_pass_the_maturity_filter(tmp_path):
    d = tmp_path / "dump"
    d.mkdir()
    p = post("p")
    del p["retrieved_on"]
    cs = [comment("a", "t3_p", "t3_p", retrieved_utc=T0 + 60), comment("b", "t3_p", "t3_p")]
    del cs[1]["retrieved_on"]
    stats = run(tmp_path, write(d / "RS_x.ndjson", [p]), write(d / "RC_x.ndjson", cs))
    # retrieved_utc (newer dumps) is read; the one reply left makes the thread too small
    assert stats["by_kind"]["comment"]["skipped"] == {"score_not_mature": 1, "thread_too_small": 1}
    stats = run(tmp_path, write(d / "RS_x.ndjson", [p]),
                write(d / "RC_x.ndjson", [cs[1], comment("c", "t3_p", "t3_p")]))
    assert stats["examples"] == 2


def test_label_rule_top_level_nested_and_nonpositive_parents(tmp_path):
    link = "t3_p"
    cs = [comment("top40", link, link, score=40), comment("top39", link, link, score=39),  # vs post 100
          comment("neg", link, link, score=-5),
          comment("r1", "t1_neg", link, score=1), comment("r0", "t1_neg", link, score=0),  # parent <= 0
          comment("deep", "t1_top40", link, score=16), comment("deeper", "t1_deep", link, score=6)]
    d = tmp_path / "dump"
    d.mkdir()
    stats = run(tmp_path, write(d / "RS_a.ndjson", [post("p", score=100)]), write(d / "RC_a.ndjson", cs))
    ex = examples(tmp_path)
    labels = {k.removeprefix("t1_"): (e["label"], e["parent_score"]) for k, e in ex.items()}
    assert labels == {"top40": (1, 100), "top39": (0, 100), "neg": (0, 100), "r1": (1, -5), "r0": (0, -5),
                      "deep": (1, 40), "deeper": (0, 16)}
    assert stats["parent_score_clamped"] == 2
    assert is_rewarding(4, 10, 0.4) and not is_rewarding(3, 10, 0.4) and is_rewarding(1, 0, 0.4)


def test_ancestors_siblings_and_message_roles(tmp_path):
    link = "t3_p"
    cs = [comment("a", link, link, created_utc=T0 + 10), comment("b", link, link, created_utc=T0 + 20),
          comment("a1", "t1_a", link, created_utc=T0 + 30, body="First reply to a, explaining the method in detail."),
          comment("a2", "t1_a", link, created_utc=T0 + 40),
          comment("a3", "t1_a", link, created_utc=T0 + 35),
          comment("a1x", "t1_a1", link, created_utc=T0 + 50)]
    d = tmp_path / "dump"
    d.mkdir()
    run(tmp_path, write(d / "RS_a.ndjson", [post("p")]), write(d / "RC_a.ndjson", cs))
    ex = examples(tmp_path)
    deep = ex["t1_a1x"]
    assert [m["role"] for m in deep["messages"]] == ["user", "assistant", "user"]  # post, a, a1
    assert deep["messages"][0]["content"].startswith("What is the best way to learn cooking at home?\nI have")
    assert deep["messages"][2]["content"] == "First reply to a, explaining the method in detail."
    assert [m["role"] for m in ex["t1_a1"]["messages"]] == ["user", "user"]  # post, then the parent a
    assert [m["role"] for m in ex["t1_a"]["messages"]] == ["user"]
    assert [s["id"] for s in ex["t1_a1"]["siblings"]] == ["t1_a3", "t1_a2"]  # by time, without itself
    assert [s["id"] for s in ex["t1_a"]["siblings"]] == ["t1_b"]
    run(tmp_path, d, threads=ThreadConfig(max_siblings=1))
    assert [s["id"] for s in examples(tmp_path)["t1_a1"]["siblings"]] == ["t1_a3"]


def test_generalized_format_leaks_no_metadata_and_conditioned_adds_it(tmp_path):
    link = "t3_p"
    p = post("p", subreddit="AskScience", author="curious_cat",
             selftext="Mods of r/AskScience and /u/curious_cat asked: why is the sky blue? See r/askscience wiki.")
    cs = [comment("a", link, link, author="photon_fan", subreddit="AskScience",
                  body="&gt; why blue\n\nRayleigh scattering &amp; more, as photon_fan explained before; "
                       "thanks u/curious_cat and /r/AskScience."),
          comment("b", link, link, subreddit="AskScience", created_utc=T0 + 3 * 3600 + 5 * 60)]
    d = tmp_path / "dump"
    d.mkdir()
    run(tmp_path, write(d / "RS_a.ndjson", [p]), write(d / "RC_a.ndjson", cs))
    for ex in examples(tmp_path).values():
        text = render(ex["messages"], ex["response"])  # generalized
        for leak in ("AskScience", "askscience", "curious_cat", "photon_fan", "2015", "UTC"):
            assert leak not in text, (leak, text)
        assert text == render_prompt(ex["messages"]) + " " + ex["response"]
        assert text.endswith("Assistant: " + ex["response"])
        if ex["id"] == "t1_a":
            assert ex["response"].startswith("> why blue\n\nRayleigh scattering & more")
        conditioned = render(ex["messages"], ex["response"], ex["meta"], fmt="conditioned")
        assert conditioned.startswith("[Subreddit: r/AskScience | Posted: 2015-01-01 ")
        assert conditioned.endswith(text)
    b = examples(tmp_path)["t1_b"]
    assert "&gt;" not in json.dumps(examples(tmp_path))
    assert render_prompt(b["messages"], b["meta"], "conditioned").startswith(
        "[Subreddit: r/AskScience | Posted: 2015-01-01 03:05 UTC]\nUser: ")
    assert scrub("see u/Bob_1 and r/pics, or bob_1 directly", ["Bob_1"]) == "see u/[user] and r/[subreddit], or [user] directly"
    with pytest.raises(ValueError, match="conditioned format needs meta"):
        render_prompt(b["messages"], None, "conditioned")


def test_splits_are_by_thread_disjoint_and_deterministic(tmp_path):
    posts = [post(f"p{i}") for i in range(200)]
    cs = [comment(f"c{i}x{j}", f"t3_p{i}", f"t3_p{i}") for i in range(200) for j in range(2)]
    d = tmp_path / "dump"
    d.mkdir()
    stats = run(tmp_path, write(d / "RS_a.ndjson", posts), write(d / "RC_a.ndjson", cs))
    train, heldout = examples(tmp_path, "train"), examples(tmp_path, "heldout")
    assert len(train) + len(heldout) == 400
    assert not {e["thread_id"] for e in train.values()} & {e["thread_id"] for e in heldout.values()}
    assert all(e["split"] == "train" for e in train.values()) and all(e["split"] == "heldout" for e in heldout.values())
    assert 10 <= stats["splits"]["heldout"]["threads"] <= 35  # ~10% of 200 threads
    assert all(split_of(e["thread_id"], 10.0) == "heldout" for e in heldout.values())
    first = (tmp_path / "out" / "train-00000.jsonl").read_bytes()
    run(tmp_path, d)
    assert (tmp_path / "out" / "train-00000.jsonl").read_bytes() == first


def test_parents_in_another_months_file_and_compressed_inputs(tmp_path):
    d = tmp_path / "dump"
    d.mkdir()
    write(d / "RS_2015-01.zst", [post("p")])
    write(d / "RC_2015-01.zst", [comment("a", "t3_p", "t3_p"), comment("b", "t3_p", "t3_p")])
    write(d / "RC_2015-02.gz", [comment("later", "t1_a", "t3_p", created_utc=T0 + 40 * 86400)])
    write(d / "RS_2015-02.ndjson", [post("q")])  # listed after RC_2015-01, still read first
    write(d / "RC_2015-02b.jsonl", [comment("q1", "t3_q", "t3_q"), comment("q2", "t3_q", "t3_q")])
    stats = run(tmp_path, d)
    ex = examples(tmp_path)
    assert set(ex) == {"t1_a", "t1_b", "t1_later", "t1_q1", "t1_q2"}
    assert ex["t1_later"]["messages"][1]["content"] == ENGLISH + " (a)"
    assert_accounted(stats)


def test_file_kind_from_content_when_the_name_does_not_say(tmp_path):
    write(tmp_path / "posts.jsonl", [post("p")])
    write(tmp_path / "replies.jsonl", [comment("a", "t3_p", "t3_p"), comment("b", "t3_p", "t3_p")])
    stats = run(tmp_path, tmp_path / "replies.jsonl", tmp_path / "posts.jsonl")
    assert stats["examples"] == 2
    (tmp_path / "mystery.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(ValueError, match=r"mystery\.jsonl.*RS_\*/RC_\*"):
        run(tmp_path, tmp_path / "mystery.jsonl")


def test_bad_input_is_counted_with_locations_and_never_crashes(tmp_path):
    d = tmp_path / "dump"
    d.mkdir()
    write(d / "RS_a.ndjson", [post("p"), {"id": "x", "title": "no subreddit field", "score": 1, "created_utc": T0},
                              post("s", created_utc="1420070400")],  # string created_utc is fine
          raw_lines=[b"[1, 2]\n", b'{"id": "y", "title": 5, "subreddit": "a", "score": 1, "created_utc": 0}\n'])
    good = [comment("a", "t3_p", "t3_p"), comment("b", "t3_p", "t3_p")]
    raw = [b'{"id": "broken", "body": \n', b'{"id": "latin", "body": "caf\xe9"}\n',
           orjson.dumps(comment("badscore", "t3_p", "t3_p", score="many")) + b"\n",
           orjson.dumps(comment("nolink", "t3_p", "t3_p", link_id=None)) + b"\n",
           orjson.dumps(comment("badparent", "x_p", "t3_p")) + b"\n"]
    write(d / "RC_a.ndjson", good, raw_lines=raw)
    big = [comment(f"z{i}", "t3_p", "t3_p") for i in range(3000)]
    data = zstandard.ZstdCompressor(level=3).compress(b"".join(orjson.dumps(c) + b"\n" for c in big))
    (d / "RC_b.zst").write_bytes(data[: len(data) // 2])  # cut off mid-frame
    stats = run(tmp_path, d)
    assert_accounted(stats)
    subs, comms = stats["by_kind"]["submission"]["skipped"], stats["by_kind"]["comment"]["skipped"]
    assert subs["missing_field:subreddit"] == 1 and subs["not_an_object"] == 1 and subs["bad_type:title"] == 1
    assert comms["malformed_json"] == 2  # the broken line, and the truncated file's cut-off last line
    assert comms["invalid_utf8"] == 1 and comms["bad_type:score"] == 1
    assert comms["missing_field:link_id"] == 1 and comms["bad_value:parent_id"] == 1
    assert stats["skip_locations"]["invalid_utf8"] == [f"{d / 'RC_a.ndjson'}:4"]
    assert stats["skip_locations"]["missing_field:subreddit"] == [f"{d / 'RS_a.ndjson'}:2"]
    [truncated] = stats["truncated_files"]
    assert truncated["file"] == str(d / "RC_b.zst") and 0 < truncated["readable_lines"] < 3000
    assert stats["posts"] == 1 and subs["too_few_responses"] == 1  # s: string created_utc parsed, no replies
    assert stats["examples"] == 2 + truncated["readable_lines"] - 1


def test_wrong_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dump"):
        run(tmp_path, tmp_path / "no_such_dump")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no dump files"):
        run(tmp_path, tmp_path / "empty")


def test_reddit_prompts_one_per_context_from_the_train_split(tmp_path):
    posts = [post(f"p{i}") for i in range(30)]
    cs = [comment(f"c{i}x{j}", f"t3_p{i}", f"t3_p{i}") for i in range(30) for j in range(3)]
    cs += [comment(f"r{i}x{j}", f"t1_c{i}x0", f"t3_p{i}") for i in range(30) for j in range(2)]
    d = tmp_path / "dump"
    d.mkdir()
    stats = run(tmp_path, write(d / "RS_a.ndjson", posts), write(d / "RC_a.ndjson", cs))
    prompts = [json.loads(line) for line in (tmp_path / "out" / "prompts-reddit.jsonl").read_text().splitlines()]
    train_threads = {e["thread_id"] for e in examples(tmp_path, "train").values()}
    # contexts: the post itself (identical text in every thread -> once), and each c{i}x0 of a train thread
    assert len(prompts) == 1 + len(train_threads) == stats["reddit_prompts"]
    assert all(p["source"] == "reddit" and p["messages"][0]["role"] == "user" for p in prompts)
    assert {p["id"] for p in prompts[1:]} == {f"reddit-t1_c{t.removeprefix('t3_p')}x0" for t in train_threads}
