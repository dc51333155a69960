"""The data pipeline: Pushshift dumps -> reward-model examples, Reddit PPO prompts, stats.json.

    1. read: this process decompresses the dumps (all RS files first, then RC files) into blocks of
       whole lines; the workers parse and normalise them and apply the cheap filters
       (karma/data/filters.py: every check but the language), results in input order
    2. language: fastText identifies the records whose verdict can change an example (below)
    3. filter: the checks replayed in input order with those verdicts: a submission is a duplicate,
       fails a filter or is kept; a comment's post is not kept, or it is a duplicate, fails a
       filter or is kept
    4. threads: link, label, build examples (karma/data/threads.py), thread by thread in the
       workers, their JSON lines streamed in order to the shards
    5. split 90/10 by submission (hash of its id: deterministic, no thread in both splits)
    6. Reddit prompts: each distinct context of the train split, once

Language identification only where it can change the outcome. fastText is most of the filters'
cost (~17 us a text, on every record that passes the cheap checks), yet many verdicts change
nothing: a comment whose post is dropped, a thread that cannot reach min_responses top-level
replies even if all its candidates were English, a reply whose parent chain a cheap filter has
already broken. So: count every record as English (a superset of the records finally kept, since a
verdict can only remove a record), ask threads.language_matters which of them could change an
example, identify just those, and replay the filters with the verdicts. One round suffices:
removing records never makes another one matter (a thread only loses replies, a chain only
breaks). Duplicated ids come first: which copy is kept (the first to pass every check) shapes the
threads, so all copies, and the posts they reply to, are identified before the rest.
The examples are exactly those of identifying every record, and every count is what identifying
every record would give if the records never identified were English. So only records that fail
both a thread check and the language check are counted differently: under their thread reason
(too_few_responses, thread_too_small, parent_unavailable) instead of non_english, and the comments
of such a post under their own reason instead of post_unavailable. On data/sample that is 27 of
2,889 records (non_english 14 + 48 -> 7 + 42, post_unavailable 541 -> 527); on the 20k-post bench
dump 1,038 of 118,987, and fastText reads 70,848 texts instead of 88,145 (second looks included:
karma/data/filters.py).

Workers (`workers`, default 1: all in this process). A multiprocessing pool (fork where the platform
has it: workers start in milliseconds with this process's imports and its fastText model, if
loaded; the model loads once per worker otherwise) takes the blocks (~1 MiB of lines with their
file and first line number, so skip locations stay exact), then the texts to identify, then the
threads (their records there, JSON lines back), each in order and at most BLOCKS_IN_FLIGHT tasks per
worker ahead of the results. With workers=1 the same functions run in this process. The output is
byte-identical for any number of workers (stats.json's timings and config.workers aside).

Memory: the submissions that pass the cheap filters and the comments replying to them (in full when
they pass the cheap filters too, as ids otherwise), which the thread building and the language step
need because a parent may appear anywhere in the input (another month's file included). Everything
else streams: a dump of tens of GB that yields 400k examples needs memory for those examples'
threads, not for the dump.

Accounting: every record read ends either kept (a submission whose thread yields examples, a
comment that becomes an example) or skipped under exactly one reason, so
`records_kept + records_skipped == records_read`, per kind too; the first `max_locations` file:line
places of each reason (in input order) are listed.

Output files in out_dir (JSONL, one object per line; each written atomically, stats.json last;
data_prep.py writes them into a temporary directory that then replaces out_dir whole, replacing_outputs):
  train-00000.jsonl ...     examples of the train split (shards of `shard_size`)
  heldout-00000.jsonl ...   examples of the held-out split
  prompts-reddit.jsonl      PPO prompts: {"id", "source": "reddit", "messages", "meta"}
  stats.json                counts, skip reasons, label balance per split, files read and ignored, config
Example schema: {"id": comment name, "split", "thread_id": submission name, "parent_id",
"messages": [{"role", "content"}] (the context), "response", "label" (0/1), "score",
"parent_score", "siblings": [{"id", "text", "score"}], "meta": {"subreddit", "created_utc"}}.
"""

