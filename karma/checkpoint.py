"""Training checkpoints for exact resume, and the clean-up of what killed runs leave in --out.

A checkpoint is a directory `checkpoints/<step>` written by torch.distributed.checkpoint (each rank
writes its shards under FSDP) plus trainer.json (counters, schedulers, RNG) from rank 0. It is
written as `<step>.tmp` and renamed when complete, then named in `checkpoints/latest`; so a killed
run leaves either the previous checkpoint or the new one, and `<step>.tmp` leftovers that the next
run taking the lock of the same --out removes (`remove_leftovers`, with the temporaries of
karma/files.py's atomic writes).
"""

import errno
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from karma.distributed import barrier
from karma.files import (OLD, TEMPORARY, atomic_write, atomic_write_json, read_json, recover_directory, remove_path,
                         replace_directory)

# ---------------------------------------------------------------------- leftovers of killed runs

PARTIAL_CHECKPOINT = re.compile(r"(?:step|rollout)-\d+\.tmp")  # save_training_state's `<checkpoint>.tmp`


def remove_leftovers(out: Path) -> list[tuple[str, int]]:
    """Delete what killed runs left in `out` and `out/checkpoints`, each as large as a model or a
    checkpoint: temporary files and directories (karma/files.py), partial checkpoints
    (`<step>.tmp`), and a swap's `.<dir>.old` beside its `<dir>` (without it, it is put back).
    Only the holder of the lock of `out` calls it, so no run into `out` is writing them; a
    `.<dir>.tmp-<pid>` of a process still alive is left alone all the same (another program may
    write a directory of its own inside `out`). Returns [(path relative to out, bytes)] of what was
    removed."""
    removed = []
    for directory, partial in ((Path(out), None), (Path(out) / "checkpoints", PARTIAL_CHECKPOINT)):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            old, temporary = OLD.fullmatch(path.name), TEMPORARY.fullmatch(path.name)
            if old:
                recover_directory(directory / old.group(1))
            if temporary and temporary.group(1) and process_alive(int(temporary.group(1))):
                continue
            if temporary or (partial and partial.fullmatch(path.name)) or (old and os.path.lexists(path)):
                removed.append((str(path.relative_to(out)), _disk_bytes(path)))
                remove_path(path)
    return removed


def _disk_bytes(path: Path) -> int:
    """Bytes of a file, or of the files in a directory tree (links not followed)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())


# -------------------------------------------------------------------------- training checkpoints

def save_training_state(directory: Path, trained: dict, trainer_state: dict, d, keep: int | None = None) -> None:
    """Exact-resume checkpoint: trained = {name: (model, optimizer)} through
    torch.distributed.checkpoint (each rank writes its shards under FSDP), plus trainer.json
    (step counters, schedulers, controllers, RNG) from rank 0; written to `<dir>.tmp`, renamed to
    `<dir>` when complete, and recorded in `latest` beside it. Then all but the newest `keep`
    checkpoints are deleted. A failed write (full disk, say) removes `<dir>.tmp` and raises an
    error naming `<dir>` and the cause."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if d.is_main:
        remove_path(tmp)
    barrier(d)
    state = {}
    for name, (model, optimizer) in trained.items():
        state[name], state[name + "_optim"] = get_state_dict(model, optimizer)
    try:
        with warnings.catch_warnings():  # one process without a group saves alone: intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(state, checkpoint_id=str(tmp))
        if d.is_main:
            atomic_write_json(tmp / "trainer.json", {**trainer_state, "torch_rng": torch.get_rng_state().tolist()})
    except (OSError, RuntimeError, CheckpointException) as e:  # CheckpointException: a BaseException
        if d.is_main:
            remove_path(tmp)
        error = _checkpoint_error(directory, _cause(e))
        if error is e:
            raise
        raise error from e
    if d.is_main:
        replace_directory(tmp, directory)
        atomic_write(directory.parent / "latest", lambda p: Path(p).write_text(directory.name))
        if keep is not None:
            prune_checkpoints(directory.parent, keep)
    barrier(d)


