"""Robustness of the scripts and their files: one-line CLI errors (exit 2, --debug), inputs and flags
checked before any model is loaded, --resume refusing changed settings, the run lock, crash-safe
exports, non-finite guards (RM skipped steps, PPO dropped scores, divergence stop), torn logs,
--keep-checkpoints, the disk-full message, data_prep leaving no --out behind on failure."""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import karma.checkpoint as checkpoint
import karma.files as files
import karma.ppo.trainer as ppo_trainer
import karma.reward as reward_mod
import karma.reward_train as reward_train
import karma.weights as weights
from karma.checkpoint import save_training_state
from karma.cli import run_main
from karma.distributed import Dist
from karma.errors import TrainingDiverged
from karma.files import atomic_directory, atomic_write_json, recover_directory, truncate_jsonl
from karma.generate import generate
from karma.reward import RewardConfig, build_reward_model, load_reward_model, save_reward_model
from karma.reward_train import TrainRMConfig
from karma.run import RunLock
from karma.weights import load_model, save_model
from test_ppo_trainer import LetterReward
from test_ppo_trainer import config as ppo_config
from test_reward import make_examples

ROOT = Path(__file__).resolve().parents[1]
CPU = Dist(0, 1, torch.device("cpu"))
DEBUG_HINT = " (--debug shows the traceback)"


def _script(name: str):
    """The script's module (train_rm.py, ppo.py, data_prep.py), imported from the repo root."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_rm_script, ppo_script, data_prep_script = _script("train_rm"), _script("ppo"), _script("data_prep")


# ----------------------------------------------------------------------------------------- helpers

def cli(module, argv, capsys, prog):
    """run_main(module.main, argv) -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = run_main(module.main, [str(a) for a in argv], prog=prog)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_line(err: str, prog: str) -> str:
    """The single line run_main prints for an expected error (stderr holds nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"{prog}: error: ") and line.endswith(DEBUG_HINT), line
    return line


def strict_json(text: str):
    """json.loads that rejects NaN / Infinity (not JSON, though Python writes them by default)."""
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def check_json_files(out: Path) -> int:
    """Every .json / .jsonl file under `out` is standard JSON (no NaN/Infinity); returns the count."""
    n = 0
    for path in sorted(out.rglob("*")):
        if path.suffix == ".json":
            strict_json(path.read_text())
            n += 1
        elif path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").split("\n")[:-1]:  # not splitlines: U+2028 in replies
                strict_json(line)
            n += 1
    return n


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def metrics(out: Path) -> list[dict]:
    return [strict_json(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]


@pytest.fixture(scope="module")
def base(checkpoint_factory):
    return checkpoint_factory("llama_tied").path  # max_position_embeddings 256


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_examples(tmp_path_factory.mktemp("data"), n_train=32, n_heldout=16)


@pytest.fixture(scope="module")
def rm_dir(base, tmp_path_factory):
    """An (untrained) reward model directory as train_rm.py exports it."""
    directory = tmp_path_factory.mktemp("rm") / "rm"
    torch.manual_seed(0)
    save_reward_model(build_reward_model(base, RewardConfig(max_length=64), device="cpu", seed=0), directory)
    return directory


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "source": "test", "messages": [
        {"role": "user", "content": f"say something {i}"}]}) + "\n" for i in range(8)))
    return path


def rm_argv(base, data, out, *extra):
    return ["--model", base, "--data", data, "--out", out, "--max-length", "64", "--batch-size", "8",
            "--micro-batch-size", "8", "--lr", "1e-5", "--max-steps", "2", "--eval-every", "100",
            "--save-every", "1", "--log-every", "1", "--device", "cpu", *extra]


def ppo_argv(base, rm, prompts, out, *extra):
    return ["--model", base, "--reward-model", rm, "--prompts", prompts, "--out", out, "--rollouts", "1",
            "--rollout-batch", "2", "--minibatch", "2", "--micro-batch", "2", "--ppo-epochs", "1",
            "--max-new-tokens", "4", "--max-prompt-tokens", "32", "--device", "cpu", *extra]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a script builds or loads a model (errors must come before that)."""
    calls = []

    def refuse(*args, **kw):
        calls.append(args)
        raise AssertionError(f"a model was loaded before the inputs were checked: {args}")

    monkeypatch.setattr(reward_train, "build_reward_model", refuse)
    monkeypatch.setattr(ppo_trainer, "load_model", refuse)
    monkeypatch.setattr(ppo_trainer, "load_reward_model", refuse)
    return calls


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------- A. the one error path

