"""karma.run.Run, the lifecycle the three trainers share, on a one-layer model: config.json, a fresh
start, checkpoints when due and --stop-after, resume (weights, state, logs cut back), the clean-up of
a finished run, curves.png only after a run that did not fail, the lock released in every case."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from karma.distributed import Dist
from karma.errors import RunLocked
from karma.optim import adamw
from karma.run import Run, RunLock

CPU = Dist(0, 1, torch.device("cpu"))


@dataclass
class Settings:
    out_dir: Path
    lr: float = 0.1
    save_every: int = 2
    keep_checkpoints: int = 1
    stop_after_steps: int | None = None
    resume: bool = False

    def inputs(self) -> dict:
        return {}


def trained():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    return {"model": (model, adamw(model, 0.1, 0.0))}


def run_steps(cfg: Settings, total: int, fail_at: int | None = None) -> tuple[dict, dict]:
    """A trainer's loop in miniature: one AdamW step per step, a train record each."""
    models = trained()
    model, optimizer = models["model"]
    with Run(cfg, CPU, counter="step", stop_after=cfg.stop_after_steps) as run:
        run.write_config(kind="test")
        state = {"step": 0}
        resumed = run.resume(models, state)
        with run.progress(total, "test", initial=state["step"]):
            while state["step"] < total:
                if state["step"] + 1 == fail_at:
                    raise KeyboardInterrupt("simulated kill")
                model(torch.ones(1, 3)).sum().backward()
                optimizer.step()
                optimizer.zero_grad()
                state["step"] = step = state["step"] + 1
                run.log({"event": "train", "step": step, "loss": 1.0 / step, "lr": cfg.lr})
                if run.after_step(step, total, dict(state)):
                    break
        if state["step"] >= total:
            run.finish()
    return {"resumed": resumed, **state}, {k: v.clone() for k, v in model.state_dict().items()}


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_fresh_run_writes_config_logs_checkpoints_and_curves(tmp_path):
    out = tmp_path / "run"
    state, _ = run_steps(Settings(out), total=5)
    assert state == {"resumed": False, "step": 5}
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "test" and config["lr"] == 0.1 and config["inputs"] == {}
    assert steps_logged(out) == [1, 2, 3, 4, 5]
    # every 2 steps, and the end (5 >= --save-every), keeping 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-00000005"]
    assert json.loads((out / "checkpoints" / "step-00000005" / "trainer.json").read_text())["step"] == 5
    assert (out / "curves.png").exists() and not (out / ".lock").exists()


def test_stop_after_then_resume_equals_an_uninterrupted_run(tmp_path):
    _, whole = run_steps(Settings(tmp_path / "whole"), total=6)
    out = tmp_path / "stopped"
    state, _ = run_steps(Settings(out, stop_after_steps=3), total=6)
    assert state["step"] == 3 and (out / "checkpoints" / "step-00000003").is_dir()
    state, weights = run_steps(Settings(out, resume=True), total=6)
    assert state == {"resumed": True, "step": 6}
    assert all(torch.equal(weights[k], whole[k]) for k in whole)
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]


def test_a_killed_run_resumes_from_its_checkpoint_and_cuts_its_log(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_steps(Settings(out), total=6, fail_at=4)
    assert steps_logged(out) == [1, 2, 3]  # step 3 was logged after the checkpoint of step 2
    assert not (out / "curves.png").exists() and not (out / ".lock").exists()
    state, _ = run_steps(Settings(out, resume=True), total=6)
    assert state["resumed"] and steps_logged(out) == [1, 2, 3, 4, 5, 6]


def test_a_finished_run_keeps_no_checkpoint_with_keep_0_and_says_so(tmp_path):
    out = tmp_path / "run"
    run_steps(Settings(out, keep_checkpoints=0), total=4)
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "config.json").read_text())["checkpoints_deleted"]
    short = tmp_path / "short"
    run_steps(Settings(short, save_every=10), total=3)  # shorter than --save-every: no checkpoint at all
    assert json.loads((short / "config.json").read_text())["no_checkpoint"]


def test_the_lock_is_held_while_the_run_is_open(tmp_path):
    out = tmp_path / "run"
    with Run(Settings(out), CPU, counter="step", stop_after=None):
        with pytest.raises(RunLocked):
            RunLock(out).__enter__()
    with RunLock(out):  # released
        pass