def _cause(error: BaseException) -> BaseException:
    """torch.distributed.checkpoint wraps each rank's error in a CheckpointException: the first one."""
    if isinstance(error, CheckpointException) and error.failures:
        return error.failures[min(error.failures)][0]
    return error


def _checkpoint_error(where: Path, error: BaseException) -> BaseException:
    """The error to raise for a failed checkpoint write: a full disk (which surfaces from torch's
    writers as e.g. 'unexpected pos 704 vs 598') or another OSError, named with the checkpoint;
    anything else (a bug) as it is."""
    full = getattr(error, "errno", None) == errno.ENOSPC
    try:
        free = shutil.disk_usage(where.parent).free
    except OSError:
        free = None
    if full or (free is not None and free < 64 * 2**20):
        return OSError(errno.ENOSPC, f"{where}: no space left on device while writing the checkpoint "
                                     f"({free if free is not None else '?'} bytes free; {error}); the partial "
                                     f"checkpoint was removed: free some space and continue with --resume from the "
                                     f"previous checkpoint")
    if isinstance(error, OSError):
        return OSError(error.errno, f"{where}: could not write the checkpoint ({error}); the partial checkpoint "
                                    f"was removed")
    return error


def checkpoint_dirs(checkpoints: Path) -> list[Path]:
    """Complete checkpoints under `checkpoints`, oldest first (their names sort by step). A symbolic
    link is not one of them: it was put there by hand, and is neither counted nor deleted."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return []
    return sorted(p for p in checkpoints.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                  and not p.name.endswith(".tmp") and (p / "trainer.json").exists())


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (never the one `latest` names)."""
    latest = latest_checkpoint(checkpoints)
    for old in checkpoint_dirs(checkpoints)[:-keep]:
        if old != latest:
            shutil.rmtree(old)


def remove_checkpoints(checkpoints: Path) -> None:
    """Delete a run's checkpoints directory; when it is a symbolic link (checkpoints kept on another
    disk), only what the run wrote there (its checkpoints, partial ones, `latest`) and the link:
    never anything else in the directory it points to."""
    checkpoints = Path(checkpoints)
    if checkpoints.is_symlink() and checkpoints.is_dir():
        ours = [*checkpoint_dirs(checkpoints), checkpoints / "latest",
                *(p for p in checkpoints.iterdir() if PARTIAL_CHECKPOINT.fullmatch(p.name))]
        for path in ours:
            remove_path(path)
    remove_path(checkpoints)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def latest_checkpoint(checkpoints: Path) -> Path | None:
    pointer = Path(checkpoints) / "latest"
    if not pointer.exists():
        return None
    directory = Path(checkpoints) / pointer.read_text().strip()
    recover_directory(directory)
    if not (directory / "trainer.json").exists():
        raise FileNotFoundError(f"{pointer}: names {directory.name}, which is missing or incomplete")
    return directory


def load_training_state(directory: Path, trained: dict) -> dict:
    """Restore what save_training_state wrote into the (already built, already sharded) models and
    optimizers; returns trainer.json (the torch RNG is restored here)."""
    state = {}
    for name, (model, optimizer) in trained.items():
        state[name], state[name + "_optim"] = get_state_dict(model, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(directory))
    except CheckpointException as e:  # a BaseException: would escape the scripts' error handling
        raise ValueError(f"{directory}: could not load the checkpoint ({_cause(e)!r})") from e
    for name, (model, optimizer) in trained.items():
        set_state_dict(model, optimizer, model_state_dict=state[name], optim_state_dict=state[name + "_optim"])
    trainer = read_json(Path(directory) / "trainer.json")
    torch.set_rng_state(torch.tensor(trainer.pop("torch_rng"), dtype=torch.uint8))
    return trainer
