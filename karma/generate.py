"""Batched sampling with the KV cache: greedy, temperature, top-k, top-p; per-row stop at EOS.

Prompts are left-padded (karma.tokenizer.left_pad) so every row's next token goes in the same
cache slot. One prefill pass fills the cache; each later step feeds one token per row. A row that
emits a stop id is finished: its later slots hold `pad_id` and mask 0, and the loop ends when all
rows are finished.

The returned log-probability of a sampled token is log softmax(logits / temperature) at that token
(raw logits for greedy), i.e. what a forward pass of the policy computes: PPO takes them as
log pi_old when the policy itself sampled (karma/ppo/rollout.py). top-k/top-p only restrict which
tokens may be drawn; they do not renormalise the reported log-probs.

On CUDA, `cuda_graph=True` records one decode step (all layers, cache writes, vocabulary projection)
as a CUDA graph and replays it per token, removing the per-kernel launch cost that dominates small
batches. This works because the cache has static shapes and its write position is a device tensor.
"""

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from karma.model import KVCache, Transformer


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, N] sampled ids, pad_id after a row's stop token
    mask: torch.Tensor  # [B, N] 1 on real generated tokens, including the stop token itself
    logprobs: torch.Tensor  # [B, N] float32 log-probs of the tokens, 0 where mask is 0
    ended: torch.Tensor  # [B] bool: the row emitted a stop id (False: cut at max_new_tokens)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, generator):
    """logits [B, V] -> (token [B], logprob [B]). temperature 0 = greedy (argmax)."""
    logits = logits.float()
    if temperature == 0:
        token = logits.argmax(-1)
        return token, F.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0]
    scaled = logits / temperature
    allowed = scaled
    if top_k is not None and top_k > 0:  # keep the k most likely tokens (ties at the k-th kept)
        kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        allowed = allowed.masked_fill(allowed < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:  # keep the smallest prefix of the sorted distribution with mass >= p
        sorted_logits, order = allowed.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass strictly before the token already reaches p
        allowed = allowed.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    token = torch.multinomial(allowed.softmax(-1), 1, generator=generator)[:, 0]
    return token, F.log_softmax(scaled, -1).gather(-1, token[:, None])[:, 0]


@torch.no_grad()
def generate(model: Transformer, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             stop_ids=None, pad_id: int | None = None, seed: int | None = None,
             cuda_graph: bool | None = None) -> Generation:
    """Sample up to max_new_tokens continuations of left-padded prompts input_ids [B, T].
    stop_ids defaults to the checkpoint's eos ids; pad_id to the first stop id. With `seed` the draw
    uses its own torch.Generator (reproducible, global RNG untouched); without, the global RNG.
    cuda_graph (default: on for CUDA tensors) replays the decode step as a CUDA graph; the eager
    path gives the same tokens (bench/gpu_decoder.py checks it on an H100)."""
    if max_new_tokens < 0 or (top_k is not None and top_k < 0) or (top_p is not None and not 0 < top_p <= 1) \
            or not temperature >= 0:
        raise ValueError(f"need max_new_tokens >= 0, temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got "
                         f"{max_new_tokens}, {temperature}, {top_k}, {top_p}")
    B, T = input_ids.shape
    if T + max_new_tokens > model.config.max_position_embeddings:
        warnings.warn(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                      f"max_position_embeddings ({model.config.max_position_embeddings}): positions beyond it "
                      f"were never trained, expect degraded text", stacklevel=2)
    device = input_ids.device
    if max_new_tokens == 0:
        empty = torch.zeros(B, 0, dtype=torch.long, device=device)
        return Generation(empty, empty, torch.zeros(B, 0, device=device),
                          torch.zeros(B, dtype=torch.bool, device=device))
    stop = torch.tensor(sorted(set(model.config.eos_token_ids if stop_ids is None else stop_ids)),
                        dtype=torch.long, device=device)
    pad_id = pad_id if pad_id is not None else (int(stop[0]) if len(stop) else 0)
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    # under autocast the keys and values come out in its dtype (bf16), whatever the weights' dtype
    autocast_on = torch.is_autocast_enabled(device.type)
    cache_dtype = torch.get_autocast_dtype(device.type) if autocast_on else model.embed.weight.dtype
    cache = KVCache(model.config, B, T + max_new_tokens, cache_dtype, device)

    hidden = model(input_ids, attention_mask, cache=cache, output="hidden")  # prefill: [B, T, hidden]
    logits = model.logits(hidden[:, -1])  # [B, V]
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    cuda_graph = cuda_graph and max_new_tokens > 1  # one new token needs no decode step
    decode = graphed_decode_step(model, cache, B) if cuda_graph else eager_decode_step(model, cache)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, logprobs, masks = [], [], []
    for step in range(max_new_tokens):
        token, logprob = sample_next(logits, temperature, top_k, top_p, generator)
        alive = ~done
        tokens.append(token.masked_fill(done, pad_id))
        logprobs.append(logprob.masked_fill(done, 0.0))
        masks.append(alive)
        done = done | torch.isin(token, stop)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        logits = decode(token)
    return Generation(tokens=torch.stack(tokens, 1), mask=torch.stack(masks, 1).long(),
                      logprobs=torch.stack(logprobs, 1), ended=done)


def eager_decode_step(model: Transformer, cache: KVCache):
    """token [B] -> next-token logits [B, V], appending the token to the cache."""
    return lambda token: model.logits(model(token[:, None], cache=cache, output="hidden")[:, -1])


def graphed_decode_step(model: Transformer, cache: KVCache, batch: int):
    """The eager step recorded once as a CUDA graph; each call copies the token in and replays it."""
    step = eager_decode_step(model, cache)
    token_in = torch.zeros(batch, dtype=torch.long, device=cache.length.device)
    length = cache.length.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph: kernel selection, workspaces
        step(token_in)
    torch.cuda.current_stream().wait_stream(side)
    cache.length.copy_(length)  # undo the warm-up's append (its cache writes are overwritten later)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # recorded, not run
        logits_out = step(token_in)

    def replay(token):
        token_in.copy_(token)
        graph.replay()
        return logits_out

    return replay

