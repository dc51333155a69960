"""What every training run shares: its output directory's lock, its config.json (and the check that
a resumed run keeps the same settings), resuming from the latest checkpoint, the JSONL metrics log,
bf16 autocast, the optimizer, the divergence error, peak memory.

Lock: `<out>/.lock` holds the owner's pid and host, created with O_EXCL (atomic), so a second run
into the same --out is refused instead of interleaving logs and checkpoints. A lock whose process
is gone (same host, pid not running) is stale: it is taken over with a message. A lock from another
host cannot be checked and is refused with the path to delete.
"""

import json
import math
import os
import resource
import shutil
import socket
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import orjson
import torch

from karma.checkpoint import (atomic_directory, atomic_write_json, finite_json, latest_checkpoint, load_training_state, read_json,
                              truncate_jsonl)
from karma.distributed import Dist, barrier, full_state_dict
from karma.tokenizer import Tokenizer, copy_tokenizer_files
from karma.weights import write_hf_checkpoint


class TrainingDiverged(RuntimeError):
    """Training stopped because its numbers left any sane range (the message says which and where
    the last good checkpoint is)."""


class RunLocked(RuntimeError):
    """Another live run writes into the same output directory."""


class RunLock:
    """`with RunLock(out):` hold `<out>/.lock` for the duration of a run (see the module doc)."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.path = Path(directory) / ".lock"
        self.enabled = enabled

    def __enter__(self):
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise RunLocked(f"{self.path}: could not take the lock")

    def _take_over_if_stale(self):
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = None, None, None  # unreadable: written by a process killed mid-write
        if holder is not None:
            if host != socket.gethostname():
                raise RunLocked(f"{self.path}: another run (pid {pid} on {host}) writes into this directory; "
                                f"if it is no longer running, delete {self.path}")
            if _alive(pid):
                raise RunLocked(f"{self.path}: another run (pid {pid}, started "
                                f"{time.ctime(holder.get('started', 0))}) writes into this directory")
        print(f"{self.path}: taking over a stale lock (pid {pid} is not running)", file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc):
        if self.enabled:
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ----------------------------------------------------------------------------------- run config

def config_dict(cfg) -> dict:
    """A run config dataclass as JSON-ready values (paths as strings, also in lists)."""
    json_ready = lambda v: str(v) if isinstance(v, Path) else [json_ready(x) for x in v] if isinstance(v, list) else v
    return {k: json_ready(v) for k, v in asdict(cfg).items()}


def check_resumable(out: Path, cfg, may_change: set[str]) -> None:
    """A resumed run must continue the run that wrote `out/config.json`: every setting outside
    `may_change` (logging, checkpointing, stopping) must be the same, or the resumed run would not
    be the run its checkpoint and logs describe. Refused with the differences listed."""
    saved = read_json(Path(out) / "config.json")
    now = config_dict(cfg)
    changed = [f"--{k.replace('_', '-')}: {saved[k]!r} -> {now[k]!r}"
               for k in (f.name for f in fields(cfg))
               if k not in may_change and k in saved and saved[k] != now[k]]
    if changed:
        raise ValueError(f"{out}: --resume continues the run exactly as it was configured, but these settings "
                         f"differ from its config.json: {'; '.join(changed)}. Run with the original settings, or "
                         f"start a new run in another --out")


def check_out_dir(out: Path, cfg, may_change: set[str]) -> None:
    """--out of a new run must not hold an earlier run's checkpoints (a forgotten --resume would
    overwrite its logs); a resumed run must keep its settings (check_resumable)."""
    latest = latest_checkpoint(Path(out) / "checkpoints")
    if latest is None:
        return
    if not cfg.resume:
        raise ValueError(f"{out}: holds an earlier run (checkpoint {latest.name}); pass --resume to continue it, "
                         f"or use a new --out (or delete {out})")
    check_resumable(out, cfg, may_change)


def drop_checkpoints_if_done(out: Path, keep: int, is_main: bool) -> None:
    """--keep-checkpoints 0: once a run has finished and exported, delete its checkpoints (model
    and optimizer state, several times the model's size). Such a run can no longer be resumed."""
    if keep == 0 and is_main and (Path(out) / "checkpoints").exists():
        shutil.rmtree(Path(out) / "checkpoints")


def write_config(out: Path, cfg, **extra) -> None:
    atomic_write_json(Path(out) / "config.json", {**config_dict(cfg), **extra})


# ---------------------------------------------------------------------------------- metrics log

class MetricsLog:
    """One JSON object per line, flushed per record; non-finite numbers are written as null and
    their keys listed under "nonfinite" (JSON has no NaN). A fresh run truncates the file, a
    resumed one appends. Only the main rank writes: elsewhere `write` does nothing."""

    def __init__(self, path: Path, append: bool, enabled: bool = True):
        self.file = open(path, "ab" if append else "wb") if enabled else None

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        record, replaced = finite_json({"time": time.time(), **record})
        if replaced:
            record["nonfinite"] = replaced
        self.file.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def show_progress(is_main: bool = True) -> bool:
    """Progress bars only on a terminal: in a captured log their carriage returns tangle with the
    printed lines (the per-rollout and evaluation lines are printed either way)."""
    return is_main and sys.stderr.isatty()


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ---------------------------------------------------------------------------------------- flags

AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
UNIT_INTERVAL = (lambda v: 0 <= v <= 1, "in [0, 1]")


def check_flags(cfg, **rules) -> None:
    """rules: field name -> (test, what the value must be). A value that fails its test, or a
    non-finite float, is a ValueError naming the flag; None (an unset option) passes."""
    for name, (test, must) in rules.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value) or not test(value):
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be {must}")


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) over the trainable parameters, betas (0.9, 0.95): decay on
    matrices (linear weights, embeddings), none on norms and biases. Fused: one kernel over all
    parameters (on 2 CPU cores 10x faster than the foreach form, and without its full-size temporaries)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True)


