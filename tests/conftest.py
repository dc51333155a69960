"""Shared fixtures: tiny random-weight HF checkpoints, built once per session (see hf_fixtures)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

# No network, no progress bars, quiet transformers; must happen before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_fixtures import FAMILY, LAYOUTS, make_checkpoint  # noqa: E402

SHARD_SIZE = "100KB"  # several shards for every layout (the embedding matrix alone is ~80 KB)


@dataclass
class Checkpoint:
    layout: str
    path: Path
    oracle: torch.nn.Module  # transformers model loaded from `path` (SDPA, fp32, eval)

    @property
    def family(self) -> str:
        return FAMILY[self.layout]

    @property
    def eos_id(self) -> int:
        eos = self.oracle.config.eos_token_id
        return eos[0] if isinstance(eos, (list, tuple)) else eos


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """get(layout, sharded=False) -> Checkpoint, built on first use and cached for the session.

    Tests must not modify these directories: copy them (shutil.copytree) first.
    """
    cache: dict[tuple[str, bool], Checkpoint] = {}

    def get(layout: str, sharded: bool = False) -> Checkpoint:
        key = (layout, sharded)
        if key not in cache:
            d = tmp_path_factory.mktemp(layout + ("_sharded" if sharded else ""))
            oracle = make_checkpoint(layout, d, shard_size=SHARD_SIZE if sharded else None)
            cache[key] = Checkpoint(layout, d, oracle)
        return cache[key]

    return get


@pytest.fixture(params=sorted(LAYOUTS))
def ckpt(request, checkpoint_factory) -> Checkpoint:
    """One single-file checkpoint per layout (parametrized over all layouts)."""
    return checkpoint_factory(request.param)


@pytest.fixture(params=sorted(LAYOUTS))
def sharded_ckpt(request, checkpoint_factory) -> Checkpoint:
    """The same layouts saved with save_pretrained(max_shard_size=SHARD_SIZE)."""
    return checkpoint_factory(request.param, sharded=True)


@pytest.fixture(scope="module")
def one_thread():
    """For files of tiny models (pytestmark = pytest.mark.usefixtures("one_thread")): one intra-op
    thread is several times faster than two on a busy 2-core machine (the threads spin-wait for each
    other). Restored when the file is done."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