import bisect
import errno
import gc
import hashlib
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict, deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from fnmatch import fnmatch
from pathlib import Path

import orjson

from karma.data.filters import (FilterConfig, comment_cheap_reason, english_verdicts, filtered_text,
                                submission_cheap_reason)
from karma.data.format import render_prompt
from karma.data.pushshift import file_kind, find_dumps, line_blocks, parse_block
from karma.data.threads import ThreadConfig, language_matters, thread_examples, threads_in_order
from karma.files import atomic_directory, atomic_write, atomic_write_json, recover_directory

SPLITS = ("train", "heldout")
BLOCKS_IN_FLIGHT = 4  # tasks per worker sent ahead of the results: workers never wait, memory stays bounded
LANGUAGE_BATCH = 2000  # texts per language-identification task
THREAD_BATCH = 2000  # records (posts and comments) per thread-building task


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
    workers: int = 1  # processes that parse, filter, identify languages, build threads; 1: this one


def default_workers() -> int:
    """The cores this process may run on (data_prep.py's default for --workers)."""
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def split_of(thread_id: str, heldout_percent: float) -> str:
    """Deterministic split by submission: the first 8 bytes of sha256(thread id) as a fraction."""
    h = int.from_bytes(hashlib.sha256(thread_id.encode()).digest()[:8], "big") / 2**64
    return "heldout" if h < heldout_percent / 100 else "train"


class Tally:
    """Counts of records read / kept / skipped by kind and reason, with sample locations: the first
    max_locations (file index, line) places per reason in input order, whatever order they come in
    (a skip found while reading and one found by the filter replay interleave)."""

    def __init__(self, max_locations: int):
        self.read, self.kept = Counter(), Counter()
        self.skipped = defaultdict(Counter)
        self.locations = defaultdict(list)
        self.truncated = []
        self.max_locations = max_locations

    def skip(self, kind: str, reason: str, place: tuple[int, int] | None = None):
        self.skipped[kind][reason] += 1
        if place is None:
            return
        places = self.locations[reason]
        if len(places) < self.max_locations or places and place < places[-1]:
            bisect.insort(places, place)
            del places[self.max_locations:]

    def outcome(self, kind: str, reason: str | None):
        if reason is None:
            self.kept[kind] += 1
        else:
            self.skip(kind, reason)


