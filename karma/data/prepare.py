"""The data pipeline: Pushshift dumps -> reward-model examples, Reddit PPO prompts, stats.json.

    1. submissions (all RS files first): filter; keep the survivors in memory
    2. comments (RC files): drop replies to submissions not kept, filter, keep the survivors
    3. threads: link, label, build examples (karma/data/threads.py), streamed to JSONL shards
    4. split 90/10 by submission (hash of its id: deterministic, no thread in both splits)
    5. Reddit prompts: each distinct context of the train split, once

Memory: the kept submissions and the kept comments of kept submissions (their text and a few
fields), which the thread building needs because a parent may appear anywhere in the input
(another month's file included). Everything else streams: a dump of tens of GB that yields 400k
examples needs memory for those examples' threads, not for the dump.

Accounting: every record read ends either kept (a submission whose thread yields examples, a
comment that becomes an example) or skipped under exactly one reason, so
`records_kept + records_skipped == records_read`, per kind too; the first `max_locations` file:line
places of each reason are listed.

Output files in out_dir (JSONL, one object per line; each written atomically, stats.json last):
  train-00000.jsonl ...     examples of the train split (shards of `shard_size`)
  heldout-00000.jsonl ...   examples of the held-out split
  prompts-reddit.jsonl      PPO prompts: {"id", "source": "reddit", "messages", "meta"}
  stats.json                counts, skip reasons, label balance per split, files read and ignored, config
Example schema: {"id": comment name, "split", "thread_id": submission name, "parent_id",
"messages": [{"role", "content"}] (the context), "response", "label" (0/1), "score",
"parent_score", "siblings": [{"id", "text", "score"}], "meta": {"subreddit", "created_utc"}}.
"""

import hashlib
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import orjson

from karma.checkpoint import atomic_write, atomic_write_json
from karma.data.filters import FilterConfig, comment_skip_reason, submission_skip_reason
from karma.data.format import render_prompt
from karma.data.pushshift import file_kind, find_dumps, read_dump
from karma.data.threads import ThreadConfig, build_examples

SPLITS = ("train", "heldout")


@dataclass
class PrepConfig:
    inputs: list  # dump files or directories
    out_dir: Path
    filters: FilterConfig = field(default_factory=FilterConfig)
    threads: ThreadConfig = field(default_factory=ThreadConfig)
    heldout_percent: float = 10.0
    shard_size: int = 50_000
    max_prompts: int | None = None
    max_locations: int = 20  # file:line examples kept per skip reason


def split_of(thread_id: str, heldout_percent: float) -> str:
    """Deterministic split by submission: the first 8 bytes of sha256(thread id) as a fraction."""
    h = int.from_bytes(hashlib.sha256(thread_id.encode()).digest()[:8], "big") / 2**64
    return "heldout" if h < heldout_percent / 100 else "train"


class Tally:
    """Counts of records read / kept / skipped by kind and reason, with sample locations."""

    def __init__(self, max_locations: int):
        self.read, self.kept = Counter(), Counter()
        self.skipped = defaultdict(Counter)
        self.locations = defaultdict(list)
        self.truncated = []
        self.max_locations = max_locations

    def skip(self, kind: str, reason: str, path: Path | None = None, line: int | None = None):
        self.skipped[kind][reason] += 1
        if path is not None and len(self.locations[reason]) < self.max_locations:
            self.locations[reason].append(f"{path}:{line}")

    def outcome(self, kind: str, record, reason: str | None):
        if reason is None:
            self.kept[kind] += 1
        else:
            self.skip(kind, reason)


