"""Tiny random-weight checkpoints of the paper's three policy families, built offline.

    python -m karma.tiny --family falcon --out runs/toy/models/tiny-falcon

The toy recipe (configs/toy/recipe.toml) trains and evaluates these next to SmolLM2-135M, so that every
stage of the grid runs on a CPU in minutes with one model per family. Each is a Hugging Face
checkpoint (config.json, model.safetensors, tokenizer files) of the same architecture as the
paper's smallest policy of its family, at width 64 and depth 2:

| family  | as                       | positions        | block                        | head   |
|---------|--------------------------|------------------|------------------------------|--------|
| llama   | Llama-3.1-8B             | RoPE, llama3     | sequential, RMSNorm, SwiGLU  | untied |
| falcon  | falcon-rw-1b             | ALiBi            | sequential, LayerNorm, biases| tied   |
| pythia  | Pythia (GPT-NeoX)        | rotary on 25%    | parallel, two LayerNorms     | untied |

The tokenizer is byte-level (the 256 bytes, no merges) with the family's special tokens and BOS
convention (Llama 3 prepends <|begin_of_text|>; Falcon and Pythia prepend nothing; Pythia's
<|endoftext|> is id 0 and <|padding|> id 1). Weights: N(0, 0.02) matrices and zero biases (transformers'
initializer_range) under torch.manual_seed(seed), so the same seed gives the same files, and replies are
near-uniform random bytes rather than one token repeated. Written by karma's own exporter
(karma.weights.write_hf_checkpoint), so no `transformers` is needed; tests/hf_fixtures.py builds the
oracle-checked equivalents with it.
"""

import argparse
import sys
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from karma.cli import add_debug_flag, run_main
from karma.config import ModelConfig
from karma.files import atomic_directory, atomic_write_json
from karma.model import Transformer
from karma.weights import write_hf_checkpoint

HIDDEN, LAYERS, HEADS = 64, 2, 4
MAX_POSITIONS = 4096  # byte tokens: an MMLU item with its context is ~1,500 of them
# the family's special tokens, in id order after the 256 bytes (Pythia: before them), and its BOS/EOS
SPECIALS = {
    "llama": {"tokens": ["<|begin_of_text|>", "<|end_of_text|>"], "first": False,
              "bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "prepend_bos": True},
    "falcon": {"tokens": ["<|endoftext|>"], "first": False, "bos": "<|endoftext|>", "eos": "<|endoftext|>",
               "prepend_bos": False},
    "pythia": {"tokens": ["<|endoftext|>", "<|padding|>"], "first": True, "bos": "<|endoftext|>",
               "eos": "<|endoftext|>", "pad": "<|padding|>", "prepend_bos": False},
}


def byte_tokenizer(family: str) -> tuple[Tokenizer, dict[str, int]]:
    """A byte-level tokenizer with the family's special tokens; returns it and {token: id}."""
    spec = SPECIALS[family]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # 256 printable stand-ins for the bytes
    order = spec["tokens"] + alphabet if spec["first"] else alphabet + spec["tokens"]
    vocab = {token: i for i, token in enumerate(order)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # the specials keep their ids in `vocab`
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec["tokens"]])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if spec["prepend_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                           special_tokens=[(bos, vocab[bos])])
    ids = {t: tok.token_to_id(t) for t in spec["tokens"]}
    assert ids == {t: vocab[t] for t in spec["tokens"]}, f"{family}: special ids {ids}"
    return tok, ids


def hf_config(family: str, ids: dict[str, int], vocab_size: int) -> dict:
    """config.json of the family's tiny model, spelled as the hub checkpoints spell it."""
    spec = SPECIALS[family]
    common = {"vocab_size": vocab_size, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "max_position_embeddings": MAX_POSITIONS,
              "bos_token_id": ids[spec["bos"]], "eos_token_id": ids[spec["eos"]]}
    if family == "llama":  # Llama-3.1-8B: GQA, llama3 RoPE scaling, untied head
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **common, "intermediate_size": 128,
                "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}}
    if family == "falcon":  # falcon-rw-1b: ALiBi, sequential block, biases, tied head
        return {"model_type": "falcon", "architectures": ["FalconForCausalLM"], **common, "alibi": True,
                "bias": True, "parallel_attn": False, "multi_query": False, "new_decoder_architecture": False,
                "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
    return {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], **common,  # Pythia
            "intermediate_size": 4 * HIDDEN, "rotary_pct": 0.25, "rotary_emb_base": 10000,
            "use_parallel_residual": True, "layer_norm_eps": 1e-5, "tie_word_embeddings": False}


def build(family: str, out: Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint of `family` into `out` (replaced as a whole); returns `out`."""
    tok, ids = byte_tokenizer(family)
    spec = SPECIALS[family]
    raw = hf_config(family, ids, tok.get_vocab_size(with_added_tokens=True))
    torch.manual_seed(seed)
    model = Transformer(ModelConfig.from_hf(raw, source=f"tiny {family}"))
    for name, p in model.named_parameters():  # as transformers initialises: N(0, 0.02) matrices, zero biases
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            torch.nn.init.zeros_(p)
    with atomic_directory(out) as tmp:
        write_hf_checkpoint(model, tmp)
        tok.save(str(tmp / "tokenizer.json"))
        special = {k: spec[k] for k in ("bos", "eos", "pad") if k in spec}
        atomic_write_json(tmp / "tokenizer_config.json", {f"{k}_token": t for k, t in special.items()})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, choices=sorted(SPECIALS), help="which architecture")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory to write (replaced)")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    build(args.family, args.out, args.seed)
    print(f"tiny {args.family} checkpoint in {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m karma.tiny"))
