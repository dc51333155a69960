"""The critic: a decoder with a scalar head at every position, V(s_t) for each response token.

A separate critic (its own weights and optimizer). KARMA's default starts it from the POLICY's
decoder with a fresh MLP head whose last layer is zero (V = 0 at first): the critic must read the
policy's token ids, and KARMA's reward model (Llama-3.2-1B) does not share a vocabulary with the
Falcon and Pythia policies. When the tokenizers are identical (e.g. a Llama-3.1-8B policy),
`--value-init reward` starts from the reward model's backbone and head instead, as TRL and
OpenRLHF do; its last layer is zeroed too, because the RM head outputs a logit while the returns
are probabilities minus KL. Values are computed in float32.

`--value-trainable-layers N` (off by default; a departure from KARMA, TRL and OpenRLHF, which train
the whole critic) trains only the critic's top N blocks, final norm and head, as trlX's
`num_layers_unfrozen` does (Havrilla et al. 2023): its embedding and lower blocks keep their initial
weights, so they need no gradients and no AdamW state (12 bytes a parameter: 1.3 GB for
SmolLM2-135M with N = 8), and the backward pass stops at the lowest trainable block.
"""

import copy

import torch
from torch import nn

from karma.model import Transformer
from karma.reward import freeze_unused_lm_head


class ValueModel(nn.Module):
    def __init__(self, backbone: Transformer, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.requires_grad_(True)  # trained, even when copied from a frozen reward model
        freeze_unused_lm_head(backbone)

    def forward(self, input_ids, attention_mask) -> torch.Tensor:
        """[B, T] -> values [B, T] (float32): V at position t estimates the return from token t+1 on."""
        hidden = self.backbone(input_ids, attention_mask, output="hidden")
        return self.head(hidden)[..., 0].float().clone()  # a fresh tensor: FSDP2 warns on view outputs


def value_from_reward_model(reward_model, policy_tokenizer) -> ValueModel:
    """A trainable copy of the reward model's backbone and head (last layer zeroed). Refused unless
    the reward model's tokenizer is the policy's: the critic reads the policy's token ids."""
    check_same_tokenizer(reward_model.tokenizer, policy_tokenizer)
    head = copy.deepcopy(reward_model.head)
    _zero_last_layer(head)
    return ValueModel(copy.deepcopy(reward_model.backbone), head)


def check_same_tokenizer(reward_tokenizer, policy_tokenizer) -> None:
    if reward_tokenizer.tok.get_vocab(with_added_tokens=True) != policy_tokenizer.tok.get_vocab(with_added_tokens=True):
        raise ValueError(f"--value-init reward needs the policy's tokenizer, but the reward model's "
                         f"({reward_tokenizer.directory}) differs from the policy's ({policy_tokenizer.directory}); "
                         f"use --value-init policy")


def value_from_policy(policy: Transformer) -> ValueModel:
    """A trainable copy of the policy decoder with a fresh MLP head (last layer zero: V = 0)."""
    hidden = policy.config.hidden_size
    w = policy.embed.weight
    head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1)).to(w.device, w.dtype)
    _zero_last_layer(head)
    return ValueModel(copy.deepcopy(policy), head)


def _zero_last_layer(head: nn.Sequential) -> None:
    with torch.no_grad():
        head[-1].weight.zero_()
        head[-1].bias.zero_()
