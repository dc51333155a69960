"""Reward-hacking signals (karma/ppo/signals.py) against hand computations, and in real PPO runs: a
policy that gives every prompt the same reply trips the collapse warning (in the record and on the
console), a normal one does not; the best and worst replies reach metrics.jsonl."""

from __future__ import annotations

import json
import math

import pytest
import torch

from karma.distributed import Dist
from karma.ppo.rollout import reply_signals
from karma.ppo.signals import (DISTINCT_2_MIN, LENGTH_CORR_MAX, LENGTH_CORR_MIN_REPLIES, REPEAT_SHARE_MAX, distinct_n,
                               extremes, hacking_warning, pearson, repeat_share, rollout_signals)
from karma.ppo.trainer import train
from test_demo_summary import planted_model
from test_ppo_trainer import LetterReward, config

CPU = Dist(0, 1, torch.device("cpu"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread


# ------------------------------------------------------------------------------ the formulas by hand

def test_distinct_n_counts_word_ngrams_within_each_reply():
    replies = ["the cat sat", "the cat ran"]
    # words: the cat sat the cat ran -> 6, distinct {the, cat, sat, ran} -> 4
    assert distinct_n(replies, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 4, distinct 3; no (sat the) across replies
    assert distinct_n(replies, 2) == pytest.approx(3 / 4)
    assert distinct_n(["a b", "c d"], 2) == 1.0  # (a b), (c d): (b c) would span two replies
    assert distinct_n(["  spaced\tout \n words "], 1) == 1.0  # whitespace of any kind splits words
    assert distinct_n(["one", ""], 2) is None and distinct_n([], 1) is None  # no bigram at all: undefined


def test_repeat_share_counts_every_copy():
    assert repeat_share(["x", "x", "y", "z", "z", "z"]) == pytest.approx(5 / 6)  # 2 x's and 3 z's repeat
    assert repeat_share(["a", "b", "c"]) == 0.0
    assert repeat_share(["", "", "ok"]) == pytest.approx(2 / 3)  # two empty replies are identical
    assert repeat_share(["Same", "same"]) == 0.0  # exact text
    assert repeat_share([]) is None


def test_pearson_by_hand():
    # x = 1..4, y = 1 3 2 4: deviations (-1.5 -0.5 0.5 1.5) and (-1.5 0.5 -0.5 1.5):
    # sxy = 2.25 - 0.25 - 0.25 + 2.25 = 4, sxx = syy = 5 -> r = 0.8
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) is None and pearson([1], [2]) is None  # undefined


def test_rollout_signals_leave_non_finite_scores_out_of_the_correlation():
    found = rollout_signals(["a b", "a b", "c d e"], [0.1, float("nan"), 0.9], [2, 2, 3])
    assert found == {"distinct_1": pytest.approx(3 / 7 + 2 / 7), "distinct_2": pytest.approx(3 / 4),
                     "repeat_share": pytest.approx(2 / 3), "score_length_corr": pytest.approx(1.0),
                     "scored_replies": 2}


def signals(distinct_2=0.9, repeats=0.0, corr=0.0, scored=LENGTH_CORR_MIN_REPLIES) -> dict:
    return {"distinct_1": 0.5, "distinct_2": distinct_2, "repeat_share": repeats, "score_length_corr": corr,
            "scored_replies": scored}


def test_warning_thresholds():
    assert hacking_warning(signals()) == ""
    assert hacking_warning(signals(distinct_2=None, repeats=None, corr=None)) == ""
    assert hacking_warning(signals(distinct_2=DISTINCT_2_MIN)) == ""  # strictly below
    low = hacking_warning(signals(distinct_2=DISTINCT_2_MIN - 0.01))
    assert low.startswith("diversity collapsed: distinct-2 0.190 < 0.2") and "repeat" not in low
    assert hacking_warning(signals(repeats=REPEAT_SHARE_MAX - 0.01)) == ""
    both = hacking_warning(signals(distinct_2=0.05, repeats=REPEAT_SHARE_MAX))  # at least half: collapsed
    assert both == "diversity collapsed: distinct-2 0.050 < 0.2, 50% of the replies repeat another one (>= 50%)"
    assert hacking_warning(signals(corr=LENGTH_CORR_MAX)) == ""  # strictly above
    length = hacking_warning(signals(corr=-0.9))
    assert length.startswith("length alone explains the score: Pearson r(score, length) -0.90 over 16 replies")
    assert hacking_warning(signals(corr=0.99, scored=LENGTH_CORR_MIN_REPLIES - 1)) == ""  # too few: chance
    assert hacking_warning(signals(repeats=1.0, corr=0.95)).count("; ") == 1  # both reasons, one line


def test_extremes_best_first_and_worst_first():
    samples = [{"score": s, "i": i} for i, s in enumerate([0.5, float("nan"), 0.9, 0.1, 0.5, 0.7, 0.2])]
    ends = extremes(samples)
    assert [s["i"] for s in ends["top"]] == [2, 5, 0]  # 0.9, 0.7, then the first of the tied 0.5s
    assert [s["i"] for s in ends["bottom"]] == [3, 6, 0]  # 0.1, 0.2, 0.5; NaN is never ranked
    few = extremes(samples[:2])
    assert few == {"top": [samples[0]], "bottom": [samples[0]]}


def test_reply_signals_of_one_process():
    samples = [{"prompt_id": f"p{i}", "prompt": "q", "response": r, "score": s, "tokens": n, "short": False}
               for i, (r, s, n) in enumerate([("same reply", 0.2, 3), ("same reply", 0.4, 3), ("other", 0.9, 2)])]
    found = reply_signals(samples, CPU)
    assert found["repeat_share"] == pytest.approx(2 / 3)
    assert found["hacking_warning"].startswith("diversity collapsed")
    assert found["top_replies"][0] == {"score": 0.9, "tokens": 2, "prompt_id": "p2", "response": "other"}
    assert [r["prompt_id"] for r in found["bottom_replies"]] == ["p0", "p1", "p2"]


# ------------------------------------------------------------------------------ real runs

@pytest.fixture(scope="module")
def models(checkpoint_factory, tmp_path_factory):
    """(a tiny random policy, the same one made to write 'a' at every step: one reply to every prompt)."""
    base = checkpoint_factory("llama_untied").path
    return base, planted_model(base, tmp_path_factory.mktemp("one_reply"))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "source": "test", "messages": [
        {"role": "user", "content": f"say something about {i}"}]}) + "\n" for i in range(16)))
    return path


