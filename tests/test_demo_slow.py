"""The demo's claim, checked over seeds with the Makefile's own settings: PPO raises the reward model's
score on HELD-OUT prompts by more than three standard errors, and at least one planted content
feature of the shipped synthetic world becomes more common in the tuned policy's replies, while the share
of empty replies (which the reward model never saw in training) does not rise. The second claim is
known to fail for seed 3 (FEATURELESS_SEEDS, a strict xfail).

Each seed runs `make demo-train demo-report` (sample data -> reward model -> PPO -> the held-out
report; the evals are left out): minutes per seed on CPU, so this is a slow test (make test-slow)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from karma.demo import verdict

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "data" / "sample" / "world.json"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not WORLD.exists(), reason=f"{WORLD} not shipped: no planted features to look for"),
              pytest.mark.skipif(not (ROOT / ".venv" / ".demo").exists(), reason="needs `make demo`'s set-up")]


@pytest.fixture(scope="module", params=[0, 1, 2, 3, 4], ids=lambda seed: f"seed{seed}")
def outcome(request, tmp_path_factory) -> dict:
    """One seed's `make demo-train demo-report` (run once for both tests), its outcome.json."""
    seed = request.param
    demo = tmp_path_factory.mktemp(f"demo-seed{seed}")
    subprocess.run(["make", "--no-print-directory", "demo-train", "demo-report", f"DEMO={demo}", f"DEMO_SEED={seed}"],
                   cwd=ROOT, check=True)
    assert (demo / "SUMMARY.md").exists() and (demo / "summary.png").exists()
    outcome = json.loads((demo / "outcome.json").read_text())
    score = outcome["score"]
    print(f"seed {seed}: held-out RM score {score['base']:.4f} -> {score['tuned']:.4f}, change {score['diff']:+.4f} "
          f"(95% interval {score['ci'][0]:+.4f} to {score['ci'][1]:+.4f}, z = {score['z']:.2f})")
    for f in outcome["features"] + [outcome["empty"]]:
        print(f"  {f['name']}: {f['base']:.1%} -> {f['tuned']:.1%} (z = {f['z']:.2f}, {verdict(f)})")
    return outcome


def test_heldout_reward_rises_beyond_three_standard_errors(outcome):
    score = outcome["score"]
    assert score["diff"] > 0 and score["z"] > 3, score
    assert verdict(outcome["empty"]) != "rose", outcome["empty"]  # not bought with empty replies (reward hacking)


# Seeds whose PPO run raises the score but no planted feature, with the reward model it was tried
# against (docs/performance.md, fifth and sixth rounds): the 24-step, a top-4 72-step and make
# shortcut's 134-step reward model alike. Strict: should the seed start to raise one, the test fails
# until this entry (and the docs) change.
FEATURELESS_SEEDS = {3: "no planted feature rose with any of three reward models (score z 3.8 with the demo's)"}


def test_a_planted_content_feature_becomes_more_common(outcome, request):
    """The behaviour the world pays for: at least one planted feature's share rises beyond the noise."""
    seed = request.node.callspec.params["outcome"]
    if seed in FEATURELESS_SEEDS:
        request.applymarker(pytest.mark.xfail(strict=True, reason=FEATURELESS_SEEDS[seed]))
    assert any(verdict(f) == "rose" for f in outcome["features"]), outcome["features"]
