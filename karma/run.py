"""The life of a training run in its output directory (--out), the same for the reward model, PPO and
DPO: `Run` takes the lock, writes config.json, resumes from the latest checkpoint, keeps the JSONL
logs and the progress line, saves checkpoints when due, exports, and draws the curves. Below it, in
order: the lock, config.json and the check that a resumed run keeps its settings and inputs, what
"the same input" means, the logs, the progress line, the rates and memory a record reports.

What a run does with its --out:
  * a new run needs a new or empty --out: one holding an earlier run (config.json, logs, exports,
    checkpoints) is refused, finished or not, so a forgotten --resume never overwrites it;
  * --resume continues the run whose config.json is there: the same settings (except logging,
    evaluation and checkpointing ones) and the same inputs (data, models: compared by content, so
    they may move, see input_identity). --out itself may be spelled differently or moved. A run
    that finished without a checkpoint (--keep-checkpoints 0, or shorter than --save-every: see
    checkpoint_due) has nothing to resume;
  * --resume with a larger budget extends the run, finished or not: a setting marked `budget`
    (ppo.py --rollouts; train_rm.py and dpo.py --max-steps, --epochs) may be raised, never lowered,
    nor set where it was unset or the reverse. The learning-rate schedules are defined on the total,
    so from the checkpoint on they are those of the new total: the steps taken keep the rates they
    had, the next ones follow the longer schedule at their step (a linear decay that reached 0 at
    rollout 100 of 100 goes on, extended to 150, from 1/3 of the peak down to 0 at rollout 150).
    Keeping the old schedule past its end would train a run that decayed to 0 at learning rate 0:
    no extension at all. Where the schedule does not depend on the total (a constant one:
    --min-lr-ratio 1, and --warmup-ratio 0 for the reward model), the extended run is the longer
    run exactly. config.json lists the extensions under "extended";
  * one process at a time: `<out>/.lock` is held with flock(2) for the whole run. The kernel
    releases it when the process ends, however it ends, so there is no stale lock to take over,
    and two processes starting together cannot both get it. The file also holds the owner's pid,
    host and command line, for the message to the process refused. A lock file naming another host
    is refused (flock is not reliable across machines on every network filesystem);
  * whoever takes the lock removes the temporary files and directories killed runs left there
    (checkpoint.remove_leftovers) and says what it removed.
"""

import errno
import fcntl
import hashlib
import json
import os
import resource
import socket
import sys
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

import orjson
import torch
from tqdm import tqdm

from karma.checkpoint import (checkpoint_dirs, latest_checkpoint, load_training_state, process_alive,
                              remove_checkpoints, remove_leftovers, save_training_state)
from karma.distributed import Dist, barrier, full_state_dict
from karma.errors import RunLocked
from karma.files import atomic_directory, atomic_write_json, finite_json, read_json, truncate_jsonl
from karma.plot import plot_run
from karma.track import LOGS as MIRRORED_LOGS, open_mirror

# help of the retention and divergence settings every trainer shares (the Run below enforces them)
KEEP_CHECKPOINTS_HELP = ("checkpoints kept on disk, newest first (each holds the model and its AdamW state, 3x its "
                         "size); 0 keeps one while running, none once the run has finished and exported (it cannot "
                         "be resumed then); a run shorter than --save-every writes none at its end")
MAX_BAD_STEPS_HELP = "stop after this many consecutive steps skipped for a non-finite loss or gradient"
from karma.tokenizer import Tokenizer, copy_tokenizer_files
from karma.weights import write_hf_checkpoint


