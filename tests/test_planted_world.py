"""The shipped world shows KARMA's Section-5 mechanism at toy scale (slow: trains two reward models).

data/sample plants a reply's karma on its content (data/sample/world.json: content_features) and on
context it cannot control (subreddit, UTC hour, thread position). On it, with the demo's pipeline:
a generalized RM (no metadata) learns the content, and a conditioned RM (karmaEroded: a
"[Subreddit: r/X | Posted: <UTC time>]" header) scores a higher AUC by leaning on the header, which
the shortcut report (`eval.py rm`) measures as flips under swapped headers.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the demo's data and reward-model settings (Makefile), with STEPS optimizer steps
STEPS = 24
RM_ARGS = ["--model", "smollm2-135m", "--max-length", "192", "--max-steps", str(STEPS), "--lr", "1e-4",
           "--eval-every", str(STEPS), "--save-every", str(STEPS), "--max-eval-examples", "99",
           "--micro-batch-size", "4", "--eval-batch-size", "8", "--keep-checkpoints", "0", "--cpu-bf16"]


def run(*args):
    done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("transformers")
    w = tmp_path_factory.mktemp("world")
    run("data_prep.py", "--input", ROOT / "data" / "sample", "--out", w / "data", "--max-prompts", "1")
    for fmt in ("generalized", "conditioned"):
        run("train_rm.py", *RM_ARGS, "--data", w / "data", "--out", w / fmt, "--format", fmt)
    run("eval.py", "rm", "--reward-models", w / "generalized" / "best", w / "conditioned" / "best",
        "--data", w / "data", "--out", w / "report", "--max-examples", "64", "--n-resamples", "200")
    data = json.loads((w / "report" / "report.json").read_text())
    return {entry["format"]: entry for entry in data["rms"].values()}


def low(entry, probe, kind="metadata", measure="flip_share"):
    """The lower end of a probe's interval."""
    return entry[kind][probe]["ci"][measure][0]


@pytest.mark.slow
def test_conditioned_rm_gains_auc_by_reading_the_header(report):
    gen, cond = report["generalized"], report["conditioned"]
    assert cond["metrics"]["roc_auc"] > gen["metrics"]["roc_auc"]
    assert low(cond, "swap_subreddit") > 0 or low(cond, "swap_both") > 0   # reliance on metadata
    assert gen["metadata"]["swap_both"]["ci"]["flip_share"][1] < 0.1        # none for the generalized RM


@pytest.mark.slow
def test_generalized_rm_learns_the_content(report):
    gen = report["generalized"]
    assert low(gen, "sibling", "content") > 0                                # another reply changes its score
    assert gen["content"]["sibling"]["karma_agreement"]["share"] > 0.5
