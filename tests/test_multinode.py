"""Two nodes on one machine: `torchrun --nnodes 2 --nproc-per-node 1` started twice, as one would on
each of two nodes, meeting through a c10d rendezvous (gloo on CPU), trains the reward model
(train_rm.py) and PPO (ppo.py) within float tolerance of one process.

What differs from the 2-process tests (test_resume_families, test_ppo_distributed): two elastic
agents, each its own node (LOCAL_RANK 0 in both workers, ranks 0 and 1 by the order they join), no
--node-rank (c10d assigns the node ranks; torchrun ignores --node-rank for any backend but static), and
the store on the agent that binds the endpoint first, the other one connecting to it as a client
(torch.distributed.elastic.rendezvous.c10d_rendezvous_backend). A trainer that took LOCAL_RANK for
its rank would have both workers write --out and take its lock: the run would fail.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import karma.ppo.trainer as ppo_trainer
import karma.reward_train as reward_train
from test_resume_families import (CPU, ENV, PPO_RUN, RM_RUN, ROOT, TORCHRUN_CASE, VIEW_WARNING, free_port, ppo_config,
                                  read_log, rm_config)
from test_resume_families import family_model, prompts, reward_dir, rm_data  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread

TIMEOUT_S = 300  # both agents together (about 10 s each test on 2 idle cores); a rendezvous waits 60 s at most


def flags(settings: dict) -> list[str]:
    """{"max_length": 64} -> ["--max-length", "64"]: the CLI spelling of the in-process settings."""
    return [arg for key, value in settings.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def two_nodes(script: str, args: list[str], logs: Path):
    """Run `script` under two torchrun agents (one per "node") on localhost; fail with both agents'
    logs (in `logs`) unless both exit 0 within TIMEOUT_S."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"karma-test-{port}",
               "--rdzv-conf", "join_timeout=60", str(ROOT / script), *args]
    logs.mkdir(parents=True, exist_ok=True)
    paths = [logs / f"node{i}.log" for i in range(2)]
    agents = []
    for path in paths:
        with open(path, "w") as log:  # the child keeps its own copy of the descriptor
            agents.append(subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for agent in agents:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:  # timed out or interrupted: on SIGTERM an agent stops its worker (in a session of its own), exits
        late = [agent.poll() is None for agent in agents]
        for agent in [a for a, stop in zip(agents, late) if stop]:
            agent.terminate()
            agent.wait(timeout=60)
    codes = [agent.returncode for agent in agents]
    text = [path.read_text() for path in paths]
    report = "\n".join(f"----- node {i}: exit {codes[i]}{f', stopped after {TIMEOUT_S} s' if late[i] else ''} "
                       f"({paths[i]}), last lines:\n{text[i][-4000:]}" for i in range(2))
    assert codes == [0, 0], f"{script} on 2 nodes failed\n{report}"
    assert not any(VIEW_WARNING in t for t in text), report


def shard_files(out: Path) -> list[str]:
    """The files of the latest checkpoint that torch.distributed.checkpoint wrote, one per rank."""
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
    return sorted(p.name for p in latest.glob("*.distcp"))


def test_reward_model_on_two_nodes_matches_one_process(family_model, rm_data, tmp_path):  # noqa: F811
    model = family_model(TORCHRUN_CASE)
    one, two = tmp_path / "one", tmp_path / "two"
    reward_train.train(rm_config(model, rm_data, one), CPU)
    two_nodes("train_rm.py", ["--model", str(model), "--data", str(rm_data), "--out", str(two), "--device", "cpu",
                              *flags(RM_RUN)], tmp_path / "logs")
    assert shard_files(two) == ["__0_0.distcp", "__1_0.distcp"]

    losses = lambda out: [(r["step"], r["loss"]) for r in read_log(out / "metrics.jsonl") if r["event"] == "train"]
    assert [s for s, _ in losses(two)] == [1, 2, 3, 4]
    assert [l for _, l in losses(two)] == pytest.approx([l for _, l in losses(one)], abs=1e-5)
    for name in ("model.safetensors", "reward_head.safetensors"):  # tolerance: see test_resume_families
        a, b = load_file(one / "final" / name), load_file(two / "final" / name)
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.allclose(a[k], b[k], atol=3e-4, rtol=0), (name, k, (a[k] - b[k]).abs().max())


def test_ppo_on_two_nodes_matches_one_process(family_model, reward_dir, prompts, tmp_path):  # noqa: F811
    model, rm = family_model(TORCHRUN_CASE), reward_dir(TORCHRUN_CASE)
    one, two = tmp_path / "one", tmp_path / "two"
    # greedy replies: 1 and 2 processes seed their samplers differently
    ppo_trainer.train(ppo_config(model, rm, prompts, one, temperature=0.0), CPU)
    two_nodes("ppo.py", ["--model", str(model), "--reward-model", str(rm), "--prompts", str(prompts), "--out", str(two),
                         "--device", "cpu", "--temperature", "0", *flags(PPO_RUN)], tmp_path / "logs")
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert shard_files(two) == ["__0_0.distcp", "__1_0.distcp"]

    a, b = read_log(one / "metrics.jsonl"), read_log(two / "metrics.jsonl")
    assert [r["rollout"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("score", "kl_seq", "response_len", "policy_loss", "value_loss", "approx_kl", "kl_coef_next",
                    "policy_grad_norm", "value_grad_norm"):
            assert abs(ra[key] - rb[key]) <= 1e-4 * max(1.0, abs(ra[key])), (ra["rollout"], key, ra[key], rb[key])
    wa, wb = load_file(one / "policy" / "model.safetensors"), load_file(two / "policy" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:  # AdamW amplifies reduction-order differences of ~eps gradients: 10% of one step (lr 1e-3)
        assert torch.allclose(wa[k], wb[k], atol=1e-4, rtol=0), (k, (wa[k] - wb[k]).abs().max())
