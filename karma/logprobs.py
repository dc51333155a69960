"""Per-token log-probabilities and entropies of a language model's logits, chunked over the
vocabulary: what PPO (the policy's log pi), DPO (sequence log-probs) and evaluation all need; and
where each row's last real token is (the reward model reads its hidden state, PPO puts the score
on it).

Shapes: B = batch, T = positions, V = vocabulary; logits [B, T, V], tokens [B, T]. The log-softmax
is computed in float32 a few positions at a time (a custom autograd Function, so the backward pass
is chunked too), so bf16 logits never get a full float32 copy: at V = 128k and 64 x 256 positions
that copy alone would be 8 GiB.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 2**25  # default fp32 elements per vocabulary chunk: 128 MiB


def _chunks(logits: Tensor, chunk_tokens: int | None):
    """Yield (b, slice over T) covering logits [B, T, V] in pieces of at most chunk_tokens rows.

    Views of one batch row at a time, so a non-contiguous `logits` (e.g. logits[:, q-1:-1]) is
    never copied.
    """
    B, T, V = logits.shape
    step = chunk_tokens or max(1, CHUNK_ELEMENTS // V)
    for b in range(B):
        for t in range(0, T, step):
            yield b, slice(t, t + step)


def _upcast(x: Tensor) -> Tensor:
    """x in at least float32 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _TokenLogprob(torch.autograd.Function):
    """log_softmax(z)[token] with a chunked float32 forward and backward.

    Autograd on a plain `torch.logsumexp(z.float())` would keep every float32 chunk alive for the
    backward pass, i.e. a full [B, T, V] float32 copy of the logits; here only the logits
    themselves (already alive in the graph) and lse [B, T] are saved.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, chunk_tokens: int | None) -> Tensor:
        out_dtype = torch.promote_types(logits.dtype, torch.float32)
        logp = torch.empty(tokens.shape, dtype=out_dtype, device=logits.device)
        lse = torch.empty_like(logp)
        for b, s in _chunks(logits, chunk_tokens):
            z = _upcast(logits[b, s])  # [t, V]
            lse[b, s] = torch.logsumexp(z, -1)
            logp[b, s] = z.gather(-1, tokens[b, s, None]).squeeze(-1) - lse[b, s]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.chunk_tokens = chunk_tokens
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp: Tensor):
        # d logp_t / d z_tv = 1[v = token_t] - softmax(z_t)_v,  softmax(z_t)_v = exp(z_tv - lse_t)
        logits, tokens, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for b, s in _chunks(logits, ctx.chunk_tokens):
            g_t = grad_logp[b, s, None]  # [t, 1]
            g = -g_t * torch.exp(_upcast(logits[b, s]) - lse[b, s, None])  # [t, V]
            grad[b, s] = g.scatter_add_(-1, tokens[b, s, None], g_t)
        return grad, None, None


def logprobs_from_logits(logits: Tensor, tokens: Tensor, chunk_tokens: int | None = None) -> Tensor:
    """log pi(token_t) = z_t[token_t] - logsumexp(z_t): logits [B, T, V], tokens [B, T] -> [B, T].

    The result is float32 (float64 for float64 logits) whatever the logits dtype. bf16 logits are
    upcast `chunk_tokens` positions at a time (default: CHUNK_ELEMENTS // V, 128 MiB of float32),
    so beyond the [B, T] outputs the extra memory is a few float32 chunks, in the forward and in
    the backward pass alike, never a second full-vocabulary tensor. Differentiable in `logits`.
    `tokens` at padded positions must still be valid ids (e.g. the pad id); mask them afterwards.
    """
    return _TokenLogprob.apply(logits, tokens, chunk_tokens)


def entropy_from_logits(logits: Tensor, chunk_tokens: int | None = None) -> Tensor:
    """Entropy of softmax(z_t): H_t = -sum_v p_v log p_v. logits [B, T, V] -> [B, T] (float32).

    Chunked like `logprobs_from_logits`. It is a diagnostic: call it under torch.no_grad(), else
    autograd keeps each float32 chunk for the backward pass.
    """
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    out = torch.empty(logits.shape[:2], dtype=out_dtype, device=logits.device)
    for b, s in _chunks(logits, chunk_tokens):
        out[b, s] = torch.special.entr(torch.softmax(_upcast(logits[b, s]), -1)).sum(-1)
    return out


def last_token_index(mask: Tensor) -> Tensor:
    """Column of the last 1 in each row of mask [B, T] -> [B] long; -1 for an all-zero row.

    Located directly (not as mask.sum() - 1), so it is right for left- and right-padded rows.
    """
    cols = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), cols, -1).amax(1)
