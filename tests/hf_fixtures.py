"""Tiny random-weight Hugging Face checkpoints and tokenizers, built offline by the tests.

`transformers` is the reference oracle (tests only): it builds each model
family from a config with no download and writes it as safetensors. Our decoder must load those
files and reproduce the oracle's logits.

Layouts (one per key/attention/residual layout we support):

    llama_tied       Llama, GQA (4 heads / 2 KV heads), llama3 RoPE scaling written the
                     transformers-5 way (`rope_parameters`), tied lm_head
    llama_untied     Llama, 4 heads / 1 KV head, separate `lm_head.weight`, and the config.json
                     rewritten the way the Llama-3.x hub files spell it (`rope_theta` +
                     `rope_scaling`)
    falcon_7b        Falcon-7b style: multi_query, ONE shared LayerNorm, parallel attn+mlp,
                     rotary, no biases. transformers writes `num_kv_heads: 4` next to
                     `multi_query: true`; multi_query must win (one KV head).
    falcon_new_arch  Falcon-40b style: new_decoder_architecture, 2 KV groups of 4 heads,
                     ln_attn + ln_mlp; `num_ln_in_parallel_attn` removed from config.json as in
                     the hub files (it must default to 2)
    falcon_rw        falcon-rw style: ALiBi (20 heads: NOT a power of two, slopes not powers of
                     two either, so bf16 rounding matters), sequential residual, biases,
                     per-head interleaved fused qkv
    neox             Pythia style: partial rotary 0.25, parallel residual with two LayerNorms,
                     biases, untied `embed_out`
    neox_sequential  GPT-NeoX with `use_parallel_residual: false`, rotary_pct 0.5, theta 5000,
                     config.json spelled like the Pythia hub files (`rotary_pct`,
                     `rotary_emb_base`)

Every checkpoint directory also gets a tokenizer of the matching family (Llama-3 style BOS
post-processor, Falcon style, Pythia style), so `load_model(d)` and `load_tokenizer(d)` work on
the same directory like on a hub snapshot.

The oracle returned by `make_checkpoint` is re-loaded FROM DISK with
`from_pretrained(..., attn_implementation="sdpa")`, so it reflects exactly the files our loader
reads (including the config rewrites above). SDPA, not eager: in transformers 5.x the eager
Falcon attention adds the ALiBi bias twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

VOCAB = 320  # > every tokenizer below (byte-level BPE: 256 bytes + merges + specials)
HIDDEN = 64

# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------

CORPUS = [
    "Hello world! This is a tiny corpus for a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog.",
    "Reddit karma is the sum of upvotes minus downvotes, more or less.",
    "I think the best answer is (A), but (B) is a close second.",
    "What is the capital of France? Paris is the capital of France.",
    "Thanks for the reply, that was really helpful!",
    "lol this thread is wild",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024",
    "Café, naïve, über, 日本語, emoji 🙂 and symbols #$%&*()",
    "  leading spaces and\ttabs\nand new lines\n\n",
]

FALCON_SPECIALS = [
    ">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<", ">>COMMENT<<", ">>ANSWER<<",
    ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<", ">>SUFFIX<<", ">>MIDDLE<<", "<|endoftext|>",
]  # as in falcon-7b: "<|endoftext|>" gets id 11

TOKENIZER_STYLES = ("llama3", "falcon", "pythia")


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


def make_tokenizer(style: str, directory) -> dict:
    """Write tokenizer.json (+ tokenizer_config.json / special_tokens_map.json) into `directory`.

    Byte-level BPE trained on CORPUS with the `tokenizers` library.
      llama3: "<|begin_of_text|>"/"<|end_of_text|>" appended after the trained vocab (like
              128000/128001), TemplateProcessing prepends BOS, no pad token.
      falcon: "<|endoftext|>" = 11 = eos, nothing prepended, no pad token (no bos in the
              tokenizer files: falcon-7b's bos comes from config.json).
      pythia: "<|endoftext|>" = 0 (bos = eos = unk), "<|padding|>" = 1 declared as pad_token,
              nothing prepended.
    Returns the expected ids: {"bos": int|None, "eos": int, "pad": int, "prepends_bos": bool,
    "vocab_size": int}.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = {"llama3": [], "falcon": FALCON_SPECIALS, "pythia": ["<|endoftext|>", "<|padding|>"]}[style]
    trainer = trainers.BpeTrainer(
        vocab_size=288, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)

    if style == "llama3":
        tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
        bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ])
        tok_config = {
            "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
            "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": {str(i): {**_added_token(t), "special": True}
                                     for t, i in (("<|begin_of_text|>", bos), ("<|end_of_text|>", eos))},
        }
        special_map = {"bos_token": _added_token("<|begin_of_text|>"),
                       "eos_token": _added_token("<|end_of_text|>")}
        expected = {"bos": bos, "eos": eos, "pad": eos, "prepends_bos": True}
    elif style == "falcon":
        eos = tok.token_to_id("<|endoftext|>")
        assert eos == 11
        tok_config = {"add_prefix_space": False, "eos_token": "<|endoftext|>",
                      "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast"}
        special_map = {"additional_special_tokens": FALCON_SPECIALS[:-1], "eos_token": "<|endoftext|>"}
        expected = {"bos": None, "eos": eos, "pad": eos, "prepends_bos": False}
    elif style == "pythia":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|padding|>")
        assert (eos, pad) == (0, 1)
        tok_config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                      "unk_token": "<|endoftext|>", "pad_token": "<|padding|>",
                      "tokenizer_class": "GPTNeoXTokenizer"}
        special_map = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                       "unk_token": "<|endoftext|>", "pad_token": "<|padding|>"}
        expected = {"bos": eos, "eos": eos, "pad": pad, "prepends_bos": False}
    else:
        raise ValueError(style)

    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    expected["vocab_size"] = tok.get_vocab_size(with_added_tokens=True)
    assert expected["vocab_size"] <= VOCAB
    return expected