def test_expected_error_is_one_line_exit_2_and_debug_reraises(tmp_path, base, capsys, monkeypatch, no_loading):
    missing = tmp_path / "no-such-data"
    argv = rm_argv(base, missing, tmp_path / "out")
    rc, out, err = cli(train_rm_script, argv, capsys, "train_rm.py")
    assert rc == 2 and out == ""
    line = error_line(err, "train_rm.py")
    assert f"{missing}: no train-*.jsonl files" in line
    assert not (tmp_path / "out").exists()  # nothing written for a refused run

    with pytest.raises(FileNotFoundError, match="no train-"):
        run_main(train_rm_script.main, [str(a) for a in argv] + ["--debug"], prog="train_rm.py")
    monkeypatch.setenv("KARMA_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="no train-"):
        run_main(train_rm_script.main, [str(a) for a in argv], prog="train_rm.py")
    monkeypatch.setenv("KARMA_DEBUG", "0")
    assert run_main(train_rm_script.main, [str(a) for a in argv], prog="train_rm.py") == 2
    assert no_loading == []


@pytest.mark.parametrize("exc, code, word", [
    (TrainingDiverged("loss is NaN"), 1, "stopped: loss is NaN"),
    (KeyError("'x' missing from y.json"), 2, "error: 'x' missing from y.json" + DEBUG_HINT),  # not repr'd
    (OSError("disk gone"), 2, "error: disk gone" + DEBUG_HINT),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_run_main_exit_codes(exc, code, word, capsys):
    def main(argv):
        raise exc

    assert run_main(main, [], prog="prog.py") == code
    assert capsys.readouterr().err == f"prog.py: {word}\n"
    if code in (1, 2):
        with pytest.raises(type(exc)):
            run_main(main, ["--debug"], prog="prog.py")


def test_unexpected_error_is_not_swallowed():
    def main(argv):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_main(main, [], prog="prog.py")


def _bad_model(kind: str, base: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A broken copy of the base checkpoint and the fragments its error must name."""
    bad = copy(base, tmp_path / f"model-{kind}")
    if kind == "no_config":
        (bad / "config.json").unlink()
        return bad, [f"{bad / 'config.json'}", "no such file"]
    if kind == "truncated_weights":
        path = bad / "model.safetensors"
        content = path.read_bytes()
        path.write_bytes(content[:len(content) // 2])
        return bad, [f"{path}: not a readable .safetensors"]
    if kind == "garbage_tokenizer":
        (bad / "tokenizer.json").write_text("{ this is not a tokenizer")
        return bad, [f"{bad / 'tokenizer.json'}: not a readable tokenizer file"]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["no_data_dir", "data_without_train_files", "no_config", "truncated_weights",
                                  "garbage_tokenizer"])
def test_train_rm_bad_inputs_are_reported_before_loading(kind, tmp_path, base, data, capsys, no_loading):
    model, use_data, expect = base, data, []
    if kind == "no_data_dir":
        use_data = tmp_path / "missing"
        expect = [f"{use_data}: no train-*.jsonl files"]
    elif kind == "data_without_train_files":
        use_data = tmp_path / "only-heldout"
        use_data.mkdir()
        shutil.copy(data / "heldout-00000.jsonl", use_data)
        expect = [f"{use_data}: no train-*.jsonl files"]
    else:
        model, expect = _bad_model(kind, base, tmp_path)
    rc, _, err = cli(train_rm_script, rm_argv(model, use_data, tmp_path / "out"), capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err, "train_rm.py")
    for fragment in expect:
        assert fragment in line, (fragment, line)
    assert no_loading == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["not_a_reward_model", "extra_key", "no_config", "truncated_weights",
                                  "garbage_tokenizer", "bad_policy", "no_prompts"])
def test_ppo_bad_inputs_are_reported_before_any_model_is_loaded(kind, tmp_path, base, rm_dir, prompts, capsys,
                                                                 no_loading):
    model, rm, use_prompts = base, rm_dir, prompts
    if kind == "not_a_reward_model":
        rm = base  # a plain causal LM
        expect = [f"{base}: no reward_config.json (not a reward model"]
    elif kind == "extra_key":
        rm = copy(rm_dir, tmp_path / "rm")
        config = json.loads((rm / "reward_config.json").read_text())
        (rm / "reward_config.json").write_text(json.dumps({**config, "temperature_typo": 1}))
        expect = [f"{rm / 'reward_config.json'}:", "unexpected: ['temperature_typo']"]
    elif kind == "bad_policy":
        model, expect = _bad_model("truncated_weights", base, tmp_path)
    elif kind == "no_prompts":
        use_prompts = tmp_path / "nothing.jsonl"
        expect = [f"{use_prompts}: no prompt set"]
    else:
        rm, expect = _bad_model(kind, rm_dir, tmp_path)
    rc, _, err = cli(ppo_script, ppo_argv(model, rm, use_prompts, tmp_path / "out"), capsys, "ppo.py")
    assert rc == 2
    line = error_line(err, "ppo.py")
    for fragment in expect:
        assert fragment in line, (fragment, line)
    assert no_loading == [] and not (tmp_path / "out").exists()


def test_reward_model_without_head_is_refused(tmp_path, base, rm_dir, prompts, capsys, no_loading):
    rm = copy(rm_dir, tmp_path / "rm")
    (rm / "reward_head.safetensors").unlink()
    rc, _, err = cli(ppo_script, ppo_argv(base, rm, prompts, tmp_path / "out"), capsys, "ppo.py")
    assert rc == 2 and f"{rm}: no reward_head.safetensors" in error_line(err, "ppo.py")
    assert no_loading == []


def test_real_script_exits_2_with_one_line(tmp_path, base):
    """The script itself (sys.exit(run_main(main))): exit 2, its own name, one line, no traceback."""
    missing = tmp_path / "no-such-data"
    run = subprocess.run([sys.executable, str(ROOT / "train_rm.py"), *map(str, rm_argv(base, missing, tmp_path / "o"))],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2, run.stderr
    assert run.stderr.endswith("\n") and "\n" not in run.stderr[:-1], run.stderr
    assert run.stderr.startswith(f"train_rm.py: error: {missing}: no train-*.jsonl files")
    assert run.stderr.endswith(DEBUG_HINT + "\n")


# ------------------------------------------------------------------- B. flags checked before loading

@pytest.mark.parametrize("flag, value, message", [
    ("--max-steps", "0", "--max-steps 0: must be at least 1"),
    ("--max-steps", "-1", "--max-steps -1: must be at least 1"),
    ("--min-lr-ratio", "-3", "--min-lr-ratio -3.0: must be in [0, 1]"),
    ("--head-hidden", "0", "--head-hidden 0: must be at least 1"),
    ("--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("--save-every", "0", "--save-every 0: must be at least 1"),
    ("--max-length", "1", "--max-length 1: must be at least 32"),
    ("--lr", "0", "--lr 0.0: must be > 0"),
    ("--lr", "nan", "--lr nan: must be > 0"),
    ("--max-length", "300", "--max-length 300: more than"),  # the base model has 256 positions
])
def test_train_rm_flags_are_checked_before_loading(flag, value, message, tmp_path, base, data, capsys, no_loading):
    rc, _, err = cli(train_rm_script, rm_argv(base, data, tmp_path / "out", flag, value), capsys, "train_rm.py")
    assert rc == 2
    assert f"train_rm.py: error: {message}" in error_line(err, "train_rm.py")
    assert no_loading == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--rollouts", "0"], "--rollouts 0: must be at least 1"),
    (["--clip", "-1"], "--clip -1.0: must be > 0"),
    (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
    (["--minibatch", "0"], "--minibatch 0: must be at least 1"),
    (["--save-every", "0"], "--save-every 0: must be at least 1"),
    (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
    (["--max-prompt-tokens", "250", "--max-new-tokens", "10"],
     "--max-prompt-tokens 250 + --max-new-tokens 10: more than"),
])
def test_ppo_flags_are_checked_before_loading(extra, message, tmp_path, base, rm_dir, prompts, capsys, no_loading):
    rc, _, err = cli(ppo_script, ppo_argv(base, rm_dir, prompts, tmp_path / "out", *extra), capsys, "ppo.py")
    assert rc == 2
    line = error_line(err, "ppo.py")
    assert f"ppo.py: error: {message}" in line
    if "max-prompt" in message:
        assert "max_position_embeddings (256)" in line
    assert no_loading == [] and not (tmp_path / "out").exists()


def test_ppo_context_that_fits_is_accepted(base):
    """246 + 10 = 256 positions: exactly the model's context, accepted (the check is not off by one)."""
    cfg = ppo_config(base, "unused", Path("unused"), max_prompt_tokens=246, max_new_tokens=10)
    cfg.check()
    assert weights.inspect_model(base).max_position_embeddings == 256


def test_python_m_karma_rejects_negative_temperature(base):
    run = subprocess.run([sys.executable, "-m", "karma", str(base), "hello", "--temperature", "-1"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2, run.stderr
    assert "python -m karma: error: --temperature -1.0" in run.stderr and "Traceback" not in run.stderr


# ------------------------------------------------------------------------------------- C. resume

def test_resume_refuses_changed_settings_and_allows_checkpoint_settings(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    rc, _, _ = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "3", "--stop-after-steps", "1"),
                   capsys, "train_rm.py")
    assert rc == 0 and (out / "checkpoints" / "latest").read_text() == "step-00000001"

    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "3", "--resume", "--lr", "0.001"),
                     capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err, "train_rm.py")
    assert "--lr: 1e-05 -> 0.001" in line and "config.json" in line
    assert "--save-every" not in line and "--stop-after-steps" not in line  # only the real difference
    assert (out / "checkpoints" / "latest").read_text() == "step-00000001"  # the refused run touched nothing
    assert not (out / ".lock").exists()

    # checkpoint and stopping settings may change
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "3", "--resume", "--save-every", "5",
                                              "--stop-after-steps", "2"), capsys, "train_rm.py")
    assert rc == 0, err
    assert (out / "checkpoints" / "latest").read_text() == "step-00000002"
    rc, stdout, err = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "3", "--resume"), capsys,
                          "train_rm.py")
    assert rc == 0, err
    assert stdout.strip().splitlines()[-1].startswith("step 3:") and (out / "final").is_dir()
    assert [r["step"] for r in metrics(out) if r["event"] == "train"] == [1, 2, 3]