@contextmanager
def no_cyclic_gc():
    """Python's cycle collector off while records are made: the pipeline makes millions of small
    objects and no reference cycles, yet every few hundred allocations the collector scans them
    (and the interpreter's whole heap, torch's modules included) for cycles: ~40% of the parsing
    time. Reference counting still frees everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@no_cyclic_gc()
def prepare(cfg: PrepConfig, progress=None, into: Path | None = None) -> dict:
    """Run the pipeline; returns the stats (also written to stats.json). The files go to `into`,
    cfg.out_dir by default; data_prep.py writes them into the temporary directory of
    replacing_outputs, which then replaces out_dir as a whole."""
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir if into is None else into)
    out_dir.mkdir(parents=True, exist_ok=True)
    ignored = []  # files in input directories that do not look like dumps
    files = find_dumps(cfg.inputs, on_ignored=ignored.append)
    kinds = {path: file_kind(path) for path in files}
    order = [p for p in files if kinds[p] == "submission"] + [p for p in files if kinds[p] == "comment"]
    tally = Tally(cfg.max_locations)

    with Workers(cfg.workers, cfg.filters) as workers:
        log = read_records(order, kinds, workers, tally, progress)
        posts, comments = filter_records(log, workers, cfg, tally)
        del log  # the kept records are all that is left to hold
        out = write_examples(posts, comments, workers, cfg, out_dir, tally)

    records_read = sum(tally.read.values())
    records_kept = sum(tally.kept.values())
    stats = {
        "records_read": records_read,
        "records_kept": records_kept,
        "records_skipped": sum(sum(c.values()) for c in tally.skipped.values()),
        "by_kind": {kind: {"read": tally.read[kind], "kept": tally.kept[kind],
                           "skipped": dict(tally.skipped[kind].most_common())} for kind in ("submission", "comment")},
        "skip_locations": {reason: [f"{order[file]}:{line}" for file, line in places]  # reasons in input order
                           for reason, places in sorted(tally.locations.items(), key=lambda kv: kv[1][:1])},
        "truncated_files": tally.truncated,
        "files": [{"path": str(p), "kind": kinds[p]} for p in files],
        "ignored_files": [str(p) for p in ignored],
        "posts": tally.kept["submission"],
        "comments": tally.kept["comment"],
        "subreddits": len(out["subreddits"]),
        "examples": sum(sum(c.values()) for c in out["labels"].values()),
        "splits": {s: {"examples": sum(out["labels"][s].values()), "threads": len(out["threads"][s]),
                       "rewarding": out["labels"][s][1], "not_rewarding": out["labels"][s][0],
                       "rewarding_rate": round(out["labels"][s][1] / max(1, sum(out["labels"][s].values())), 4)}
                   for s in SPLITS},
        "parent_score_clamped": out["clamped"],
        "reddit_prompts": out["prompts"],
        "shards": out["shards"],
        "seconds": round(time.perf_counter() - start, 2),
        "config": _config_dict(cfg),
    }
    stats["records_per_s"] = round(records_read / max(stats["seconds"], 1e-9))
    with naming_errors(out_dir / "stats.json"):
        atomic_write_json(out_dir / "stats.json", stats)
    return stats


def read_records(files: list[Path], kinds: dict, workers: "Workers", tally: Tally, progress=None) -> list[tuple]:
    """Step 1. Every record is counted as read; an unreadable line, a comment whose post failed the
    cheap filters (or was never read: post_unavailable whatever the languages) and a submission
    failing a cheap filter with no earlier copy kept are tallied now. The rest is the log the
    next steps replay, in input order: (kind, file index, line, name, link_id, cheap-filter reason
    or None, the record when it passed them)."""
    def blocks():
        for file, path in enumerate(files):
            for first_line, block in line_blocks(path, on_truncated):
                yield file, kinds[path], first_line, block

    def on_truncated(path, lines):
        tally.truncated.append({"file": str(path), "readable_lines": lines})

    log, candidate_posts = [], set()
    for file, kind, parsed in workers.map(parse_and_filter, blocks()):
        tally.read[kind] += len(parsed)
        if progress is not None:
            progress.update(len(parsed))
        for line, reason, name, link_id, record in parsed:
            if name is None:
                tally.skip(kind, reason, (file, line))  # unreadable: the reason says why
            elif kind == "comment" and link_id not in candidate_posts:
                tally.skip(kind, "post_unavailable", (file, line))
            elif kind == "submission" and reason and name not in candidate_posts:
                tally.skip(kind, reason, (file, line))
            else:
                log.append((kind, file, line, name, link_id, reason, record))
                if kind == "submission" and reason is None:
                    candidate_posts.add(name)
    return log


def filter_records(log: list[tuple], workers: "Workers", cfg: PrepConfig, tally: Tally) -> tuple[dict, dict]:
    """Steps 2 and 3: identify the languages that matter (module docstring), replay the filters,
    tally the skipped. Returns the kept posts and comments (name -> record)."""
    english = [None] * len(log)  # per log entry: the verdict once identified; None counts as English

    def identify(todo: list[int]):
        texts = [filtered_text(log[i][6]) for i in todo]
        batches = [texts[b:b + LANGUAGE_BATCH] for b in range(0, len(texts), LANGUAGE_BATCH)]
        verdicts = (v for batch in workers.map(identify_languages, batches) for v in batch)
        for i, verdict in zip(todo, verdicts, strict=True):
            english[i] = verdict

    if cfg.filters.english:
        identify(_copies_of_duplicates(log))  # usually none
        posts, comments, _ = apply_filters(log, english)
        post_names, comment_names = language_matters({name: log[i][6] for name, i in posts.items()},
                                                     {name: log[i][6] for name, i in comments.items()}, cfg.threads)
        identify(sorted(i for i in [posts[n] for n in post_names] + [comments[n] for n in comment_names]
                        if english[i] is None))
    posts, comments, skipped = apply_filters(log, english)
    for i, reason in skipped:
        kind, file, line = log[i][:3]
        tally.skip(kind, reason, (file, line))
    return {name: log[i][6] for name, i in posts.items()}, {name: log[i][6] for name, i in comments.items()}


def apply_filters(log: list[tuple], english: list[bool | None]) -> tuple[dict, dict, list]:
    """Step 3: the checks in the order a single pass over the input makes them, on the log (duplicate:
    a copy of the id was kept before). Returns the kept posts and comments (name -> log index) and
    the skipped (log index, reason)."""
    posts, comments, skipped = {}, {}, []
    for i, (kind, _, _, name, link_id, reason, _) in enumerate(log):
        if kind == "submission":
            kept = posts
            reason = "duplicate" if name in posts else reason
        else:
            kept = comments
            reason = ("post_unavailable" if link_id not in posts else "duplicate" if name in comments else reason)
        if reason is None and english[i] is False:
            reason = "non_english"
        if reason is None:
            kept[name] = i
        else:
            skipped.append((i, reason))
    return posts, comments, skipped


def _copies_of_duplicates(log: list[tuple]) -> list[int]:
    """Log entries to identify before anything else: the candidates (passed the cheap filters) whose
    id occurs twice or more, and the candidate copies of the posts such comments reply to. Which copy
    is kept (the first one passing every check) decides a thread's structure, so those verdicts come
    first; the rarely needed price of knowing the threads before identifying the rest."""
    names = [entry[3] for entry in log]
    if len(set(names)) == len(names):
        return []  # the usual case
    copies = Counter(names)
    duplicated = {i for i, (_, _, _, name, _, reason, _) in enumerate(log) if reason is None and copies[name] > 1}
    posts = {log[i][4] for i in duplicated if log[i][0] == "comment"}
    duplicated |= {i for i, (kind, _, _, name, _, reason, _) in enumerate(log)
                   if kind == "submission" and reason is None and name in posts}
    return sorted(duplicated)


def write_examples(posts: dict, comments: dict, workers: "Workers", cfg: PrepConfig, out_dir: Path,
                   tally: Tally) -> dict:
    """Steps 4 to 6: the threads built by the workers (thread_rows), their outcomes tallied, their
    JSON lines written to the shards in order, the Reddit prompts collected. Returns what the stats
    need: label counts and threads per split, subreddits, clamped parents, prompts, shard names."""
    labels, threads = {s: Counter() for s in SPLITS}, {s: set() for s in SPLITS}
    prompts, seen_contexts, clamped, subreddits = {}, set(), 0, set()
    with ShardWriter(out_dir, cfg.shard_size) as writer:
        for results in workers.map(thread_rows, thread_tasks(posts, comments, cfg)):
            for thread_id, split, outcomes, rows in results:
                for kind, reason in outcomes:
                    tally.outcome(kind, reason)
                if rows:
                    threads[split].add(thread_id)
                for line, label, subreddit, parent_score_clamped, key, prompt in rows:
                    writer.write(split, line)
                    labels[split][label] += 1
                    subreddits.add(subreddit)
                    clamped += parent_score_clamped
                    room = cfg.max_prompts is None or len(prompts) < cfg.max_prompts
                    if prompt and key not in prompts and room:
                        text, prompt_line = prompt
                        if text not in seen_contexts:  # the same context under another parent (e.g. reposts)
                            seen_contexts.add(text)
                            prompts[key] = prompt_line
    write_lines(out_dir / "prompts-reddit.jsonl", list(prompts.values()))
    return {"labels": labels, "threads": threads, "subreddits": subreddits, "clamped": clamped,
            "prompts": len(prompts), "shards": writer.paths}


def thread_tasks(posts: dict, comments: dict, cfg: PrepConfig):
    """Step 4's tasks: threads in order (threads.threads_in_order), about THREAD_BATCH records a task."""
    batch, size = [], 0
    for thread in threads_in_order(posts, comments):
        batch.append(thread)
        size += 1 + len(thread[1])
        if size >= THREAD_BATCH:
            yield cfg.threads, cfg.heldout_percent, batch
            batch, size = [], 0
    if batch:
        yield cfg.threads, cfg.heldout_percent, batch


