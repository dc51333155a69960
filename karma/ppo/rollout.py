"""One PPO rollout's tensors, and the shuffled minibatches the PPO epochs train on."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RolloutBuffer:
    """The tensors of one rollout of B sequences; Q = query length, T = response length.

    Per-query fields are [B, Q]; per-token fields are [B, T] aligned with `response` (right
    padded, mask 1 up to and including EOS). All fields are indexed together along dim 0.
    """

    query: Tensor  # [B, Q] prompt token ids (left padded, as generation takes them)
    query_mask: Tensor  # [B, Q] 1 on prompt tokens
    response: Tensor  # [B, T] sampled token ids
    response_mask: Tensor  # [B, T] 1 on response tokens up to and including EOS
    logprobs: Tensor  # [B, T] log pi_old(response_t) at sampling time
    ref_logprobs: Tensor  # [B, T] log pi_ref(response_t)
    values: Tensor  # [B, T] V_old(t)
    rewards: Tensor  # [B, T] per-token rewards (core.token_rewards)
    advantages: Tensor  # [B, T] (core.gae, usually whitened)
    returns: Tensor  # [B, T] (core.gae)

    def __post_init__(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, x in fields.items():
            if not isinstance(x, Tensor) or x.dim() < 2:
                raise TypeError(f"RolloutBuffer.{name} must be a tensor [batch, length], got {x!r:.80}")
        batch = self.query.shape[0]
        for name, x in fields.items():
            if x.shape[0] != batch:
                raise ValueError(f"RolloutBuffer.{name} has batch size {x.shape[0]}, but query has {batch}")
            like = "query" if name == "query_mask" else "response"
            want = tuple(fields[like].shape)
            if name != "query" and tuple(x.shape) != want:
                raise ValueError(f"RolloutBuffer.{name} has shape {tuple(x.shape)}, but {like} has {want}")

    def __len__(self) -> int:
        return self.query.shape[0]

    def select(self, index: Tensor) -> RolloutBuffer:
        """The rows `index` (1-D long) of every field, as a new RolloutBuffer."""
        fields = (getattr(self, f.name) for f in dataclasses.fields(self))
        return RolloutBuffer(*(x[index.to(x.device)] for x in fields))

    def minibatches(self, batch_size: int, epochs: int, seed: int) -> Iterator[RolloutBuffer]:
        """`epochs` passes over the rollout, each a fresh permutation cut into minibatches.

        Every row appears exactly once per epoch; the last minibatch of an epoch is smaller when
        batch_size does not divide len(self). The order depends only on `seed` (a private
        torch.Generator; the global RNG is left alone).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(self), generator=generator)
            for start in range(0, len(self), batch_size):
                yield self.select(order[start : start + batch_size])