def test_resume_without_checkpoint_starts_fresh(tmp_path, base, data):
    out = tmp_path / "rm"
    cfg = TrainRMConfig(model=str(base), data=data, out_dir=out, max_length=64, batch_size=8, micro_batch_size=8,
                        max_steps=2, eval_every=100, save_every=100, log_every=1, resume=True)
    state = reward_train.train(cfg, CPU)
    assert state["step"] == 2
    assert metrics(out)[0]["event"] == "data" and metrics(out)[0]["resumed_at"] == 0


def test_ppo_resume_refuses_a_changed_lr(tmp_path, base, prompts):
    out = tmp_path / "ppo"
    common = dict(rollouts=2, rollout_batch=2, minibatch=2, micro_batch=2, ppo_epochs=1, max_new_tokens=4,
                  max_prompt_tokens=32)
    ppo_trainer.train(ppo_config(base, prompts, out, stop_after_rollouts=1, **common), CPU, reward=LetterReward())
    with pytest.raises(ValueError, match=r"--lr: 0\.0003 -> 0\.001"):
        ppo_trainer.train(ppo_config(base, prompts, out, resume=True, lr=1e-3, **common), CPU, reward=LetterReward())
    state = ppo_trainer.train(ppo_config(base, prompts, out, resume=True, save_every=7, **common), CPU,
                              reward=LetterReward())
    assert state["rollout"] == 2 and [r["rollout"] for r in metrics(out)] == [1, 2]


