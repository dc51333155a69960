"""The decoder: one Transformer for Llama 3.x, Falcon and GPT-NeoX/Pythia, switched by ModelConfig.

    x = embed(input_ids)                                          [B, T, hidden]
    per block, sequential (Llama, falcon-rw):  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
               parallel (falcon, NeoX):        x = x + attn(norm1(x)) + mlp(norm2(x))   (norm2 = norm1 if shared)
    logits = head(norm(x))                                        [B, T, vocab]

Attention is torch's scaled_dot_product_attention (fused kernels on GPU) with grouped KV heads
(`enable_gqa`); positions enter as rotary embeddings (rotate-half convention, optionally on the first
`rotary_dim` dims of each head only) or as ALiBi biases. Left padding is handled by the attention
mask: a token's position is the number of real tokens before it (cumsum(mask) - 1).

Incremental decoding writes keys/values into a preallocated KVCache: every tensor has a static shape
and the next free slot is a device tensor, so a decode step has no host synchronisation and can be
captured by CUDA graphs or torch.compile.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from karma.config import ModelConfig


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), normalised in float32 then cast back before the weight
    (Zhang & Sennrich 2019; the order matches Llama's reference so bf16 outputs agree)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.hidden_size, cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d) over the rotary dims d (Su et al. 2021, RoFormer), [d/2] fp32,
    with Llama 3.1's frequency-dependent scaling when the checkpoint asks for it."""
    dim = cfg.rotary_dim
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    if cfg.rope_scaling:
        inv_freq = llama3_scaled_inv_freq(inv_freq, cfg.rope_scaling)
    return inv_freq


