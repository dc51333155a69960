"""What a run leaves on disk: final/ shares best/'s files when they hold the same weights, and
--keep-checkpoints 0 deletes the resume state once a run has finished and exported."""

from __future__ import annotations

import pytest
import torch

from karma.distributed import Dist
from karma.ppo.trainer import train as ppo_train
from karma.reward import load_reward_model
from karma.reward_train import train as rm_train
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
