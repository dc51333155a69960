"""Logit parity of karma's decoder with the `transformers` oracle on every supported layout.

fp32, max |logit difference| <= 1e-4 on: an unpadded batch, a left-padded batch (real positions
only), a 100-token sequence (RoPE / llama3 scaling / ALiBi far from the origin), the final hidden
states, and sharded checkpoints.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import karma
from karma.tokenizer import left_pad
from hf_fixtures import (
    VOCAB, llama3_bands, positions_from_mask, random_prompts,
)

ATOL = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def oracle_logits(oracle, ids, mask=None):
    with torch.no_grad():
        if mask is None:
            return oracle(input_ids=ids).logits
        return oracle(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits


def karma_logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, mask) if mask is not None else model(ids)


def test_fixture_layouts_are_what_they_claim(checkpoint_factory):
    """Self-check of the fixtures, so that a passing suite really covers each quirk."""
    llama = checkpoint_factory("llama_tied").oracle.config
    assert llama.tie_word_embeddings and llama.num_key_value_heads < llama.num_attention_heads
    for layout in ("llama_tied", "llama_untied"):
        cfg = checkpoint_factory(layout).oracle.config
        bands = llama3_bands(cfg.rope_parameters, cfg.hidden_size // cfg.num_attention_heads)
        assert all(n > 0 for n in bands.values()), (layout, bands)  # all three llama3 branches
    raw = json.loads((checkpoint_factory("llama_untied").path / "config.json").read_text())
    assert "rope_scaling" in raw and "rope_parameters" not in raw and not raw["tie_word_embeddings"]
    raw = json.loads((checkpoint_factory("falcon_7b").path / "config.json").read_text())
    assert raw["multi_query"] and raw["num_kv_heads"] == raw["num_attention_heads"]  # trap
    raw = json.loads((checkpoint_factory("falcon_new_arch").path / "config.json").read_text())
    assert raw["new_decoder_architecture"] and "num_ln_in_parallel_attn" not in raw
    rw = checkpoint_factory("falcon_rw").oracle.config
    assert rw.alibi and not rw.parallel_attn and rw.bias and rw.num_attention_heads == 20
    raw = json.loads((checkpoint_factory("neox_sequential").path / "config.json").read_text())
    assert raw["rotary_pct"] == 0.5 and raw["use_parallel_residual"] is False


def test_load_model_returns_transformer_in_fp32(ckpt):
    model = karma.load_model(str(ckpt.path))
    assert isinstance(model, karma.model.Transformer)
    assert isinstance(model, torch.nn.Module)
    assert isinstance(model.config, karma.config.ModelConfig)
    params = list(model.parameters())
    assert params and all(p.dtype == torch.float32 for p in params)
    assert all(p.device.type == "cpu" for p in params)
    n_ours = sum(p.numel() for p in model.parameters())
    n_hf = sum(p.numel() for p in ckpt.oracle.parameters())
    assert n_ours == n_hf  # same weights, tied ones counted once


def test_logits_match_transformers(ckpt):
    model = karma.load_model(str(ckpt.path)).eval()
    ids = torch.tensor(random_prompts([17, 17], seed=1))
    expected = oracle_logits(ckpt.oracle, ids)
    got = karma_logits(model, ids)
    assert got.shape == (2, 17, VOCAB)
    assert got.dtype == torch.float32
    assert expected.abs().max() > 2.0  # the test is not vacuous: logits are O(1-10)
    assert max_diff(got, expected) <= ATOL
    # an all-ones mask is the same as no mask
    assert max_diff(karma_logits(model, ids, torch.ones_like(ids)), expected) <= ATOL


def test_left_padded_batch_matches_transformers(ckpt):
    model = karma.load_model(str(ckpt.path)).eval()
    prompts = random_prompts([15, 9, 4, 1], seed=2)
    ids, mask = left_pad(prompts, pad_id=5)
    expected = oracle_logits(ckpt.oracle, ids, mask)
    got = karma_logits(model, ids, mask)
    assert got.shape == (4, 15, VOCAB)
    real = mask.bool()
    assert max_diff(got[real], expected[real]) <= ATOL
    # and each row equals the same sequence run alone, unpadded
    for i, p in enumerate(prompts):
        alone = karma_logits(model, torch.tensor([p]))[0]
        assert max_diff(got[i, ids.shape[1] - len(p):], alone) <= ATOL


def test_long_sequence_matches_transformers(ckpt):
    """100 positions: RoPE rotation (and llama3's scaled/smoothed bands, ALiBi in bf16) matter."""
    model = karma.load_model(str(ckpt.path)).eval()
    ids = torch.tensor(random_prompts([100], seed=3))
    assert max_diff(karma_logits(model, ids), oracle_logits(ckpt.oracle, ids)) <= ATOL
    # left padding in front of a long sequence changes nothing
    ids2, mask2 = left_pad([ids[0].tolist(), ids[0, :30].tolist()], pad_id=0)
    got = karma_logits(model, ids2, mask2)
    assert max_diff(got[1, 70:], oracle_logits(ckpt.oracle, ids[:, :30])[0]) <= ATOL
    assert max_diff(got[0], oracle_logits(ckpt.oracle, ids)[0]) <= ATOL


def test_hidden_output_matches_transformers_last_hidden_state(ckpt):
    model = karma.load_model(str(ckpt.path)).eval()
    prompts = random_prompts([12, 7], seed=4)
    ids, mask = left_pad(prompts, pad_id=0)
    with torch.no_grad():
        hidden = model(ids, mask, output="hidden")
        base = ckpt.oracle.base_model  # model / transformer / gpt_neox: output after final norm
        expected = base(input_ids=ids, attention_mask=mask,
                        position_ids=positions_from_mask(mask)).last_hidden_state
    width = ckpt.oracle.config.hidden_size
    assert hidden.shape == (2, 12, width)
    real = mask.bool()
    assert max_diff(hidden[real], expected[real]) <= ATOL
    # logits are the lm head applied to these hidden states
    logits = karma_logits(model, ids, mask)
    head = ckpt.oracle.get_output_embeddings().weight
    assert max_diff(logits[real], hidden[real] @ head.T) <= ATOL


def test_sharded_checkpoint_matches_transformers(sharded_ckpt):
    files = sorted(p.name for p in sharded_ckpt.path.glob("model-*.safetensors"))
    assert len(files) > 1 and (sharded_ckpt.path / "model.safetensors.index.json").exists()
    assert not (sharded_ckpt.path / "model.safetensors").exists()
    model = karma.load_model(str(sharded_ckpt.path)).eval()
    ids, mask = left_pad(random_prompts([13, 6], seed=5), pad_id=0)
    got = karma_logits(model, ids, mask)
    expected = oracle_logits(sharded_ckpt.oracle, ids, mask)
    real = mask.bool()
    assert max_diff(got[real], expected[real]) <= ATOL


def test_bfloat16_load(checkpoint_factory):
    ckpt = checkpoint_factory("llama_tied")
    model = karma.load_model(str(ckpt.path), dtype=torch.bfloat16, device="cpu").eval()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ids = torch.tensor(random_prompts([16], seed=6))
    got = karma_logits(model, ids)
    assert got.dtype == torch.bfloat16
    ref = oracle_logits(ckpt.oracle, ids)
    cos = torch.nn.functional.cosine_similarity(got.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.99


def test_accepts_pathlib_path(checkpoint_factory):
    ckpt = checkpoint_factory("neox")
    model = karma.load_model(ckpt.path).eval()
    ids = torch.tensor(random_prompts([8], seed=7))
    assert max_diff(karma_logits(model, ids), oracle_logits(ckpt.oracle, ids)) <= ATOL


@pytest.mark.parametrize("layout", ["falcon_7b", "falcon_rw"])
def test_falcon_refinedweb_config_spellings(layout, checkpoint_factory, tmp_path):
    """Old hub configs: model_type RefinedWebModel, n_head / n_layer / n_embed."""
    ckpt = checkpoint_factory(layout)
    d = tmp_path / f"{layout}_refinedweb"
    shutil.copytree(ckpt.path, d)
    cfg = ckpt.oracle.config
    legacy = {
        "model_type": "RefinedWebModel", "architectures": ["RWForCausalLM"],
        "n_embed": cfg.hidden_size, "n_head": cfg.num_attention_heads,
        "n_layer": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
        "layer_norm_epsilon": cfg.layer_norm_epsilon, "multi_query": cfg.multi_query,
        "parallel_attn": cfg.parallel_attn, "alibi": cfg.alibi, "bias": cfg.bias,
        "apply_residual_connection_post_layernorm": False, "bos_token_id": 11,
        "eos_token_id": 11, "hidden_dropout": 0.0, "attention_dropout": 0.0,
    }
    (d / "config.json").write_text(json.dumps(legacy))
    model = karma.load_model(str(d)).eval()
    ids, mask = left_pad(random_prompts([14, 5], seed=8), pad_id=0)
    real = mask.bool()
    got = karma_logits(model, ids, mask)
    assert max_diff(got[real], oracle_logits(ckpt.oracle, ids, mask)[real]) <= ATOL


@pytest.mark.parametrize("layout", ["neox", "llama_tied"])
def test_ignorable_buffers_in_checkpoint_are_ignored(layout, checkpoint_factory, tmp_path):
    """Old Pythia / Llama files carry non-weight buffers; loading must skip them."""
    ckpt = checkpoint_factory(layout)
    d = tmp_path / layout
    shutil.copytree(ckpt.path, d)
    sd = load_file(str(d / "model.safetensors"))
    n_layers = ckpt.oracle.config.num_hidden_layers
    for i in range(n_layers):
        if layout == "neox":
            sd[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(1, 1, 8, 8, dtype=torch.bool))
            sd[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
            sd[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.rand(2)
        else:
            sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(8)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    model = karma.load_model(str(d)).eval()
    ids = torch.tensor(random_prompts([11], seed=9))
    assert max_diff(karma_logits(model, ids), oracle_logits(ckpt.oracle, ids)) <= ATOL


@pytest.mark.parametrize("layout", ["llama_tied", "llama_untied"])
def test_logits_of_a_slice_reach_the_matmul_contiguous(checkpoint_factory, monkeypatch, layout):
    """PPO and DPO project the response slice of [B, T, hidden]: on CPU a bf16 matmul with a
    non-contiguous 3-D input broadcasts the weight to [B, hidden, vocab] (1.8 GB for 32 SmolLM2
    rows), so Transformer.logits copies the slice first; the logits are those of the copy."""
    model = karma.load_model(checkpoint_factory(layout).path)
    hidden = torch.randn(3, 7, model.config.hidden_size)[:, 2:5]
    assert not hidden.is_contiguous()
    seen = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda x, w, b=None: seen.append(x.is_contiguous()) or linear(x, w, b))
    with torch.no_grad():
        logits = model.logits(hidden)
    assert seen == [True]
    monkeypatch.undo()
    weight = model.embed.weight if model.lm_head is None else model.lm_head.weight
    with torch.no_grad():  # the same numbers as the projection of the slice itself (fp32)
        assert torch.allclose(logits, torch.nn.functional.linear(hidden, weight), atol=1e-5)