# --------------------------------------------------------------------------------------- D. lock

def _write_lock(out: Path, pid: int, host: str | None = None):
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                           "started": time.time(), "argv": ["train_rm.py"]}))


def _hold_lock(out: Path, held, release):
    with RunLock(out):
        held.set()
        release.wait(60)


def test_lock_held_by_a_live_process_refuses_a_second_run(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    fork = multiprocessing.get_context("fork")
    held, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold_lock, args=(out, held, release))
    holder.start()
    try:
        assert held.wait(30)
        rc, _, err = cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")
        assert rc == 2
        line = error_line(err, "train_rm.py")
        assert f"{out / '.lock'}: another run (pid {holder.pid}" in line
        assert json.loads((out / ".lock").read_text())["pid"] == holder.pid  # the holder's lock is kept
        assert not (out / "config.json").exists() and not (out / "metrics.jsonl").exists()
    finally:
        release.set()
        holder.join()


def test_lock_from_another_host_is_refused(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    _write_lock(out, 1, host="some-other-host.invalid")
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err, "train_rm.py")
    assert "pid 1 on some-other-host.invalid" in line and f"delete {out / '.lock'}" in line


def test_stale_lock_is_taken_over_and_removed_at_the_end(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(out, dead.pid)
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")
    assert rc == 0, err
    assert f"{out / '.lock'}: taking over a stale lock (pid {dead.pid} is not running)" in err
    assert not (out / ".lock").exists() and (out / "final").is_dir()


def test_lock_is_removed_after_an_error(tmp_path, base, data, capsys, monkeypatch):
    def failing_build(*args, **kw):
        raise OSError("simulated I/O error while loading")

    monkeypatch.setattr(reward_train, "build_reward_model", failing_build)
    out = tmp_path / "rm"
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")
    assert rc == 2 and "simulated I/O error while loading" in error_line(err, "train_rm.py")
    assert out.is_dir() and not (out / ".lock").exists()


# ------------------------------------------------------------------------- E. crash-safe exports

def test_atomic_directory_keeps_the_old_directory_on_error(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("old")
    before = snapshot(target)
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("new")
            (tmp / "b.txt").write_text("new")
            raise RuntimeError("midway")
    assert snapshot(target) == before == {"a.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary or .old sibling left


def test_save_model_failing_midway_leaves_the_previous_export(tmp_path, base, monkeypatch):
    model = load_model(base, device="cpu")
    target = tmp_path / "policy"
    save_model(model, target, max_shard_size="100KB")
    assert len(list(target.glob("*.safetensors"))) >= 2  # several files, so "midway" exists
    before = snapshot(target)
    with torch.no_grad():
        model.embed.weight.add_(1.0)  # the new export would differ

    real, calls = weights.save_file, []

    def save_then_fail(*args, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(weights, "save_file", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_model(model, target, max_shard_size="100KB")
    assert len(calls) == 2
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]


def test_save_reward_model_failing_midway_leaves_the_previous_export(tmp_path, base, monkeypatch):
    rm = build_reward_model(base, RewardConfig(max_length=64), device="cpu", seed=0)
    target = tmp_path / "best"
    save_reward_model(rm, target, info={"step": 1})
    before = snapshot(target)
    with torch.no_grad():
        rm.head[0].weight.add_(1.0)

    real, calls = files.atomic_write, []

    def write_then_fail(path, write):
        calls.append(Path(path).name)
        if len(calls) > 1:
            raise OSError("simulated crash after the first file")
        return real(path, write)

    for module in (files, weights, reward_mod):  # every file of the export goes through atomic_write
        monkeypatch.setattr(module, "atomic_write", write_then_fail)
    with pytest.raises(OSError, match="simulated crash"):
        save_reward_model(rm, target, info={"step": 2})
    assert calls[0] == "model.safetensors" and len(calls) == 2
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["best"]
    assert json.loads((target / "train_info.json").read_text()) == {"step": 1}


def test_interrupted_swap_is_recovered(tmp_path, base, rm_dir):
    """A process killed between the swap's two renames leaves only `.<name>.old`: recovered by
    recover_directory and by loading the path."""
    model_dir = tmp_path / "policy"
    save_model(load_model(base, device="cpu"), model_dir)
    before = snapshot(model_dir)
    old = tmp_path / ".policy.old"
    os.rename(model_dir, old)
    recover_directory(model_dir)
    assert snapshot(model_dir) == before and not old.exists()

    os.rename(model_dir, old)
    loaded = load_model(model_dir, device="cpu")  # recovers on the way
    assert snapshot(model_dir) == before and not old.exists()
    reference = load_model(base, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))

    rm = copy(rm_dir, tmp_path / "rm")
    rm_before = snapshot(rm)
    os.rename(rm, tmp_path / ".rm.old")
    loaded_rm = load_reward_model(rm, device="cpu")
    assert snapshot(rm) == rm_before and not (tmp_path / ".rm.old").exists()
    expected = load_file(rm_dir / "reward_head.safetensors")
    assert all(torch.equal(loaded_rm.head.state_dict()[k], v) for k, v in expected.items())


# ---------------------------------------------------------------------------- F. non-finite guards

def _nan_head_build(monkeypatch):
    real = reward_train.build_reward_model

    def build(*args, **kw):
        rm = real(*args, **kw)
        with torch.no_grad():
            rm.head[-1].weight.fill_(float("nan"))
        return rm

    monkeypatch.setattr(reward_train, "build_reward_model", build)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_rm_with_nan_weights_skips_steps_then_stops(tmp_path, base, data, capsys, monkeypatch):
    _nan_head_build(monkeypatch)
    out = tmp_path / "rm"
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "20", "--max-bad-steps", "3",
                                              "--eval-every", "1"), capsys, "train_rm.py")
    assert rc == 1, err
    stopped = [line for line in err.splitlines() if line.startswith("train_rm.py: stopped: ")]
    assert len(stopped) == 1 and "3 consecutive steps (to step 3)" in stopped[0], err
    assert not (out / "best").exists()  # no evaluation had finite scores: nothing exported
    assert not (out / "final").exists() and not (out / ".lock").exists()
    assert check_json_files(out) >= 4  # config.json, eval.json, metrics.jsonl, trainer.json: all strict JSON
    train_records = [r for r in metrics(out) if r["event"] == "train"]
    assert [(r["step"], r["loss"], r["skipped_steps"]) for r in train_records] == [(1, None, 1), (2, None, 2)]
    assert all("grad_norm" in r["nonfinite"] for r in train_records)
    evaluation = strict_json((out / "eval.json").read_text())
    assert evaluation["roc_auc"] is None and evaluation["nonfinite_scores"] == 16 and evaluation["best_step"] is None


def test_rm_single_nan_loss_step_is_skipped_and_training_continues(tmp_path, base, data, monkeypatch):
    real, calls = reward_train.bce_loss, []

    def nan_once(*args, **kw):  # batch 16 in micro-batches of 8: call 3 is step 2's first
        calls.append(1)
        loss = real(*args, **kw)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(reward_train, "bce_loss", nan_once)
    out = tmp_path / "rm"
    cfg = TrainRMConfig(model=str(base), data=data, out_dir=out, max_length=64, batch_size=16, micro_batch_size=8,
                        lr=1e-3, max_steps=4, eval_every=4, save_every=100, log_every=1, max_bad_steps=2)
    state = reward_train.train(cfg, CPU)
    assert state["step"] == 4 and state["skipped_steps"] == 1 and state["bad_streak"] == 0
    records = {r["step"]: r for r in metrics(out) if r["event"] == "train"}
    assert records[2]["loss"] is None and records[2]["skipped_steps"] == 1
    assert records[1]["loss"] is not None and records[3]["loss"] is not None and records[4]["skipped_steps"] == 1
    final = load_file(out / "final" / "reward_head.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())
    check_json_files(out)


class NanReward(LetterReward):
    """LetterReward with NaN in the given rows (all rows when rows is None)."""

    def __init__(self, rows=None):
        super().__init__()
        self.rows = rows

    def score(self, contexts, responses, metas=None):
        scores = super().score(contexts, responses, metas)
        scores[slice(None) if self.rows is None else self.rows] = float("nan")
        return scores


def _ppo_small(base, prompts, out, **kw):
    return ppo_config(base, prompts, out, **{**dict(rollouts=1, rollout_batch=4, minibatch=4, micro_batch=4,
                                                     ppo_epochs=2, max_new_tokens=6, max_prompt_tokens=32), **kw})


def test_ppo_one_nan_score_drops_the_row_and_keeps_the_rollout(tmp_path, base, prompts):
    out = tmp_path / "ppo"
    state = ppo_trainer.train(_ppo_small(base, prompts, out), CPU, reward=NanReward(rows=[0]))
    assert state["rollout"] == 1
    (record,) = metrics(out)
    assert record["dropped_nonfinite_scores"] == 1 and math.isfinite(record["score"])
    assert record["updates"] == 2 and record["skipped_minibatches"] == 0 and record["diverged"] == ""
    exported, original = load_file(out / "policy" / "model.safetensors"), load_file(base / "model.safetensors")
    assert any(not torch.equal(exported[k], original[k]) for k in original)  # the update was applied
    assert all(torch.isfinite(t).all() for t in exported.values())
    assert check_json_files(out) >= 3  # samples.jsonl holds the NaN score as null


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_ppo_all_nan_scores_diverge_without_checkpoints(tmp_path, base, prompts):
    out = tmp_path / "ppo"
    with pytest.raises(TrainingDiverged, match="rollouts 1-2 diverged") as stop:
        ppo_trainer.train(_ppo_small(base, prompts, out, rollouts=5, save_every=1, divergence_patience=2), CPU,
                          reward=NanReward())
    assert "none (the run diverged before its first save)" in str(stop.value)
    records = metrics(out)
    assert [r["rollout"] for r in records] == [1, 2]
    assert all(r["score"] is None and r["dropped_nonfinite_scores"] == 4 and r["updates"] == 0 for r in records)
    assert all("no finite reward-model score" in r["diverged"] for r in records)
    assert not (out / "checkpoints").exists() and not (out / "policy").exists() and not (out / ".lock").exists()
    check_json_files(out)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_ppo_with_an_absurd_learning_rate_stops_as_diverged(tmp_path, base, rm_dir, prompts, capsys):
    out = tmp_path / "ppo"
    rc, _, err = cli(ppo_script, ppo_argv(base, rm_dir, prompts, out, "--rollouts", "6", "--rollout-batch", "4",
                                          "--ppo-epochs", "4", "--lr", "10", "--value-lr", "10", "--save-every", "1"),
                     capsys, "ppo.py")
    assert rc == 1, err
    assert any(line.startswith("ppo.py: stopped: rollouts ") for line in err.splitlines()), err
    records = metrics(out)
    assert len(records) < 6 and records[-1]["diverged"] and records[-2]["diverged"]
    assert "minibatches skipped" in records[-1]["diverged"]
    assert not (out / "policy").exists() and not (out / ".lock").exists()


# -------------------------------------------------------------------------------------- G. smaller

def test_torn_last_log_line_does_not_block_resume(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    argv = rm_argv(base, data, out, "--max-steps", "2", "--keep-checkpoints", "5")
    assert cli(train_rm_script, [*argv, "--stop-after-steps", "1"], capsys, "train_rm.py")[0] == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 2, "lo')  # killed mid-write
    rc, _, err = cli(train_rm_script, [*argv, "--resume"], capsys, "train_rm.py")
    assert rc == 0, err
    assert [r["step"] for r in metrics(out) if r["event"] == "train"] == [1, 2]


def test_truncate_jsonl_drops_a_torn_tail_but_refuses_a_bad_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    truncate_jsonl(path, "step", 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'

    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"{path}:2: not valid JSON"):
        truncate_jsonl(path, "step", 3)
    assert path.read_text() == '{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n'  # left as it was


def test_logs_with_unicode_line_breaks_inside_strings_read_back(tmp_path):
    """A sampled reply held U+2029 (a PPO run then failed at its end: "metrics.jsonl:5: not valid
    JSON"). The log keeps U+2028, U+2029 and U+0085 raw in UTF-8 (the other breaks are escaped), so
    every reader splits lines at "\\n" only: read_jsonl, truncate_jsonl on resume, and ppo.py's
    closing summary."""
    import ppo
    from karma.run import MetricsLog
    breaks = "a\u2028b\u2029c\x85d\x1ce\x0bf\x0cg\rh"
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, append=False)
    for rollout in (1, 2, 3):
        log.write({"rollout": rollout, "score": rollout / 10, "top_replies": [{"response": breaks}]})
    log.close()
    records = [record for _, record in files.read_jsonl(path)]
    assert [r["rollout"] for r in records] == [1, 2, 3]
    assert all(r["top_replies"][0]["response"] == breaks for r in records)
    assert ppo.summary(path).startswith("RM score: first 1 scored rollouts 0.1000 -> last 1 0.3000")
    truncate_jsonl(path, "rollout", 2)
    assert [r["rollout"] for _, r in files.read_jsonl(path)] == [1, 2]


def test_keep_checkpoints_keeps_the_newest(tmp_path, base, data, capsys):
    out = tmp_path / "rm"
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out, "--max-steps", "4", "--keep-checkpoints", "2"),
                     capsys, "train_rm.py")
    assert rc == 0, err
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000003", "step-00000004"]
    assert (checkpoints / "latest").read_text() == "step-00000004"


