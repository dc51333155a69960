"""ModelConfig: one dataclass for every supported decoder, built from a checkpoint's config.json.

The three families differ only in switches (as their config.json files and transformers'
modeling_llama / modeling_falcon / modeling_gpt_neox define them):

| switch          | Llama 3.x      | falcon-7b          | falcon new-arch     | falcon-rw-1b     | GPT-NeoX/Pythia       |
|-----------------|----------------|--------------------|---------------------|------------------|-----------------------|
| norm            | rmsnorm        | layernorm          | layernorm           | layernorm        | layernorm             |
| mlp             | swiglu         | gelu               | gelu                | gelu             | gelu                  |
| block           | sequential     | parallel, 1 norm   | parallel, 2 norms   | sequential       | parallel, 2 norms     |
| positions       | rope (llama3)  | rope               | rope                | alibi            | partial rope (25%)    |
| kv heads        | GQA            | 1 (multi-query)    | num_kv_heads        | all              | all                   |

Both spellings of the hub's configs are accepted: the original ones (`rope_theta`, `rope_scaling`,
`rotary_pct`, `rotary_emb_base`, Falcon's RefinedWeb `n_head`/`n_layer`/`n_head_kv`) and the
`rope_parameters` dict that transformers 5 writes.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

from karma.checkpoint import read_json

FAMILIES = ("llama", "falcon", "gpt_neox")
# model_type in config.json -> family. RefinedWeb* are Falcon's original (pre-transformers) names.
MODEL_TYPES = {
    "llama": "llama",
    "falcon": "falcon",
    "RefinedWebModel": "falcon",  # falcon-7b/1b era: multi-query or per-head KV, old layout
    "RefinedWeb": "falcon",  # falcon-40b era: new_decoder_architecture
    "gpt_neox": "gpt_neox",
}


@dataclass
class ModelConfig:
    family: str  # llama | falcon | gpt_neox: selects the weight-key map
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm: str  # "rmsnorm" | "layernorm"
    norm_eps: float
    mlp: str  # "swiglu" | "gelu"
    parallel_block: bool  # x + attn(norm(x)) + mlp(norm'(x)) instead of two sequential residuals
    shared_block_norm: bool  # parallel block reads ONE norm for attn and mlp (falcon-7b)
    qkv_bias: bool
    out_bias: bool  # bias of the attention output projection
    mlp_bias: bool
    alibi: bool  # ALiBi attention biases instead of rotary embeddings (falcon-rw-1b)
    rope_theta: float = 10000.0
    rotary_dim: int = 0  # leading dims of each head that rotate (partial rotary); 0 with alibi
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor": .., ...} or None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    hf_config: dict = field(default_factory=dict, repr=False)  # the original config.json, for export

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("hf_config")
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        return cls.from_hf(read_json(path), source=str(path))

    @classmethod
    def from_hf(cls, raw: dict, source: str = "config.json") -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"{source}: unsupported model_type {model_type!r} "
                f"(supported: {', '.join(sorted(MODEL_TYPES))})"
            )
        family = MODEL_TYPES[model_type]
        get = _Fields(raw, source, model_type)
        rope = dict(raw.get("rope_parameters") or {})  # transformers >= 5 spelling
        hidden = get("hidden_size", "n_embed", "d_model")
        n_heads = get("num_attention_heads", "n_head")
        common = dict(
            family=family,
            vocab_size=get("vocab_size"),
            hidden_size=hidden,
            n_layers=get("num_hidden_layers", "n_layer"),
            n_heads=n_heads,
            head_dim=get("head_dim", default=hidden // n_heads) if family == "llama" else hidden // n_heads,
            rope_theta=get("rotary_emb_base", "rope_theta", default=rope.get("rope_theta", 10000.0)),
            rope_scaling=_rope_scaling(raw, rope, source),
            max_position_embeddings=get("max_position_embeddings", default=2048),
            bos_token_id=get("bos_token_id", default=None),
            eos_token_ids=_as_list(get("eos_token_id", default=None)),
            pad_token_id=get("pad_token_id", default=None),
            hf_config=raw,
        )
        return cls(**{**common, **FAMILY_FIELDS[family](get, common)})  # the family may override a common field


class _Fields:
    """get(*names, default=...): the first present of several spellings of one config.json field;
    a clear error naming the file when a required one is missing."""

    def __init__(self, raw: dict, source: str, model_type: str):
        self.raw, self.source, self.model_type = raw, source, model_type

    def __call__(self, *names, default=...):
        for name in names:
            if self.raw.get(name) is not None:
                return self.raw[name]
        if default is ...:
            raise ValueError(f"{self.source}: missing required field {names[0]!r} (model_type {self.model_type!r})")
        return default


def _rope_scaling(raw: dict, rope: dict, source: str) -> dict | None:
    """Llama 3.x frequency scaling ({"rope_type": "llama3", "factor", ...}) or None."""
    scaling = raw.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling is None:
        return None
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type != "llama3":
        raise ValueError(f"{source}: unsupported rope scaling type {rope_type!r} (supported: llama3)")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in scaling]
    if missing:
        raise ValueError(f"{source}: llama3 rope scaling lacks {', '.join(missing)}")
    return {**{k: scaling[k] for k in keys}, "rope_type": "llama3"}


# The family-specific switches of the table in the module docstring, read from config.json.

def _llama_fields(get: _Fields, common: dict) -> dict:
    bias = get("attention_bias", default=False)
    return dict(n_kv_heads=get("num_key_value_heads", default=common["n_heads"]),
                intermediate_size=get("intermediate_size"),
                norm="rmsnorm", norm_eps=get("rms_norm_eps", default=1e-6), mlp="swiglu",
                parallel_block=False, shared_block_norm=False,
                qkv_bias=bias, out_bias=bias, mlp_bias=get("mlp_bias", default=False), alibi=False,
                rotary_dim=common["head_dim"], tie_word_embeddings=get("tie_word_embeddings", default=False))


def _falcon_fields(get: _Fields, common: dict) -> dict:
    # RefinedWeb (falcon-40b) is the new decoder architecture under its original name.
    new_arch = get("new_decoder_architecture", default=get.model_type == "RefinedWeb")
    multi_query = get("multi_query", default=get.model_type == "RefinedWebModel")
    n_kv = get("num_kv_heads", "n_head_kv") if new_arch else 1 if multi_query else common["n_heads"]
    activation = get("activation", default="gelu")
    if activation != "gelu":
        raise ValueError(f"{get.source}: unsupported Falcon activation {activation!r} (supported: gelu)")
    n_ln_parallel = get("num_ln_in_parallel_attn", default=2 if new_arch else None)
    parallel = bool(new_arch or get("parallel_attn", default=True))
    alibi, bias = get("alibi", default=False), get("bias", default=False)
    return dict(n_kv_heads=n_kv, intermediate_size=get("ffn_hidden_size", default=4 * common["hidden_size"]),
                norm="layernorm", norm_eps=get("layer_norm_epsilon", default=1e-5), mlp="gelu",
                parallel_block=parallel, shared_block_norm=parallel and not (new_arch and n_ln_parallel == 2),
                qkv_bias=bias, out_bias=bias, mlp_bias=bias, alibi=alibi,
                rotary_dim=0 if alibi else common["head_dim"],
                rope_scaling=None if alibi else common["rope_scaling"],
                tie_word_embeddings=get("tie_word_embeddings", default=True))


def _gpt_neox_fields(get: _Fields, common: dict) -> dict:
    activation = get("hidden_act", default="gelu")
    if activation != "gelu":
        raise ValueError(f"{get.source}: unsupported GPT-NeoX hidden_act {activation!r} (supported: gelu)")
    rotary_pct = get("rotary_pct", default=(get.raw.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0))
    bias = get("attention_bias", default=True)
    return dict(n_kv_heads=common["n_heads"], intermediate_size=get("intermediate_size"),
                norm="layernorm", norm_eps=get("layer_norm_eps", default=1e-5), mlp="gelu",
                parallel_block=get("use_parallel_residual", default=True), shared_block_norm=False,
                qkv_bias=bias, out_bias=bias, mlp_bias=True, alibi=False,
                rotary_dim=int(common["head_dim"] * rotary_pct), tie_word_embeddings=get("tie_word_embeddings", default=False))


FAMILY_FIELDS = {"llama": _llama_fields, "falcon": _falcon_fields, "gpt_neox": _gpt_neox_fields}


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in x] if isinstance(x, (list, tuple)) else [int(x)]
