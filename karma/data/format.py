"""The one text format the reward model sees, at training time and at PPO time.

A context is a list of chat messages: the submission as the first user turn (title, blank line,
body), then the ancestor comments oldest first. Roles alternate backwards from the candidate
reply, which is the assistant; the submission is always a user turn, so two user turns can be
adjacent. Rendered as plain text:

    [Subreddit: r/AskScience | Posted: 2015-01-03 14:05 UTC]     <- conditioned format only
    User: <title>
    <body>

    Assistant: <ancestor comment>

    User: <parent comment>

    Assistant: <candidate reply>

`render_prompt(messages, meta, fmt)` ends with "Assistant:"; `render(messages, response, meta, fmt)`
is the prompt plus " " + the stripped response. PPO scores a generated response with
`render(prompt_messages, decoded_response, ...)`, the same function the training examples go
through, so the reward model sees exactly its training format.

Formats: "generalized" (the KARMA RM) has no subreddit, time or author anywhere; "conditioned"
(the karmaEroded RM) adds the header line with the subreddit and the reply's UTC date and time.
Text copied from Reddit is scrubbed when examples are built (`scrub`), so no subreddit or user
mention survives inside the text either.
"""

import re
from datetime import datetime, timezone

FORMATS = ("generalized", "conditioned")
ROLE_LABELS = {"user": "User", "assistant": "Assistant"}

_SUBREDDIT_MENTION = re.compile(r"(?<![\w/])/?r/[A-Za-z0-9_]{2,21}\b")
_USER_MENTION = re.compile(r"(?<![\w/])/?u/[A-Za-z0-9_-]{2,20}\b")
# a username that cannot pass for an ordinary word: has a digit, _ or -, an inner capital, or 8+ chars
_HANDLE = re.compile(r"[A-Za-z0-9_-]*([0-9_-]|[a-z][A-Z])[A-Za-z0-9_-]*|[A-Za-z0-9_-]{8,}")


def scrub(text: str, usernames=()) -> str:
    """Remove what names the community or the people: r/<name> -> r/[subreddit], u/<name> ->
    u/[user], and the thread participants' usernames as whole words -> [user] when they look like
    handles (a digit, '_' or '-', an inner capital, or 8+ characters). Bare names that could be
    ordinary words ('the', 'yes', 'Help') and bare subreddit names ('funny', 'news') are left
    alone rather than corrupt the text. Each pattern runs only where a substring test finds
    something to replace, so clean text costs a few scans."""
    if "r/" in text:
        text = _SUBREDDIT_MENTION.sub("r/[subreddit]", text)
    if "u/" in text:
        text = _USER_MENTION.sub("u/[user]", text)
    lowered = text.lower()
    for name in sorted({u for u in usernames if _HANDLE.fullmatch(u)}, key=len, reverse=True):
        if name.lower() in lowered:
            text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "[user]", text, flags=re.IGNORECASE)
            lowered = text.lower()
    return text


def context_messages(title: str, selftext: str, ancestors: list[str]) -> list[dict]:
    """Submission + ancestor comment texts (oldest first) -> chat messages. The candidate reply is
    the assistant, so its parent is a user turn, the grandparent an assistant turn, and so on; the
    submission is always a user turn."""
    post = title.strip() + ("\n" + selftext.strip() if selftext.strip() else "")
    messages = [{"role": "user", "content": post}]
    for depth, text in enumerate(ancestors):
        from_end = len(ancestors) - depth  # 1 = the parent of the candidate
        messages.append({"role": "user" if from_end % 2 else "assistant", "content": text.strip()})
    return messages


def header(meta: dict) -> str:
    when = datetime.fromtimestamp(int(meta["created_utc"]), tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"[Subreddit: r/{meta['subreddit']} | Posted: {when}]\n"


def render_prompt(messages: list[dict], meta: dict | None = None, fmt: str = "generalized") -> str:
    """The context as text, ending with 'Assistant:' (what the policy continues at PPO time)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt == "conditioned" and not meta:
        raise ValueError("the conditioned format needs meta = {'subreddit', 'created_utc'}")
    turns = [f"{ROLE_LABELS[m['role']]}: {m['content']}" for m in messages]
    return (header(meta) if fmt == "conditioned" else "") + "\n\n".join(turns + ["Assistant:"])


def render(messages: list[dict], response: str, meta: dict | None = None, fmt: str = "generalized") -> str:
    """Context + candidate reply: the reward model's input, at training and at PPO time."""
    return render_prompt(messages, meta, fmt) + " " + response.strip()