CHEAP_REASON = {"submission": submission_cheap_reason, "comment": comment_cheap_reason}


def parse_and_filter(filters: FilterConfig, task: tuple) -> tuple:
    """Worker task: (file, kind, first line, block of lines) -> (file, kind, results), one result per
    non-blank line: (line, reason, name, link_id, record). An unreadable line has name None and the
    reason; a record has its cheap-filter reason (None: passed) and, only when it passed, the record:
    the others' ids are all the main process needs."""
    file, kind, first_line, block = task
    cheap_reason, results = CHEAP_REASON[kind], []
    for line, record in parse_block(kind, first_line, block):
        if isinstance(record, str):
            results.append((line, record, None, None, None))
            continue
        reason = cheap_reason(record, filters)
        link_id = record.link_id if kind == "comment" else None
        results.append((line, reason, record.name, link_id, None if reason else record))
    return file, kind, results


def identify_languages(filters: FilterConfig, texts: list[str]) -> list[bool]:
    """Worker task: whether each text passes the language check."""
    return english_verdicts(texts, filters)


def thread_rows(filters: FilterConfig, task: tuple) -> list[tuple]:
    """Worker task: threads -> per thread (thread id, split, outcomes, rows), a row per example:
    (JSON line, label, subreddit, parent score clamped, parent id, prompt), where prompt, for the
    train split, is (context text, the prompts-reddit.jsonl line) when the thread has not offered
    that parent with that text before (scrubbing makes the same parent's context differ between
    examples when a name in it belongs to one example's people only)."""
    threads_cfg, heldout_percent, threads = task
    results = []
    for post, thread, strays in threads:
        outcomes, examples = thread_examples(post, thread, strays, threads_cfg)
        split, rows, offered = split_of(post.name, heldout_percent), [], set()
        for ex in examples:
            line = orjson.dumps({"id": ex["id"], "split": split, **{k: v for k, v in ex.items() if k != "id"}})
            key, prompt = ex["parent_id"], None
            text = render_prompt(ex["messages"]) if split == "train" else None
            if text is not None and (key, text) not in offered:
                offered.add((key, text))
                prompt = text, orjson.dumps({"id": f"reddit-{key}", "source": "reddit", "messages": ex["messages"],
                                             "meta": ex["meta"]})
            rows.append((line, ex["label"], ex["meta"]["subreddit"], ex["parent_score"] < 1, key, prompt))
        results.append((post.name, split, outcomes, rows))
    return results


