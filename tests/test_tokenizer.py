"""karma.load_tokenizer: tokenizer.json via `tokenizers`, special ids from the side files, BOS rules,
left-padded batches, decode round trip.

Three styles built by hf_fixtures.make_tokenizer (byte-level BPE trained on a few sentences):
Llama-3 (post-processor prepends <|begin_of_text|>, no pad -> pad = eos), Falcon (<|endoftext|>
= 11 = eos, nothing prepended, no pad), Pythia (<|endoftext|> = 0, <|padding|> = 1 as pad).
transformers' AutoTokenizer on the same files is the oracle for ids.
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer

import karma
from hf_fixtures import CORPUS, TOKENIZER_STYLES, make_tokenizer

TEXTS = [
    "Hello world!",
    "What is the capital of France? Paris is the capital of France.",
    "lol",
    "Café, naïve, über, 日本語, emoji 🙂 — unseen: ñandú Ω",
    "  two leading spaces, a\ttab and a\nnew line ",
    "I think the best answer is (A)",
]


@pytest.fixture(scope="module", params=TOKENIZER_STYLES)
def styled(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"tok_{request.param}")
    expected = make_tokenizer(request.param, d)
    return request.param, d, expected


def test_special_ids(styled):
    from transformers import AutoTokenizer

    style, d, expected = styled
    tok = karma.load_tokenizer(str(d))
    assert isinstance(tok, karma.tokenizer.Tokenizer)
    assert tok.eos_id == expected["eos"]
    assert tok.pad_id == expected["pad"]
    if style == "falcon":  # no bos in these files (falcon-7b's bos=11 comes from config.json)
        assert tok.bos_id in (None, 11)
    else:
        assert tok.bos_id == expected["bos"]
    assert tok.vocab_size == expected["vocab_size"]  # added specials included: ids < vocab_size
    hf = AutoTokenizer.from_pretrained(str(d))
    assert tok.eos_id == hf.eos_token_id
    if hf.pad_token_id is not None:
        assert tok.pad_id == hf.pad_token_id
    else:
        assert tok.pad_id == tok.eos_id  # no pad token: falls back to eos


def test_encode_matches_oracle(styled):
    from transformers import AutoTokenizer

    style, d, expected = styled
    tok = karma.load_tokenizer(str(d))
    hf = AutoTokenizer.from_pretrained(str(d))
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    for text in TEXTS + CORPUS:
        ids = tok.encode(text)
        assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
        assert ids == hf.encode(text) == raw.encode(text).ids, text
        if expected["prepends_bos"]:
            assert ids[0] == expected["bos"] and ids.count(expected["bos"]) == 1
        else:
            assert expected["bos"] not in ids and expected["eos"] not in ids
        assert max(ids) < tok.vocab_size


def test_decode_round_trip(styled):
    style, d, expected = styled
    tok = karma.load_tokenizer(str(d))
    for text in TEXTS + CORPUS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=True) == text
    ids = tok.encode("Hello world!") + [expected["eos"]]
    assert tok.decode(ids) == "Hello world!"
    kept = tok.decode(ids, skip_special_tokens=False)
    eos_text = "<|end_of_text|>" if style == "llama3" else "<|endoftext|>"
    assert kept.endswith(eos_text)
    if style == "llama3":
        assert kept.startswith("<|begin_of_text|>Hello world!")


def test_encode_batch_left_pads(styled):
    style, d, expected = styled
    tok = karma.load_tokenizer(str(d))
    texts = ["Hello world!", "lol", "What is the capital of France? Paris"]
    ids, mask = tok.encode_batch(texts)
    rows = [tok.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    assert isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.shape == mask.shape == (3, width)
    for i, r in enumerate(rows):
        n_pad = width - len(r)
        assert ids[i, n_pad:].tolist() == r
        assert mask[i, n_pad:].tolist() == [1] * len(r)
        assert mask[i, :n_pad].tolist() == [0] * n_pad
        assert ids[i, :n_pad].tolist() == [expected["pad"]] * n_pad
    assert mask[2].all()  # the longest row has no padding
    one_ids, one_mask = tok.encode_batch(["lol"])
    assert one_ids[0].tolist() == tok.encode("lol") and bool(one_mask.all())


def test_special_tokens_map_only(tmp_path):
    """tokenizer_config.json is optional: special_tokens_map.json's AddedToken dicts suffice."""
    expected = make_tokenizer("llama3", tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    smap = json.loads((tmp_path / "special_tokens_map.json").read_text())
    assert isinstance(smap["eos_token"], dict)
    tok = karma.load_tokenizer(str(tmp_path))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (expected["bos"], expected["eos"], expected["eos"])
    assert tok.encode("lol")[0] == expected["bos"]


@pytest.mark.parametrize("layout", ["llama_tied", "falcon_7b", "neox"])
def test_checkpoint_directory_tokenizer(layout, checkpoint_factory):
    """In a model directory the ids agree with config.json (falcon-7b: bos = eos = 11)."""
    ckpt = checkpoint_factory(layout)
    tok = karma.load_tokenizer(str(ckpt.path))
    cfg = ckpt.oracle.config
    assert tok.eos_id == cfg.eos_token_id
    assert tok.bos_id == cfg.bos_token_id
    assert tok.vocab_size <= cfg.vocab_size
