"""Hub resolution through huggingface_hub, offline: an alias or hub id found in the HF cache loads;
one missing from the cache fails with a message naming the repo and what to do."""

from __future__ import annotations

import shutil

import huggingface_hub.constants
import pytest
import torch

import karma
from karma.weights import ALIASES, resolve


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty HF hub cache, used offline (conftest sets HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache, repo_id: str, source_dir, revision="0123456789abcdef0123456789abcdef01234567"):
    """Lay a checkpoint out as huggingface_hub's cache does: refs/main -> snapshots/<revision>/."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(source_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def test_alias_resolves_through_the_hf_cache(hf_cache, checkpoint_factory):
    ckpt = checkpoint_factory("neox")
    snapshot = put_in_cache(hf_cache, ALIASES["pythia-70m"], ckpt.path)
    assert resolve("pythia-70m") == snapshot
    assert resolve("EleutherAI/pythia-70m") == snapshot
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        want = ckpt.oracle(input_ids=ids).logits
        got = karma.load_model("pythia-70m")(ids)
    assert (got - want).abs().max().item() <= 1e-4
    assert karma.load_tokenizer("pythia-70m").eos_id == karma.load_tokenizer(ckpt.path).eos_id


def test_uncached_repo_offline_is_a_clear_error(hf_cache):
    with pytest.raises(FileNotFoundError, match=r"tiiuae/falcon-7b.*hf download"):
        resolve("falcon-7b")


def test_not_a_path_nor_a_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        resolve(tmp_path / "no" / "such" / "dir")