class Run:
    """A training run in its output directory (cfg.out_dir), from the lock to the curves. A
    trainer checks --out first (check_out_dir, before anything loads), then:

        with Run(cfg, d, counter="step", stop_after=cfg.stop_after_steps) as run:   # the lock
            run.write_config(**facts)             # config.json: settings, facts, input identities
            if run.resume(trained, state):        # --resume: the latest checkpoint; logs opened
                ...                               # the trainer restores its schedulers
            with run.progress(total, "train_rm", initial=state["step"]) as progress:
                while state["step"] < total:
                    ...                           # the algorithm: batch, loss, step, evaluate
                    run.log(record)               # metrics.jsonl
                    if run.after_step(step, total, state):   # a checkpoint when due
                        break                     # --stop-after-*
            if state["step"] >= total:
                run.export_policy(model, tokenizer)          # policy/ (the reward model: its own)
                run.finish()                      # --keep-checkpoints 0 deletes the checkpoints
        # leaving the block: logs closed, curves.png drawn (not after an error), lock released

    Every rank makes the same calls (checkpoints and exports gather FSDP shards); only the main
    rank writes files, logs and progress lines. `trained` = {name: (model, optimizer)}; `state`
    is the trainer's dict of counters, saved as trainer.json with each checkpoint.
    """

    # checkpoints/<name>: optimizer steps (reward model, DPO) or PPO rollouts
    CHECKPOINT_NAMES = {"step": "step-{:08d}", "rollout": "rollout-{:06d}"}

    def __init__(self, cfg, d: Dist, counter: str, stop_after: int | None, logs=("metrics.jsonl",)):
        self.cfg, self.d, self.out = cfg, d, Path(cfg.out_dir)
        self.counter, self.stop_after, self.log_names = counter, stop_after, logs
        self.lock = RunLock(self.out, enabled=d.is_main)
        self.trained, self.logs = {}, {}
        self.mirror = None  # --report-to: metrics.jsonl mirrored into a tracker (karma.track), main rank only

    def __enter__(self) -> "Run":
        self.lock.__enter__()
        return self

    def __exit__(self, error_type, *exc) -> None:
        try:
            for log in self.logs.values():
                log.close()
            if self.mirror is not None:
                self.mirror.close(failed=error_type is not None)
                print(self.mirror.summary(), file=sys.stderr)
            if error_type is None and self.d.is_main and self.logs:
                plot_run(self.out)  # curves.png (karma.plot)
        finally:
            self.lock.__exit__(error_type, *exc)

    def write_config(self, **facts) -> None:
        """config.json: the settings, `facts` about the run and the identity of its inputs (write_config)."""
        if self.d.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_config(self.out, self.cfg, **facts)

    def resume(self, trained: dict, state: dict) -> bool:
        """With --resume and a checkpoint in --out: load it into `trained` and `state` (which also
        gets the keys the trainer added to it, for the trainer to restore: schedulers...), and cut
        the records past it from the logs (the killed run wrote them after it), so that they read
        as one run. Then open the logs: appended to when resumed, new otherwise (a fresh run does
        not append to an earlier run's logs), and with --report-to the tracker, which is sent
        metrics.jsonl as it stands first (karma.track.open_mirror). Returns whether it resumed."""
        self.trained = trained
        latest = self.latest_checkpoint() if self.cfg.resume else None
        if latest is not None:
            state.update(load_training_state(latest, trained))
            if self.d.is_main:
                for name in self.log_names:
                    truncate_jsonl(self.out / name, self.counter, state[self.counter])
        self.logs = {name: MetricsLog(self.out / name, append=latest is not None, enabled=self.d.is_main)
                     for name in self.log_names}
        report_to = getattr(self.cfg, "report_to", "none")  # a config without the setting mirrors nothing
        if self.d.is_main and report_to != "none":
            self.mirror = open_mirror(report_to, self.out)
        return latest is not None

    def log(self, record: dict, name: str = "metrics.jsonl") -> None:
        written = self.logs[name].write(record)
        if self.mirror is not None and name in MIRRORED_LOGS:
            self.mirror.write(written, name)

    def progress(self, total: int, desc: str, unit: str = "step", initial: int = 0) -> "Progress":
        return Progress(total, desc, unit, initial=initial, enabled=self.d.is_main)

    def after_step(self, n: int, total: int, state: dict, save: bool = True) -> bool:
        """The end of step (or rollout) `n` of `total`: a checkpoint of the trained models and
        `state` when one is due (checkpoint_due) and `save`. Returns whether --stop-after-* stops
        the run here."""
        stopping = self.stop_after is not None and n >= self.stop_after
        keep = self.cfg.keep_checkpoints
        if save and checkpoint_due(n, total, self.cfg.save_every, stopping, keep):
            name = self.CHECKPOINT_NAMES[self.counter].format(n)
            save_training_state(self.out / "checkpoints" / name, self.trained, state, self.d, keep=max(1, keep))
        return stopping

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.out / "checkpoints")

    def export_policy(self, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
        """policy/: the trained decoder in Hugging Face layout with its tokenizer, whole or not at
        all (written aside, then swapped in): loads in transformers and vLLM."""
        state = full_state_dict(model, self.d)
        if self.d.is_main:
            with atomic_directory(self.out / "policy") as tmp:
                write_hf_checkpoint(model, tmp, state_dict=state)
                copy_tokenizer_files(tokenizer, tmp)
        barrier(self.d)

    def finish(self) -> None:
        """Once the run has finished and exported: --keep-checkpoints 0 deletes its checkpoints
        (model and optimizer state, several times the model's size). A run left without a
        checkpoint (deleted, or never written: shorter than --save-every, see checkpoint_due)
        cannot be resumed: config.json records it ("checkpoints_deleted" or "no_checkpoint"), for
        check_out_dir's message."""
        if not self.d.is_main:
            return
        config = self.out / "config.json"
        if self.cfg.keep_checkpoints == 0:
            atomic_write_json(config, {**read_json(config), "checkpoints_deleted": True})
            remove_checkpoints(self.out / "checkpoints")
        elif self.latest_checkpoint() is None:
            atomic_write_json(config, {**read_json(config), "no_checkpoint": True})


def checkpoint_due(step: int, total: int, save_every: int, stopping: bool, keep: int) -> bool:
    """Save every `save_every` steps, when stopping early, and at the end, except the end of a run
    with --keep-checkpoints 0 (that checkpoint would be deleted right after the final export) or
    shorter than --save-every: a checkpoint serves to resume, a finished run has nothing left to
    resume, and model plus AdamW state cost about 3x the model's size on disk (gigabytes for a
    2-step try of a 135M model). A run of at least --save-every steps keeps its last one."""
    if step == total and (keep == 0 or total < save_every):
        return False
    return step % save_every == 0 or stopping or step == total


# --------------------------------------------------------------------------------------- the lock

class RunLock:
    """`with RunLock(out):` hold `<out>/.lock` for the duration of a run (see the module doc)."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.path = Path(directory) / ".lock"
        self.enabled = enabled
        self.fd = None

    def __enter__(self):
        # every rank enters (only the main one takes the lock): no rank may still be in check_out_dir
        # when the main one starts writing into --out, or that rank would see an earlier run
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._lock()
        previous = _holder(fd)  # only there if its owner died without releasing: killed
        if previous and previous["host"] != socket.gethostname():
            os.close(fd)
            raise RunLocked(f"{self.path}: another run (pid {previous['pid']} on {previous['host']}) may write into "
                            f"this directory; if it is no longer running, delete {self.path}")
        if previous:
            why = "is not running" if not process_alive(previous["pid"]) else "does not hold it"
            print(f"{self.path}: taking over a stale lock (pid {previous['pid']} {why})", file=sys.stderr)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            removed = remove_leftovers(self.path.parent)
        except BaseException:  # __exit__ is not called when __enter__ fails
            self.__exit__()
            raise
        if removed:
            print(f"{self.path.parent}: removed leftovers of interrupted runs: "
                  f"{', '.join(f'{name} ({size / 2**20:.1f} MiB)' for name, size in removed)}", file=sys.stderr)
        return self

    def _lock(self) -> int:
        """flock the file at self.path; returns its descriptor. The owner deletes the file while it
        still holds the lock (__exit__): a process that opened it just before then locks a file
        that is no longer there, sees that, and tries again with the new one."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunLocked(f"{self.path}: another run ({_describe(holder)}) writes into this directory") from None
            if _is_at(fd, self.path):
                return fd
            os.close(fd)

    def __exit__(self, *exc):
        if self.fd is not None:
            if _is_at(self.fd, self.path):
                self.path.unlink()
            os.close(self.fd)  # releases the lock
            self.fd = None


def _holder(fd: int) -> dict | None:
    """The owner a lock file names ({pid, host, started, argv}), or None (empty or torn)."""
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0))
        return holder if isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str) else None
    except (ValueError, AttributeError):
        return None


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "just starting"
    where = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
    return f"pid {holder['pid']}{where}, started {time.ctime(holder.get('started', 0))}"


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the one `path` names now (not deleted or replaced since)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