def prepare(cfg: PrepConfig, progress=None) -> dict:
    """Run the pipeline; returns the stats (also written to out_dir/stats.json)."""
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ignored = []  # files in input directories that do not look like dumps
    files = find_dumps(cfg.inputs, on_ignored=ignored.append)
    kinds = {path: file_kind(path) for path in files}
    tally = Tally(cfg.max_locations)

    def on_skip(kind, reason, path, line):
        tally.read[kind] += 1
        tally.skip(kind, reason, path, line)

    def on_truncated(path, lines):
        tally.truncated.append({"file": str(path), "readable_lines": lines})

    posts, comments = {}, {}
    for path in [p for p in files if kinds[p] == "submission"] + [p for p in files if kinds[p] == "comment"]:
        kind = kinds[path]
        for line, record in read_dump(path, kind, on_skip, on_truncated):
            tally.read[kind] += 1
            if progress is not None:
                progress.update(1)
            if kind == "submission":
                reason = "duplicate" if record.name in posts else submission_skip_reason(record, cfg.filters)
                if reason:
                    tally.skip(kind, reason, path, line)
                else:
                    posts[record.name] = record
            else:
                reason = ("post_unavailable" if record.link_id not in posts else
                          "duplicate" if record.name in comments else comment_skip_reason(record, cfg.filters))
                if reason:
                    tally.skip(kind, reason, path, line)
                else:
                    comments[record.name] = record

    label_counts = {s: Counter() for s in SPLITS}
    threads = {s: set() for s in SPLITS}
    prompts, seen_contexts, clamped, subreddits = {}, set(), 0, set()
    with ShardWriter(out_dir, cfg.shard_size) as writer:
        for ex in build_examples(posts, comments, cfg.threads, tally.outcome):
            split = split_of(ex["thread_id"], cfg.heldout_percent)
            writer.write(split, {"id": ex["id"], "split": split, **{k: v for k, v in ex.items() if k != "id"}})
            label_counts[split][ex["label"]] += 1
            threads[split].add(ex["thread_id"])
            subreddits.add(ex["meta"]["subreddit"])
            clamped += ex["parent_score"] < 1
            key = ex["parent_id"]
            if split == "train" and key not in prompts and (cfg.max_prompts is None or len(prompts) < cfg.max_prompts):
                text = render_prompt(ex["messages"])
                if text not in seen_contexts:  # the same context under another parent (e.g. reposts)
                    seen_contexts.add(text)
                    prompts[key] = {"id": f"reddit-{key}", "source": "reddit", "messages": ex["messages"],
                                    "meta": ex["meta"]}
    write_jsonl(out_dir / "prompts-reddit.jsonl", prompts.values())

    records_read = sum(tally.read.values())
    records_kept = sum(tally.kept.values())
    stats = {
        "records_read": records_read,
        "records_kept": records_kept,
        "records_skipped": sum(sum(c.values()) for c in tally.skipped.values()),
        "by_kind": {kind: {"read": tally.read[kind], "kept": tally.kept[kind],
                           "skipped": dict(tally.skipped[kind].most_common())} for kind in ("submission", "comment")},
        "skip_locations": dict(tally.locations),
        "truncated_files": tally.truncated,
        "files": [{"path": str(p), "kind": kinds[p]} for p in files],
        "ignored_files": [str(p) for p in ignored],
        "posts": tally.kept["submission"],
        "comments": tally.kept["comment"],
        "subreddits": len(subreddits),
        "examples": sum(sum(c.values()) for c in label_counts.values()),
        "splits": {s: {"examples": sum(label_counts[s].values()), "threads": len(threads[s]),
                       "rewarding": label_counts[s][1], "not_rewarding": label_counts[s][0],
                       "rewarding_rate": round(label_counts[s][1] / max(1, sum(label_counts[s].values())), 4)}
                   for s in SPLITS},
        "parent_score_clamped": int(clamped),
        "reddit_prompts": len(prompts),
        "shards": writer.paths,
        "seconds": round(time.perf_counter() - start, 2),
        "config": _config_dict(cfg),
    }
    stats["records_per_s"] = round(records_read / max(stats["seconds"], 1e-9))
    atomic_write_json(out_dir / "stats.json", stats)
    return stats


class ShardWriter:
    """JSONL shards per split (`train-00000.jsonl`, ...), each renamed into place when complete;
    shards of an earlier run in out_dir are removed first."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir, self.shard_size = out_dir, shard_size
        self.buffers = {s: [] for s in SPLITS}
        self.counts = Counter()
        self.paths = []
        for split in SPLITS:
            for stale in out_dir.glob(f"{split}-*.jsonl"):
                stale.unlink()

    def write(self, split: str, obj: dict):
        self.buffers[split].append(orjson.dumps(obj))
        if len(self.buffers[split]) >= self.shard_size:
            self._flush(split)

    def _flush(self, split: str):
        path = self.out_dir / f"{split}-{self.counts[split]:05d}.jsonl"
        lines = self.buffers[split]
        atomic_write(path, lambda p: Path(p).write_bytes(b"".join(line + b"\n" for line in lines)))
        self.paths.append(path.name)
        self.counts[split] += 1
        self.buffers[split] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            for split in SPLITS:
                if self.buffers[split] or not self.counts[split]:
                    self._flush(split)


def write_jsonl(path: Path, objs) -> None:
    atomic_write(path, lambda p: Path(p).write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in objs)))


def _config_dict(cfg: PrepConfig) -> dict:
    filters = {f.name: getattr(cfg.filters, f.name) for f in fields(cfg.filters) if f.name != "detector"}
    return {"inputs": [str(p) for p in cfg.inputs], "out_dir": str(cfg.out_dir), "filters": filters,
            "threads": asdict(cfg.threads), "heldout_percent": cfg.heldout_percent,
            "shard_size": cfg.shard_size, "max_prompts": cfg.max_prompts}
