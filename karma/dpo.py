"""The math of Direct Preference Optimization as pure functions on tensors (the trainer is elsewhere).

Shapes: B = preference pairs in the batch, T = sequence length (prompt + response), V = vocabulary.

Sources:
  [R23]  Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
         Reward Model" (NeurIPS 2023), eq. 7.
  [M23]  E. Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"
         (conservative DPO, cDPO: labels flipped with probability eps).
  [A23]  Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
         Preferences" (AISTATS 2024), eq. 17 (IPO).
  [TRL]  Hugging Face TRL, DPOTrainer: dpo_loss, concatenated_forward and its logged metrics.

With the log-ratio difference of a pair (y_w chosen, y_l rejected, x the prompt)

    h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]

  sigmoid (DPO [R23] eq. 7):  L = -log sigma(beta h)
  label smoothing (cDPO [M23], as TRL):  L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
  ipo ([A23] eq. 17, tau = beta as TRL):  L = (h - 1 / (2 beta))^2
and the batch loss is the mean over pairs.

Choices:
- IPO and per-token averages: [A23] defines h with whole-sequence log-probabilities; TRL feeds
  IPO the log-probs AVERAGED over the response tokens (sum / length), for DPO the sums. dpo_loss
  takes whatever log-probs it is given; use `sequence_logprobs(..., average=True)` for IPO to match
  TRL (and its beta values), `average=False` to follow the paper literally.
- The reference log-probs are detached inside dpo_loss: no gradient can reach a reference model
  even if the caller forgot torch.no_grad().
- IPO with label smoothing is refused (TRL ignores the smoothing there with a warning).
- Metrics are TRL's names, batch means, detached 0-dim tensors: rewards/chosen = beta (log pi -
  log ref)(y_w), rewards/rejected likewise for y_l, rewards/accuracies = share of pairs with
  rewards/chosen > rewards/rejected (a tie counts as wrong, as TRL's strict ">"), rewards/margins,
  logps/chosen and logps/rejected (the policy's, as given, i.e. averaged for IPO). TRL's
  logits/chosen and logits/rejected (mean logit over the vocabulary) are omitted: dpo_loss never
  sees logits, and the number says little about preference learning.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from karma.logprobs import logprobs_from_logits

LossType = Literal["sigmoid", "ipo"]
IGNORE_INDEX = -100  # label of prompt and padding tokens (the Hugging Face / TRL convention)


def sequence_logprobs(logits: Tensor, labels: Tensor, average: bool = False, ignore_index: int = IGNORE_INDEX,
                      chunk_tokens: int | None = None) -> Tensor:
    """log pi(y|x) = sum over response tokens t of log softmax(z_{t-1})[y_t]: [B, T, V], [B, T] -> [B].

    logits [B, T, V]: the model's output for input_ids [B, T] (prompt + response + padding, either
      side); position t predicts token t + 1, so logits[:, :-1] score labels[:, 1:].
    labels [B, T]: input_ids with prompt and padding tokens set to `ignore_index` (-100); only the
      remaining (response) tokens count.
    average: divide by the number of response tokens (TRL's IPO input) instead of summing.
    Float32 (float64 for float64 logits), differentiable in `logits`; the vocabulary is processed in
    chunks (karma.logprobs.logprobs_from_logits), so no second [B, T, V] tensor is made. A row
    without any response token is an error (its log-prob would be a meaningless 0).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: need [B, T, V] and [B, T]")
    targets = labels[:, 1:]  # [B, T-1]  token t+1, predicted at position t
    mask = targets != ignore_index  # [B, T-1]
    n = mask.sum(-1)  # [B]
    if (n == 0).any():
        rows = torch.nonzero(n == 0).flatten().tolist()
        raise ValueError(f"rows {rows} have no response tokens (every label is {ignore_index})")
    tokens = torch.where(mask, targets, 0)  # masked slots need a valid id; their log-prob is dropped below
    logp = logprobs_from_logits(logits[:, :-1], tokens, chunk_tokens)  # [B, T-1]
    total = torch.where(mask, logp, 0.0).sum(-1)  # [B]
    return total / n if average else total


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float = 0.1, label_smoothing: float = 0.0,
             loss_type: LossType = "sigmoid") -> tuple[Tensor, dict[str, Tensor]]:
    """DPO / cDPO / IPO loss of a batch of pairs -> (mean loss, metrics); every input is [B].

    See the module docstring for the formulas and sources. beta > 0 (TRL's default is 0.1);
    label_smoothing eps in [0, 0.5] is the assumed probability that a label is flipped (sigmoid only).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing is a flip probability in [0, 0.5], got {label_smoothing}")
    if loss_type not in ("sigmoid", "ipo"):
        raise ValueError(f"unknown loss_type {loss_type!r}; expected 'sigmoid' or 'ipo'")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing applies to the sigmoid loss only, not to IPO")
    inputs = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if policy_chosen_logps.dim() != 1 or any(t.shape != policy_chosen_logps.shape for t in inputs):
        raise ValueError(f"the four log-prob tensors must all be [B]; got {[tuple(t.shape) for t in inputs]}")
    dtype = torch.promote_types(policy_chosen_logps.dtype, torch.float32)  # at least float32
    pc, pr = policy_chosen_logps.to(dtype), policy_rejected_logps.to(dtype)
    rc, rr = ref_chosen_logps.detach().to(dtype), ref_rejected_logps.detach().to(dtype)

    chosen_logratio = pc - rc  # [B]  log pi(y_w|x) / ref(y_w|x)
    rejected_logratio = pr - rr  # [B]
    h = chosen_logratio - rejected_logratio  # [B]
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    loss = losses.mean()

    chosen_rewards = beta * chosen_logratio.detach()  # [B]  the implicit reward of [R23], up to log Z(x)
    rejected_rewards = beta * rejected_logratio.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(dtype).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": pc.detach().mean(),
        "logps/rejected": pr.detach().mean(),
    }
    return loss, metrics