# ----------------------------------------------------------------------------------- run config

# where a script's flag is not --<field name>
FLAGS = {"out_dir": "--out", "whiten_advantages": "--no-whiten-advantages"}


def flag_name(field: str) -> str:
    """The command-line flag of a config field, for messages."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def config_dict(cfg) -> dict:
    """A run config dataclass as JSON-ready values (paths as strings, also in lists)."""
    json_ready = lambda v: str(v) if isinstance(v, Path) else [json_ready(x) for x in v] if isinstance(v, list) else v
    return {k: json_ready(v) for k, v in asdict(cfg).items()}


def write_config(out: Path, cfg, **extra) -> None:
    """config.json: the settings, `extra` facts about the run, and under "inputs" the identity of
    every input the config lists (`cfg.inputs()`, input_identities), for check_resumable. Called under
    the lock; a new run checks --out once more first: a run that ended between this one's
    check_out_dir and its taking the lock is not overwritten either."""
    out = Path(out)
    if not cfg.resume:
        check_out_dir(out, cfg, set())
    extended = extensions(out, cfg) if cfg.resume else []
    atomic_write_json(out / "config.json", {**config_dict(cfg), **extra, **({"extended": extended} if extended else {}),
                                            "inputs": input_identities(cfg, out)})


def extensions(out: Path, cfg) -> list[dict]:
    """config.json's "extended" for a resumed run: the earlier extensions, and this one if it raises
    a budget ({setting: [before, after], "at": the checkpoint it continues}), which is also printed."""
    path = Path(out) / "config.json"
    saved = read_json(path) if path.is_file() else {}
    now = config_dict(cfg)
    raised = {f.name: [saved[f.name], now[f.name]] for f in fields(cfg)
              if f.metadata.get("budget") and f.name in saved and saved[f.name] != now[f.name]}
    if not raised:
        return saved.get("extended", [])
    latest = latest_checkpoint(Path(out) / "checkpoints")
    at = latest.name if latest else "the start"
    changes = ", ".join(f"{flag_name(k)} {a} -> {b}" for k, (a, b) in raised.items())
    print(f"{out}: extending the run from {at}: {changes}; the learning-rate schedule is now that of the new total "
          f"(see karma/run.py)", file=sys.stderr)
    return [*saved.get("extended", []), {**raised, "at": at}]


def check_out_dir(out: Path, cfg, may_change: set[str]) -> None:
    """--out of a new run must be new or empty: an earlier run there, finished or not, is refused
    (a forgotten --resume would overwrite its logs and exports). A resumed run must have something
    to resume and keep its settings and inputs (check_resumable)."""
    out = Path(out)
    held = _entries(out)
    if not held:
        return
    listing = ", ".join(held[:8]) + (f", ... ({len(held)} entries)" if len(held) > 8 else "")
    if not (out / "config.json").is_file():
        raise ValueError(f"{out}: is not empty ({listing}) and holds no run (no config.json); give a run a new or "
                         f"empty --out")
    saved = read_json(out / "config.json")
    if saved.get("checkpoints_deleted") or saved.get("no_checkpoint"):
        if cfg.resume:
            how = ("deleted its checkpoints (--keep-checkpoints 0)" if saved.get("checkpoints_deleted") else
                   "wrote no checkpoint (it was shorter than --save-every)")
            raise ValueError(f"{out}: holds a run that finished and {how}: there is nothing to resume (a run kept "
                             f"for extending needs a checkpoint: --keep-checkpoints 1); start a new run in another "
                             f"--out")
        raise ValueError(f"{out}: holds a finished run ({listing}); use a new --out, or delete {out} to replace it")
    latest = latest_checkpoint(out / "checkpoints")
    if not cfg.resume:
        hint = (f"pass --resume to continue it from {latest.name}" if latest else
                "it has no checkpoint yet: --resume starts it over with the same settings")
        raise ValueError(f"{out}: holds an earlier run ({listing}); {hint}, or use a new --out (or delete {out})")
    check_resumable(out, cfg, may_change)


def _entries(out: Path) -> list[str]:
    """What `out` holds, as `ls` shows it: not the hidden names (the lock, temporary files), nor
    empty directories, nor a checkpoints/ link without checkpoints (made beforehand to keep them on
    another disk, maybe beside other things)."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise NotADirectoryError(f"{out}: not a directory")
    prepared = lambda p: p.name == "checkpoints" and p.is_symlink() and not checkpoint_dirs(p)
    return [p.name + "/" if p.is_dir() else p.name for p in sorted(out.iterdir())
            if not p.name.startswith(".") and not (p.is_dir() and not any(p.iterdir())) and not prepared(p)]


