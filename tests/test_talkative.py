"""A run written to a log says where it stands: every trainer (train_rm, ppo, dpo and dpo's
reference pass) prints a plain progress line (count, loss or score, rate, ETA) at least every
karma.run.PROGRESS_EVERY seconds when stderr is not a terminal, and only its bar on a terminal."""

from __future__ import annotations

import io
import time

import pytest
import torch

import karma.dpo_train as dpo_train
import karma.run as run
from karma.distributed import Dist
from karma.ppo.trainer import train as ppo_train
from karma.reward_train import train as rm_train
from karma.run import Progress
from test_dpo_train import config as dpo_config
from test_dpo_train import pairs  # noqa: F401 (fixture)
from test_ppo_trainer import LetterReward, setup  # noqa: F401 (fixture)
from test_ppo_trainer import config as ppo_config
from test_reward import config as rm_config
from test_reward import make_examples

CPU = Dist(0, 1, torch.device("cpu"))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_plain_lines_with_count_stats_rate_and_eta(monkeypatch, capsys):
    monkeypatch.setattr(run, "PROGRESS_EVERY", 0.0)  # a line at every update
    with Progress(3, "demo", "step") as progress:
        for loss in (0.75, 0.5, 0.25):
            progress.update(1, loss=loss)
        progress.write("step 3  held-out AUC 0.9")
    out, err = capsys.readouterr()
    assert "demo  step 0/3 (0%)" in err  # the stage has started
    assert "demo  step 1/3 (33%)  loss 0.75" in err and "demo  step 3/3 (100%)  loss 0.25" in err
    line = next(l for l in err.splitlines() if "step 1/3" in l)
    assert ("s/step" in line or "step/s" in line) and "elapsed" in line and "eta" in line, line
    assert "\r" not in err  # no bar in a log
    assert out == "step 3  held-out AUC 0.9\n"


def test_a_long_step_still_prints_a_line(monkeypatch):
    """The heartbeat thread writes the line when no update comes for PROGRESS_EVERY seconds."""
    monkeypatch.setattr(run, "PROGRESS_EVERY", 0.05)
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    with Progress(2, "slow", "rollout"):
        deadline = time.monotonic() + 30
        while log.getvalue().count("slow  rollout 0/2") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # a step that takes long: no update
    assert log.getvalue().count("slow  rollout 0/2") >= 2, log.getvalue()  # the first line, then a heartbeat


def test_a_terminal_gets_the_bar_only(monkeypatch):
    monkeypatch.setattr(run, "PROGRESS_EVERY", 0.0)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with Progress(3, "demo", "step") as progress:
        for _ in range(3):
            progress.update(1, loss=0.5)
    shown = terminal.getvalue()
    assert "\r" in shown and "3/3" in shown  # tqdm's bar
    assert "demo  step" not in shown and "eta" not in shown  # no plain lines tangled with it


def test_every_trainer_talks_in_a_log(monkeypatch, capsys, tmp_path, checkpoint_factory, setup, pairs):  # noqa: F811
    monkeypatch.setattr(run, "PROGRESS_EVERY", 0.0)
    base = checkpoint_factory("llama_tied").path
    data = make_examples(tmp_path / "data", n_train=32, n_heldout=16)
    rm_train(rm_config(base, data, tmp_path / "rm", max_steps=2, eval_every=2), CPU)
    err = capsys.readouterr().err
    assert "train_rm  step 1/2 (50%)  loss " in err and "eta" in err, err

    policy, prompts = setup
    ppo_train(ppo_config(policy, prompts, tmp_path / "ppo", rollouts=2, rollout_batch=4, minibatch=4, micro_batch=4,
                         ppo_epochs=1, max_new_tokens=4), CPU, reward=LetterReward())
    err = capsys.readouterr().err
    assert "ppo  rollout 1/2 (50%)  score " in err and " kl " in err, err

    dpo_train.train(dpo_config(base, pairs, tmp_path / "dpo", max_steps=2, eval_every=2), CPU)
    err = capsys.readouterr().err
    assert "dpo reference log-probs  batch 1/" in err, err
    assert "dpo  step 1/2 (50%)  loss " in err, err


@pytest.mark.parametrize("seconds, shown", [(5, "0:05"), (754, "12:34"), (3 * 3600 + 61, "3:01:01")])
def test_clock(seconds, shown):
    assert run._clock(seconds) == shown
