"""--normalize-scores (karma.ppo.core.ScoreNorm; Ziegler et al. 2019): the score enters the reward as
(score - mean) / std of the first rollout's scores, computed here by numpy from the logged replies;
fitted once, kept through a resume, and the logged score stays the raw one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from karma.distributed import Dist
from karma.ppo.core import ScoreNorm
from karma.ppo.rollout import collect_rollout
from karma.ppo.trainer import PPOConfig, train
from karma.ppo.value import value_from_policy
from karma.tokenizer import load_tokenizer
from karma.weights import load_model
from test_ppo_trainer import LetterReward, config, rows, setup  # noqa: F401 (setup: the module's fixture)

CPU = Dist(0, 1, torch.device("cpu"))

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread


def test_fit_is_the_mean_and_population_std():
    x = np.array([0.2, 0.5, 0.45, 0.9, 0.1])
    norm = ScoreNorm()
    assert not norm.fitted
    norm.fit(len(x), x.sum(), (x ** 2).sum(), x.max() - x.min())
    assert norm.mean == pytest.approx(x.mean()) and norm.std == pytest.approx(x.std())  # numpy: population std
    z = norm(torch.tensor(x))
    assert torch.allclose(z, torch.tensor((x - x.mean()) / x.std()))
    assert float(z.mean()) == pytest.approx(0, abs=1e-12) and float(z.std(unbiased=False)) == pytest.approx(1)
    again = ScoreNorm()
    again.load_state_dict(json.loads(json.dumps(norm.state_dict())))  # what a checkpoint keeps
    assert (again.mean, again.std) == (norm.mean, norm.std)


def test_too_few_or_constant_scores_are_refused():
    with pytest.raises(ValueError, match="at least 2 scored replies in the first rollout, got 1"):
        ScoreNorm().fit(1, 0.5, 0.25, 0.0)
    with pytest.raises(ValueError, match="same score"):
        ScoreNorm().fit(4, 2.0, 1.0 + 1e-9, 0.0)  # four replies scored 0.5 (and a rounding)
    with pytest.raises(ValueError, match="--rollout-batch >= 2, got 1"):
        PPOConfig(normalize_scores=True, rollout_batch=1).check()


def test_the_reward_carries_the_rescaled_score(setup):
    """One rollout by hand: with kl_coef 0 a reply's rewards sum to its rescaled score; the first
    call fits the scale on this rollout's scores, a second call keeps it."""
    policy_dir, prompts_file = setup
    policy = load_model(policy_dir)
    ref = load_model(policy_dir).requires_grad_(False)
    value = value_from_policy(policy)
    tok = load_tokenizer(policy_dir)
    prompts = [json.loads(line) for line in prompts_file.read_text().splitlines()][:12]
    cfg = PPOConfig(max_new_tokens=12, max_prompt_tokens=64, min_reply_chars=3)
    norm = ScoreNorm()
    buffer, stats, samples = collect_rollout(policy, ref, value, LetterReward(), tok, prompts, cfg, kl_coef=0.0,
                                             seed=3, score_norm=norm)
    raw = np.array([s["score"] for s in samples])
    rm_scored = np.array([not s["short"] for s in samples])
    assert rm_scored.sum() >= 2 and raw[rm_scored].std() > 0  # the case the test is about
    assert norm.mean == pytest.approx(raw[rm_scored].mean()) and norm.std == pytest.approx(raw[rm_scored].std())
    expected = (raw - norm.mean) / norm.std  # a short reply's rule-given 0 rescaled too: the lowest
    assert torch.allclose(buffer.rewards.sum(1).double(), torch.tensor(expected), atol=1e-5)
    assert stats["score"] == pytest.approx(raw.mean())  # logged: the raw score

    fitted = (norm.mean, norm.std)
    buffer, _, samples = collect_rollout(policy, ref, value, LetterReward(), tok, prompts, cfg, kl_coef=0.0,
                                         seed=4, score_norm=norm)
    assert (norm.mean, norm.std) == fitted
    raw = np.array([s["score"] for s in samples])
    assert torch.allclose(buffer.rewards.sum(1).double(), torch.tensor((raw - fitted[0]) / fitted[1]), atol=1e-5)


class ConstantReward(LetterReward):
    def score(self, contexts, responses, metas=None):
        return torch.full((len(responses),), 0.7)  # float32, as a reward model's probabilities


def test_a_constant_reward_model_is_refused_in_the_first_rollout(setup):
    """Summed in float32, 0.7 twelve times leaves a variance of rounding (std ~1e-4) that passed for
    a spread; the fit tests the spread itself (max - min)."""
    policy_dir, prompts_file = setup
    policy = load_model(policy_dir)
    prompts = [json.loads(line) for line in prompts_file.read_text().splitlines()][:12]
    with pytest.raises(ValueError, match="same score"):
        collect_rollout(policy, policy, value_from_policy(policy), ConstantReward(), load_tokenizer(policy_dir),
                        prompts, PPOConfig(max_new_tokens=4, max_prompt_tokens=64), kl_coef=0.0, seed=0,
                        score_norm=ScoreNorm())


def test_a_run_logs_the_scale_it_fitted_on_its_first_rollout(setup, tmp_path):
    policy, prompts = setup
    out = tmp_path / "run"
    train(config(policy, prompts, out, rollouts=2, normalize_scores=True, samples_per_rollout=16), CPU,
          reward=LetterReward())
    log = rows(out)
    first = np.array([json.loads(line)["score"] for line in (out / "samples.jsonl").read_text().splitlines()
                      if json.loads(line)["rollout"] == 1])
    assert len(first) == 16
    for record in log:
        assert record["score_norm_mean"] == pytest.approx(first.mean())
        assert record["score_norm_std"] == pytest.approx(first.std())
    assert log[0]["score"] == pytest.approx(first.mean())
