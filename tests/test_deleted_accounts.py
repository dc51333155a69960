"""Records whose author deleted their account ("[deleted]" as author, text intact) are kept.

Reddit shows "[deleted]" for the author of every post and comment of a deleted account, while the
text stays up, was read and voted on, and its replies competed for karma. Only deleted or removed
TEXT ("[deleted]"/"[removed]" body or selftext, removed_by_category) makes a record unusable.
"""

from __future__ import annotations

from karma.data.format import render
from test_data_pipeline import assert_accounted, comment, examples, post, run, write

LINK = "t3_p"


def test_a_deleted_account_keeps_its_thread_and_replies(tmp_path):
    d = tmp_path / "dump"
    d.mkdir()
    posts = [post("p", author="[deleted]"),
             post("gone", author="[deleted]", selftext="[deleted]")]            # deleted post: still dropped
    cs = [comment("a", LINK, LINK, author="[deleted]", body="Salt the pasta water well, like the sea."),
          comment("b", LINK, LINK),
          comment("a1", "t1_a", LINK, body="Agreed, and taste it before the pasta goes in."),
          comment("x", LINK, LINK, author="[deleted]", body="[deleted]")]    # deleted comment: still dropped
    stats = run(tmp_path, write(d / "RS_a.ndjson", posts), write(d / "RC_a.ndjson", cs))
    assert_accounted(stats)
    assert stats["by_kind"]["submission"]["skipped"] == {"deleted_or_removed": 1}
    assert stats["by_kind"]["comment"]["skipped"] == {"deleted_or_removed": 1}
    ex = examples(tmp_path)
    assert set(ex) == {"t1_a", "t1_b", "t1_a1"}
    assert ex["t1_a"]["response"] == "Salt the pasta water well, like the sea."
    assert ex["t1_a1"]["messages"][1]["content"] == "Salt the pasta water well, like the sea."  # context kept
    for e in ex.values():  # "[deleted]" as a participant's name is not scrubbed into the texts
        text = render(e["messages"], e["response"])
        assert "[user]" not in text and "[deleted]" not in text
