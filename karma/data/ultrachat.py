"""UltraChat-200k (HuggingFaceH4/ultrachat_200k) as PPO prompts, read from local files.

The dataset ships parquet shards per split under data/, named `{split}-{i:05d}-of-{n:05d}-*.parquet`
for split in train_sft (207,865 rows), test_sft (23,110), train_gen, test_gen. Columns:
    prompt     str   the first user turn
    prompt_id  str   sha256 hex of the prompt
    messages   list  [{"content": str, "role": "user" | "assistant"}, ...], the whole conversation
JSONL exports with the same fields (one object per line) are read too; a line that is not a JSON
object (malformed, invalid UTF-8, or NaN/Infinity, which JSON does not allow) is skipped and counted.

A prompt is the first user turn only: `prompt`, or when that is missing/null the content of the
first message with role "user". Its text is stripped; its id is "ultrachat-" + prompt_id (the
sha256 of the text when prompt_id is missing/null, counted in stats["ids_derived"]).
Dedup rule: two prompts are the same when their texts are equal after stripping, collapsing runs
of whitespace to one space and casefolding; the first one in file order is kept. `limit` counts
prompts kept after dedup and length filters, and reading stops as soon as it is reached.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from karma.records import Skips, input_files, jsonl_rows, parquet_rows

BATCH_ROWS = 1024  # parquet rows per record batch: memory stays bounded whatever the shard size
MAX_EXAMPLES = 20  # locations remembered per skip reason
EXTENSIONS = (".parquet", ".jsonl", ".json")


def normalize(text: str) -> str:
    """The dedup key: stripped, whitespace runs collapsed to one space, casefolded."""
    return " ".join(text.split()).casefold()


def find_files(paths, split: str | None = "train_sft") -> list[Path]:
    """Files named in `paths`, with directories expanded (recursively, sorted by path) to their
    *.parquet/*.jsonl/*.json files; parquet shards found in a directory are kept only when their
    name starts with `split` + "-" (or is `split`.parquet, or sits in a directory named `split`)."""
    def of_split(f: Path) -> bool:
        return f.suffix != ".parquet" or split is None or f.stem == split or f.name.startswith(split + "-") \
            or f.parent.name == split
    return input_files(paths, EXTENSIONS, keep=of_split, kept=f" (parquet for split {split!r})" if split else "")


def _parquet_rows(path: Path):
    """Yield (location, row, None) per parquet row (karma.records.parquet_rows)."""
    return parquet_rows(path, ("prompt", "prompt_id", "messages"), BATCH_ROWS, to_rows=_batch_rows,
                        required_any=("prompt", "messages"))


def _batch_rows(batch):
    """Row dicts of a RecordBatch. `messages` is only converted to Python for rows whose `prompt` is
    null (it holds whole conversations)."""
    data = {c: batch.column(c) for c in batch.schema.names}
    n = batch.num_rows
    prompts = data["prompt"].to_pylist() if "prompt" in data else [None] * n
    ids = data["prompt_id"].to_pylist() if "prompt_id" in data else [None] * n
    for j in range(n):
        row = {"prompt": prompts[j], "prompt_id": ids[j]}
        if prompts[j] is None and "messages" in data:
            row["messages"] = data["messages"][j].as_py()
        yield row


def _first_user_turn(row: dict):
    """(text, None) for a usable prompt, else (None, skip reason)."""
    text = row.get("prompt")
    if text is None:
        messages = row.get("messages")
        if messages is None:
            return None, "no_prompt"
        if not isinstance(messages, list):
            return None, "bad_type"
        user = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        text = None if user is None else user.get("content")
        if text is None:
            return None, "no_prompt"
    return (text, None) if isinstance(text, str) else (None, "bad_type")


def read_ultrachat(paths, *, split: str | None = "train_sft", limit: int | None = None,
                   min_chars: int = 1, max_chars: int | None = None) -> tuple[list[dict], dict]:
    """Read prompts from parquet shards and/or JSONL files (see the module docstring).

    Returns (prompts, stats): prompts are {"id", "source": "ultrachat", "messages": [user turn]};
    stats = {"files", "rows_read", "kept", "skipped": {reason: n}, "bad_examples": {reason:
    [location, ...]}, "ids_derived"} with rows_read == kept + sum(skipped.values()). Reasons:
    malformed_json, not_an_object, no_prompt, bad_type (prompt/messages/prompt_id of the wrong type),
    empty, too_short, too_long, duplicate (same normalized text), duplicate_id.
    """
    if (limit is not None and limit < 0) or min_chars < 0 or (
            max_chars is not None and max_chars < min_chars):
        raise ValueError(f"bad limits: limit={limit}, min_chars={min_chars}, max_chars={max_chars}")
    files = find_files(paths, split)
    prompts, texts, ids = [], set(), set()
    stats = {"files": [], "rows_read": 0, "kept": 0, "ids_derived": 0}
    skips = Skips(MAX_EXAMPLES)

    for path in files:
        if limit is not None and len(prompts) >= limit:
            break
        stats["files"].append(str(path))
        rows = _parquet_rows(path) if path.suffix == ".parquet" else jsonl_rows(path)
        for loc, row, reason in rows:
            stats["rows_read"] += 1
            if reason is not None:
                skips.add(reason, loc)
                continue
            text, reason = _first_user_turn(row)
            pid = row.get("prompt_id")
            if reason is None and pid is not None and not isinstance(pid, str):
                reason = "bad_type"
            if reason is None:
                text = text.strip()
                key = normalize(text)
                pid = pid or hashlib.sha256(text.encode("utf-8")).hexdigest()
                reason = ("empty" if not text else "too_short" if len(text) < min_chars
                          else "too_long" if max_chars is not None and len(text) > max_chars
                          else "duplicate" if key in texts else "duplicate_id" if pid in ids else None)
            if reason is not None:
                skips.add(reason, loc)
                continue
            stats["ids_derived"] += not row.get("prompt_id")
            texts.add(key)
            ids.add(pid)
            prompts.append({"id": "ultrachat-" + pid, "source": "ultrachat",
                            "messages": [{"role": "user", "content": text}]})
            if limit is not None and len(prompts) >= limit:
                break
        rows.close()  # closes the file now, even when we stopped early
    stats.update(kept=len(prompts), skipped=dict(skips.counts), bad_examples=skips.locations)
    return prompts, stats