def warmup_cosine(optimizer, total_steps: int, warmup_ratio: float, min_ratio: float):
    """Linear warmup over warmup_ratio * total_steps to the peak LR, then cosine decay to
    min_ratio * peak at total_steps (Loshchilov & Hutter 2017, "SGDR", without restarts)."""
    warmup_steps = max(1, round(warmup_ratio * total_steps))

    def multiplier(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


class Throughput:
    """Examples (or pairs...), tokens and steps per second since the last log record."""

    def __init__(self, unit: str = "examples"):
        self.unit = unit
        self.reset()

    def reset(self) -> None:
        self.examples = self.tokens = self.steps = 0
        self.start = time.perf_counter()

    def add(self, examples: int, tokens: int) -> None:
        self.examples, self.tokens, self.steps = self.examples + examples, self.tokens + tokens, self.steps + 1

    def rates(self) -> dict:
        """The rates since the last call (or since construction); starts a new interval."""
        seconds = time.perf_counter() - self.start
        rates = {f"{self.unit}_per_s": self.examples / seconds, "tokens_per_s": self.tokens / seconds,
                 "steps_per_s": self.steps / seconds}
        self.reset()
        return rates


def autocast(d: Dist):
    """bf16 compute over fp32 master weights on one GPU (under torchrun FSDP's mixed-precision policy
    does it); a no-op on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=d.device.type == "cuda" and not d.enabled)


def resume(out: Path, trained: dict, counter: str, logs: list[str], d: Dist) -> dict | None:
    """Load the latest checkpoint of `out` into trained = {name: (model, optimizer)} and return its
    trainer state (None when there is none); the JSONL `logs` lose their records past the
    checkpoint's `counter` (written after it by the killed run), so they read as one run."""
    latest = latest_checkpoint(Path(out) / "checkpoints")
    if latest is None:
        return None
    state = load_training_state(latest, trained)
    if d.is_main:
        for name in logs:
            truncate_jsonl(Path(out) / name, counter, state[counter])
    return state


def checkpoint_due(step: int, total: int, save_every: int, stopping: bool, keep: int) -> bool:
    """Save every `save_every` steps, when stopping early, and at the end, except the end with
    --keep-checkpoints 0 (that checkpoint would be deleted right after the final export)."""
    if step == total and keep == 0:
        return False
    return step % save_every == 0 or stopping or step == total


def export_model(model: torch.nn.Module, tokenizer: Tokenizer, directory: Path, d: Dist) -> None:
    """A trained decoder in Hugging Face layout with its tokenizer, whole or not at all (written
    aside, then swapped in): loads in transformers and vLLM. Every rank calls it (FSDP gathers)."""
    state = full_state_dict(model, d)
    if d.is_main:
        with atomic_directory(directory) as tmp:
            write_hf_checkpoint(model, tmp, state_dict=state)
            copy_tokenizer_files(tokenizer, tmp)
    barrier(d)
