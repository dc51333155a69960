"""What a run does with its --out: a new run never overwrites an earlier one (finished, stopped or
killed), --resume continues only the run that was started (same settings, same input files; the
output directory itself may move), the lock is taken by exactly one process, logs never write
through a symlink, a failed checkpoint is named and removed, stray symlinks and the temporary
files of killed runs are dealt with."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import multiprocessing
import os
import shutil
import signal
import socket
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint.filesystem as dcp_filesystem

import karma.checkpoint as checkpoint
import karma.dpo_train as dpo_train
import karma.ppo.trainer as ppo_trainer
import karma.run as run
from karma.distributed import Dist
from karma.dpo_train import DPOConfig
from karma.errors import RunLocked
from karma.files import read_jsonl
from karma.ppo.trainer import PPOConfig
from karma.reward_train import TrainRMConfig
from karma.run import MetricsLog, RunLock
from test_dpo_train import config as dpo_config
from test_dpo_train import make_pairs
from test_ppo_trainer import LetterReward
from test_ppo_trainer import config as ppo_config
from test_reward import make_examples
from test_robustness import _script, cli, error_line, ppo_script, prompts, rm_argv, train_rm_script  # noqa: F401

CPU = Dist(0, 1, torch.device("cpu"))
FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def base(checkpoint_factory):
    return checkpoint_factory("llama_tied").path


@pytest.fixture
def data(tmp_path):
    """A fresh copy per test: some tests edit or move it."""
    return make_examples(tmp_path / "data", n_train=32, n_heldout=16)


def files(directory: Path) -> dict:
    """Every file under `directory` (hidden ones too) -> its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def train_steps(out: Path) -> list[int]:
    return [r["step"] for _, r in read_jsonl(out / "metrics.jsonl") if r["event"] == "train"]


# ------------------------------------------------------------- item 1: a new run never overwrites

def test_finished_keep0_run_is_neither_overwritten_nor_resumed(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "3", "--keep-checkpoints", "0"),
                     capsys, "train_rm.py")
    assert rc == 0, err
    assert not (out / "checkpoints").exists() and (out / "final").is_dir()
    before = files(out)

    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "2"), capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err, "train_rm.py")
    assert f"{out}: holds a finished run" in line
    assert all(name in line for name in ("config.json", "metrics.jsonl", "final/")), line
    assert "new --out" in line and f"delete {out}" in line
    assert files(out) == before

    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "3", "--keep-checkpoints", "0",
                                              "--resume"), capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err, "train_rm.py")
    assert "finished" in line and "--keep-checkpoints 0" in line and "nothing to resume" in line, line
    assert files(out) == before


def test_stopped_run_is_not_overwritten_without_resume(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    argv = rm_argv(base, data, out, "--max-steps", "3")
    assert cli(train_rm_script, [*argv, "--stop-after-steps", "1"], capsys, "train_rm.py")[0] == 0
    before = files(out)
    rc, _, err = cli(train_rm_script, argv, capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err, "train_rm.py")
    assert "holds an earlier run" in line and "--resume to continue it from step-00000001" in line
    assert files(out) == before


def test_ppo_and_dpo_refuse_an_out_holding_a_finished_keep0_run(tmp_path, base, prompts):
    out = tmp_path / "ppo"
    cfg = dict(rollouts=1, rollout_batch=2, minibatch=2, micro_batch=2, ppo_epochs=1, max_new_tokens=4,
               max_prompt_tokens=32, keep_checkpoints=0)
    ppo_trainer.train(ppo_config(base, prompts, out, **cfg), CPU, reward=LetterReward())
    assert (out / "policy").is_dir() and not (out / "checkpoints").exists()
    before = files(out)
    with pytest.raises(ValueError, match=r"holds a finished run \(.*samples\.jsonl"):
        ppo_trainer.train(ppo_config(base, prompts, out, **cfg), CPU, reward=LetterReward())
    with pytest.raises(ValueError, match="nothing to resume"):
        ppo_trainer.train(ppo_config(base, prompts, out, resume=True, **cfg), CPU, reward=LetterReward())
    assert files(out) == before

    out = tmp_path / "dpo"
    pairs = make_pairs(tmp_path / "pairs.jsonl", n=8)
    dpo_train.train(dpo_config(base, pairs, out, max_steps=1, keep_checkpoints=0), CPU)
    before = files(out)
    with pytest.raises(ValueError, match=r"holds a finished run \(.*policy/"):
        dpo_train.train(dpo_config(base, pairs, out, max_steps=1), CPU)
    assert files(out) == before


def test_new_run_refuses_a_directory_that_is_not_empty(tmp_path, base, data, capsys):
    out = tmp_path / "somewhere"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")
    assert rc == 2
    assert f"{out}: is not empty (notes.txt)" in error_line(err, "train_rm.py")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_over(tmp_path, base, data, capsys,
                                                                          monkeypatch):
    out = tmp_path / "rm"
    real = run.Throughput.add

    def killed(*args, **kw):
        raise KeyboardInterrupt("simulated kill in step 1")

    monkeypatch.setattr(run.Throughput, "add", killed)
    assert cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")[0] == 130
    monkeypatch.setattr(run.Throughput, "add", real)
    assert (out / "config.json").exists() and not (out / "checkpoints").exists()
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")
    assert rc == 2 and "has no checkpoint yet" in error_line(err, "train_rm.py")
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--resume"), capsys, "train_rm.py")
    assert rc == 0, err
    assert train_steps(out) == [1, 2]


# --------------------------------------------------------------------- item 2: one lock holder

def _contend(out: Path, go, results, release) -> None:
    go.wait()
    try:
        with RunLock(out):
            results.put("won")
            release.wait(30)
    except RunLocked:
        results.put("lost")
    except BaseException as e:  # anything else is a failure of the lock
        results.put(repr(e))


def _stale_lock(out: Path) -> None:
    dead = FORK.Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))


