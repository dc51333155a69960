"""File I/O shared by checkpoints and runs: atomic writes, JSON reads that name the file, and
training checkpoints for exact resume.

Atomic: write to a temporary file in the same directory, flush it to disk, then rename over the
target (os.replace is atomic within one filesystem), so a reader or a resumed run sees the old
file or the new one, never half of it. Training checkpoints apply the same idea to a directory.
"""

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path) to produce the content, then move it to `path` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n"))


def read_json(path: str | os.PathLike):
    """Parse a JSON file; a missing file or bad JSON is an error naming the file (and line)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def save_training_state(directory: Path, trained: dict, trainer_state: dict, d) -> None:
    """Exact-resume checkpoint: trained = {name: (model, optimizer)} through
    torch.distributed.checkpoint (each rank writes its shards under FSDP), plus trainer.json
    (step counters, schedulers, controllers, RNG) from rank 0; written to `<dir>.tmp`, renamed to
    `<dir>` when complete, and recorded in `latest` beside it."""
    from karma.distributed import barrier

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if d.is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier(d)
    state = {}
    for name, (model, optimizer) in trained.items():
        state[name], state[name + "_optim"] = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process without a group saves alone: intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=str(tmp))
    if d.is_main:
        atomic_write_json(tmp / "trainer.json", {**trainer_state, "torch_rng": torch.get_rng_state().tolist()})
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
        atomic_write(directory.parent / "latest", lambda p: Path(p).write_text(directory.name))
    barrier(d)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    pointer = Path(checkpoints) / "latest"
    return Path(checkpoints) / pointer.read_text().strip() if pointer.exists() else None


def load_training_state(directory: Path, trained: dict) -> dict:
    """Restore what save_training_state wrote into the (already built, already sharded) models and
    optimizers; returns trainer.json (the torch RNG is restored here)."""
    state = {}
    for name, (model, optimizer) in trained.items():
        state[name], state[name + "_optim"] = get_state_dict(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(directory))
    for name, (model, optimizer) in trained.items():
        set_state_dict(model, optimizer, model_state_dict=state[name], optim_state_dict=state[name + "_optim"])
    trainer = read_json(Path(directory) / "trainer.json")
    torch.set_rng_state(torch.tensor(trainer.pop("torch_rng"), dtype=torch.uint8))
    return trainer


def truncate_jsonl(path: Path, key: str, last: int) -> None:
    """On resume: drop the log records a killed run wrote after its last checkpoint (those with
    record[key] > last), so the resumed run's records follow on without duplicates."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.strip() and json.loads(line).get(key, -1) <= last]
    atomic_write(path, lambda p: Path(p).write_text("".join(kept)))