def test_generate_warns_past_the_context(base):
    model = load_model(base, device="cpu")
    assert model.config.max_position_embeddings == 256
    ids = torch.randint(3, 200, (1, 250))
    with pytest.warns(UserWarning, match=r"max_position_embeddings \(256\)"):
        generate(model, ids, max_new_tokens=10, temperature=0.0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, ids, max_new_tokens=6, temperature=0.0)  # 256: fits, no warning


def test_ppo_stopped_early_does_not_claim_the_policy(tmp_path, base, rm_dir, prompts, capsys):
    out = tmp_path / "ppo"
    rc, stdout, err = cli(ppo_script, ppo_argv(base, rm_dir, prompts, out, "--rollouts", "2",
                                               "--stop-after-rollouts", "1"), capsys, "ppo.py")
    assert rc == 0, err
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("1 of 2 rollouts done") and "stopped early" in last and "policy in" not in stdout
    assert not (out / "policy").exists()

    rc, stdout, err = cli(ppo_script, ppo_argv(base, rm_dir, prompts, out, "--rollouts", "2", "--resume"),
                          capsys, "ppo.py")
    assert rc == 0, err
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("2 of 2 rollouts done") and f"policy in {out / 'policy'}" in last
    assert (out / "policy" / "model.safetensors").exists()


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_disk_full_during_a_checkpoint_is_named(tmp_path, base, data, capsys, monkeypatch):
    def torn_save(*args, **kw):
        raise RuntimeError("unexpected pos 704 vs 598")

    monkeypatch.setattr(checkpoint.dcp, "save", torn_save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: DiskUsage(10**9, 10**9, 0))
    out = tmp_path / "rm"
    rc, _, err = cli(train_rm_script, rm_argv(base, data, out), capsys, "train_rm.py")
    assert rc == 2
    line = error_line(err[err.index("train_rm.py: error: "):], "train_rm.py")  # after the progress bar
    assert f"{out / 'checkpoints' / 'step-00000001'}" in line and "no space left on device" in line
    assert "unexpected pos 704 vs 598" in line and "--resume" in line
    assert not (out / ".lock").exists()

    # in-process: an OSError with errno ENOSPC
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(OSError) as e:
        save_training_state(tmp_path / "ck" / "step-1", {"model": (model, optimizer)}, {"step": 1}, CPU)
    assert e.value.errno == errno.ENOSPC and str(tmp_path / "ck" / "step-1") in str(e.value)

    # with free space the original error stays what it is
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: DiskUsage(10**12, 0, 10**12))
    with pytest.raises(RuntimeError, match="unexpected pos 704 vs 598"):
        save_training_state(tmp_path / "ck" / "step-1", {"model": (model, optimizer)}, {"step": 1}, CPU)


