"""Regression tests for issues found in review: critic/tokenizer mismatch, generation edge cases,
early-closed dump readers, filter locations, username scrubbing, logs of a fresh run."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import karma
from karma.data.format import scrub
from karma.data.pushshift import read_lines
from karma.ppo.value import value_from_policy, value_from_reward_model
from karma.reward import RewardConfig, build_reward_model


def test_reward_initialised_critic_needs_the_policys_tokenizer(checkpoint_factory):
    llama, neox = checkpoint_factory("llama_tied").path, checkpoint_factory("neox").path
    rm = build_reward_model(llama, RewardConfig(), device="cpu")
    with pytest.raises(ValueError, match="--value-init policy"):
        value_from_reward_model(rm, karma.load_tokenizer(neox))
    critic = value_from_reward_model(rm, karma.load_tokenizer(llama))  # same tokenizer: allowed
    ids = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        assert torch.equal(critic(ids, torch.ones_like(ids)), torch.zeros(2, 7))  # V = 0 at first
        policy_critic = value_from_policy(karma.load_model(neox))
        assert torch.equal(policy_critic(ids, torch.ones_like(ids)), torch.zeros(2, 7))


def test_generate_edge_cases(checkpoint_factory):
    model = karma.load_model(checkpoint_factory("neox").path)
    ids = torch.randint(0, 300, (2, 5))
    out = karma.generate(model, ids, max_new_tokens=0)
    assert out.tokens.shape == out.mask.shape == out.logprobs.shape == (2, 0) and not out.ended.any()
    assert karma.generate(model, ids, max_new_tokens=1, temperature=0).tokens.shape == (2, 1)
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(max_new_tokens=-1)):
        with pytest.raises(ValueError, match="top_p"):
            karma.generate(model, ids, **{"max_new_tokens": 3, **bad})


def test_closing_a_dump_reader_early_is_quiet(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3}')  # no trailing newline: a pending tail
    lines = read_lines(path)
    assert next(lines) == b'{"a": 1}'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lines.close()  # used to raise "generator ignored GeneratorExit"
    assert list(read_lines(path)) == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']


def test_scrub_leaves_ordinary_words_alone():
    text = "I think the answer is yes, and Help agrees; photon_fan, Bob1, DarkKnight and verylongname said so"
    out = scrub(text, ["the", "yes", "Help", "photon_fan", "Bob1", "DarkKnight", "verylongname", "[deleted]"])
    assert out == "I think the answer is yes, and Help agrees; [user], [user], [user] and [user] said so"


def test_filter_skips_are_located_by_line(tmp_path):
    from test_data_pipeline import comment, post, run, write

    d = tmp_path / "dump"
    d.mkdir()
    stats = run(tmp_path, write(d / "RS_a.ndjson", [post("p"), post("x", over_18=True)]),
                write(d / "RC_a.ndjson", [comment("a", "t3_p", "t3_p"), comment("b", "t3_p", "t3_p"),
                                          comment("c", "t3_p", "t3_p", body="lol")]))
    assert stats["skip_locations"]["explicit"] == [f"{d / 'RS_a.ndjson'}:2"]
    assert stats["skip_locations"]["too_short"] == [f"{d / 'RC_a.ndjson'}:3"]


def test_a_fresh_run_never_appends_to_or_overwrites_an_earlier_run(checkpoint_factory, tmp_path):
    from test_ppo_trainer import CPU, LetterReward, config

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    out = tmp_path / "run"
    cfg = config(checkpoint_factory("llama_tied").path, prompts, out, rollouts=2, rollout_batch=4, minibatch=4,
                 micro_batch=4)
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"rollout": 7}\n')  # logs, but no config.json: not a run of ours
    with pytest.raises(ValueError, match="is not empty.*holds no run"):
        karma.ppo.trainer.train(cfg, CPU, reward=LetterReward())
    assert (out / "metrics.jsonl").read_text() == '{"rollout": 7}\n'
    (out / "metrics.jsonl").unlink()
    karma.ppo.trainer.train(cfg, CPU, reward=LetterReward())
    log = (out / "metrics.jsonl").read_text()
    assert [json.loads(line)["rollout"] for line in log.splitlines()] == [1, 2]
    # a second fresh run would overwrite the finished one (shorter than --save-every: no checkpoint): refused
    with pytest.raises(ValueError, match="holds a finished run"):
        karma.ppo.trainer.train(cfg, CPU, reward=LetterReward())
    assert (out / "metrics.jsonl").read_text() == log