def test_processes_racing_for_a_stale_lock_have_exactly_one_winner(tmp_path):
    for trial in range(20):
        out = tmp_path / f"trial{trial}"
        _stale_lock(out)
        go, release, results = FORK.Event(), FORK.Event(), FORK.Queue()
        contenders = [FORK.Process(target=_contend, args=(out, go, results, release)) for _ in range(6)]
        for p in contenders:
            p.start()
        go.set()
        outcomes = sorted(results.get(timeout=30) for _ in contenders)
        release.set()
        for p in contenders:
            p.join(30)
        assert outcomes == ["lost"] * 5 + ["won"], (trial, outcomes)
        assert not (out / ".lock").exists()


def _hold(out: Path, held, release) -> None:
    with RunLock(out):
        held.set()
        release.wait(60)


def test_lock_of_a_killed_holder_is_free_and_reported(tmp_path, capsys):
    out = tmp_path / "run"
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(out, held, release))
    holder.start()
    assert held.wait(30)
    with pytest.raises(RunLocked, match=f"another run \\(pid {holder.pid}"):
        RunLock(out).__enter__()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    capsys.readouterr()
    with RunLock(out):
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    assert f"taking over a stale lock (pid {holder.pid} is not running)" in capsys.readouterr().err
    assert not (out / ".lock").exists()


# ----------------------------------------------- item 7a / 18a: what --resume compares, and how