def check_resumable(out: Path, cfg, may_change: set[str]) -> None:
    """A resumed run must continue the run that wrote `out/config.json`: every setting outside
    `may_change` (logging, checkpointing, stopping) must be the same, a budget the same or larger
    (an extension: see the module doc), and every input the same content (wherever it is now), or
    the resumed run would not be the run its checkpoint and logs describe. --out itself is where
    the run lives, not a setting: it may have moved. A setting added after the run started is
    compared with the value its field's metadata["before_added"] names (what runs had before it
    existed). Refused with the differences listed."""
    saved = read_json(Path(out) / "config.json")
    recorded, now, inputs = saved.get("inputs", {}), config_dict(cfg), cfg.inputs()
    differences = []
    for f in fields(cfg):
        k = f.name
        if k not in saved and "before_added" in f.metadata:  # a run older than the setting: what it had then
            saved[k] = f.metadata["before_added"]
        if k in may_change or k == "out_dir" or k not in saved:
            continue
        if k in recorded and inputs.get(k) is not None:
            difference = _input_difference(k, inputs[k], saved[k], now[k], recorded[k], out)
        elif f.metadata.get("budget"):
            difference = None if _extends(saved[k], now[k]) else (
                f"{flag_name(k)}: {saved[k]!r} -> {now[k]!r} (a budget may be raised, to extend the run, not lowered, "
                f"nor set where it was unset or the reverse)")
        else:
            difference = None if saved[k] == now[k] else f"{flag_name(k)}: {saved[k]!r} -> {now[k]!r}"
        if difference:
            differences.append(difference)
    if differences:
        raise ValueError(f"{out}: --resume continues the run exactly as it was configured, but these settings or "
                         f"inputs differ from its config.json: {'; '.join(differences)}. Run with the original "
                         f"settings and inputs, or start a new run in another --out")


