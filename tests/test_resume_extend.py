"""A finished run extended with --resume and a larger budget (karma/run.py): the reward model by more
--max-steps, PPO by more --rollouts. The extension trains the new steps, re-exports, and records
itself in config.json; with a schedule that does not depend on the total it is the longer run
exactly; with the default decaying schedules the new steps follow the new total's schedule. A
lowered budget, a budget switched between --epochs and --max-steps, or any other changed setting
(--lr) is still refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import karma.ppo.trainer as ppo_trainer
import karma.reward_train as reward_train
from karma.distributed import Dist
from karma.optim import adamw, warmup_cosine
from karma.reward_train import TrainRMConfig
from karma.run import check_out_dir
from test_ppo_trainer import LetterReward
from test_ppo_trainer import config as ppo_config
from test_reward import make_examples
from test_robustness import prompts  # noqa: F401 (fixture)

CPU = Dist(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def base(checkpoint_factory):
    return checkpoint_factory("llama_tied").path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_examples(tmp_path_factory.mktemp("data"), n_train=32, n_heldout=16)


def rm_config(base, data, out, **kw) -> TrainRMConfig:
    """Steps of 8 of 32 examples (4 per epoch), a record each step; a checkpoint every 2 steps, kept."""
    defaults = dict(model=str(base), data=data, out_dir=out, max_length=64, batch_size=8, micro_batch_size=8,
                    lr=1e-3, max_steps=4, eval_every=2, save_every=2, log_every=1)
    return TrainRMConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def finished_rm(base, data, tmp_path_factory) -> Path:
    """A finished 4-step run with the default schedule (warmup, cosine decay), its checkpoint kept."""
    out = tmp_path_factory.mktemp("finished") / "rm"
    reward_train.train(rm_config(base, data, out), CPU)
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    """A copy to extend (a run's --out may move)."""
    return Path(shutil.copytree(run, tmp_path / "rm"))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return {f"{f.name}:{k}": v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def records(out: Path, event: str | None = "train") -> list[dict]:
    """The log's records of `event`, less what depends on timing."""
    timing = {"time", "examples_per_s", "tokens_per_s", "steps_per_s", "peak_mem_gib", "generate_s", "score_s",
              "forward_s", "update_s", "gather_s", "generate_tok_s", "train_tok_s"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in timing} for r in rows if r.get("event") == event]


# ------------------------------------------------------------------------------------ reward model

def test_a_finished_reward_model_run_extended_by_2_steps_is_the_6_step_run(tmp_path, base, data, capsys):
    constant = dict(min_lr_ratio=1.0, warmup_ratio=0.0)  # a schedule that does not depend on the total
    out = tmp_path / "rm"
    reward_train.train(rm_config(base, data, out, **constant), CPU)
    assert (out / "final").is_dir() and (out / "checkpoints" / "step-00000004").is_dir()
    capsys.readouterr()
    state = reward_train.train(rm_config(base, data, out, max_steps=6, resume=True, **constant), CPU)
    assert state["step"] == 6
    assert f"{out}: extending the run from step-00000004: --max-steps 4 -> 6" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["max_steps"] == 6 and config["extended"] == [{"max_steps": [4, 6], "at": "step-00000004"}]
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4, 5, 6]

    longer = tmp_path / "rm6"
    reward_train.train(rm_config(base, data, longer, max_steps=6, **constant), CPU)
    assert records(out) == records(longer)
    assert records(out, "eval") == records(longer, "eval")
    assert same_weights(out / "final", longer / "final")


def lrs_trained_at(monkeypatch) -> list[float]:
    """The learning rate of every optimizer step reward_train takes (read as the step is taken)."""
    seen, real = [], reward_train.train_step

    def train_step(rm, optimizer, *args):
        seen.append(optimizer.param_groups[0]["lr"])
        return real(rm, optimizer, *args)

    monkeypatch.setattr(reward_train, "train_step", train_step)
    return seen


