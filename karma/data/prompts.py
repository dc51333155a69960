"""Prompt sets for PPO and sampling: JSONL, one {"id", "messages": [{"role", "content"}], ...} per
line (data_prep.py writes prompts-reddit.jsonl and, with --ultrachat, prompts-ultrachat.jsonl)."""

import json
import os
from pathlib import Path

from karma.checkpoint import atomic_write


def write_prompts(prompts: list[dict], path: str | os.PathLike) -> None:
    """Write prompts as JSONL (UTF-8, one object per line), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts)

    atomic_write(path, write)


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """Read a prompts JSONL file; a line that is not an object with a string "id" and a non-empty
    "messages" list of {"role": str, "content": str}, or a repeated id, is a ValueError naming file:line."""
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
            ok = (isinstance(p, dict) and isinstance(p.get("id"), str) and isinstance(p.get("messages"), list)
                  and p["messages"] and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                            and isinstance(m.get("content"), str) for m in p["messages"]))
            if not ok:
                raise ValueError(f'{path}:{n}: a prompt needs a string "id" and a non-empty "messages" '
                                 'list of {"role": str, "content": str}')
            if p["id"] in ids:
                raise ValueError(f"{path}:{n}: duplicate id {p['id']!r}")
            ids.add(p["id"])
            prompts.append(p)
    return prompts
