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

Every field is checked where it is read (a rule per field: type and range), then the shapes that
must agree (hidden_size a multiple of the heads, heads a multiple of the KV heads, an even number
of rotary dims), so a hand-edited or corrupt config.json is one error naming the file and the key
("<dir>/config.json: hidden_size: expected a positive integer, got '64'") before any weights load.
"""

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from karma.files import read_json

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
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(raw).__name__} {raw!r:.40}")
        model_type = raw.get("model_type")
        if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
            raise ValueError(
                f"{source}: unsupported model_type {model_type!r} "
                f"(supported: {', '.join(sorted(MODEL_TYPES))})"
            )
        family = MODEL_TYPES[model_type]
        get = _Fields(raw, source, model_type)
        rope = get("rope_parameters", rule=OBJECT, default={})  # transformers >= 5 spelling
        hidden = get("hidden_size", "n_embed", "d_model", rule=POSITIVE_INT)
        n_heads = get("num_attention_heads", "n_head", rule=POSITIVE_INT)
        own_head_dim = family == "llama" and raw.get("head_dim") is not None  # else hidden / heads
        if not own_head_dim and hidden % n_heads:
            raise ValueError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")
        common = dict(
            family=family,
            vocab_size=get("vocab_size", rule=POSITIVE_INT),
            hidden_size=hidden,
            n_layers=get("num_hidden_layers", "n_layer", rule=POSITIVE_INT),
            n_heads=n_heads,
            head_dim=get("head_dim", rule=POSITIVE_INT) if own_head_dim else hidden // n_heads,
            rope_theta=get("rotary_emb_base", "rope_theta", rule=POSITIVE_NUMBER, default=None)
            or check_field(source, "rope_parameters.rope_theta", rope.get("rope_theta", 10000.0), POSITIVE_NUMBER),
            rope_scaling=_rope_scaling(get, rope),
            max_position_embeddings=get("max_position_embeddings", rule=POSITIVE_INT, default=2048),
            bos_token_id=get("bos_token_id", rule=INTEGER, default=None),
            eos_token_ids=_as_list(get("eos_token_id", rule=TOKEN_IDS, default=None)),
            pad_token_id=get("pad_token_id", rule=INTEGER, default=None),
            hf_config=raw,
        )
        fields = {**common, **FAMILY_FIELDS[family](get, common)}  # the family may override a common field
        _check_shapes(fields, source)
        return cls(**fields)


# What a config.json value must be: (test, what to expect). JSON true/false are not numbers here.
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:  # an integer beyond float range (JSON integers are unbounded)
        return False


POSITIVE_INT = (lambda v: _is_int(v) and v > 0, "a positive integer")
POSITIVE_NUMBER = (lambda v: _is_number(v) and v > 0, "a positive number")
INTEGER = (_is_int, "an integer")  # bos/pad ids: old Llama conversions write pad_token_id -1
TOKEN_IDS = (lambda v: (_is_int(v) and v >= 0) or (isinstance(v, list) and all(_is_int(i) and i >= 0 for i in v)),
             "a token id (integer >= 0) or a list of token ids")
BOOL = (lambda v: isinstance(v, bool), "true or false")
STRING = (lambda v: isinstance(v, str), "a string")
OBJECT = (lambda v: isinstance(v, dict), "an object")
FRACTION = (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")


def check_field(source: str, key: str, value, rule):
    """value, if it passes rule = (test, what); else a ValueError naming the file and the key."""
    test, what = rule
    if not test(value):
        raise ValueError(f"{source}: {key}: expected {what}, got {value!r:.60}")
    return value


class _Fields:
    """get(*names, rule=, default=...): the first present of several spellings of one config.json
    field, checked against its rule; a clear error naming the file when a required one is missing."""

    def __init__(self, raw: dict, source: str, model_type: str):
        self.raw, self.source, self.model_type = raw, source, model_type

    def __call__(self, *names, rule, default=...):
        for name in names:
            if self.raw.get(name) is not None:
                return check_field(self.source, name, self.raw[name], rule)
        if default is ...:
            raise ValueError(f"{self.source}: missing required field {names[0]!r} (model_type {self.model_type!r})")
        return default


def _rope_scaling(get: _Fields, rope: dict) -> dict | None:
    """Llama 3.x frequency scaling ({"rope_type": "llama3", "factor", ...}) or None."""
    name = "rope_scaling" if get.raw.get("rope_scaling") else "rope_parameters"
    scaling = get("rope_scaling", rule=OBJECT, default=None) or (
        rope if rope.get("rope_type", "default") != "default" else None)
    if scaling is None:
        return None
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type != "llama3":
        raise ValueError(f"{get.source}: unsupported rope scaling type {rope_type!r} (supported: llama3)")
    rules = {"factor": POSITIVE_NUMBER, "low_freq_factor": POSITIVE_NUMBER, "high_freq_factor": POSITIVE_NUMBER,
             "original_max_position_embeddings": POSITIVE_INT}
    missing = [k for k in rules if k not in scaling]
    if missing:
        raise ValueError(f"{get.source}: llama3 rope scaling lacks {', '.join(missing)}")
    out = {k: check_field(get.source, f"{name}.{k}", scaling[k], rule) for k, rule in rules.items()}
    if out["high_freq_factor"] <= out["low_freq_factor"]:  # the smoothing divides by their difference
        raise ValueError(f"{get.source}: {name}: high_freq_factor {out['high_freq_factor']} must exceed "
                         f"low_freq_factor {out['low_freq_factor']}")
    return {**out, "rope_type": "llama3"}


def _check_shapes(f: dict, source: str) -> None:
    """The sizes that must agree for the attention to be built: query heads in whole groups per KV
    head, and RoPE rotating pairs of dims (an even, non-zero count) unless positions are ALiBi."""
    if f["n_heads"] % f["n_kv_heads"]:
        raise ValueError(f"{source}: num_attention_heads {f['n_heads']} is not a multiple of the "
                         f"{f['n_kv_heads']} key/value heads")
    if not f["alibi"] and (f["rotary_dim"] < 2 or f["rotary_dim"] % 2):
        raise ValueError(f"{source}: {f['rotary_dim']} rotary dims per head (head_dim {f['head_dim']}): RoPE "
                         f"needs an even number, at least 2")


# The family-specific switches of the table in the module docstring, read from config.json.

def _llama_fields(get: _Fields, common: dict) -> dict:
    bias = get("attention_bias", rule=BOOL, default=False)
    return dict(n_kv_heads=get("num_key_value_heads", rule=POSITIVE_INT, default=common["n_heads"]),
                intermediate_size=get("intermediate_size", rule=POSITIVE_INT),
                norm="rmsnorm", norm_eps=get("rms_norm_eps", rule=POSITIVE_NUMBER, default=1e-6), mlp="swiglu",
                parallel_block=False, shared_block_norm=False,
                qkv_bias=bias, out_bias=bias, mlp_bias=get("mlp_bias", rule=BOOL, default=False), alibi=False,
                rotary_dim=common["head_dim"],
                tie_word_embeddings=get("tie_word_embeddings", rule=BOOL, default=False))


def _falcon_fields(get: _Fields, common: dict) -> dict:
    # RefinedWeb (falcon-40b) is the new decoder architecture under its original name.
    new_arch = get("new_decoder_architecture", rule=BOOL, default=get.model_type == "RefinedWeb")
    multi_query = get("multi_query", rule=BOOL, default=get.model_type == "RefinedWebModel")
    n_kv = (get("num_kv_heads", "n_head_kv", rule=POSITIVE_INT) if new_arch else
            1 if multi_query else common["n_heads"])
    activation = get("activation", rule=STRING, default="gelu")
    if activation != "gelu":
        raise ValueError(f"{get.source}: unsupported Falcon activation {activation!r} (supported: gelu)")
    n_ln_parallel = get("num_ln_in_parallel_attn", rule=(lambda v: v in (1, 2) and _is_int(v), "1 or 2"),
                        default=2 if new_arch else None)
    parallel = bool(new_arch or get("parallel_attn", rule=BOOL, default=True))
    alibi, bias = get("alibi", rule=BOOL, default=False), get("bias", rule=BOOL, default=False)
    return dict(n_kv_heads=n_kv,
                intermediate_size=get("ffn_hidden_size", rule=POSITIVE_INT, default=4 * common["hidden_size"]),
                norm="layernorm", norm_eps=get("layer_norm_epsilon", rule=POSITIVE_NUMBER, default=1e-5), mlp="gelu",
                parallel_block=parallel, shared_block_norm=parallel and not (new_arch and n_ln_parallel == 2),
                qkv_bias=bias, out_bias=bias, mlp_bias=bias, alibi=alibi,
                rotary_dim=0 if alibi else common["head_dim"],
                rope_scaling=None if alibi else common["rope_scaling"],
                tie_word_embeddings=get("tie_word_embeddings", rule=BOOL, default=True))


def _gpt_neox_fields(get: _Fields, common: dict) -> dict:
    activation = get("hidden_act", rule=STRING, default="gelu")
    if activation != "gelu":
        raise ValueError(f"{get.source}: unsupported GPT-NeoX hidden_act {activation!r} (supported: gelu)")
    rope = get.raw.get("rope_parameters") or {}
    rotary_pct = get("rotary_pct", rule=FRACTION, default=None) or check_field(
        get.source, "rope_parameters.partial_rotary_factor", rope.get("partial_rotary_factor", 1.0), FRACTION)
    bias = get("attention_bias", rule=BOOL, default=True)
    return dict(n_kv_heads=common["n_heads"], intermediate_size=get("intermediate_size", rule=POSITIVE_INT),
                norm="layernorm", norm_eps=get("layer_norm_eps", rule=POSITIVE_NUMBER, default=1e-5), mlp="gelu",
                parallel_block=get("use_parallel_residual", rule=BOOL, default=True), shared_block_norm=False,
                qkv_bias=bias, out_bias=bias, mlp_bias=True, alibi=False,
                rotary_dim=int(common["head_dim"] * rotary_pct),
                tie_word_embeddings=get("tie_word_embeddings", rule=BOOL, default=False))


FAMILY_FIELDS = {"llama": _llama_fields, "falcon": _falcon_fields, "gpt_neox": _gpt_neox_fields}


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in x] if isinstance(x, (list, tuple)) else [int(x)]
