"""tests/synthetic.py: SYNTHETIC Pushshift-format dumps, and the sample shipped in data/sample.

Everything is read back the way a real dump must be read (streaming zstd with a 2 GiB window) and
checked from the data itself: names, counts, determinism, the variety the pipeline's filters need,
thread links (across month files too), the label rule and the planted world (content features and
context effects, as data/sample/world.json states them).
"""

import gzip
import io
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import zstandard

import synthetic
from synthetic import BOTS, CONTENT_FEATURES, LANGUAGES, LOW_EFFORT_MARKERS, SUBREDDIT_EFFECTS, main, write_dump

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
SAMPLE_ARGS = dict(n_posts=500, seed=0)  # the command in data/sample/README.md
MONTHS = ("2015-01", "2015-02")


def read_records(path: Path):
    """Stream a dump file's objects, as a reader of the real dumps must (max_window_size=2**31)."""
    with open(path, "rb") as raw:
        if path.suffix == ".zst":
            stream = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(raw)
        elif path.suffix == ".gz":
            stream = gzip.GzipFile(fileobj=raw)
        else:
            stream = raw
        for line in io.TextIOWrapper(stream, encoding="utf-8"):
            assert line.endswith("\n")
            yield json.loads(line)


def load(directory: Path, ext=".zst"):
    """{'RS': [(month, record)], 'RC': [(month, record)]} in file order."""
    out = {"RS": [], "RC": []}
    for month in MONTHS:
        for kind in ("RS", "RC"):
            out[kind] += [(month, r) for r in read_records(directory / f"{kind}_{month}{ext}")]
    return out


@pytest.fixture(scope="module")
def sample():
    return load(SAMPLE)


def features(body: str) -> set:
    """The content features a body carries, by their regexes (the planted truth)."""
    return {name for name, (pattern, _, _) in CONTENT_FEATURES.items() if re.search(pattern, body)}


def low_effort(body: str) -> bool:
    return any(m in body.lower() for m in LOW_EFFORT_MARKERS)


def ordinary(comment) -> bool:
    """An English answer or low-effort comment by a person: the comments the planted model scores."""
    return (comment["author"] not in BOTS and comment["author"] != "AutoModerator" and not comment["distinguished"]
            and comment["body"] not in ("[deleted]", "[removed]") and len(comment["body"]) > 10
            and not any(s in comment["body"] for bank in LANGUAGES.values() for s in bank["sentences"])
            and not immature(comment))


def retrieved(record):
    return record.get("retrieved_on", record.get("retrieved_utc"))


def immature(record):
    return retrieved(record) - int(record["created_utc"]) < 3600


# ---- files, counts, format ----

def test_files_names_and_counts_match_lines(tmp_path):
    counts = write_dump(tmp_path, n_posts=60, comments_per_post=4, seed=5)
    names = {f"{kind}_{m}.zst" for m in MONTHS for kind in ("RS", "RC")}
    assert {p.name for p in tmp_path.iterdir()} == names == set(counts["files"])
    lines = {name: sum(1 for _ in read_records(tmp_path / name)) for name in names}
    assert lines == counts["files"]
    assert counts["submissions"] == 60 == sum(n for name, n in lines.items() if name.startswith("RS_"))
    assert counts["comments"] == sum(n for name, n in lines.items() if name.startswith("RC_")) > 100


def test_zstd_frame_has_the_real_dumps_long_window():
    data = (SAMPLE / "RC_2015-01.zst").read_bytes()
    assert zstandard.get_frame_parameters(data).window_size == 2**31
    with pytest.raises(zstandard.ZstdError):  # the default decoder limit refuses it, as with real dumps
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(100)


def test_deterministic_for_a_seed(tmp_path):
    write_dump(tmp_path / "a", n_posts=40, seed=7)
    write_dump(tmp_path / "b", n_posts=40, seed=7)
    write_dump(tmp_path / "c", n_posts=40, seed=8)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
    assert (tmp_path / "a" / "RC_2015-01.zst").read_bytes() != (tmp_path / "c" / "RC_2015-01.zst").read_bytes()


