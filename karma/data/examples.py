"""data_prep.py's reward-model examples, read back: `<data>/train-*.jsonl` and `heldout-*.jsonl`
(the schema: karma/data/prepare.py). Lines that cannot serve as an example are counted by reason
with their file:line (karma.records), never dropped silently.
"""

from pathlib import Path

from karma.records import Skips, jsonl_objects

TRAINING_KEYS = ("id", "messages", "response", "label", "meta")  # what reward-model training reads


def read_examples(paths: list[Path], needs_meta: bool, keys=TRAINING_KEYS) -> tuple[list[dict], dict]:
    """Examples from data_prep JSONL files, each with the fields `keys` it has; malformed lines and
    missing fields are skipped and reported by file:line (the first 20 per reason), never silently."""
    examples, skips = [], Skips()
    for path in paths:
        for where, ex in jsonl_objects(path, skips):
            reason = _example_problem(ex, needs_meta)
            if reason:
                skips.add(reason, where)
                continue
            examples.append({k: ex[k] for k in keys if k in ex})
    return examples, {"read": len(examples) + skips.total(), "used": len(examples), **skips.report()}


def _example_problem(ex: dict, needs_meta: bool) -> str | None:
    for key, kind in (("messages", list), ("response", str), ("label", int)):
        if key not in ex:
            return f"missing_field:{key}"
        if not isinstance(ex[key], kind) or isinstance(ex[key], bool):
            return f"bad_type:{key}"
    if ex["label"] not in (0, 1):
        return "bad_value:label"
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("user", "assistant")
               for m in ex["messages"]) or not ex["messages"]:
        return "bad_value:messages"
    meta = ex.get("meta")
    if needs_meta and not (isinstance(meta, dict) and "subreddit" in meta and "created_utc" in meta):
        return "missing_field:meta"
    return None


def split_files(data: Path, split: str) -> list[Path]:
    files = sorted(Path(data).glob(f"{split}-*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{data}: no {split}-*.jsonl files (run data_prep.py first)")
    return files