def schedule(total: int, cfg: TrainRMConfig) -> list[float]:
    """The learning rate of each step of a `total`-step run (karma.optim.warmup_cosine)."""
    optimizer = adamw(torch.nn.Linear(1, 1), cfg.lr, 0.0)
    scheduler = warmup_cosine(optimizer, total, cfg.warmup_ratio, cfg.min_lr_ratio)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_an_extension_logs_the_rates_of_the_longer_schedule(finished_rm, tmp_path, base, data):
    out = copy_of(finished_rm, tmp_path)
    reward_train.train(rm_config(base, data, out, max_steps=6, resume=True), CPU)
    lr = [r["lr"] for r in records(out)]  # a record's lr: that of the step after it
    cfg = rm_config(base, data, out)
    assert lr[:4] == [*schedule(4, cfg)[1:], pytest.approx(cfg.lr * cfg.min_lr_ratio)]  # the 4-step run's
    assert lr[4:] == [*schedule(6, cfg)[5:], pytest.approx(cfg.lr * cfg.min_lr_ratio)]  # then the 6-step run's


def test_the_first_step_of_an_extension_trains_at_the_longer_schedules_rate(finished_rm, tmp_path, base, data,
                                                                           monkeypatch):
    out = copy_of(finished_rm, tmp_path)
    seen = lrs_trained_at(monkeypatch)
    reward_train.train(rm_config(base, data, out, max_steps=6, resume=True), CPU)
    assert seen == schedule(6, rm_config(base, data, out))[4:]


def test_only_a_raised_budget_is_let_through(finished_rm, tmp_path, base, data):
    out = copy_of(finished_rm, tmp_path)
    resumable = reward_train.RESUMABLE_CHANGES
    check_out_dir(out, rm_config(base, data, out, max_steps=40, resume=True), resumable)
    check_out_dir(out, rm_config(base, data, out, epochs=3, resume=True), resumable)
    for change, refused in [(dict(max_steps=3), "--max-steps: 4 -> 3 (a budget may be raised"),
                            (dict(max_steps=None, epochs=2), "--max-steps: 4 -> None"),
                            (dict(max_steps=6, lr=2e-3), "--lr: 0.001 -> 0.002")]:
        with pytest.raises(ValueError, match="these settings or inputs differ") as e:
            check_out_dir(out, rm_config(base, data, out, resume=True, **change), resumable)
        assert refused in str(e.value) and "--max-steps: 4 -> 6" not in str(e.value)
    before = (out / "config.json").read_text()
    with pytest.raises(ValueError, match=r"--lr: 0.001 -> 0.002"):  # through the trainer: nothing written
        reward_train.train(rm_config(base, data, out, max_steps=6, lr=2e-3, resume=True), CPU)
    assert (out / "config.json").read_text() == before


# --------------------------------------------------------------------------------------------- PPO

def test_a_finished_ppo_run_extended_by_a_rollout_is_the_3_rollout_run(tmp_path, base, prompts):  # noqa: F811
    small = dict(rollout_batch=2, minibatch=2, micro_batch=2, ppo_epochs=1, max_new_tokens=4, max_prompt_tokens=32,
                 save_every=1, min_lr_ratio=1.0)  # a constant learning rate: the schedule ignores the total
    out = tmp_path / "ppo"
    ppo_trainer.train(ppo_config(base, prompts, out, rollouts=2, **small), CPU, reward=LetterReward())
    first_policy = weights(out / "policy")
    state = ppo_trainer.train(ppo_config(base, prompts, out, rollouts=3, resume=True, **small), CPU,
                              reward=LetterReward())
    assert state["rollout"] == 3
    assert json.loads((out / "config.json").read_text())["extended"] == [{"rollouts": [2, 3], "at": "rollout-000002"}]
    assert [r["rollout"] for r in records(out, None)] == [1, 2, 3]
    assert not same_weights_dict(first_policy, weights(out / "policy"))  # trained on and exported again

    longer = tmp_path / "ppo3"
    ppo_trainer.train(ppo_config(base, prompts, longer, rollouts=3, **small), CPU, reward=LetterReward())
    assert records(out, None) == records(longer, None)
    assert same_weights(out / "policy", longer / "policy")

    with pytest.raises(ValueError, match=r"--rollouts: 3 -> 2 \(a budget may be raised"):
        ppo_trainer.train(ppo_config(base, prompts, out, rollouts=2, resume=True, **small), CPU, reward=LetterReward())
    with pytest.raises(ValueError, match=r"--lr: 0.0003 -> 0.0001"):
        ppo_trainer.train(ppo_config(base, prompts, out, rollouts=4, lr=1e-4, resume=True, **small), CPU,
                          reward=LetterReward())


def same_weights_dict(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
