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

Threads are built one at a time (threads_in_order gives each with everything it needs,
thread_examples builds it), so that worker processes can build them (karma/data/prepare.py).
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


OutcomeFn = Callable[[str, str | None], None]  # (kind, skip reason or None = kept)
Thread = tuple[Submission, list[Comment], list[Comment]]  # see threads_in_order


def build_examples(posts: dict[str, Submission], comments: dict[str, Comment], cfg: ThreadConfig,
                   on_outcome: OutcomeFn) -> Iterator[dict]:
    """Examples thread by thread (submissions by time, replies by time within). Every post and
    comment passed in gets exactly one on_outcome call: kept, or the reason it yields nothing."""
    for post, thread, strays in threads_in_order(posts, comments):
        outcomes, examples = thread_examples(post, thread, strays, cfg)
        for kind, reason in outcomes:
            on_outcome(kind, reason)
        yield from examples


def threads_in_order(posts: dict[str, Submission], comments: dict[str, Comment]) -> Iterator[Thread]:
    """(post, thread, strays) for each kept post, oldest first (ties by id): everything its examples
    need, so that a thread can be built on its own, in another process. thread: the post's kept
    comments; strays: kept comments of other threads replying to the post or to one of those
    comments (corrupt data only: they count and compete where their parent_id puts them); both
    oldest first, ties by id."""
    by_thread, strays = defaultdict(list), defaultdict(list)
    for c in sorted(comments.values(), key=lambda c: (c.created_utc, c.name)):
        by_thread[c.link_id].append(c)
        parent = comments.get(c.parent_id)
        parents_thread = parent.link_id if parent is not None else c.parent_id if c.parent_id in posts else None
        if parents_thread is not None and parents_thread != c.link_id:
            strays[parents_thread].append(c)
    for post in sorted(posts.values(), key=lambda p: (p.created_utc, p.name)):
        yield post, by_thread.get(post.name, []), strays.get(post.name, [])


def thread_examples(post: Submission, thread: list[Comment], strays: list[Comment],
                    cfg: ThreadConfig) -> tuple[list[tuple[str, str | None]], list[dict]]:
    """One thread (from threads_in_order) -> the outcome (kind, skip reason or None = kept) of the
    post and of each comment of the thread, and its examples."""
    children = defaultdict(list)  # parent name -> its kept replies, oldest first
    for c in sorted(thread + strays, key=lambda c: (c.created_utc, c.name)) if strays else thread:
        children[c.parent_id].append(c)
    if len(children[post.name]) < cfg.min_responses:
        return [("submission", "too_few_responses")] + [("comment", "thread_too_small")] * len(thread), []
    comments = {c.name: c for c in thread}  # a parent outside the thread is unavailable anyway
    outcomes, examples, scrubbed = [], [], {}
    for comment in thread:
        chain = _ancestors(comment, post, comments, cfg.max_depth)
        if isinstance(chain, str):
            outcomes.append(("comment", chain))
            continue
        outcomes.append(("comment", None))
        examples.append(_example(post, chain, comment, children[comment.parent_id], cfg, scrubbed))
    outcomes.append(("submission", None if examples else "no_examples"))
    return outcomes, examples


def language_matters(posts: dict[str, Submission], comments: dict[str, Comment],
                     cfg: ThreadConfig) -> tuple[set[str], set[str]]:
    """The posts and comments whose language verdict can change an example, given every record that
    can still be kept (a superset of the final ones: the records not identified yet count as
    English, and a verdict can only remove a record). A record changes examples only through its
    thread: a post's count of top-level replies, a reply's parent chain, its siblings. These matter:
      - a post with at least min_responses top-level replies (it can survive), and the post of every
        comment that matters (a post dropped takes its comments with it);
      - in such a thread, each reply whose parent chain is intact (it can become an example) or too
        deep (thread_too_deep or parent_unavailable depends on them), with its ancestors (at most
        max_depth + 1), and all replies to its parent (its siblings);
      - every reply to such a post (the count).
    The rest can only end skipped, whatever the verdicts: thread_too_small (a post short of replies
    even if they were all English) or parent_unavailable (a parent already missing), so a record
    there that is not English is counted under that reason instead of non_english."""
    children = defaultdict(list)
    for c in comments.values():
        children[c.parent_id].append(c)
    live = {name for name in posts if len(children[name]) >= cfg.min_responses}
    parents, deep = set(live), set()  # replies to these parents matter; so do the ancestors in `deep`
    for c in comments.values():
        if c.link_id in live:
            chain = _ancestors(c, posts[c.link_id], comments, cfg.max_depth)
            if chain == "parent_unavailable":
                continue
            parents.add(c.parent_id)  # c, an example or too deep, and its siblings
            if chain == "thread_too_deep":  # which reason depends on the first max_depth + 1 ancestors
                parent = c.parent_id
                for _ in range(cfg.max_depth + 1):
                    deep.add(parent)
                    parent = comments[parent].parent_id
    matter = {c.name for parent in parents for c in children[parent]} | deep
    return live | {comments[name].link_id for name in matter}, matter


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


def _example(post: Submission, chain: list[Comment], comment: Comment, rivals: list[Comment], cfg,
             scrubbed: dict) -> dict:
    """One example; `scrubbed` caches (lowercased, scrubbed of mentions) per text of the thread: a
    text recurs in the thread's examples as context, reply and sibling."""
    siblings = [s for s in rivals if s.name != comment.name][: cfg.max_siblings]
    people = {post.author, comment.author, *(c.author for c in chain), *(s.author for s in siblings)}
    people = [(name, name.lower()) for name in people]

    def clean(text: str) -> str:
        """scrub(text, people), handed only the names found in the text (case-insensitively): scrub
        replaces no other, and a text naming nobody is scrubbed once per thread."""
        if text not in scrubbed:
            scrubbed[text] = text.lower(), scrub(text)
        lowered, without_mentions = scrubbed[text]
        named = [name for name, low in people if low in lowered]
        return scrub(text, named) if named else without_mentions

    parent_score = chain[-1].score if chain else post.score
    return {
        "id": comment.name,
        "thread_id": post.name,
        "parent_id": comment.parent_id,
        "messages": [{**m, "content": clean(m["content"])}
                     for m in context_messages(post.title, post.selftext, [c.body for c in chain])],
        "response": clean(comment.body.strip()),
        "label": int(is_rewarding(comment.score, parent_score, cfg.reward_ratio)),
        "score": comment.score,
        "parent_score": parent_score,
        "siblings": [{"id": s.name, "text": clean(s.body.strip()), "score": s.score} for s in siblings],
        "meta": {"subreddit": post.subreddit, "created_utc": comment.created_utc},
    }