class Workers:
    """`map(fn, items)`: fn(filters, item) for each item, results in input order, computed by a pool
    of n processes (each given `filters` once, when it starts) or, for n = 1, here. At most
    BLOCKS_IN_FLIGHT items per worker are sent ahead of the results consumed, so a reader feeding
    `items` never runs far ahead of the parsing."""

    def __init__(self, n: int, filters: FilterConfig):
        self.n, self.filters, self.pool = n, filters, None
        if n > 1:
            # fork: workers start in milliseconds with this process's imports (torch comes in with
            # karma) and anything already loaded, such as the fastText model; spawn where there is none
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = multiprocessing.get_context(method).Pool(n, initializer=_init_worker, initargs=(filters,))

    def map(self, fn, items):
        if self.pool is None:
            yield from (fn(self.filters, item) for item in items)
            return
        pending = deque()
        for item in items:
            pending.append(self.pool.apply_async(_run_task, (fn, item)))
            if len(pending) >= BLOCKS_IN_FLIGHT * self.n:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


_worker_filters = None  # a worker process's FilterConfig (its own fastText model, loaded at first use)


def _init_worker(filters: FilterConfig):
    global _worker_filters
    _worker_filters = filters
    gc.disable()  # see no_cyclic_gc


def _run_task(fn, item):
    return fn(_worker_filters, item)


