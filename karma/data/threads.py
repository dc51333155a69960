"""Threads: link kept comments to their submission and parent, and turn each into an example.

Label (KARMA, arXiv 2605.26738, Section 3): a reply is rewarding (1) iff
    score >= ratio * max(parent_score, 1),      ratio = 0.4 by default,
where the parent is the parent comment, or the submission for a top-level reply. The paper leaves
parents with score <= 0 undefined; taken literally, 0.4 * (-10) = -4 would call a reply at -3
"rewarding". KARMA clamps the parent score at 1, a post's starting score, so against a parent
nobody upvoted a reply is rewarding iff it kept at least its own starting point (score >= 1
when ratio * 1 rounds up to 1). Such clamped examples are counted in the stats.

Per kept comment the example holds its context (submission, then the ancestor comments oldest
first, as chat messages), the reply, label, scores, up to `max_siblings` other replies to the same
parent (local competition; oldest first, ties by id, so the order is deterministic and carries no
score information), and the metadata the conditioned format needs.
"""

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from karma.data.format import context_messages, scrub
from karma.data.pushshift import Comment, Submission


@dataclass
class ThreadConfig:
    reward_ratio: float = 0.4
    min_responses: int = 2  # a submission needs this many kept top-level replies
    max_siblings: int = 5
    max_depth: int = 100  # longer parent chains (or cycles in corrupt data) are skipped


def is_rewarding(score: int, parent_score: int, ratio: float) -> bool:
    return score >= ratio * max(parent_score, 1)


OutcomeFn = Callable[[str, object, str | None], None]  # (kind, record, skip reason or None = kept)


def build_examples(posts: dict[str, Submission], comments: dict[str, Comment], cfg: ThreadConfig,
                   on_outcome: OutcomeFn) -> Iterator[dict]:
    """Examples thread by thread (submissions by time, replies by time within). Every post and
    comment passed in gets exactly one on_outcome call: kept, or the reason it yields nothing."""
    children = defaultdict(list)  # parent name -> its kept replies, oldest first
    for c in sorted(comments.values(), key=lambda c: (c.created_utc, c.name)):
        children[c.parent_id].append(c)
    by_thread = defaultdict(list)
    for c in comments.values():
        by_thread[c.link_id].append(c)

    for post in sorted(posts.values(), key=lambda p: (p.created_utc, p.name)):
        thread = sorted(by_thread.get(post.name, ()), key=lambda c: (c.created_utc, c.name))
        if len(children[post.name]) < cfg.min_responses:
            on_outcome("submission", post, "too_few_responses")
            for c in thread:
                on_outcome("comment", c, "thread_too_small")
            continue
        n_examples = 0
        for comment in thread:
            chain = _ancestors(comment, post, comments, cfg.max_depth)
            if isinstance(chain, str):
                on_outcome("comment", comment, chain)
                continue
            n_examples += 1
            on_outcome("comment", comment, None)
            yield _example(post, chain, comment, children[comment.parent_id], cfg)
        on_outcome("submission", post, None if n_examples else "no_examples")


def _ancestors(comment: Comment, post: Submission, comments: dict, max_depth: int) -> list[Comment] | str:
    """Parent comments from the top-level reply down to the direct parent, or a skip reason."""
    chain, parent = [], comment.parent_id
    while parent != post.name:
        node = comments.get(parent)
        if node is None or node.link_id != post.name:
            return "parent_unavailable"  # filtered, deleted, in no dump we read, or in another thread
        chain.append(node)
        if len(chain) > max_depth:
            return "thread_too_deep"
        parent = node.parent_id
    return chain[::-1]


def _example(post: Submission, chain: list[Comment], comment: Comment, rivals: list[Comment], cfg) -> dict:
    siblings = [s for s in rivals if s.name != comment.name][: cfg.max_siblings]
    people = [post.author, comment.author] + [c.author for c in chain] + [s.author for s in siblings]
    parent_score = chain[-1].score if chain else post.score
    return {
        "id": comment.name,
        "thread_id": post.name,
        "parent_id": comment.parent_id,
        "messages": [{**m, "content": scrub(m["content"], people)}
                     for m in context_messages(post.title, post.selftext, [c.body for c in chain])],
        "response": scrub(comment.body.strip(), people),
        "label": int(is_rewarding(comment.score, parent_score, cfg.reward_ratio)),
        "score": comment.score,
        "parent_score": parent_score,
        "siblings": [{"id": s.name, "text": scrub(s.body.strip(), people), "score": s.score} for s in siblings],
        "meta": {"subreddit": post.subreddit, "created_utc": comment.created_utc},
    }