def llama3_scaled_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1 RoPE scaling (Meta's reference `apply_scaling` in llama-models,
    models/llama3/reference_impl/model.py). For wavelength w = 2*pi/f and original context L:
    w < L/high -> f;  w > L/low -> f/factor;
    otherwise s = (L/w - low) / (high - low) and f' = (1 - s) * f/factor + s * f."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    orig = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (orig / wavelen - low) / (high - low)
    scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    inv_freq_out = inv_freq.where(wavelen < orig / high, scaled)
    return inv_freq_out.where(wavelen <= orig / low, inv_freq / factor)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos/sin tables for integer positions [B, T] -> two [B, 1, T, rotary_dim] tensors in `dtype`
    (angles computed in float32, as the reference does, then cast)."""
    angles = positions[..., None].float() * inv_freq  # [B, T, d/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, T, d]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first rotary_dim dims of each head [B, heads, T, head_dim] (rotate-half convention:
    pairs are (i, i + d/2), which is how HF checkpoints store q/k, so no weight permutation)."""
    d = cos.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    half1, half2 = rot.chunk(2, dim=-1)
    rotated = rot * cos + torch.cat((-half2, half1), dim=-1) * sin
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022): for n = the largest power of two <= heads, base^1..base^n
    with base = 2^(-8/n); leftover heads take odd powers 1, 3, 5, .. of 2^(-4/n). [heads] fp32."""
    n = 2 ** math.floor(math.log2(n_heads))
    slopes = torch.tensor(2 ** (-8 / n)) ** torch.arange(1, n + 1)  # powers of an fp32 base, as the reference
    extra = torch.tensor(2 ** (-4 / n)) ** torch.arange(1, 1 + 2 * (n_heads - n), 2)
    return torch.cat([slopes, extra]).float()


class KVCache:
    """Preallocated keys and values for every layer, plus which slots hold real tokens.

    k, v: [layers, batch, kv_heads, max_len, head_dim]; mask: [batch, max_len] (True = real token);
    length: 0-dim device tensor, the number of slots written so far (the same for every row).
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device):
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = torch.zeros((), dtype=torch.long, device=device)

    def append(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Reserve the next T slots for new tokens with mask [B, T]; returns their indices [T]."""
        slots = self.length + torch.arange(attention_mask.shape[1], device=self.length.device)
        self.mask.index_copy_(1, slots, attention_mask.bool())
        self.length += attention_mask.shape[1]
        return slots


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # one fused projection, rows [q heads | k heads | v heads]; weights.py maps each family's layout
        self.qkv = nn.Linear(cfg.hidden_size, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.out_bias)

    def forward(self, x, rope, attn_mask, is_causal, layer_cache, slots):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, KV, T, hd]
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if layer_cache is not None:  # write this step's keys/values, attend over every slot
            k_cache, v_cache = layer_cache  # [B, KV, max_len, hd]
            # .to: under autocast the rotated keys are fp32 (rope's tables follow the fp32 stream), v is bf16
            k = k_cache.index_copy_(2, slots, k.to(k_cache.dtype))
            v = v_cache.index_copy_(2, slots, v.to(v_cache.dtype))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=self.n_kv_heads != self.n_heads
        )  # [B, H, T, hd]
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU `down(silu(gate(x)) * up(x))` (Shazeer 2020; Llama) with gate and up fused into one
    projection, or `down(gelu(up(x)))` with exact GELU (Falcon, GPT-NeoX)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        n_up = 2 * cfg.intermediate_size if self.swiglu else cfg.intermediate_size
        self.up = nn.Linear(cfg.hidden_size, n_up, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        if self.swiglu:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.down(F.silu(gate) * up)
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.parallel = cfg.parallel_block
        self.attn_norm = make_norm(cfg)
        self.mlp_norm = None if cfg.shared_block_norm else make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, attn_mask, is_causal, layer_cache=None, slots=None):
        h = self.attn_norm(x)
        attn = self.attn(h, rope, attn_mask, is_causal, layer_cache, slots)
        if self.parallel:  # x + attn(ln1(x)) + mlp(ln2(x)); Falcon adds mlp + attn first, then x
            mlp_in = h if self.mlp_norm is None else self.mlp_norm(x)
            return x + (self.mlp(mlp_in) + attn)
        x = x + attn
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False  # recompute each block's activations in backward
        self.register_buffer("rope_inv_freq", torch.empty(cfg.rotary_dim // 2), persistent=False)
        self.register_buffer("alibi_slopes", torch.empty(cfg.n_heads if cfg.alibi else 0), persistent=False)
        self.init_buffers()

    def init_buffers(self):
        """(Re)compute the non-persistent buffers, e.g. after building on the meta device."""
        device = self.embed.weight.device
        if device.type == "meta":
            return
        self.rope_inv_freq = rope_inv_freq(self.config).to(device)
        if self.config.alibi:
            self.alibi_slopes = alibi_slopes(self.config.n_heads).to(device)

    def train_top_blocks_only(self, n: int | None) -> None:
        """Freeze the embedding and all but the top `n` blocks (n None: train everything); the final
        norm stays trainable (an untied lm_head is the caller's: reward and value models freeze it), as
        trlX's `num_layers_unfrozen` (Havrilla et al. 2023): frozen weights get no gradient and no
        AdamW state, and the backward pass stops at the lowest trainable block."""
        if n is None:
            return
        if not 1 <= n <= len(self.blocks):
            raise ValueError(f"{n} trainable blocks: the model has {len(self.blocks)}")
        self.embed.requires_grad_(False)
        for block in self.blocks[:len(self.blocks) - n]:
            block.requires_grad_(False)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary projection of final hidden states [..., hidden] -> [..., vocab].

        contiguous(): callers pass slices (the response positions of [B, T, hidden]), and on CPU a
        bf16 matmul with a non-contiguous 3-D input broadcasts the weight to [B, hidden, vocab]
        (1.8 GB for 32 SmolLM2 rows) where the copy of the slice costs kilobytes."""
        return F.linear(hidden.contiguous(), self.embed.weight if self.lm_head is None else self.lm_head.weight)

    def forward(self, input_ids, attention_mask=None, *, cache: KVCache | None = None, output: str = "logits"):
        """input_ids, attention_mask: [B, T] (mask 1 = real token, 0 = padding; left padding).
        With a cache, the T tokens are appended after those already cached.
        output="logits" -> [B, T, vocab]; output="hidden" -> final-norm hidden states [B, T, hidden]."""
        if output not in ("logits", "hidden"):
            raise ValueError(f"output must be 'logits' or 'hidden', got {output!r}")
        B, T = input_ids.shape
        device = input_ids.device
        # no padding, no cache: SDPA's is_causal path (flash kernels); checking the mask costs one
        # host sync, which prefill/training can afford (cached decoding never comes here)
        causal_fast_path = (cache is None and not self.config.alibi
                            and (attention_mask is None or bool(attention_mask.bool().all())))
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.bool, device=device)
        if cache is None:
            slots = torch.arange(T, device=device)  # query i sits in key slot i
            key_mask = attention_mask.bool()  # [B, S] with S = T
        else:
            slots = cache.append(attention_mask)
            key_mask = cache.mask  # [B, S] with S = max_len
        S = key_mask.shape[1]

        key_positions = (key_mask.long().cumsum(-1) - 1) * key_mask  # [B, S]; 0 on padding
        positions = key_positions.index_select(1, slots)  # [B, T]
        x = self.embed(input_ids)
        rope = rope_cos_sin(self.rope_inv_freq, positions, x.dtype) if self.config.rotary_dim else None

        if causal_fast_path:
            attn_mask, is_causal = None, True
        else:  # query i may see real keys in slots <= its own; a pad query sees itself (no empty row)
            key_slots = torch.arange(S, device=device)
            allowed = key_mask[:, None, :] & (key_slots <= slots[:, None])  # [B, T, S]
            allowed = (allowed | (key_slots == slots[:, None]))[:, None]  # [B, 1, T, S]
            attn_mask, is_causal = allowed, False
            if self.config.alibi:
                attn_mask = self.alibi_bias(key_positions, x.dtype).masked_fill(~allowed, float("-inf"))
        layer_caches = [None] * len(self.blocks) if cache is None else zip(cache.k, cache.v)
        for block, layer_cache in zip(self.blocks, layer_caches):
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, attn_mask, is_causal, use_reentrant=False)
            else:
                x = block(x, rope, attn_mask, is_causal, layer_cache, slots)
        x = self.norm(x)
        return x if output == "hidden" else self.logits(x)

    def alibi_bias(self, key_positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """ALiBi bias slope_h * position_j / sqrt(head_dim), [B, H, 1, S]. A per-key bias equals the
        relative one slope * (j - i) up to a per-row constant, which softmax ignores. As in the Falcon
        reference, slope * position is rounded to bfloat16 (an fp32 bias differs by ~0.2 logits at 300
        tokens) and scaled by 1/sqrt(head_dim) like q.k, i.e. added before the scale."""
        bias = self.alibi_slopes.bfloat16()[None, :, None] * key_positions[:, None, :]  # [B, H, S] bf16
        return (bias.to(dtype) / math.sqrt(self.config.head_dim))[:, :, None, :]
