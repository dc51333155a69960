"""The shipped world shows KARMA's Section-5 mechanism at toy scale (slow: `make shortcut`, two reward
models of 134 steps: about 50 minutes with one thread beside other jobs).

data/sample plants a reply's karma on its content (data/sample/world.json: content_features) and on
context it cannot control (subreddit, UTC hour, thread position). On it, `make shortcut` trains a
generalized RM (no metadata), which learns the content, and a conditioned RM (karmaEroded: a
"[Subreddit: r/X | Posted: <UTC time>]" header), which scores a higher AUC by leaning on the header;
the shortcut report (`eval.py rm`) measures that as flips under swapped headers. With the demo's 24
steps the conditioned RM showed no reliance on the header yet (under a swapped subreddit its flip
share's interval reached 0, 2026-12-07), so this test runs the Makefile's target itself.
"""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (ROOT / ".venv" / ".demo").exists(), reason="needs `make demo`'s set-up")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """`make shortcut` into a temporary directory -> its report.json's reward models by format."""
    out = tmp_path_factory.mktemp("shortcut")
    subprocess.run(["make", "--no-print-directory", "shortcut", f"SHORTCUT={out}"], cwd=ROOT, check=True)
    data = json.loads((out / "report" / "report.json").read_text())
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