def test_resume_refuses_training_data_changed_under_the_same_path(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    argv = rm_argv(base, data, out, "--max-steps", "3")
    assert cli(train_rm_script, [*argv, "--stop-after-steps", "1"], capsys, "train_rm.py")[0] == 0
    train = data / "train-00000.jsonl"
    original = train.read_bytes()
    train.write_bytes(b"".join(original.splitlines(keepends=True)[:20]))  # 32 -> 20 examples
    rc, _, err = cli(train_rm_script, [*argv, "--resume"], capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err, "train_rm.py")
    assert f"--data {data}: content changed since the run started" in line and "train-00000.jsonl" in line, line
    assert (out / "checkpoints" / "latest").read_text() == "step-00000001"

    train.write_bytes(original)  # the same content again: resumes
    rc, _, err = cli(train_rm_script, [*argv, "--resume"], capsys, "train_rm.py")
    assert rc == 0, err


def test_resume_follows_a_moved_out_and_moved_inputs(tmp_path, base, data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = lambda out, data: rm_argv(base, data, out, "--max-steps", "3")
    assert cli(train_rm_script, [*argv("rm", "data"), "--stop-after-steps", "1"], capsys, "train_rm.py")[0] == 0
    # absolute spelling of the same directories
    rc, _, err = cli(train_rm_script, [*argv(tmp_path / "rm", tmp_path / "data"), "--resume", "--stop-after-steps",
                                       "2"], capsys, "train_rm.py")
    assert rc == 0, err
    # both moved elsewhere
    (tmp_path / "moved").mkdir()
    os.rename(tmp_path / "rm", tmp_path / "moved" / "rm")
    os.rename(tmp_path / "data", tmp_path / "moved" / "data")
    rc, _, err = cli(train_rm_script, [*argv("moved/rm", "moved/data"), "--resume"], capsys, "train_rm.py")
    assert rc == 0, err
    assert train_steps(tmp_path / "moved" / "rm") == [1, 2, 3]
    config = json.loads((tmp_path / "moved" / "rm" / "config.json").read_text())
    assert config["inputs"]["data"]["path"] == str((tmp_path / "moved" / "data").resolve())


def test_resume_refuses_a_changed_local_model(tmp_path, base, data, capsys):
    model = tmp_path / "model"
    shutil.copytree(base, model)
    out = tmp_path / "rm"
    argv = rm_argv(model, data, out, "--max-steps", "3")
    assert cli(train_rm_script, [*argv, "--stop-after-steps", "1"], capsys, "train_rm.py")[0] == 0
    weights = model / "model.safetensors"
    content = bytearray(weights.read_bytes())
    content[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(content))
    rc, _, err = cli(train_rm_script, [*argv, "--resume"], capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err, "train_rm.py")
    assert f"--model {model}: content changed" in line and "model.safetensors: same size, other content" in line


def test_input_identity_of_files_and_directories(tmp_path, monkeypatch):
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.jsonl").write_text("one\ntwo\n")
    (a / ".hidden.tmp").write_text("ignored")
    ident = run.input_identity(a, skip=tmp_path / "out")
    assert list(ident["files"]) == ["x.jsonl"]
    shutil.copytree(a, tmp_path / "b")
    assert run.input_identity(tmp_path / "b") == ident  # a copy or a move keeps its identity (no mtime, no path)
    (tmp_path / "b" / "x.jsonl").write_text("one\nTWO\n")
    assert run.input_identity(tmp_path / "b") != ident
    assert run.input_identity(tmp_path / "missing") is None

    # a large file: size, its first and last MiB and evenly spaced blocks between them
    monkeypatch.setattr(run, "FULL_HASH_BYTES", 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(5 * 2**20))
    sampled = run.input_identity(big)
    assert sampled["bytes"] == 5 * 2**20 and "sampled_sha256" in sampled
    with open(big, "r+b") as f:
        f.seek(5 * 2**20 - 10)
        f.write(b"x")
    assert run.input_identity(big) != sampled
    with open(big, "r+b") as f:
        f.truncate(4 * 2**20)
    assert run.input_identity(big)["bytes"] == 4 * 2**20


@dataclasses.dataclass
class ListConfig:
    data: list
    out_dir: Path
    lr: float = 1.0
    resume: bool = False

    def inputs(self) -> dict:
        return {"data": self.data}


def test_resume_compares_a_list_of_inputs_file_by_file(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("1\n")
    b.write_text("2\n")
    out = tmp_path / "out"
    out.mkdir()
    run.write_config(out, ListConfig(data=[a, b], out_dir=out))
    run.check_resumable(out, ListConfig(data=[a, b], out_dir=out, resume=True), {"resume"})
    b.write_text("22\n")
    with pytest.raises(ValueError, match=f"--data {a} {b}: content changed since the run started "
                                         f"\\(b.jsonl: 2 -> 3 bytes\\)"):
        run.check_resumable(out, ListConfig(data=[a, b], out_dir=out, resume=True), {"resume"})
    with pytest.raises(ValueError, match=r"--lr: 1\.0 -> 2\.0"):
        run.check_resumable(out, ListConfig(data=[a, tmp_path / "c"], out_dir=out, lr=2.0, resume=True), {"resume"})


def _parser(module) -> argparse.ArgumentParser:
    """The argparse parser a script's parse_args builds (caught as it parses)."""
    captured = {}

    def capture(self, *args, **kw):
        captured["parser"] = self
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            module.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


@pytest.mark.parametrize("script,config", [("train_rm", TrainRMConfig), ("ppo", PPOConfig), ("dpo", DPOConfig)])
def test_messages_name_the_scripts_real_flags(script, config):
    module = {"train_rm": train_rm_script, "ppo": ppo_script}.get(script) or _script(script)
    options = {a.dest: a.option_strings for a in _parser(module)._actions}
    for field in dataclasses.fields(config):
        assert run.flag_name(field.name) in options[field.name], (script, field.name, options[field.name])


# ---------------------------------------------------------------- item 12: logs and symlinks

@pytest.mark.parametrize("append", [False, True])
def test_metrics_log_never_writes_through_a_symlink(tmp_path, append):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError, match=f"{link}: is a symbolic link"):
        MetricsLog(link, append=append)
    assert target.read_text() == "keep me\n" and link.is_symlink()


# ------------------------------------------------------------ item 13a: disk full in a checkpoint

DiskUsage = namedtuple("DiskUsage", "total used free")


def test_disk_full_inside_torch_checkpoint_writer_is_one_line(tmp_path, base, data, capsys, monkeypatch):
    """torch.distributed.checkpoint wraps the writer's error in CheckpointException (a BaseException)."""
    def torn_write(*args, **kw):
        raise RuntimeError("unexpected pos 704 vs 598")

    monkeypatch.setattr(dcp_filesystem, "_write_item", torn_write)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: DiskUsage(10**9, 10**9, 0))
    out = tmp_path / "rm"
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err[err.index("train_rm.py: error: "):], "train_rm.py")
    assert f"{out / 'checkpoints' / 'step-00000001'}: no space left on device" in line, line
    assert "unexpected pos 704 vs 598" in line and "Traceback" not in err
    assert not (out / "checkpoints" / "step-00000001.tmp").exists() and not (out / ".lock").exists()