def test_atomic_write_json_writes_null_for_non_finite(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": float("nan"), "b": {"c": float("inf"), "d": 1.5}, "e": [1.0, float("-inf")]})
    assert strict_json(path.read_text()) == {"a": None, "b": {"c": None, "d": 1.5}, "e": [1.0, None],
                                             "nonfinite": ["a", "b.c", "e[1]"]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left


# -------------------------------------------------------------------------------------- H. data_prep

def test_failed_data_prep_leaves_no_out_directory(tmp_path, capsys):
    not_a_dump = tmp_path / "notes.txt"
    not_a_dump.write_text("just some text\n")
    out = tmp_path / "out"
    rc, _, err = cli(data_prep_script, ["--input", not_a_dump, "--out", out], capsys, "data_prep.py")
    assert rc == 2
    line = err.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith(f"data_prep.py: error: {not_a_dump}: ") and line.endswith(DEBUG_HINT)
    assert not out.exists()

    rc, _, err = cli(data_prep_script, ["--input", tmp_path / "missing", "--out", out], capsys, "data_prep.py")
    assert rc == 2 and f"{tmp_path / 'missing'}: no such file or directory" in err and not out.exists()

    out.mkdir()  # an --out that existed before is left in place (and unlocked)
    rc, _, _ = cli(data_prep_script, ["--input", not_a_dump, "--out", out], capsys, "data_prep.py")
    assert rc == 2 and out.is_dir() and list(out.iterdir()) == []
