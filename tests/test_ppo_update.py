"""The PPO update's micro-batch pieces by name: ppo_losses returns the two losses and every logged
diagnostic under its name, equal to karma.ppo.core's functions applied by hand; skip_reason names the
first failed test, in SKIP_REASONS' order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from karma.distributed import Dist
from karma.logprobs import entropy_from_logits, logprobs_from_logits
from karma.ppo.core import masked_mean, policy_loss, value_loss
from karma.ppo.rollout import RolloutBuffer
from karma.ppo.trainer import DIAGNOSTICS, SKIP_REASONS, Losses, ppo_losses, skip_reason
from karma.ppo.value import value_from_policy
from karma.weights import load_model

CPU = Dist(0, 1, torch.device("cpu"))
CFG = SimpleNamespace(temperature=0.7, clip=0.2, value_clip=0.2, ratio_threshold=10.0, max_approx_kl=1.0)


def micro_batch(B=3, Q=4, T=5, vocab=100, seed=0) -> RolloutBuffer:
    g = torch.Generator().manual_seed(seed)
    response_mask = torch.ones(B, T, dtype=torch.long)
    response_mask[0, 3:] = 0  # a shorter reply
    per_token = lambda: torch.randn(B, T, generator=g)
    return RolloutBuffer(query=torch.randint(0, vocab, (B, Q), generator=g),
                         query_mask=torch.ones(B, Q, dtype=torch.long),
                         response=torch.randint(0, vocab, (B, T), generator=g), response_mask=response_mask,
                         logprobs=-per_token().abs() - 3, ref_logprobs=-per_token().abs() - 3, values=per_token(),
                         rewards=per_token(), advantages=per_token(), returns=per_token())


def test_ppo_losses_are_cores_losses_by_name(checkpoint_factory):
    policy = load_model(checkpoint_factory("llama_tied").path, dtype=torch.float32)
    value = value_from_policy(policy)
    micro = micro_batch()
    losses = ppo_losses(policy, value, micro, CFG)
    assert tuple(losses.diagnostics) == DIAGNOSTICS
    assert losses.policy.requires_grad and losses.value.requires_grad
    assert not any(v.requires_grad for v in losses.diagnostics.values())

    # the same numbers, computed by hand
    ids, mask = torch.cat([micro.query, micro.response], 1), torch.cat([micro.query_mask, micro.response_mask], 1)
    Q = micro.query.shape[1]
    logits = policy.logits(policy(ids, mask, output="hidden")[:, Q - 1:-1]) / CFG.temperature
    pg, pg_stats = policy_loss(logprobs_from_logits(logits, micro.response), micro.logprobs, micro.advantages,
                               micro.response_mask, CFG.clip)
    vf, vf_stats = value_loss(value(ids, mask)[:, Q - 1:-1], micro.values, micro.returns, micro.response_mask,
                              CFG.value_clip)
    expected = {"policy_loss": pg, "value_loss": vf, "clip_frac": pg_stats["clip_frac"],
                "approx_kl": pg_stats["approx_kl"], "value_clip_frac": vf_stats["clip_frac"],
                "entropy": masked_mean(entropy_from_logits(logits.detach()), micro.response_mask)}
    for name, v in expected.items():
        assert torch.equal(losses.diagnostics[name], v.detach()), name
    assert torch.equal(losses.ratio_mean, pg_stats["ratio_mean"])


def losses(policy=0.1, value=0.1, ratio_mean=1.0, approx_kl=0.01) -> Losses:
    t = torch.tensor
    return Losses(t(policy), t(value), t(ratio_mean), {"approx_kl": t(approx_kl)})


@pytest.mark.parametrize("kw,reason", [
    ({}, None),
    ({"policy": float("nan")}, "nonfinite"),
    ({"value": float("inf")}, "nonfinite"),
    ({"ratio_mean": 11.0}, "ratio"),
    ({"approx_kl": 1.5}, "approx_kl"),
    ({"value": 1e6}, "value_loss"),
    ({"ratio_mean": 11.0, "approx_kl": 1.5, "value": 1e6}, "ratio"),  # the first in SKIP_REASONS' order
    ({"policy": float("nan"), "ratio_mean": 11.0}, "nonfinite"),
])
def test_skip_reason_names_the_first_failed_test(kw, reason):
    assert skip_reason(losses(**kw), micro_batch(), CFG, CPU) == reason
    assert reason is None or reason in SKIP_REASONS