def run(policy, prompts, out, capsys, **kw) -> tuple[dict, str]:
    train(config(policy, prompts, out, rollouts=1, rollout_batch=16, minibatch=16, micro_batch=16, ppo_epochs=1,
                 max_new_tokens=8, **kw), CPU, reward=LetterReward())
    record = json.loads((out / "metrics.jsonl").read_text())
    return record, capsys.readouterr().out


def test_a_policy_that_repeats_one_reply_trips_the_collapse_warning(models, prompts, tmp_path, capsys):
    record, console = run(models[1], prompts, tmp_path / "run", capsys)
    assert record["repeat_share"] == 1.0  # 16 copies of "aaaaaaaa"
    assert record["distinct_2"] is None  # one word per reply: no bigram
    assert record["hacking_warning"] == "diversity collapsed: 100% of the replies repeat another one (>= 50%)"
    assert f"WARNING rollout 1: reward hacking? {record['hacking_warning']}" in console
    assert [r["response"] for r in record["top_replies"]] == ["aaaaaaaa"] * 3


def test_a_normal_policy_does_not(models, prompts, tmp_path, capsys):
    record, console = run(models[0], prompts, tmp_path / "run", capsys)
    assert record["hacking_warning"] == "" and "WARNING" not in console
    assert record["repeat_share"] == 0.0 and record["distinct_1"] > 0.8
    # the best and worst of the rollout's 16 replies, with the scores the reward gave them
    top, bottom = record["top_replies"], record["bottom_replies"]
    assert len(top) == len(bottom) == 3 and top[0]["score"] >= top[-1]["score"] >= bottom[-1]["score"]
    letters = lambda r: r["response"].count("a") / max(1, len(r["response"]))  # LetterReward
    assert all(math.isclose(r["score"], letters(r), rel_tol=1e-6) for r in top + bottom)
    assert {"prompt_id", "tokens"} <= set(top[0])


def test_replies_shorter_than_min_reply_chars_score_zero(models, prompts, tmp_path, capsys):
    """--min-reply-chars: the 8-character "aaaaaaaa" is below 9, so the reward model's 1.0 becomes 0
    for all 16 replies; at 8 it stands (LetterReward scores the share of a's)."""
    below, console = run(models[1], prompts, tmp_path / "below", capsys, min_reply_chars=9)
    assert below["short_replies"] == 1.0 and below["score"] == 0.0 and "short 1.00" in console
    assert [r["score"] for r in below["top_replies"]] == [0.0] * 3
    # the rule's zeros are not the reward model's: left out of the length correlation (no false warning)
    assert below["scored_replies"] == 0 and below["score_length_corr"] is None
    at, console = run(models[1], prompts, tmp_path / "at", capsys, min_reply_chars=8)
    assert at["short_replies"] == 0.0 and at["score"] == 1.0 and "short" not in console


def test_rule_zeroed_replies_leave_the_length_correlation():
    """Ten long replies scored flat by the RM, six short ones zeroed by --min-reply-chars: with the
    zeros r would be large (length 'explains' the score); the RM's own scores alone say nothing."""
    samples = [{"prompt_id": f"p{i}", "prompt": "q", "response": f"reply number {i} " * (3 if i < 10 else 1),
                "score": 0.5 + 0.001 * (i % 2) if i < 10 else 0.0, "tokens": 10 + i if i < 10 else 1, "short": i >= 10}
               for i in range(16)]
    found = reply_signals(samples, CPU)
    assert found["scored_replies"] == 10 and abs(found["score_length_corr"] or 0) < 0.5
    assert found["hacking_warning"] == ""
    assert min(r["score"] for r in found["bottom_replies"]) == 0.0 and "short" not in found["top_replies"][0]
