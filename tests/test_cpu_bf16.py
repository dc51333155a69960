"""--cpu-bf16: bf16 autocast on CPU (fp32 master weights), the single-GPU path run on a CPU.

The default stays fp32 on CPU (every other test pins it). With the flag, generation must work from
the KV cache (keys and values come out of autocast in bf16 while the weights are fp32), training
must actually run in bf16 (its numbers differ from the fp32 run's) and stay sane, and the old and
new log-probs of PPO's first update must agree (the ratio starts at 1: rollout and update use the
same autocast)."""

from __future__ import annotations


import pytest
import torch

import karma
from karma.distributed import Dist, autocast
from karma.files import read_jsonl
from karma.ppo.trainer import PPOConfig, train
from test_ppo_trainer import LetterReward, config, setup  # noqa: F401 (setup: the module fixture)

CPU = Dist(0, 1, torch.device("cpu"))


def test_cpu_autocast_is_off_unless_asked():
    with autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, cpu_bf16=True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_cached_generation_under_cpu_autocast(checkpoint_factory):
    model = karma.load_model(str(checkpoint_factory("llama_tied").path)).eval()
    prompt = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), autocast(CPU, cpu_bf16=True):
        out = karma.generate(model, prompt, max_new_tokens=6, temperature=0)
        full = model(torch.cat([prompt, out.tokens], 1)).float()  # one full pass, also bf16
    assert out.tokens.shape == (2, 6) and torch.isfinite(out.logprobs).all()
    # greedy from the cache picks what the full pass ranks first (bf16 rounding may swap near-ties)
    top = full[:, prompt.shape[1] - 1:-1].argmax(-1)
    assert (top == out.tokens).float().mean() >= 0.8


def test_ppo_with_cpu_bf16_trains_in_bf16_and_stays_sane(setup, tmp_path):  # noqa: F811
    policy, prompts = setup
    runs = {}
    for bf16 in (False, True):
        out = tmp_path / f"bf16-{bf16}"
        train(config(policy, prompts, out, rollouts=3, ppo_epochs=1, minibatch=16, micro_batch=8, cpu_bf16=bf16),
              CPU, reward=LetterReward())
        runs[bf16] = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    fp32, bf16 = runs[False], runs[True]
    assert [r["rollout"] for r in bf16] == [1, 2, 3]
    for r in bf16:
        for key in ("score", "kl_seq", "policy_loss", "value_loss", "entropy"):
            assert r[key] is not None and torch.isfinite(torch.tensor(r[key])), (key, r)
        assert not r["diverged"] and r["skipped_minibatches"] == 0
    # one minibatch per rollout: the first update's ratio is exactly 1, so nothing is clipped yet
    assert bf16[0]["clip_frac"] == 0.0
    assert bf16[0]["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    # bf16 really ran: the same seeds give other numbers than fp32 (same sampled replies at first)
    assert bf16[0]["policy_loss"] != fp32[0]["policy_loss"]
    assert PPOConfig(cpu_bf16=True).cpu_bf16 and not PPOConfig().cpu_bf16