class ShardWriter:
    """JSONL shards per split (`train-00000.jsonl`, ...). Lines stream into a hidden temporary file
    that is synced and renamed into place when the shard is complete (written atomically, as with
    atomic_write, without holding a shard's 50k lines in memory); shards of an earlier run in out_dir
    are removed first. On any error the temporary files are removed, and an OSError names the shard
    (a full disk otherwise reads "[Errno 28] No space left on device", no file)."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir, self.shard_size = out_dir, shard_size
        self.open = {}  # split -> [file, temporary path, lines written]
        self.counts = Counter()  # shards completed per split
        self.paths = []
        for split in SPLITS:
            for stale in out_dir.glob(f"{split}-*.jsonl"):
                stale.unlink()

    def write(self, split: str, line: bytes):
        shard = self.open.get(split) or self._start(split)
        try:
            shard[0].write(line + b"\n")
        except OSError as e:  # not naming_errors, which costs microseconds a line
            _raise_named(e, self._path(split))
        shard[2] += 1
        if shard[2] >= self.shard_size:
            self._finish(split)

    def _path(self, split: str) -> Path:
        return self.out_dir / f"{split}-{self.counts[split]:05d}.jsonl"

    def _start(self, split: str) -> list:
        with naming_errors(self._path(split)):
            fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{split}-", suffix=".tmp")
        self.open[split] = [os.fdopen(fd, "wb", buffering=1 << 20), tmp, 0]
        return self.open[split]

    def _finish(self, split: str):
        f, tmp, _ = self.open[split]
        path = self._path(split)
        with naming_errors(path):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.chmod(tmp, 0o644)  # mkstemp creates 0600
            os.replace(tmp, path)
        del self.open[split]
        self.paths.append(path.name)
        self.counts[split] += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                for split in SPLITS:
                    if split not in self.open and not self.counts[split]:
                        self._start(split)  # a split without examples still gets its -00000 file, empty
                    if split in self.open:
                        self._finish(split)
        finally:
            for f, tmp, _ in self.open.values():  # left by an error
                try:
                    f.close()  # flushes the buffer: fails again on a full disk, yet closes the file
                except OSError:
                    pass
                Path(tmp).unlink(missing_ok=True)
            self.open.clear()


def write_lines(path: Path, lines: list[bytes]) -> None:
    """JSONL from serialised lines, written atomically."""
    with naming_errors(path):
        atomic_write(path, lambda p: Path(p).write_bytes(b"\n".join(lines) + b"\n" if lines else b""))


@contextmanager
def naming_errors(path: Path):
    """An OSError while writing `path` names it: one from writing to an open file (a full disk, a
    quota) has no file name, and an atomic write's names its temporary file."""
    try:
        yield
    except OSError as e:
        _raise_named(e, path)


def _raise_named(error: OSError, path: Path):
    if error.errno is None:  # not from the system: its message says what it is about
        raise error
    raise OSError(error.errno, error.strerror, str(path)) from error


# ---------------------------------------------------------------------- replacing the outputs as a whole

OUTPUT_NAMES = ("train-*.jsonl", "heldout-*.jsonl", "prompts-reddit.jsonl", "prompts-ultrachat.jsonl", "stats.json",
                ".train-*.tmp", ".heldout-*.tmp", ".prompts-*.tmp", ".stats.json.*.tmp")  # and their temporaries


def recover_outputs(out_dir: Path) -> None:
    """A run killed between the two renames of its swap (replacing_outputs) left no out_dir and the
    previous outputs in `.<name>.old`: put them back. Call it before anything creates out_dir."""
    recover_directory(_real(out_dir))