def _extends(before, now) -> bool:
    """Whether a budget setting's new value continues the run: the same number or a larger one."""
    return before == now or before is not None and now is not None and now > before


# -------------------------------------------------------------------------------- input identity
# What "the same input" means for --resume: the same content, not the same path (a moved or copied
# directory is the same input; a file rewritten in place is not). Files up to FULL_HASH_BYTES are
# hashed whole (SHA-256; about 0.1 s for 32 MiB); a larger one (a model's weights, a big data shard)
# by its size and the hash of its first and last MiB and of SAMPLES evenly spaced 64 KiB blocks,
# about 4 MiB read whatever its size. That sees any change of length, a retrained model (every block
# differs) and edits near the ends; it can miss a same-length edit confined to unread bytes of a big
# file. Modification times are left out on purpose: a copy must keep its identity.

FULL_HASH_BYTES = 32 * 2**20
EDGE_BYTES, SAMPLES, SAMPLE_BYTES = 2**20, 32, 64 * 2**10


def file_identity(path: Path) -> dict:
    """{"bytes", "sha256"} of a small file, {"bytes", "sampled_sha256"} of a large one (see above)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
            return {"bytes": size, "sha256": digest.hexdigest()}
        stride = (size - 2 * EDGE_BYTES) // (SAMPLES + 1)
        spans = [(0, EDGE_BYTES), *((EDGE_BYTES + i * stride, SAMPLE_BYTES) for i in range(1, SAMPLES + 1)),
                 (size - EDGE_BYTES, EDGE_BYTES)]
        for offset, length in spans:
            f.seek(offset)
            digest.update(f.read(length))
    return {"bytes": size, "sampled_sha256": digest.hexdigest()}


def input_identity(path: Path, skip: Path | None = None) -> dict | None:
    """A file's identity; a directory's as {"files": {relative path: identity}} over its files at any
    depth, leaving out hidden names (temporary files, caches) and the directory `skip` (the run's
    own --out, were it inside an input); None if nothing is there."""
    path = Path(path).expanduser()
    if path.is_file():
        return file_identity(path)
    if not path.is_dir():
        return None
    skip = Path(skip).resolve() if skip is not None else None
    files = {}
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != skip)
        for name in sorted(names):
            if not name.startswith(".") and Path(root, name).is_file():
                files[str(Path(root, name).relative_to(path))] = file_identity(Path(root, name))
    return {"files": files}


def input_identities(cfg, out: Path) -> dict:
    """setting -> {"path": resolved path(s), "identity": input_identity(s)} for every input the
    run's config lists (`cfg.inputs()`: the data, the models) that is on disk; a hub id that is not
    a local path, or an unset one, is not recorded."""
    inputs = {}
    for name, value in cfg.inputs().items():
        if value is None or isinstance(value, list) and not value:
            continue
        path, identity = _locate(value, out)
        if not _absent(identity):
            inputs[name] = {"path": path, "identity": identity}
    return inputs


def _locate(value, out: Path) -> tuple:
    """(resolved path, input_identity) of a setting's value; of each element of a list."""
    if isinstance(value, list):
        located = [_locate(v, out) for v in value]
        return [p for p, _ in located], [i for _, i in located]
    path = Path(value).expanduser()
    return str(path.resolve()), input_identity(path, skip=out)


