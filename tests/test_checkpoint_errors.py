"""Bad checkpoints fail loudly with a message naming what is wrong and where.

Assertions on messages stay on a few robust substrings: the key / field name and the file or
directory name.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import karma


def copy_ckpt(checkpoint_factory, layout, tmp_path, name, sharded=False):
    src = checkpoint_factory(layout, sharded=sharded).path
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def edit_weights(directory, fn):
    path = directory / "model.safetensors"
    sd = load_file(str(path))
    fn(sd)
    save_file(sd, str(path), metadata={"format": "pt"})


def edit_config(directory, fn):
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg))


def names_location(msg: str, directory) -> bool:
    return directory.name in msg or "model.safetensors" in msg


# --- weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,key", [
    ("llama_tied", "model.layers.1.mlp.up_proj.weight"),
    ("llama_untied", "lm_head.weight"),
    ("falcon_7b", "transformer.h.0.self_attention.query_key_value.weight"),
    ("neox", "gpt_neox.layers.1.attention.query_key_value.bias"),
])
def test_missing_key(layout, key, checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, layout, tmp_path, "ckpt_missing_key")
    edit_weights(d, lambda sd: sd.pop(key))
    with pytest.raises((KeyError, ValueError)) as exc:
        karma.load_model(str(d))
    msg = str(exc.value)
    assert key in msg and names_location(msg, d), msg


def test_missing_key_in_sharded_checkpoint(checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, "llama_tied", tmp_path, "ckpt_sharded_missing", sharded=True)
    key = "model.layers.0.self_attn.v_proj.weight"
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = d / index["weight_map"].pop(key)
    index_path.write_text(json.dumps(index))
    sd = load_file(str(shard))
    sd.pop(key)
    save_file(sd, str(shard), metadata={"format": "pt"})
    with pytest.raises((KeyError, ValueError)) as exc:
        karma.load_model(str(d))
    msg = str(exc.value)
    assert key in msg and (d.name in msg or "safetensors" in msg), msg


@pytest.mark.parametrize("layout,key", [
    ("llama_tied", "model.layers.0.self_attn.extra_proj.weight"),
    ("falcon_rw", "transformer.h.5.mlp.dense_h_to_4h.weight"),  # a layer the config doesn't have
])
def test_unexpected_key(layout, key, checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, layout, tmp_path, "ckpt_unexpected_key")
    edit_weights(d, lambda sd: sd.__setitem__(key, torch.zeros(4, 4)))
    with pytest.raises((KeyError, ValueError)) as exc:
        karma.load_model(str(d))
    assert key in str(exc.value), str(exc.value)


@pytest.mark.parametrize("layout,key,expected,bad", [
    ("llama_tied", "model.layers.0.self_attn.q_proj.weight", (64, 64), (48, 64)),
    ("falcon_new_arch", "transformer.h.1.self_attention.query_key_value.weight", (128, 64), (96, 64)),
    ("neox", "gpt_neox.final_layer_norm.weight", (64,), (72,)),
])
def test_shape_mismatch(layout, key, expected, bad, checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, layout, tmp_path, "ckpt_bad_shape")

    def reshape(sd):
        assert tuple(sd[key].shape) == expected
        sd[key] = torch.zeros(bad)

    edit_weights(d, reshape)
    with pytest.raises(ValueError) as exc:
        karma.load_model(str(d))
    msg = str(exc.value)
    assert key in msg, msg
    for shape in (expected, bad):  # "(48, 64)", "[48, 64]", "torch.Size([48, 64])" all match
        assert re.search(r"\D{0,2}".join(str(n) for n in shape), msg), (shape, msg)


# --- config.json -------------------------------------------------------------------------------


def test_unknown_model_type(checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, "neox", tmp_path, "ckpt_gpt2")
    edit_config(d, lambda cfg: cfg.update(model_type="gpt2"))
    with pytest.raises(ValueError) as exc:
        karma.load_model(str(d))
    assert "gpt2" in str(exc.value) and "config.json" in str(exc.value)


@pytest.mark.parametrize("layout,field", [
    ("llama_tied", "num_hidden_layers"),
    ("llama_untied", "hidden_size"),
    ("neox", "num_attention_heads"),
    ("falcon_7b", "num_attention_heads"),
])
def test_missing_required_config_field(layout, field, checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, layout, tmp_path, "ckpt_missing_field")
    edit_config(d, lambda cfg: cfg.pop(field))
    with pytest.raises(ValueError) as exc:
        karma.load_model(str(d))
    assert field in str(exc.value) and "config.json" in str(exc.value), str(exc.value)


def test_missing_config_json(checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, "llama_tied", tmp_path, "ckpt_no_config")
    (d / "config.json").unlink()
    with pytest.raises((FileNotFoundError, ValueError)) as exc:
        karma.load_model(str(d))
    assert "config.json" in str(exc.value)


def test_no_weight_files(checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, "falcon_7b", tmp_path, "ckpt_no_weights")
    (d / "model.safetensors").unlink()
    with pytest.raises((FileNotFoundError, ValueError)) as exc:
        karma.load_model(str(d))
    assert d.name in str(exc.value)


# --- paths ---------------------------------------------------------------------------------------


def test_nonexistent_local_path(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises((FileNotFoundError, ValueError)) as exc:
        karma.load_model(str(missing))
    assert "no_such_checkpoint" in str(exc.value)


def test_load_tokenizer_without_tokenizer_json(tmp_path):
    d = tmp_path / "no_tokenizer_here"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(FileNotFoundError) as exc:
        karma.load_tokenizer(str(d))
    assert "no_tokenizer_here" in str(exc.value) and "tokenizer.json" in str(exc.value)


def test_aliases_point_to_hub_ids():
    aliases = karma.weights.ALIASES
    assert aliases["pythia-70m"] == "EleutherAI/pythia-70m"
    assert all(isinstance(v, str) and v.count("/") == 1 for v in aliases.values())


def test_malformed_json_names_the_file(checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, "neox", tmp_path, "bad_json")
    (d / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>",\n  oops}')
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: not valid JSON.*line 2"):
        karma.load_tokenizer(d)
    (d / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        karma.load_model(d)


def test_incomplete_llama3_rope_scaling_names_the_field(checkpoint_factory, tmp_path):
    d = copy_ckpt(checkpoint_factory, "llama_untied", tmp_path, "bad_rope")
    edit_config(d, lambda cfg: cfg["rope_scaling"].pop("low_freq_factor"))
    with pytest.raises(ValueError, match=r"config\.json.*low_freq_factor"):
        karma.load_model(d)