def tokenizer_ids(style: str) -> dict:
    """Special ids of `make_tokenizer(style)` without keeping the files."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return make_tokenizer(style, d)


# ---------------------------------------------------------------------------------------------
# model configs
# ---------------------------------------------------------------------------------------------

LLAMA3_ROPE = {  # small original context so that head_dim 16 has frequencies in all 3 bands
    "rope_type": "llama3", "rope_theta": 10000.0, "factor": 32.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
}


def _llama(tied: bool):
    from transformers import LlamaConfig

    ids = tokenizer_ids("llama3")
    if tied:
        rope = dict(LLAMA3_ROPE)
        heads, kv_heads, layers = 4, 2, 2
    else:
        rope = dict(LLAMA3_ROPE, rope_theta=500000.0, factor=8.0)
        heads, kv_heads, layers = 4, 1, 3
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=tied,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=None,
    )


def _falcon(kind: str):
    from transformers import FalconConfig

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, layer_norm_epsilon=1e-5,
                  bos_token_id=11, eos_token_id=11, tie_word_embeddings=True)
    if kind == "7b":
        return FalconConfig(hidden_size=HIDDEN, num_attention_heads=4, multi_query=True,
                            parallel_attn=True, bias=False, alibi=False,
                            new_decoder_architecture=False, **common)
    if kind == "new_arch":
        return FalconConfig(hidden_size=HIDDEN, num_attention_heads=4, num_kv_heads=2,
                            new_decoder_architecture=True, parallel_attn=True, bias=False,
                            alibi=False, **common)
    if kind == "rw":
        # 20 heads: not a power of two (16 + 4 "extra" slopes), and the slopes 2^(-k/2), 2^(-k/4)
        # are not powers of two, so the reference's bf16 rounding of slope * position is visible
        # (fp32 ALiBi or arange positions differ from it by ~1e-2 logits at 17 tokens, ~0.1 at 100).
        return FalconConfig(hidden_size=120, num_attention_heads=20, multi_query=False,
                            parallel_attn=False, bias=True, alibi=True,
                            new_decoder_architecture=False, **common)
    raise ValueError(kind)


def _neox(parallel: bool):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=256,
        num_hidden_layers=2 if parallel else 3, num_attention_heads=4,
        rotary_pct=0.25 if parallel else 0.5, rotary_emb_base=10000 if parallel else 5000,
        use_parallel_residual=parallel, max_position_embeddings=256, layer_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )


LAYOUTS = {
    "llama_tied": lambda: _llama(tied=True),
    "llama_untied": lambda: _llama(tied=False),
    "falcon_7b": lambda: _falcon("7b"),
    "falcon_new_arch": lambda: _falcon("new_arch"),
    "falcon_rw": lambda: _falcon("rw"),
    "neox": lambda: _neox(parallel=True),
    "neox_sequential": lambda: _neox(parallel=False),
}

FAMILY = {
    "llama_tied": "llama", "llama_untied": "llama", "falcon_7b": "falcon",
    "falcon_new_arch": "falcon", "falcon_rw": "falcon", "neox": "gpt_neox",
    "neox_sequential": "gpt_neox",
}
TOKENIZER_STYLE = {"llama": "llama3", "falcon": "falcon", "gpt_neox": "pythia"}


def _rewrite_config(layout: str, path: Path) -> None:
    """Make config.json look like the hub files where transformers would write it differently."""
    cfg = json.loads(path.read_text())
    if layout == "llama_untied":  # Llama-3.1/3.2 hub spelling
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope.pop("rope_theta")
        cfg["rope_scaling"] = rope
    elif layout == "falcon_new_arch":  # falcon-40b's config.json has no such field
        cfg.pop("num_ln_in_parallel_attn", None)
    elif layout == "neox_sequential":  # Pythia hub spelling
        rope = cfg.pop("rope_parameters")
        cfg["rotary_pct"] = rope["partial_rotary_factor"]
        cfg["rotary_emb_base"] = rope["rope_theta"]
    else:
        return
    path.write_text(json.dumps(cfg, indent=2))


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Realistic-scale random weights (HF's init std 0.02 makes logits ~0 and the test weak).

    Matrices ~ N(0, std^2); norm weights ~ 1 + 0.1 N(0,1); biases and norm biases ~ 0.1 N(0,1).
    Gives logits with std ~1.5 and |max| ~6-8 on these tiny models.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            is_norm = p.ndim == 1 and any(s in name for s in ("norm", "ln_"))
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(std * noise)


def load_oracle(directory, dtype=torch.float32):
    """transformers' model from a directory: SDPA attention (see module doc), eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(directory), attn_implementation="sdpa", dtype=dtype
    ).eval()