def _absent(identity) -> bool:
    return identity is None or isinstance(identity, list) and all(i is None for i in identity)


def _input_difference(name: str, value, saved, now, recorded: dict, out: Path) -> str | None:
    """How an input differs from when the run started, or None: the same content is the same input
    wherever it is now; content changed under the same path, or another path with other content,
    is a difference."""
    path, identity = _locate(value, out)
    if identity == recorded["identity"]:
        return None
    if _absent(identity) and saved == now:
        return None  # gone, and unused: the trainers check the inputs they read before check_out_dir
    if path != recorded["path"]:
        return f"{flag_name(name)}: {saved!r} -> {now!r}"
    if isinstance(value, list):
        changes = [f"{Path(p).name}: {c}" for p, a, b in zip(path, recorded["identity"], identity) if a != b
                   for c in _changes(a, b)]
    else:
        changes = _changes(recorded["identity"], identity)
    more = f", and {len(changes) - 3} more" if len(changes) > 3 else ""
    shown = " ".join(map(str, value)) if isinstance(value, list) else value
    return f"{flag_name(name)} {shown}: content changed since the run started ({', '.join(changes[:3])}{more})"


def _changes(before, after) -> list[str]:
    """What differs between two identities of one input, as 'file: what' strings."""
    if before is None or after is None:
        return ["removed" if after is None else "created"]
    if "files" in before and "files" in after:
        return [f"{name}: {_file_change(before['files'].get(name), after['files'].get(name))}"
                for name in sorted(before["files"].keys() | after["files"].keys())
                if before["files"].get(name) != after["files"].get(name)]
    if "files" in before or "files" in after:
        return ["was a directory, now a file" if "files" in before else "was a file, now a directory"]
    return [_file_change(before, after)]


def _file_change(before: dict | None, after: dict | None) -> str:
    if before is None or after is None:
        return "new file" if before is None else "removed"
    if before["bytes"] != after["bytes"]:
        return f"{before['bytes']} -> {after['bytes']} bytes"
    return "same size, other content"


# ---------------------------------------------------------------------------------- metrics log

