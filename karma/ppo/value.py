"""The critic: a decoder with a scalar head at every position, V(s_t) for each response token.

KARMA's default, as TRL and OpenRLHF do, is a separate critic initialised from the reward model:
its backbone and its MLP head, so the first value estimates already speak the reward's language.
The option `init="policy"` (closer to lm-human-preferences, which puts the value head on the
policy trunk) starts from the policy's decoder with a fresh head whose last layer is zero, so
V = 0 at first. Values are computed in float32.
"""

import copy

import torch
from torch import nn

from karma.model import Transformer


class ValueModel(nn.Module):
    def __init__(self, backbone: Transformer, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, input_ids, attention_mask) -> torch.Tensor:
        """[B, T] -> values [B, T] (float32): V at position t estimates the return from token t+1 on."""
        hidden = self.backbone(input_ids, attention_mask, output="hidden")
        return self.head(hidden).squeeze(-1).float()


def value_from_reward_model(reward_model) -> ValueModel:
    """A trainable copy of the reward model's backbone and head."""
    return ValueModel(copy.deepcopy(reward_model.backbone), copy.deepcopy(reward_model.head)).requires_grad_(True)


def value_from_policy(policy: Transformer) -> ValueModel:
    """A trainable copy of the policy decoder with a fresh MLP head (last layer zero: V = 0)."""
    hidden = policy.config.hidden_size
    w = policy.embed.weight
    head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)).to(w.device, w.dtype)
    nn.init.zeros_(head[2].weight)
    nn.init.zeros_(head[2].bias)
    return ValueModel(copy.deepcopy(policy), head).requires_grad_(True)