def make_checkpoint(layout: str, directory, shard_size=None, seed: int | None = None):
    """Build a random-weight `layout` checkpoint in `directory`; return the oracle HF model.

    shard_size: passed to save_pretrained(max_shard_size=...) to get several
    model-0000x-of-0000y.safetensors files + model.safetensors.index.json.
    """
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if seed is None:
        seed = sorted(LAYOUTS).index(layout)
    torch.manual_seed(seed)
    config = LAYOUTS[layout]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    randomize_(model, seed=seed)
    kwargs = {} if shard_size is None else {"max_shard_size": shard_size}
    model.save_pretrained(str(directory), **kwargs)
    _rewrite_config(layout, directory / "config.json")
    make_tokenizer(TOKENIZER_STYLE[FAMILY[layout]], directory)

    oracle = load_oracle(directory)
    # the rewritten config.json must mean the same model to transformers
    ids = torch.arange(40).remainder(VOCAB).unsqueeze(0)
    with torch.no_grad():
        diff = (oracle(ids).logits - model(ids).logits).abs().max().item()
    assert diff < 1e-5, f"{layout}: oracle reloaded from disk differs from the built model ({diff})"
    return oracle


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """position_ids for the HF oracle on a left-padded batch (Falcon ignores the mask otherwise)."""
    pos = mask.long().cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    return pos


def random_prompts(lengths, seed: int, low: int = 3, high: int = VOCAB) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, high, (n,), generator=g).tolist() for n in lengths]


def llama3_bands(rope: dict, head_dim: int) -> dict:
    """How many inverse frequencies fall in each llama3 band (keep / smooth / divide)."""
    theta = rope["rope_theta"]
    orig = rope["original_max_position_embeddings"]
    lo, hi = rope["low_freq_factor"], rope["high_freq_factor"]
    counts = {"keep": 0, "smooth": 0, "scaled": 0}
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < orig / hi:
            counts["keep"] += 1
        elif wavelen > orig / lo:
            counts["scaled"] += 1
        else:
            counts["smooth"] += 1
    return counts
