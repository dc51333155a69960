"""What a run leaves on disk: final/ shares best/'s files when they hold the same weights,
--keep-checkpoints 0 deletes the resume state once a run has finished and exported, a finished run
shorter than --save-every writes none, and by default only the newest checkpoint is kept."""

from __future__ import annotations

import pytest
import torch

import karma.dpo_train as dpo_train
from karma.distributed import Dist
from karma.dpo_train import DPOConfig
from karma.ppo.trainer import PPOConfig
from karma.ppo.trainer import train as ppo_train
from karma.reward import load_reward_model
from karma.reward_train import TrainRMConfig
from karma.reward_train import train as rm_train
from test_dpo_train import config as dpo_config
from test_dpo_train import pairs  # noqa: F401 (fixture)
from test_ppo_trainer import LetterReward, setup  # noqa: F401 (fixture)
from test_ppo_trainer import config as ppo_config
from test_reward import config as rm_config
from test_reward import make_examples

CPU = Dist(0, 1, torch.device("cpu"))


@pytest.mark.parametrize("keep", [2, 0])
def test_reward_model_final_links_best_and_keep_zero_drops_checkpoints(tmp_path, checkpoint_factory, keep):
    data = make_examples(tmp_path / "data", n_train=64, n_heldout=32)
    out = tmp_path / "rm"
    state = rm_train(rm_config(checkpoint_factory("llama_tied").path, data, out, max_steps=4, eval_every=4,
                               save_every=2, keep_checkpoints=keep), CPU)
    assert state["best_step"] == state["step"] == 4
    for name in ("model.safetensors", "reward_head.safetensors"):  # one copy on disk, two names
        assert (out / "final" / name).stat().st_ino == (out / "best" / name).stat().st_ino
    assert torch.equal(load_reward_model(out / "final").head[0].weight, load_reward_model(out / "best").head[0].weight)
    assert (out / "checkpoints").exists() == (keep > 0)


def test_ppo_keep_zero_drops_checkpoints_after_the_export(tmp_path, setup):  # noqa: F811
    policy, prompts = setup
    out = tmp_path / "ppo"
    ppo_train(ppo_config(policy, prompts, out, rollouts=2, rollout_batch=4, minibatch=4, micro_batch=4,
                         ppo_epochs=1, max_new_tokens=4, save_every=1, keep_checkpoints=0), CPU, reward=LetterReward())
    assert (out / "policy" / "model.safetensors").exists() and not (out / "checkpoints").exists()


def test_keep_zero_still_checkpoints_a_run_that_stops_early(tmp_path, setup):  # noqa: F811
    policy, prompts = setup
    out = tmp_path / "ppo"
    ppo_train(ppo_config(policy, prompts, out, rollouts=3, rollout_batch=4, minibatch=4, micro_batch=4, ppo_epochs=1,
                         max_new_tokens=4, save_every=1, keep_checkpoints=0, stop_after_rollouts=2), CPU,
              reward=LetterReward())
    assert [p.name for p in (out / "checkpoints").iterdir() if p.is_dir()] == ["rollout-000002"]


def checkpoint_bytes(out) -> int:
    return sum(f.stat().st_size for f in (out / "checkpoints").rglob("*") if f.is_file())


def test_a_short_try_with_the_defaults_leaves_no_resume_state(tmp_path, checkpoint_factory, setup, pairs):  # noqa: F811
    """A finished run shorter than --save-every writes no checkpoint (model + AdamW state, ~3x the
    model: gigabytes for a 2-step try of a 135M model), only its exports; --resume is refused."""
    data = make_examples(tmp_path / "data", n_train=64, n_heldout=32)
    rm = tmp_path / "rm"
    rm_train(rm_config(checkpoint_factory("llama_tied").path, data, rm, max_steps=2, eval_every=2,
                       save_every=TrainRMConfig.save_every, keep_checkpoints=TrainRMConfig.keep_checkpoints), CPU)
    policy, prompts = setup
    ppo = tmp_path / "ppo"
    defaults = dict(save_every=PPOConfig.save_every, keep_checkpoints=PPOConfig.keep_checkpoints)
    ppo_train(ppo_config(policy, prompts, ppo, rollouts=2, rollout_batch=4, minibatch=4, micro_batch=4, ppo_epochs=1,
                         max_new_tokens=4, **defaults), CPU, reward=LetterReward())
    dpo = tmp_path / "dpo"
    dpo_train.train(dpo_config(checkpoint_factory("llama_tied").path, pairs, dpo, max_steps=3, eval_every=3,
                               save_every=DPOConfig.save_every, keep_checkpoints=DPOConfig.keep_checkpoints), CPU)
    assert all((out / name / "model.safetensors").exists() for out, name in ((rm, "final"), (ppo, "policy"),
                                                                              (dpo, "policy")))
    assert checkpoint_bytes(rm) == checkpoint_bytes(ppo) == checkpoint_bytes(dpo) == 0
    with pytest.raises(ValueError, match="finished and wrote no checkpoint .*shorter than --save-every.* nothing to "
                                         "resume"):
        rm_train(rm_config(checkpoint_factory("llama_tied").path, data, rm, max_steps=2, eval_every=2, resume=True),
                 CPU)


def test_a_long_run_keeps_its_newest_checkpoint_only(tmp_path, setup):  # noqa: F811
    """Default retention: one checkpoint, the newest (written whole aside, then renamed: the older
    one is deleted only once the new one is complete), also after the run has finished."""
    policy, prompts = setup
    out = tmp_path / "ppo"
    ppo_train(ppo_config(policy, prompts, out, rollouts=3, rollout_batch=4, minibatch=4, micro_batch=4, ppo_epochs=1,
                         max_new_tokens=4, save_every=1, keep_checkpoints=PPOConfig.keep_checkpoints), CPU,
              reward=LetterReward())
    assert [p.name for p in (out / "checkpoints").iterdir() if p.is_dir()] == ["rollout-000003"]