def test_an_oserror_inside_the_checkpoint_writer_names_the_checkpoint(tmp_path, monkeypatch):
    def no_space(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dcp_filesystem, "_write_item", no_space)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    where = tmp_path / "checkpoints" / "step-1"
    with pytest.raises(OSError) as e:
        checkpoint.save_training_state(where, {"model": (model, optimizer)}, {"step": 1}, CPU)
    assert e.value.errno == errno.ENOSPC and f"{where}: no space left on device" in str(e.value)
    assert list((tmp_path / "checkpoints").iterdir()) == []

    def denied(*args, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(dcp_filesystem, "_write_item", denied)
    with pytest.raises(OSError, match=f"{where}: could not write the checkpoint .*Permission denied"):
        checkpoint.save_training_state(where, {"model": (model, optimizer)}, {"step": 1}, CPU)


def test_a_torn_checkpoint_is_named_on_resume(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    argv = rm_argv(base, data, out, "--max-steps", "3")
    assert cli(train_rm_script, [*argv, "--stop-after-steps", "1"], capsys, "train_rm.py")[0] == 0
    shard = next((out / "checkpoints" / "step-00000001").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    rc, _, err = cli(train_rm_script, [*argv, "--resume"], capsys, "train_rm.py")
    assert rc == 2
    assert f"{out / 'checkpoints' / 'step-00000001'}: could not load the checkpoint" in error_line(err, "train_rm.py")


# --------------------------------------------------------------- item 18b: symlinks in checkpoints/

def test_stray_symlinks_in_checkpoints_are_left_alone(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    argv = rm_argv(base, data, out, "--max-steps", "3", "--keep-checkpoints", "1")
    assert cli(train_rm_script, [*argv, "--stop-after-steps", "1"], capsys, "train_rm.py")[0] == 0
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out / "checkpoints" / "step-00000001", elsewhere / "step-00000000")
    (out / "checkpoints" / "step-00000000").symlink_to(elsewhere / "step-00000000")  # an older "checkpoint"
    rc, _, err = cli(train_rm_script, [*argv, "--resume"], capsys, "train_rm.py")
    assert rc == 0, err
    assert (out / "checkpoints" / "step-00000000").is_symlink() and (elsewhere / "step-00000000").is_dir()
    assert (out / "checkpoints" / "latest").read_text() == "step-00000003"


def test_symlinked_checkpoints_directory_with_keep0(tmp_path, base, data, capsys):
    out, scratch = tmp_path / "rm", tmp_path / "scratch"
    scratch.mkdir()
    out.mkdir()
    (out / "checkpoints").symlink_to(scratch)  # big checkpoints on another disk, beside other things
    (scratch / "notes.txt").write_text("someone else's")
    (scratch / "other-run").mkdir()
    (scratch / "other-run" / "w.bin").write_bytes(bytes(10))
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--keep-checkpoints", "0", "--save-every", "1"),
                     capsys, "train_rm.py")
    assert rc == 0, err
    assert not (out / "checkpoints").exists() and scratch.is_dir()
    assert sorted(p.name for p in scratch.iterdir()) == ["notes.txt", "other-run"]  # only the run's own removed
    assert (scratch / "other-run" / "w.bin").exists()


# ------------------------------------------------------------- item 19: leftovers of killed runs

def test_leftovers_of_killed_runs_are_removed_when_the_lock_is_taken(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    argv = rm_argv(base, data, out, "--max-steps", "2", "--save-every", "5")
    assert cli(train_rm_script, [*argv, "--stop-after-steps", "1"], capsys, "train_rm.py")[0] == 0
    (out / "best").mkdir()  # beside it, a swap's .best.old is a leftover too
    leftovers = [".best.tmp-4194000", ".policy.tmp-4194001", "checkpoints/step-00000002.tmp", ".best.old"]
    live = f".data.tmp-{os.getpid()}"  # a directory another live program is writing: not a leftover
    (out / live).mkdir()
    for name in leftovers:
        (out / name).mkdir()
        (out / name / "model.safetensors").write_bytes(bytes(1000))
    for name in [".config.json.abcd1234.tmp", "checkpoints/.latest.x1y2z3w4.tmp"]:
        (out / name).write_text("half")
        leftovers.append(name)
    (out / ".notes").write_text("not a leftover")
    rc, _, err = cli(train_rm_script, [*argv, "--resume"], capsys, "train_rm.py")
    assert rc == 0, err
    assert not any((out / name).exists() for name in leftovers)
    assert (out / ".notes").exists() and (out / live).exists()
    removed = next(line for line in err.splitlines() if "removed leftovers" in line)
    assert all(name in removed for name in leftovers), removed


def test_a_setting_added_after_the_run_started_is_compared_with_what_runs_had_before(tmp_path):
    """dpo.py's --lr-scheduler and --adam-beta2 came later (cosine and 0.95 before): an older run's
    config.json lacks them, so its resume must not silently switch to today's defaults."""
    @dataclasses.dataclass
    class Settings:
        out_dir: Path
        resume: bool = True
        lr: float = 1e-6
        lr_scheduler: str = dataclasses.field(default="linear", metadata={"before_added": "cosine"})

        def inputs(self) -> dict:
            return {}

    (tmp_path / "config.json").write_text(json.dumps({"out_dir": str(tmp_path), "resume": False, "lr": 1e-6}))
    with pytest.raises(ValueError, match="--lr-scheduler: 'cosine' -> 'linear'"):
        run.check_resumable(tmp_path, Settings(tmp_path), may_change={"resume"})
    run.check_resumable(tmp_path, Settings(tmp_path, lr_scheduler="cosine"), may_change={"resume"})
    assert {f.name: f.metadata["before_added"] for f in dataclasses.fields(DPOConfig) if "before_added" in f.metadata} \
        == {"adam_beta2": 0.95, "lr_scheduler": "cosine"}


def test_only_the_inputs_a_run_reads_are_recorded(tmp_path, monkeypatch):
    """A string setting that happens to name something in the working directory (PPO's --prompts
    reddit beside a ./reddit/ folder of dumps) is no input: adding a dump there does not block
    --resume. PPO's --data counts only through the prompt set it reads."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reddit").mkdir()
    (tmp_path / "reddit" / "RC_2015-01.zst").write_bytes(b"x")
    data = tmp_path / "data"
    data.mkdir()
    (data / "prompts-reddit.jsonl").write_text("{}\n")
    (data / "train-00000.jsonl").write_text("{}\n")
    cfg = PPOConfig(model="hub/id-not-on-disk", reward_model=tmp_path / "no-rm", prompts="reddit", data=data,
                    out_dir=tmp_path / "out")
    recorded = run.input_identities(cfg, cfg.out_dir)
    assert set(recorded) == {"data"} and recorded["data"]["path"] == str(data / "prompts-reddit.jsonl")
    assert set(run.input_identities(dataclasses.replace(cfg, prompts=str(data / "prompts-reddit.jsonl")),
                                    cfg.out_dir)) == {"prompts"}
