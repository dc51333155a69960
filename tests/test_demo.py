"""The demo's summary retells PPO's own logs (karma/demo.py), without any model: summary.png's PPO panel
draws the held-out evaluation of ppo/eval.jsonl beside the training curve, with a band only where a
standard error is recorded; SUMMARY.md lists every reward-hacking warning of ppo/metrics.jsonl with
its rollout, or the extremes of the signals when there is none; a run without eval.jsonl still works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from karma.demo import Z95, paired_change, summary_figure, write_report

WARNING = "diversity collapsed: 75% of the replies repeat another one (>= 50%)"


def fake_outcome() -> dict:
    """What measure() returns, for 3 held-out prompts and 2 replies each (no features)."""
    base, tuned = np.array([[0.2, 0.3], [0.4, 0.3], [0.1, 0.2]]), np.array([[0.5, 0.6], [0.7, 0.5], [0.4, 0.6]])
    reply = lambda s: [[{"text": f"reply {x:.1f}", "score": float(x)} for x in row] for row in s]
    return {"prompts": [{"id": f"p{i}", "text": f"Post {i}"} for i in range(3)], "samples_per_prompt": 2,
            "score": paired_change(base, tuned), "features": [],
            "replies": {"base": reply(base), "tuned": reply(tuned)}}


def rollout_record(r: int, warning: str = "") -> dict:
    return {"rollout": r, "score": 0.3 + 0.05 * r, "score_std": 0.1, "distinct_1": 0.7, "distinct_2": 0.9 - 0.01 * r,
            "repeat_share": 0.0625 * (r % 2), "score_length_corr": -0.3 * r / 4, "scored_replies": 16,
            "hacking_warning": warning}


def eval_record(r: int, se=0.02) -> dict:
    return {"rollout": r, "prompts": 16, "score": 0.25 + 0.04 * r, "score_se": se, "kl_seq": 0.5 * r,
            "kl_seq_se": 0.1, "response_len": 20.0, "ended_eos": 0.5}


def write_ppo(root: Path, metrics: list[dict], evals: list[dict] | None) -> Path:
    """A demo directory holding only ppo/ (config.json, metrics.jsonl and, unless None, eval.jsonl)."""
    ppo = root / "ppo"
    ppo.mkdir(parents=True)
    (ppo / "config.json").write_text(json.dumps({"data": str(root / "data"), "rollouts": 4, "rollout_batch": 16,
                                                 "n_prompts": 2, "lr": 1e-5, "max_new_tokens": 8}))
    (ppo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if evals is not None:
        (ppo / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    return root


def curve_lines(fig):
    """The PPO panel's lines by their legend label, and the panel."""
    ax = fig.axes[2]
    return {line.get_label(): line for line in ax.get_lines()}, ax


def test_the_heldout_evaluation_is_drawn_and_told_with_its_interval(tmp_path):
    demo = write_ppo(tmp_path, [rollout_record(r) for r in (1, 2, 3, 4)], [eval_record(r) for r in (0, 2, 4)])
    text = write_report(fake_outcome(), demo)
    assert ("mean RM score 0.2500 (95% interval 0.2108 to 0.2892) after rollout 0 -> 0.4100 (95% interval "
            "0.3708 to 0.4492) after rollout 4" in text)
    assert "3 evaluation(s) on 16 held-out prompts" in text
    assert f"KL to the reference at the end 2.000 nats per reply (95% interval {2 - Z95 * 0.1:.3f}" in text
    assert ("no reward-hacking warning in 4 rollouts (distinct-2 min 0.860, repeat share max 0.062, "
            "|score-length r| max 0.30)") in text
    assert "Held-out evaluation during PPO" in (demo / "SUMMARY.md").read_text()
    assert (demo / "summary.png").stat().st_size > 10_000

    lines, ax = curve_lines(summary_figure(fake_outcome(), [rollout_record(r) for r in (1, 2, 3, 4)], 16,
                                           [eval_record(r) for r in (0, 2, 4)]))
    held = lines["held-out prompts (eval.jsonl)"]
    assert list(held.get_xdata()) == [0, 2, 4] and np.allclose(held.get_ydata(), [0.25, 0.33, 0.41])
    assert list(lines["training prompts: mean RM score of the rollout"].get_xdata()) == [1, 2, 3, 4]
    assert len(ax.collections) == 2  # two bands: training and held-out
    held_band = ax.collections[1].get_paths()[0].vertices
    assert np.isclose(held_band[:, 1].max(), 0.41 + Z95 * 0.02)
    assert ax.get_title() == "PPO: training prompts vs held-out prompts"


def test_without_a_recorded_spread_the_heldout_line_has_no_band_and_says_so(tmp_path):
    evals = [eval_record(r, se=None) for r in (0, 4)]
    lines, ax = curve_lines(summary_figure(fake_outcome(), [rollout_record(r) for r in (1, 2)], 16, evals))
    assert "held-out prompts (eval.jsonl records no spread: no interval)" in lines
    assert len(ax.collections) == 1  # the training band only
    for r in evals:
        del r["kl_seq"]
    text = write_report(fake_outcome(), write_ppo(tmp_path, [rollout_record(1)], evals))
    assert "0.2500 (no standard error recorded: no interval) after rollout 0" in text
    assert "KL to the reference at the end not recorded." in text


def test_every_hacking_warning_is_listed_with_its_rollout(tmp_path):
    other = "length alone explains the score: Pearson r(score, length) +0.91 over 16 replies"
    metrics = [rollout_record(1), rollout_record(2, WARNING), rollout_record(3), rollout_record(4, other)]
    text = write_report(fake_outcome(), write_ppo(tmp_path, metrics, [eval_record(0)]))
    assert "Reward-hacking WARNING in 2 of 4 rollouts" in text
    assert f"  - rollout 2: {WARNING}" in text and f"  - rollout 4: {other}" in text
    assert "no reward-hacking warning" not in text
    md = (tmp_path / "SUMMARY.md").read_text()
    assert f"  - rollout 2: {WARNING}" in md


def test_a_run_without_eval_jsonl_or_signals_says_not_recorded(tmp_path):
    old = [{"rollout": r, "score": 0.3, "score_std": 0.1} for r in (1, 2, 3)]  # a ppo.py before the signals
    demo = write_ppo(tmp_path, old, None)
    text = write_report(fake_outcome(), demo)
    assert f"Held-out evaluation during PPO: not recorded (no {demo / 'ppo' / 'eval.jsonl'}" in text
    assert f"Reward-hacking signals: not recorded ({demo / 'ppo' / 'metrics.jsonl'} has no hacking_warning)" in text
    assert (demo / "summary.png").exists()
    lines, ax = curve_lines(summary_figure(fake_outcome(), old, 16))
    assert list(lines) == ["training prompts: mean RM score of the rollout"]
    assert "no held-out evaluation" in ax.get_title()


@pytest.mark.parametrize("key", ["distinct_2", "repeat_share", "score_length_corr"])
def test_a_missing_signal_reads_not_recorded(key, tmp_path):
    metrics = [rollout_record(r) for r in (1, 2)]
    for r in metrics:
        del r[key]
    text = write_report(fake_outcome(), write_ppo(tmp_path, metrics, None))
    name = {"distinct_2": "distinct-2 min", "repeat_share": "repeat share max",
            "score_length_corr": "|score-length r| max"}[key]
    assert f"{name} not recorded" in text and "no reward-hacking warning in 2 rollouts" in text