@contextmanager
def replacing_outputs(out_dir: Path, carried: tuple[str, ...] = ()):
    """`with replacing_outputs(out) as tmp:` write one run's complete outputs into `tmp`, a new
    sibling directory; on success `tmp` replaces `out` as a whole (karma.checkpoint.atomic_directory:
    two renames, undone by recover_outputs when a kill falls between them), on any error `tmp` is
    removed and `out` is as it was. So a kill at any moment leaves the previous set or the new one,
    never new shards beside the previous prompts and stats (whose prompts may come from threads the
    new split holds out). `carried`: names in `out` that are no outputs yet belong there (the run's
    lock), linked into the new set just before the swap.

    Replacing `out` deletes whatever else it holds, so a file data_prep does not write is refused
    before any work, as is a mount point (it cannot be renamed). The temporary directories of killed
    runs are removed first. Disk: the new set is written beside the previous one, which is deleted
    only after the swap. A failed write names the file by its place in `out`."""
    out_dir = Path(out_dir)
    real = _real(out_dir)  # through a symlink: the new set is written beside the directory it names
    if real.exists():
        if os.path.ismount(real):
            raise ValueError(f"{out_dir}: a mount point, which cannot be replaced as a whole; use a directory in it")
        foreign = sorted(p.name for p in real.iterdir()
                         if p.name not in carried and not any(fnmatch(p.name, n) for n in OUTPUT_NAMES))
        if foreign:
            raise ValueError(f"{out_dir}: holds {', '.join(foreign[:5])}{' and more' if len(foreign) > 5 else ''}, "
                             f"which data_prep.py does not write; a run replaces the whole directory, so move "
                             f"them elsewhere or choose another --out")
    _remove_stale(real)
    with atomic_directory(real) as tmp:
        if real.exists():
            shutil.copymode(real, tmp)
        try:
            yield tmp
        except OSError as e:
            error = _write_error(e, tmp, out_dir)
            if error is e:
                raise
            raise error from e
        for name in carried:
            if (real / name).exists():
                _link_or_copy(real / name, tmp / name)


def _real(out_dir: Path) -> Path:
    return Path(os.path.realpath(out_dir))


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem has them: the lock file stays the same file, so the lock
    held on it (flock) holds in the new set too and the run removes that file when it ends."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _remove_stale(real: Path) -> None:
    """What killed runs left beside `real`: their temporary directories (`.<name>.tmp-<pid>`), and
    the previous set of a run killed after its swap (`.<name>.old`)."""
    if not real.parent.is_dir():
        return
    prefix = f".{real.name}.tmp-"
    for p in real.parent.iterdir():
        if p.name.startswith(prefix) and p.name[len(prefix):].isdigit() and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
    old = real.with_name(f".{real.name}.old")
    if real.exists() and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)


def _write_error(error: OSError, tmp: Path, out_dir: Path) -> OSError:
    """A failed write into the new set, as the user sees it: the file by its place in out_dir,
    out_dir unchanged, and for a full disk the room left."""
    if error.errno is None or not error.filename or Path(error.filename).parent != tmp:
        return error
    message = f"{out_dir / Path(error.filename).name}: {error.strerror}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        message += (f" ({shutil.disk_usage(tmp).free / 2**20:,.0f} MiB free; the new outputs are written beside the "
                    f"previous ones, which they replace once complete)")
    return OSError(error.errno, f"{message}; nothing in {out_dir} was changed")


def _config_dict(cfg: PrepConfig) -> dict:
    filters = {f.name: getattr(cfg.filters, f.name) for f in fields(cfg.filters) if f.name != "detector"}
    return {"inputs": [str(p) for p in cfg.inputs], "out_dir": str(cfg.out_dir), "filters": filters,
            "threads": asdict(cfg.threads), "heldout_percent": cfg.heldout_percent,
            "shard_size": cfg.shard_size, "max_prompts": cfg.max_prompts, "workers": cfg.workers}
