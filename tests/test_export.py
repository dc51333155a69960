"""karma.save_model writes Hugging Face layout that transformers and karma both load back.

config.json + model.safetensors, or model-0000x-of-0000y.safetensors shards + an index when the
weights exceed max_shard_size ("20KB"-style strings or an int number of bytes).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import karma
from karma.tokenizer import left_pad
from hf_fixtures import load_oracle, positions_from_mask, random_prompts

ATOL = 1e-4
SHARD_NAME = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")


def logits_both(model, oracle, ids, mask):
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = oracle(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    return ours, theirs


def checkpoint_keys(directory) -> set[str]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return set(f.keys())


def check_index(directory) -> dict[str, set[str]]:
    """Validate a sharded export; return {shard file: its keys}."""
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    shards = sorted(p.name for p in directory.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1, shards
    assert not (directory / "model.safetensors").exists()
    totals = set()
    for name in shards:
        m = SHARD_NAME.fullmatch(name)
        assert m, name
        totals.add(int(m.group(2)))
    assert totals == {len(shards)}
    assert sorted(int(SHARD_NAME.fullmatch(n).group(1)) for n in shards) == list(range(1, len(shards) + 1))
    assert set(weight_map.values()) == set(shards)
    contents = {}
    for name in shards:
        with safe_open(str(directory / name), "pt") as f:
            contents[name] = set(f.keys())
    # every key in exactly one shard, and the index says which
    all_keys = [k for keys in contents.values() for k in keys]
    assert len(all_keys) == len(set(all_keys)) == len(weight_map)
    for name, keys in contents.items():
        for k in keys:
            assert weight_map[k] == name
    return contents


def test_export_roundtrip(ckpt, tmp_path):
    model = karma.load_model(str(ckpt.path)).eval()
    out = tmp_path / "export"
    karma.save_model(model, str(out))
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert not (out / "model.safetensors.index.json").exists()
    # HF layout: the same tensor names as the checkpoint transformers wrote (no lm_head when tied)
    assert checkpoint_keys(out) == checkpoint_keys(ckpt.path)

    ids, mask = left_pad(random_prompts([12, 5], seed=30), pad_id=0)
    real = mask.bool()
    hf = load_oracle(out)
    ours, theirs = logits_both(model, hf, ids, mask)
    _, original = logits_both(model, ckpt.oracle, ids, mask)
    assert (theirs[real] - original[real]).abs().max() <= ATOL
    assert (ours[real] - theirs[real]).abs().max() <= ATOL
    assert hf.config.tie_word_embeddings == ckpt.oracle.config.tie_word_embeddings

    back = karma.load_model(str(out)).eval()
    with torch.no_grad():
        assert torch.equal(back(ids, mask)[real], ours[real])
    sd, sd_back = model.state_dict(), back.state_dict()
    assert sd.keys() == sd_back.keys()
    for k in sd:
        assert torch.equal(sd[k], sd_back[k]), k


@pytest.mark.parametrize("max_shard_size", ["20KB", 20_000])
def test_sharded_export(ckpt, tmp_path, max_shard_size):
    model = karma.load_model(str(ckpt.path)).eval()
    out = tmp_path / "sharded"
    karma.save_model(model, str(out), max_shard_size=max_shard_size)
    contents = check_index(out)
    assert set().union(*contents.values()) == checkpoint_keys(ckpt.path)
    for name, keys in contents.items():  # a shard is over the limit only if it is one big tensor
        if len(keys) > 1:
            nbytes = sum(t.numel() * t.element_size() for t in load_file(str(out / name)).values())
            assert nbytes <= 20 * 1024, (name, nbytes)

    ids, mask = left_pad(random_prompts([10, 4], seed=31), pad_id=0)
    real = mask.bool()
    ours, theirs = logits_both(model, load_oracle(out), ids, mask)
    assert (ours[real] - theirs[real]).abs().max() <= ATOL
    back = karma.load_model(str(out)).eval()
    with torch.no_grad():
        assert torch.equal(back(ids, mask)[real], ours[real])


def test_sharded_input_exports_single_file(checkpoint_factory, tmp_path):
    """A sharded checkpoint loaded by karma exports as one file under the default 5GB limit."""
    ckpt = checkpoint_factory("falcon_new_arch", sharded=True)
    model = karma.load_model(str(ckpt.path)).eval()
    karma.save_model(model, str(tmp_path / "one"))
    assert (tmp_path / "one" / "model.safetensors").exists()
    assert not list((tmp_path / "one").glob("model-*-of-*.safetensors"))
    ids, mask = left_pad(random_prompts([9, 3], seed=32), pad_id=0)
    real = mask.bool()
    ours, theirs = logits_both(model, load_oracle(tmp_path / "one"), ids, mask)
    assert (ours[real] - theirs[real]).abs().max() <= ATOL


@pytest.mark.parametrize("layout", ["llama_untied", "falcon_rw", "neox"])
def test_export_writes_the_current_weights(layout, checkpoint_factory, tmp_path):
    """After training (here: an in-place edit) the export carries the new weights, not the old file."""
    ckpt = checkpoint_factory(layout)
    model = karma.load_model(str(ckpt.path)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.05)
    karma.save_model(model, str(tmp_path / "edited"))
    ids, mask = left_pad(random_prompts([8, 6], seed=33), pad_id=0)
    real = mask.bool()
    ours, theirs = logits_both(model, load_oracle(tmp_path / "edited"), ids, mask)
    _, original = logits_both(model, ckpt.oracle, ids, mask)
    assert (ours[real] - theirs[real]).abs().max() <= ATOL
    assert (theirs[real] - original[real]).abs().max() > 1e-2


def test_export_keeps_dtype_bf16(checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("llama_tied")
    model = karma.load_model(str(ckpt.path), dtype=torch.bfloat16)
    karma.save_model(model, tmp_path / "bf16")  # a pathlib.Path works too
    tensors = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    hf = load_oracle(tmp_path / "bf16", dtype=torch.bfloat16)
    hf_sd = hf.state_dict()
    for k, t in tensors.items():
        assert torch.equal(hf_sd[k], t), k
    back = karma.load_model(tmp_path / "bf16", dtype=torch.bfloat16)
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