class MetricsLog:
    """One JSON object per line, flushed per record; non-finite numbers are written as null and
    their keys listed under "nonfinite" (JSON has no NaN). A fresh run truncates the file, a
    resumed one appends. Only the main rank writes: elsewhere `write` does nothing."""

    def __init__(self, path: Path, append: bool, enabled: bool = True):
        self.file = _open_log(Path(path), append) if enabled else None

    def write(self, record: dict) -> dict | None:
        """Append `record`; returns it as written (parsed back from its line, as a replay of the log
        reads it: karma.track), or None where nothing is written."""
        if self.file is None:
            return None
        record, replaced = finite_json({"time": time.time(), **record})
        if replaced:
            record["nonfinite"] = replaced
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
        self.file.write(line + b"\n")
        self.file.flush()
        return orjson.loads(line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _open_log(path: Path, append: bool):
    """The log file for appending or rewriting, never through a symbolic link (a link planted in
    --out would make the run overwrite whatever it points to; every other file is replaced by rename)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise OSError(errno.ELOOP, f"{path}: is a symbolic link; a run writes its logs only to files of its own "
                                   f"(remove the link)") from None
    return os.fdopen(fd, "ab" if append else "wb")


def show_progress(is_main: bool = True) -> bool:
    """Progress bars only on a terminal: in a captured log their carriage returns tangle with the
    printed lines (the trainers print plain lines there instead: Progress)."""
    return is_main and sys.stderr.isatty()


# In a log, a trainer writes where it stands at least this often (seconds): a job that prints
# nothing for minutes cannot be told apart from a hung one.
PROGRESS_EVERY = 30.0


class Progress:
    """Where a run stands. On a terminal: a tqdm bar. In a log (stderr not a terminal): plain lines
    on stderr, one when the run starts, then whenever `every` seconds (PROGRESS_EVERY) have passed
    since the last line, and one at the end:

        train_rm  step 12/40 (30%)  loss 0.6931  2.4 s/step  elapsed 0:28  eta 1:07

    A background thread writes the line when `every` seconds have passed without one, so a step
    longer than that (a PPO rollout on a busy machine, an evaluation pass) still shows the run is
    alive. Lines passed to `write` (evaluation results, per-rollout summaries) go to stdout, above
    the bar on a terminal. Only the main rank shows anything."""

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, enabled: bool = True):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every = PROGRESS_EVERY
        self.stats = {}  # shown after the count, e.g. {"loss": 0.69}; replaced by update(**stats)
        self.start_n, self.start = initial, time.monotonic()
        self.last_line = self.last_update = self.start
        self.lock = threading.Lock()  # the heartbeat thread reads what update writes
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not show_progress(enabled))
        self.enabled, self.plain = enabled, enabled and not sys.stderr.isatty()
        self.stopped = threading.Event()
        self.heartbeat = None
        if self.plain:
            self._line()
            self.heartbeat = threading.Thread(target=self._beat_until_closed, name=f"{desc} progress", daemon=True)
            self.heartbeat.start()

    def update(self, n: int = 1, **stats) -> None:
        """`n` more units done; `stats` (numbers) are shown until an update replaces them."""
        with self.lock:
            self.n += n
            self.stats.update(stats)
            self.last_update = time.monotonic()
        self.bar.update(n)
        if stats:
            self.bar.set_postfix({k: _short(v) for k, v in stats.items()}, refresh=False)
        if self.plain and time.monotonic() - self.last_line >= self.every:
            self._line()

    def write(self, line: str) -> None:
        """A line of its own, on stdout (above the bar on a terminal), flushed at once (a log's
        stdout is block-buffered: unflushed, such lines would show minutes late); the main rank's only."""
        if not self.enabled:
            return
        with self.lock:
            self.bar.write(line)
            sys.stdout.flush()

    def close(self) -> None:
        """Stop the bar or the heartbeat; in a log, a last line with the final count."""
        self.stopped.set()
        if self.heartbeat is not None:
            self.heartbeat.join()
            self.heartbeat = None
            self._line()
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _beat_until_closed(self) -> None:
        while not self.stopped.wait(max(0.1, self.every - (time.monotonic() - self.last_line))):
            if time.monotonic() - self.last_line >= self.every:
                self._line()

    def _line(self) -> None:
        with self.lock:
            now = time.monotonic()
            elapsed, done = now - self.start, self.n - self.start_n
            line = f"{self.desc}  {self.unit} {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%)"
            line += "".join(f"  {k} {_short(v)}" for k, v in self.stats.items())
            if done:  # the rate up to the last update, in this process (not a resumed run's past)
                per = max(self.last_update - self.start, 1e-9) / done
                eta = max(0.0, per * (self.total - self.n) - (now - self.last_update))
                line += f"  {per:.1f} s/{self.unit}" if per >= 1 else f"  {1 / per:.1f} {self.unit}/s"
                line += f"  elapsed {_clock(elapsed)}  eta {_clock(eta)}"
            else:
                line += f"  elapsed {_clock(elapsed)}"
            print(line, file=sys.stderr, flush=True)
            self.last_line = now


def _short(value) -> str:
    """A statistic for a progress line: 4 significant digits."""
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


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
