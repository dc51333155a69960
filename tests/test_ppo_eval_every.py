"""ppo.py --eval-every: held-out evaluation that training does not notice. With and without it the
training records, samples and exported weights are bitwise equal; the evaluations fall before the
first rollout, every N and after the last, on held-out prompts that are never training prompts,
drawn with a seed apart from --seed; a killed run resumes to the same eval.jsonl; under torchrun
(2 processes, FSDP2 on CPU) every rank takes part and greedy replies score as in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import karma.ppo.trainer as trainer
from karma.data.format import render_prompt
from karma.distributed import Dist
from karma.ppo.trainer import train
from karma.reward import RewardConfig, build_reward_model, save_reward_model
from test_ppo_trainer import LetterReward
from test_ppo_trainer import config as ppo_config

ROOT = Path(__file__).resolve().parents[1]
CPU = Dist(0, 1, torch.device("cpu"))
N_THREADS = 10


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A data_prep.py output dir: 8 training prompts (prompts-reddit.jsonl) and a held-out split of
    N_THREADS threads with two contexts each, the first thread's post also a training prompt."""
    d = tmp_path_factory.mktemp("data")
    meta = lambda t: {"subreddit": "test", "created_utc": 1420070400 + t}
    train_prompts = [{"id": f"reddit-t3_x{i}", "source": "reddit", "messages": [
        {"role": "user", "content": f"training post {i}: what do you think?"}], "meta": meta(i)} for i in range(8)]
    train_prompts[0]["messages"] = [{"role": "user", "content": "held-out post 0"}]
    (d / "prompts-reddit.jsonl").write_text("".join(json.dumps(p) + "\n" for p in train_prompts))
    examples = []
    for t in range(N_THREADS):
        post = {"role": "user", "content": f"held-out post {t}"}
        thread = [post, {"role": "assistant", "content": f"a comment on {t}"},
                  {"role": "user", "content": f"a reply {t}"}]
        for c, context in enumerate(([post], thread)):
            examples.append({"id": f"t1_{t}{c}", "split": "heldout", "thread_id": f"t3_{t}",
                             "parent_id": f"t3_{t}" if c == 0 else f"t1_{t}0", "messages": context,
                             "response": "a reply", "label": c, "meta": meta(t)})
    (d / "heldout-00000.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    return d


@pytest.fixture(scope="module")
def policy(checkpoint_factory) -> Path:
    return checkpoint_factory("llama_tied").path


def config(policy, data, out, prompts="reddit", **kw):
    """3 rollouts of 4 replies; evaluations of 6 prompts (chunks of 4 and 2, as a rollout's batch)."""
    return ppo_config(policy, prompts, out, **{**dict(data=data, rollouts=3, rollout_batch=4, minibatch=4,
                                                        micro_batch=4, ppo_epochs=1, max_new_tokens=8,
                                                        eval_prompts=6), **kw})


def log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def deterministic(record: dict) -> dict:
    """A log record without its wall-clock fields (timings, throughput, memory)."""
    return {k: v for k, v in record.items() if not (k == "time" or k.endswith("_s") or k.startswith("peak_mem"))}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "policy" / "model.safetensors"), load_file(b / "policy" / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def with_eval(policy, data, tmp_path_factory) -> Path:
    """An uninterrupted 3-rollout run evaluated after every rollout."""
    out = tmp_path_factory.mktemp("runs") / "with_eval"
    train(config(policy, data, out, eval_every=1), CPU, reward=LetterReward())
    return out


def test_training_is_bitwise_the_same_with_and_without_eval(policy, data, with_eval, tmp_path):
    without = tmp_path / "without"
    train(config(policy, data, without), CPU, reward=LetterReward())
    assert not (without / "eval.jsonl").exists() and not (without / "eval-prompts.jsonl").exists()
    for name in ("metrics.jsonl", "samples.jsonl"):
        a, b = log(without / name), log(with_eval / name)
        assert a and [deterministic(r) for r in a] == [deterministic(r) for r in b], name
    assert same_weights(without, with_eval)

    evals = log(with_eval / "eval.jsonl")
    assert [r["rollout"] for r in evals] == [0, 1, 2, 3]  # the initial policy, then after every rollout
    for r in evals:
        assert r["prompts"] == 6 and r["dropped_nonfinite_scores"] == 0
        assert 0 <= r["score"] <= 1 and r["score_se"] > 0 and 0 < r["response_len"] <= 8
        assert {"kl_seq", "kl_seq_se", "ended_eos", "distinct_1", "distinct_2", "repeat_share", "eval_s"} <= set(r)
    assert abs(evals[0]["kl_seq"]) < 1e-4  # the initial policy is the reference (cached vs full forward)


def test_eval_prompts_are_held_out_and_never_training_prompts(with_eval, data):
    used = log(with_eval / "eval-prompts.jsonl")
    training = {render_prompt(p["messages"]) for p in log(data / "prompts-reddit.jsonl")}
    assert len(used) == 6 and not {render_prompt(p["messages"]) for p in used} & training
    # one context per thread first (karma.data.prompts.heldout_prompts); thread 0's post is a training prompt
    assert [p["thread_id"] for p in used] == ["t3_0", "t3_1", "t3_2", "t3_3", "t3_4", "t3_5"]
    assert used[0]["messages"][-1]["content"] == "a reply 0"


def test_a_prompts_file_is_left_out_too_and_fewer_prompts_are_said(policy, data, tmp_path, capsys):
    """--prompts FILE: a held-out context that is in FILE is not evaluated on; asking for more
    held-out prompts than there are evaluates on those there are, and says so."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{t}", "messages": [
        {"role": "user", "content": f"held-out post {t}"}]}) + "\n" for t in range(3)))
    cfg = config(policy, data, tmp_path / "run", prompts=str(prompts), eval_every=5, eval_prompts=100, rollouts=1)
    train(cfg, CPU, reward=LetterReward())
    used = log(tmp_path / "run" / "eval-prompts.jsonl")
    # 20 held-out contexts; prompts-reddit.jsonl holds thread 0's post, the --prompts file threads 0-2's
    assert len(used) == 17 and not any(p["messages"] == [{"role": "user", "content": f"held-out post {t}"}]
                                       for p in used for t in range(3))
    assert "--eval-prompts 100: evaluating on 17 held-out prompts (the held-out split of" in capsys.readouterr().err
    assert [r["rollout"] for r in log(tmp_path / "run" / "eval.jsonl")] == [0, 1]  # before, and after the last


def test_the_eval_draws_do_not_depend_on_the_training_seed(policy, data, with_eval, tmp_path):
    other = tmp_path / "other"
    train(config(policy, data, other, seed=1, rollouts=1, eval_every=1), CPU, reward=LetterReward())
    assert log(other / "metrics.jsonl")[0]["score"] != log(with_eval / "metrics.jsonl")[0]["score"]  # other draws
    # the same initial policy, prompts and --eval-seed: the same evaluation
    assert deterministic(log(other / "eval.jsonl")[0]) == deterministic(log(with_eval / "eval.jsonl")[0])


def test_a_killed_run_resumes_to_the_same_evaluations(policy, data, with_eval, tmp_path, monkeypatch):
    """Killed after the evaluation of rollout 3 was logged, before its checkpoint: the resumed run
    cuts that record (past the checkpoint of rollout 2), redoes rollout 3 and logs the same one."""
    killed = tmp_path / "killed"
    real = trainer.evaluate

    def dying(m, prompts, cfg, rollouts_done, *args):
        real(m, prompts, cfg, rollouts_done, *args)
        if rollouts_done == 3:
            raise KeyboardInterrupt("simulated kill after the evaluation of rollout 3")

    monkeypatch.setattr(trainer, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        train(config(policy, data, killed, eval_every=1, save_every=2), CPU, reward=LetterReward())
    monkeypatch.setattr(trainer, "evaluate", real)
    assert (killed / "checkpoints" / "latest").read_text() == "rollout-000002"
    assert [r["rollout"] for r in log(killed / "eval.jsonl")] == [0, 1, 2, 3]
    train(config(policy, data, killed, eval_every=1, save_every=2, resume=True), CPU, reward=LetterReward())
    for name in ("metrics.jsonl", "eval.jsonl"):
        a, b = log(with_eval / name), log(killed / name)
        assert [deterministic(r) for r in a] == [deterministic(r) for r in b], name
    assert same_weights(with_eval, killed)


def test_eval_every_may_change_on_resume(policy, data, tmp_path):
    out = tmp_path / "run"
    train(config(policy, data, out, eval_every=2, rollouts=2, stop_after_rollouts=1), CPU, reward=LetterReward())
    train(config(policy, data, out, eval_every=1, eval_prompts=4, rollouts=2, resume=True), CPU,
          reward=LetterReward())
    assert [(r["rollout"], r["prompts"]) for r in log(out / "eval.jsonl")] == [(0, 6), (2, 4)]


def test_eval_needs_a_held_out_split(policy, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "prompts-reddit.jsonl").write_text(json.dumps(
        {"id": "p", "messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(FileNotFoundError, match="no heldout-"):
        train(config(policy, tmp_path / "data", tmp_path / "run", eval_every=1), CPU, reward=LetterReward())
    assert not (tmp_path / "run").exists()  # refused before anything was written


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun processes and a one-process run: about 35 s on a busy 2-core machine
def test_two_processes_evaluate_like_one(policy, data, tmp_path):
    """torchrun, 2 processes (gloo, FSDP2 on CPU): each rank samples its half of the held-out prompts
    and takes part in the sharded policy's forward passes; with greedy replies the evaluation of
    the initial policy equals one process's, and later ones are logged."""
    rm = tmp_path / "rm"
    save_reward_model(build_reward_model(policy, RewardConfig(max_length=128), device="cpu", seed=3), rm)
    args = dict(reward_model=rm, temperature=0.0, rollouts=2, rollout_batch=8, minibatch=8, micro_batch=8,
                eval_every=2, max_prompt_tokens=64)
    one, two = tmp_path / "one", tmp_path / "two"
    train(config(policy, data, one, **args), CPU)
    flags = ["--model", str(policy), "--reward-model", str(rm), "--data", str(data), "--out", str(two),
             "--device", "cpu", "--value-init", "policy", "--temperature", "0", "--rollouts", "2",
             "--rollout-batch", "8", "--minibatch", "8", "--micro-batch", "8", "--ppo-epochs", "1",
             "--max-new-tokens", "8", "--max-prompt-tokens", "64", "--eval-every", "2", "--eval-prompts", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "ppo.py"), *flags],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("eval after rollout") == 2  # printed once (rank 0), per evaluation
    a, b = log(one / "eval.jsonl"), log(two / "eval.jsonl")
    assert [r["rollout"] for r in a] == [r["rollout"] for r in b] == [0, 2] and b[0]["prompts"] == 6
    for key in ("score", "kl_seq", "response_len", "ended_eos", "distinct_1"):
        assert abs(a[0][key] - b[0][key]) <= 1e-4 * max(1.0, abs(a[0][key])), (key, a[0][key], b[0][key])
