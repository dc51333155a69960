"""karma.plot: a PPO run and a reward-model run, with nulls, missing keys, a diverged rollout and a
skipped step, become one valid PNG each, written atomically; a run directory without metrics.jsonl
is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from karma.cli import run_main
from karma.plot import main, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def ppo_record(rollout: int, **kw) -> dict:
    record = {"rollout": rollout, "variant": "karmaBenign", "score": 0.1 * rollout, "score_std": 0.05,
              "kl_seq": 0.5 * rollout, "kl_coef": 0.1, "kl_coef_next": 0.11, "entropy": 2.0,
              "policy_loss": -0.01, "value_loss": 0.3, "clip_frac": 0.1, "value_clip_frac": 0.2,
              "approx_kl": 0.01, "explained_variance": 0.4, "response_len": 20.0, "ended_eos": 0.5,
              "diverged": "", "dropped_nonfinite_scores": 0}
    return {**record, **kw}


PPO_RUN = [
    ppo_record(1),
    ppo_record(2, score=None, score_std=None, kl_seq=None, dropped_nonfinite_scores=16,
               diverged="no finite reward-model score among 16 responses"),
    {k: v for k, v in ppo_record(3).items() if k not in ("policy_loss", "value_loss", "clip_frac", "approx_kl")},
    ppo_record(4, entropy=None, explained_variance=None, diverged="4 of 4 minibatches skipped: ratio 4"),
    ppo_record(5),
]

RM_RUN = [
    {"event": "data", "train": {"read": 10, "used": 10}, "heldout": {"read": 4, "used": 4}, "total_steps": 40},
    {"event": "train", "step": 10, "loss": 0.69, "lr": 1e-5, "skipped_steps": 0},
    {"event": "train", "step": 20, "loss": None, "lr": 9e-6, "skipped_steps": 10},  # every step skipped
    {"event": "eval", "step": 20, "roc_auc": 0.61, "accuracy": 0.58, "f1": None, "nonfinite_scores": 0},
    {"event": "train", "step": 30, "loss": 0.6, "lr": 5e-6, "skipped_steps": 10},
    {"event": "eval", "step": 30, "roc_auc": None, "nonfinite_scores": 4},
    {"event": "train", "step": 40, "loss": 0.55, "skipped_steps": 10},  # no lr
    {"event": "eval", "step": 40, "roc_auc": 0.66, "accuracy": 0.6, "f1": 0.5, "nonfinite_scores": 0},
]

EVAL_JSON = {"step": 40, "best_step": 40, "roc_auc": 0.66, "ece": 0.0734, "calibration": [
    {"lo": 0.1 * b, "hi": 0.1 * (b + 1), "count": 0 if b in (0, 9) else 5,
     "mean_prob": None if b in (0, 9) else 0.1 * b + 0.05, "frac_positive": None if b in (0, 9) else 0.1 * b}
    for b in range(10)]}


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000, len(data)  # several panels with text, not a blank canvas
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # atomic_write cleaned up


def test_ppo_run_with_nulls_and_diverged_rollouts(tmp_path):
    write_jsonl(tmp_path / "metrics.jsonl", PPO_RUN)
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    assert_png(out)


def test_rm_run_with_skipped_steps_and_calibration(tmp_path):
    write_jsonl(tmp_path / "metrics.jsonl", RM_RUN)
    (tmp_path / "eval.json").write_text(json.dumps(EVAL_JSON))
    assert_png(plot_run(tmp_path, tmp_path / "plots" / "rm.png"))  # --out's directory is created


@pytest.mark.parametrize("records", [
    [{"rollout": 1, "kl_coef": 0.1, "diverged": "no finite reward-model score among 8 responses",
      "score": None, "dropped_nonfinite_scores": 8}],  # nothing learned, nothing to draw
    [RM_RUN[0]],  # stopped before its first train record: no eval.json either
    [RM_RUN[0], {"event": "train", "step": 5, "loss": None, "lr": None, "skipped_steps": 5},
     {"event": "eval", "step": 5, "roc_auc": None, "nonfinite_scores": 3}],  # every step skipped
], ids=["ppo-one-null-record", "rm-data-only", "rm-all-skipped"])
def test_degenerate_runs_still_plot(tmp_path, records):
    write_jsonl(tmp_path / "metrics.jsonl", records)
    assert plot_run(tmp_path).read_bytes()[:8] == PNG_MAGIC


def test_cli_writes_the_png_and_prints_its_path(tmp_path, capsys):
    write_jsonl(tmp_path / "run" / "metrics.jsonl", PPO_RUN)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"rollout": 6, "sco')  # torn: a run killed (or still) writing; left out
    out = tmp_path / "ppo.png"
    assert run_main(main, [str(tmp_path / "run"), "--out", str(out)], prog="python -m karma.plot") == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert_png(out)


@pytest.mark.parametrize("content, message", [
    (None, "metrics.jsonl: no such file"),
    ("", "metrics.jsonl: no records"),
    ('{"rollout": 1}\nnot json\n{"rollout": 2}\n', "metrics.jsonl:2: not valid JSON"),
    ('{"step": 1}\n', "neither PPO records"),
], ids=["missing", "empty", "bad-line", "unknown-run"])
def test_bad_run_directories_are_one_line_errors(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    assert run_main(main, [str(tmp_path)], prog="python -m karma.plot") == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m karma.plot: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "curves.png").exists()



@pytest.mark.slow  # builds a tiny checkpoint and trains on it: seconds on a busy CPU
def test_real_tiny_runs_plot(checkpoint_factory, tmp_path):
    import torch

    from karma.distributed import Dist
    from karma.ppo.trainer import train as train_ppo
    from karma.reward_train import train as train_rm
    from test_ppo_trainer import LetterReward
    from test_ppo_trainer import config as ppo_config
    from test_reward import config as rm_config
    from test_reward import make_examples

    base, cpu = checkpoint_factory("llama_tied").path, Dist(0, 1, torch.device("cpu"))
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"id": f"p{i}", "source": "test", "messages": [{"role": "user", "content": f"hi {i}"}]}
                          for i in range(8)])
    train_ppo(ppo_config(base, prompts, tmp_path / "ppo", rollouts=2, rollout_batch=8, ppo_epochs=1), cpu,
              reward=LetterReward())
    assert_png(plot_run(tmp_path / "ppo"))
    data = make_examples(tmp_path / "data", n_train=32, n_heldout=16)
    train_rm(rm_config(base, data, tmp_path / "rm", max_steps=4, eval_every=2, log_every=1), cpu)
    assert_png(plot_run(tmp_path / "rm"))