def test_compressions_hold_the_same_records(tmp_path):
    for compression, ext in (("zst", ".zst"), ("gz", ".gz"), ("ndjson", ".ndjson")):
        write_dump(tmp_path / compression, n_posts=30, seed=2, compression=compression)
    reference = load(tmp_path / "zst")
    assert load(tmp_path / "gz", ".gz") == reference == load(tmp_path / "ndjson", ".ndjson")


def test_shipped_sample_is_what_its_command_makes(tmp_path):
    """data/sample/README.md gives the command; compare records (zstd bytes may differ across libzstd)."""
    counts = write_dump(tmp_path, **SAMPLE_ARGS)
    assert sorted(p.name for p in SAMPLE.glob("R[SC]_*")) == sorted(counts["files"])
    for name in counts["files"]:
        assert list(read_records(SAMPLE / name)) == list(read_records(tmp_path / name)), name
    shipped = json.loads((SAMPLE / "world.json").read_text())
    assert shipped == synthetic.world("python tests/synthetic.py --out data/sample --posts 500 --seed 0",
                                      counts["planted"])
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 1_000_000
    assert "SYNTHETIC" in (SAMPLE / "README.md").read_text()
    assert "SYNTHETIC" in synthetic.__doc__.splitlines()[0]


def test_months_and_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match="increasing"):
        write_dump(tmp_path, n_posts=3, months=("2015-02", "2015-01"))
    with pytest.raises(ValueError, match="compression"):
        write_dump(tmp_path, n_posts=3, compression="bz2")
    counts = write_dump(tmp_path / "one", n_posts=5, months=("2016-03",), comments_per_post=0)
    assert counts["files"] == {"RS_2016-03.zst": 5, "RC_2016-03.zst": 0}
    assert list(read_records(tmp_path / "one" / "RC_2016-03.zst")) == []


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--posts", "12", "--comments-per-post", "3", "--months", "2016-01",
          "--seed", "4", "--compression", "ndjson"])
    counts = json.loads(capsys.readouterr().out)
    assert counts["submissions"] == 12
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["synthetic"] is True and world["measured"] == counts["planted"]
    assert world["generator"].endswith("--seed 4 --compression ndjson")
    assert sum(1 for _ in read_records(tmp_path / "RC_2016-01.ndjson")) == counts["comments"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "SYNTHETIC" in capsys.readouterr().out


# ---- content ----

def test_record_fields(sample):
    post_fields = {"id", "title", "selftext", "is_self", "url", "score", "num_comments", "over_18", "author",
                   "subreddit", "subreddit_id", "created_utc", "removed_by_category", "stickied", "permalink"}
    comment_fields = {"id", "parent_id", "link_id", "score", "body", "author", "subreddit", "subreddit_id",
                      "created_utc", "distinguished", "stickied", "edited", "controversiality"}
    for kind, required, prefix in (("RS", post_fields, "t3_"), ("RC", comment_fields, "t1_")):
        for month, r in sample[kind]:
            assert required <= r.keys(), required - r.keys()
            assert ("retrieved_on" in r) == (month == MONTHS[0]) != ("retrieved_utc" in r)
            assert r.get("name", prefix + r["id"]) == prefix + r["id"]
            assert isinstance(r["score"], int) and isinstance(int(r["created_utc"]), int)


def test_every_kind_of_variety_is_present(sample):
    posts = [r for _, r in sample["RS"]]
    comments = [r for _, r in sample["RC"]]
    replies = Counter(c["link_id"][3:] for c in comments)
    children = Counter(c["parent_id"] for c in comments)
    foreign = {s for bank in LANGUAGES.values() for s in bank["sentences"]}
    checks = {
        "post over_18": any(p["over_18"] for p in posts),
        "link post": any(not p["is_self"] and p["selftext"] == "" and p["url"].startswith("https://i.")
                         for p in posts),
        "deleted post": any(p["author"] == "[deleted]" and p["selftext"] == "[deleted]" for p in posts),
        "removed post": any(p["selftext"] == "[removed]" and p["removed_by_category"] for p in posts),
        "non-English post": any(p["title"] in bank["titles"] for bank in LANGUAGES.values() for p in posts),
        "stickied post": any(p["stickied"] for p in posts),
        "post score 0": any(p["score"] == 0 for p in posts),
        "post with 0 replies": any(replies[p["id"]] == 0 for p in posts),
        "post with 1 reply": any(replies[p["id"]] == 1 for p in posts),
        "immature post": any(immature(p) and p["score"] == 1 for p in posts),
        "deleted comment": any(c["author"] == "[deleted]" and c["body"] == "[deleted]" for c in comments),
        "removed comment": any(c["author"] == "[deleted]" and c["body"] == "[removed]" for c in comments),
        "AutoModerator": any(c["author"] == "AutoModerator" and c["stickied"] and c["distinguished"] == "moderator"
                             for c in comments),
        "bot named ...bot": any(c["author"].endswith("bot") for c in comments),
        "bot named ...Bot": any(c["author"].endswith("Bot") for c in comments),
        "moderator comment": any(c["distinguished"] == "moderator" and c["author"] != "AutoModerator"
                                 for c in comments),
        "stickied human comment": any(c["stickied"] and c["author"] != "AutoModerator" for c in comments),
        "empty body": any(c["body"] == "" for c in comments),
        "very short body": any(0 < len(c["body"]) <= 5 for c in comments),
        "non-English comment": any(any(s in c["body"] for s in foreign) for c in comments),
        "immature comment": any(immature(c) and c["score"] == 1 for c in comments),
        "edited comment": any(c["edited"] for c in comments),
        "negative score": any(c["score"] < 0 for c in comments),
        "negative-score parent with replies": any(children["t1_" + c["id"]] and c["score"] < 0 for c in comments),
        "missing name": any("name" not in c for c in comments) and any("name" not in p for p in posts),
        "string created_utc": any(isinstance(c["created_utc"], str) for c in comments)
        and any(isinstance(p["created_utc"], str) for p in posts),
        "u/ mention": any("u/" in c["body"] for c in comments),
        "r/ mention": any("r/" in c["body"] for c in comments),
        "multi-line body": any("\n" in c["body"] for c in comments),
        "html-escaped quote": any(c["body"].startswith("&gt; ") for c in comments),
        "several siblings": max(children.values()) >= 3,
        **{f"feature {name}": any(name in features(c["body"]) for c in comments) for name in CONTENT_FEATURES},
        "answer with no feature": any(not features(c["body"]) and not low_effort(c["body"]) and ordinary(c)
                                      for c in comments),
        "low-effort comment": any(low_effort(c["body"]) for c in comments),
    }
    assert [name for name, ok in checks.items() if not ok] == []


def test_ids_links_and_order(sample):
    posts = {r["id"]: (month, r) for month, r in sample["RS"]}
    comments = {r["id"]: (month, r) for month, r in sample["RC"]}
    assert len(posts) == len(sample["RS"]) and len(comments) == len(sample["RC"])  # unique ids
    for kind in ("RS", "RC"):  # each file in time order, base36 ids growing with time
        for month in MONTHS:
            records = [r for m, r in sample[kind] if m == month]
            assert [int(r["created_utc"]) for r in records] == sorted(int(r["created_utc"]) for r in records)
            ids = [int(r["id"], 36) for r in records]
            assert ids == sorted(ids)
    depth, cross_month = Counter(), 0
    for cid, (month, c) in comments.items():
        assert c["link_id"][3:] in posts
        kind, parent_id = c["parent_id"][:3], c["parent_id"][3:]
        assert kind in ("t1_", "t3_")
        parent_month, parent = (posts if kind == "t3_" else comments)[parent_id]
        if kind == "t3_":
            assert parent_id == c["link_id"][3:]
        else:
            assert parent["link_id"] == c["link_id"]
        assert int(parent["created_utc"]) < int(c["created_utc"])
        assert parent_month <= month
        cross_month += parent_month < month
        d, node = 1, c
        while node["parent_id"].startswith("t1_"):
            node, d = comments[node["parent_id"][3:]][1], d + 1
        depth[d] += 1
    assert cross_month >= 1                              # replies in month 2 to month 1's posts/comments
    assert max(depth) == synthetic.MAX_DEPTH and depth[1] > depth[2] > depth[3] > depth[4] > 0
    for month, p in posts.values():                      # num_comments counts the whole thread
        assert p["num_comments"] >= sum(1 for _, c in comments.values() if c["link_id"] == "t3_" + p["id"]) \
            or immature(p)


def labelled(sample):
    """(comment, label) for the ordinary comments, label = score >= 0.4 * max(parent score, 1)."""
    scores = {"t3_" + r["id"]: r["score"] for _, r in sample["RS"]}
    scores.update({"t1_" + r["id"]: r["score"] for _, r in sample["RC"]})
    return [(c, c["score"] >= 0.4 * max(scores[c["parent_id"]], 1), scores[c["parent_id"]])
            for _, c in sample["RC"] if ordinary(c)]


def rate(rows) -> float:
    rows = list(rows)
    assert len(rows) >= 30, len(rows)
    return sum(label for _, label, *_ in rows) / len(rows)


def test_label_rule_holds_literally_and_clamped(sample):
    rows = labelled(sample)
    assert len(rows) > 1500
    assert all(label == (c["score"] >= 0.4 * parent) for c, label, parent in rows)
    assert 0.4 < rate(rows) < 0.6                                       # balanced labels


def test_planted_content_features_raise_the_label_rate(sample):
    """Each feature raises the rewarding rate, overall and inside each subreddit tier (not via context)."""
    rows = labelled(sample)
    tier = {name: SUBREDDIT_EFFECTS.get(name, 0.0) for name in {c["subreddit"] for c, *_ in rows}}
    for name in CONTENT_FEATURES:
        has = [r for r in rows if name in features(r[0]["body"])]
        without = [r for r in rows if name not in features(r[0]["body"])]
        assert 0.15 < len(has) / len(rows) < 0.5, name                  # a common feature, not a rare one
        assert rate(has) - rate(without) > 0.15, name                    # asks_back (+1.0) the least
        for effect in set(tier.values()):
            inside = [r for r in has if tier[r[0]["subreddit"]] == effect]
            outside = [r for r in without if tier[r[0]["subreddit"]] == effect]
            assert rate(inside) > rate(outside), (name, effect)
    # the style earns nothing by itself: a snide one-liner is paid like an answer with the same features
    for has_feature in (False, True):
        same = [r for r in rows if bool(features(r[0]["body"])) == has_feature]
        one_liners = [r for r in same if low_effort(r[0]["body"])]
        answers = [r for r in same if not low_effort(r[0]["body"])]
        assert abs(rate(one_liners) - rate(answers)) < 0.1, has_feature
    one_liners = [r for r in rows if low_effort(r[0]["body"])]
    assert rate(r for r in one_liners if features(r[0]["body"])) - rate(r for r in one_liners
                                                                         if not features(r[0]["body"])) > 0.2


def test_planted_context_moves_the_label_rate(sample):
    """Subreddit, UTC hour of the reply and thread position: what a reply cannot control."""
    rows = labelled(sample)
    generous = [r for r in rows if SUBREDDIT_EFFECTS.get(r[0]["subreddit"], 0) > 0]
    stingy = [r for r in rows if SUBREDDIT_EFFECTS.get(r[0]["subreddit"], 0) < 0]
    assert rate(generous) - rate(stingy) > 0.4
    hour = [(r, time.gmtime(int(r[0]["created_utc"])).tm_hour) for r in rows]
    distance = [(r, min(abs(h - synthetic.HOUR_PEAK), 24 - abs(h - synthetic.HOUR_PEAK))) for r, h in hour]
    assert rate(r for r, d in distance if d <= 3) - rate(r for r, d in distance if d >= 9) > 0.15
    siblings = defaultdict(list)
    for r in rows:
        siblings[r[0]["parent_id"]].append(r)
    first = [min(group, key=lambda r: int(r[0]["created_utc"])) for group in siblings.values() if len(group) >= 3]
    later = [r for group in siblings.values() if len(group) >= 3 for r in group if r not in first]
    assert rate(first) > rate(later)


def test_measured_world_matches_the_module_constants(tmp_path):
    """measure_world on a fresh dump: the shares and oracle AUCs the README states are of this kind."""
    planted = write_dump(tmp_path, n_posts=300, seed=3)["planted"]
    shares = planted["variance_share"]
    assert abs(sum(shares.values()) - 1) < 0.1                          # independent parts
    assert shares["content"] > 0.15 and shares["subreddit"] + shares["hour"] > 0.3
    auc = planted["oracle_auc"]
    assert 0.65 < auc["content"] < auc["content+subreddit+hour"] - 0.1  # what the conditioned RM can gain
    for name, stats in planted["label_rate_by_feature"].items():
        assert stats["with"]["rewarding"] > stats["without"]["rewarding"] + 0.15, name


def test_template_banks_carry_exactly_their_feature():
    """Neutral text carries no feature; each feature bank carries its own and no other."""
    for bank in ("OPENERS", "EXPLANATIONS", "JOKES", "CLOSINGS", "LOW_EFFORT", "LOW_EFFORT_FILLERS"):
        for text in getattr(synthetic, bank):
            assert not features(text), (bank, text)
    for bank, name in (("WARM_OPENERS", "warm"), ("WARM_CLOSINGS", "warm"), ("REASONS", "reason"),
                       ("QUESTIONS", "asks_back")):
        for text in getattr(synthetic, bank):
            assert features(text) == {name}, (bank, text)


def test_english_templates_pass_the_pipelines_language_check(sample):
    filters = pytest.importorskip("karma.data.filters")
    pytest.importorskip("fasttext")
    detector = filters.LanguageDetector()
    english = [c["body"] for _, c in sample["RC"] if ordinary(c)]
    english += [p["title"] + " " + p["selftext"] for _, p in sample["RS"]
                if not any(p["title"] in bank["titles"] for bank in LANGUAGES.values())]
    passed = sum(detector.is_english(text, 0.5) for text in english)
    assert passed / len(english) >= 0.99, passed / len(english)
    for bank in LANGUAGES.values():
        for text in bank["sentences"] + bank["titles"]:
            assert not detector.is_english(text, 0.5), text


def test_sample_exercises_the_pipeline_filters(sample, tmp_path):
    prepare = pytest.importorskip("karma.data.prepare")
    stats = prepare.prepare(prepare.PrepConfig(inputs=[SAMPLE], out_dir=tmp_path))
    reasons = set(stats["by_kind"]["submission"]["skipped"]) | set(stats["by_kind"]["comment"]["skipped"])
    expected = {"explicit", "non_text", "deleted_or_removed", "bot", "stickied",
                "distinguished", "too_short", "score_not_mature", "non_english"}
    assert expected <= reasons, expected - reasons
    assert stats["records_read"] == len(sample["RS"]) + len(sample["RC"])
    assert stats["examples"] > 500
    for split in stats["splits"].values():
        assert 0.35 < split["rewarding_rate"] < 0.65
