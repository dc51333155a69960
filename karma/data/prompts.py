"""Prompt sets for PPO and sampling: JSONL, one {"id", "messages": [{"role", "content"}], ...} per
line (data_prep.py writes prompts-reddit.jsonl and, with --ultrachat, prompts-ultrachat.jsonl)."""

import json
import os
from pathlib import Path

from karma.data.format import FORMATS, ROLE_LABELS, header, render_prompt
from karma.files import atomic_write, read_jsonl


def write_prompts(prompts: list[dict], path: str | os.PathLike) -> None:
    """Write prompts as JSONL (UTF-8, one object per line), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts)

    atomic_write(path, write)


def read_prompts(path: str | os.PathLike, fmt: str | None = None) -> list[dict]:
    """Read a prompts JSONL file, every line checked: an object with a unique string "id" and a
    non-empty "messages" list of {"role": str, "content": str}. With `fmt` (a karma.data.format
    format: PPO renders its prompts in the reward model's), also what rendering in it needs: only
    the roles it has (user, assistant) and, for "conditioned", a "meta" with the subreddit and the
    time. The first bad line is a ValueError naming file:line and the bad value, so a bad prompt
    set is refused before any model loads rather than at the rollout that draws the bad prompt."""
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    prompts, ids = [], set()
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                p = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            problem = prompt_problem(p, fmt)
            if problem:
                raise ValueError(f"{path}:{n}: {problem}")
            if p["id"] in ids:
                raise ValueError(f"{path}:{n}: duplicate id {p['id']!r}")
            ids.add(p["id"])
            prompts.append(p)
    return prompts


def prompt_problem(p, fmt: str | None) -> str | None:
    """What makes `p` unusable as a prompt (rendered in `fmt` when given), or None."""
    shape = 'a prompt needs a string "id" and a non-empty "messages" list of {"role": str, "content": str}'
    if not isinstance(p, dict):
        return f"{shape}; got {type(p).__name__} {p!r:.60}"
    if not isinstance(p.get("id"), str):
        return f'{shape}; "id" is {p.get("id")!r:.60}'
    if not isinstance(p.get("messages"), list) or not p["messages"]:
        return f'{shape}; "messages" is {p.get("messages")!r:.60}'
    for i, m in enumerate(p["messages"]):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            return f"{shape}; messages[{i}] is {m!r:.60}"
        if fmt is not None and m["role"] not in ROLE_LABELS:
            # The reward model was trained on Reddit threads rendered as User/Assistant turns only: a
            # "System:" turn would be text it never saw, so it is refused rather than guessed at.
            return (f"messages[{i}]: role {m['role']!r} has no form in the reward model's text format (roles: "
                    f"{', '.join(ROLE_LABELS)}); put a system message's text into the first user turn")
    if fmt == "conditioned":
        return _meta_problem(p.get("meta"))
    return None


def _meta_problem(meta) -> str | None:
    """The conditioned format's header needs meta = {"subreddit": str, "created_utc": int seconds}."""
    need = 'the conditioned reward model needs "meta": {"subreddit": str, "created_utc": int}'
    if not (isinstance(meta, dict) and isinstance(meta.get("subreddit"), str) and meta["subreddit"]
            and isinstance(meta.get("created_utc"), int) and not isinstance(meta["created_utc"], bool)):
        return f'{need}; "meta" is {meta!r:.60}'
    try:
        header(meta)
    except (ValueError, OverflowError, OSError):  # a time datetime cannot represent
        return f"{need}; created_utc {meta['created_utc']} is not a representable time"
    return None


def heldout_prompts(data_dir, n: int) -> list[dict]:
    """Up to n prompts {"id", "messages", "meta", "thread_id"} from the held-out examples in
    data_dir (heldout-*.jsonl): each distinct context once, the first context of every thread
    before any second one (round robin over threads in file order), contexts that are also
    training prompts (prompts-reddit.jsonl) left out."""
    data_dir = Path(data_dir)
    shards = sorted(data_dir.glob("heldout-*.jsonl"))
    if not shards:
        raise FileNotFoundError(f"{data_dir}: no heldout-*.jsonl (data_prep.py writes the held-out split there)")
    train = data_dir / "prompts-reddit.jsonl"
    seen = {render_prompt(p["messages"]) for p in read_prompts(train)} if train.exists() else set()
    by_thread: dict[str, list[dict]] = {}
    for shard in shards:
        for line_no, (_, ex) in enumerate(read_jsonl(shard), 1):
            problem = prompt_problem({**ex, "id": str(ex.get("id"))} if isinstance(ex, dict) else ex, None)
            if problem:
                raise ValueError(f"{shard}:{line_no}: {problem}")
            text = render_prompt(ex["messages"])
            if text in seen:
                continue
            seen.add(text)
            by_thread.setdefault(str(ex.get("thread_id", ex["id"])), []).append(
                {"id": f"heldout-{ex.get('parent_id', ex['id'])}", "messages": ex["messages"], "meta": ex.get("meta"),
                 "thread_id": str(ex.get("thread_id", ex["id"]))})
    rounds = max((len(v) for v in by_thread.values()), default=0)
    ordered = [ctx[r] for r in range(rounds) for ctx in by_thread.values() if r < len(ctx)]
    if not ordered:
        raise ValueError(f"{data_dir}: the held-out examples hold no context that is not a training prompt")
    return ordered[:n]
