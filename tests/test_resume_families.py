"""Exact resume with a tied AND an untied LM head in every model family the tests cover.

The reward model and the critic never use the LM head. An untied one (Pythia / GPT-NeoX,
Llama-3.1-8B) used to stay trainable, got no gradient, hence no AdamW state, and `--resume` then
failed with `Missing key in checkpoint state_dict: model_optim.state.backbone.lm_head.weight.step`
(train_rm.py; ppo.py the same on the critic). Tied heads are the embedding, so they never showed it.

Cases (model family x head): llama_tied, llama_untied, falcon_7b (tied), falcon_untied,
neox_tied, neox (untied). falcon_untied and neox_tied are built here: the falcon_7b / neox fixture
configs (hf_fixtures) with tie_word_embeddings flipped, checked against transformers on load.

    * train_rm: killed mid-step, resumed -> bitwise-equal final/ weights and identical logs;
    * PPO with a real reward model (saved on the same backbone): killed mid-rollout, resumed ->
      bitwise-equal policy, critic and optimizer states and identical per-rollout metrics;
      critic from the policy for all, and from the reward model for the untied ones;
    * torchrun, 2 processes (gloo, FSDP2 on CPU), untied model: train_rm.py and ppo.py stopped
      early (--stop-after-steps / --stop-after-rollouts), resumed with 2 processes, end within
      float tolerance of one uninterrupted process; no FSDP2 "returned a view tensor" warning.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import karma
import karma.ppo.trainer as ppo_trainer
import karma.reward_train as reward_train
from hf_fixtures import FAMILY, LAYOUTS, TOKENIZER_STYLE, VOCAB, load_oracle, make_tokenizer, randomize_
from karma.distributed import Dist
from karma.files import read_jsonl
from karma.ppo.trainer import PPOConfig
from karma.reward import RewardConfig, build_reward_model, save_reward_model
from karma.reward_train import TrainRMConfig
from karma.weights import CheckpointFiles

ROOT = Path(__file__).resolve().parents[1]
CPU = Dist(0, 1, torch.device("cpu"))
VIEW_WARNING = "returned a view tensor"

# case -> (fixture layout it starts from, tied lm_head?)
CASES = {
    "llama_tied": ("llama_tied", True),
    "llama_untied": ("llama_untied", False),
    "falcon_7b": ("falcon_7b", True),
    "falcon_untied": ("falcon_7b", False),  # built here: falcon_7b with its own lm_head.weight
    "neox_tied": ("neox", True),  # built here: neox whose embed_out is embed_in
    "neox": ("neox", False),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread


# ------------------------------------------------------------------------------------- models

def make_flipped_checkpoint(layout: str, directory: Path, tied: bool):
    """hf_fixtures.make_checkpoint for `layout` with tie_word_embeddings=tied; returns the oracle."""
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    seed = 100 + sorted(LAYOUTS).index(layout)  # not the fixture's weights
    torch.manual_seed(seed)
    config = LAYOUTS[layout]()
    config.tie_word_embeddings = tied
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    randomize_(model, seed=seed)
    model.save_pretrained(str(directory))
    make_tokenizer(TOKENIZER_STYLE[FAMILY[layout]], directory)
    return load_oracle(directory)


@pytest.fixture(scope="session")
def family_model(checkpoint_factory, tmp_path_factory):
    """get(case) -> checkpoint directory (read only), checked once: karma loads it with the
    intended head (tied or not) and reproduces transformers' logits."""
    cache: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in cache:
            layout, tied = CASES[case]
            if case in LAYOUTS:
                ckpt = checkpoint_factory(case)
                path, oracle = ckpt.path, ckpt.oracle
            else:
                path = tmp_path_factory.mktemp(case)
                oracle = make_flipped_checkpoint(layout, path, tied)
            out_emb, in_emb = oracle.get_output_embeddings().weight, oracle.get_input_embeddings().weight
            assert (out_emb.data_ptr() == in_emb.data_ptr()) == tied, f"{case}: transformers' head tying"
            ours = karma.load_model(path, dtype=torch.float32, device="cpu")
            assert (ours.lm_head is None) == tied, f"{case}: karma's head tying"
            ids = torch.arange(3, 43).remainder(VOCAB).unsqueeze(0)
            with torch.no_grad():
                want = oracle(ids).logits
                diff = (ours(ids) - want).abs().max().item()
            assert want.std() > 0.3 and diff < 1e-4, f"{case}: logits differ from transformers by {diff}"
            cache[case] = path
        return cache[case]

    return get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat(obj, prefix=""):
    """Nested dicts/lists -> {dotted path: leaf}."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in flat(val, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in flat(val, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def checkpoint_state(directory: Path, scratch: Path) -> dict:
    """Everything a torch.distributed.checkpoint directory holds (models and optimizers), flat."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    scratch.parent.mkdir(parents=True, exist_ok=True)
    dcp_to_torch_save(str(directory), str(scratch))
    return flat(torch.load(scratch, weights_only=False))


def assert_same_state(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), f"{what}: keys differ: {sorted(a.keys() ^ b.keys())[:10]}"
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}: {k} differs"
        else:
            assert a[k] == b[k], f"{what}: {k}: {a[k]!r} != {b[k]!r}"


def read_log(path: Path) -> list[dict]:
    return [record for _, record in read_jsonl(path)]


def deterministic(record: dict) -> dict:
    """A log record without its wall-clock fields (timings, throughput, memory)."""
    timing = lambda k: k == "time" or k.endswith("_s") or k.startswith("peak_mem")
    return {k: v for k, v in record.items() if not timing(k)}


# ------------------------------------------------------------------------------- reward model

GOOD = ["great question, here is why it works", "thanks, the source explains it well"]
BAD = ["no idea lol", "who cares, this is wrong"]


def make_examples(directory: Path, n_train=24, n_heldout=8, seed=0) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        with open(directory / f"{split}-00000.jsonl", "w") as f:
            for i in range(n):
                label = i % 2 if split == "heldout" else int(rng.random() < 0.5)  # both labels held out
                f.write(json.dumps({
                    "id": f"t1_{split}{i}", "split": split, "thread_id": f"t3_{i}",
                    "messages": [{"role": "user", "content": f"topic {rng.randint(0, 99)}: what do you think?"}],
                    "response": rng.choice(GOOD if label else BAD), "label": label,
                    "meta": {"subreddit": "test", "created_utc": 1420070400 + i}}) + "\n")
    return directory


@pytest.fixture(scope="module")
def rm_data(tmp_path_factory):
    return make_examples(tmp_path_factory.mktemp("rm_data"))


RM_RUN = dict(max_length=64, batch_size=4, micro_batch_size=2, lr=3e-3, warmup_ratio=0.25, max_steps=4,
              eval_every=4, save_every=2, log_every=1)


def rm_config(model, data, out, **kw) -> TrainRMConfig:
    return TrainRMConfig(**{**dict(model=str(model), data=data, out_dir=out, **RM_RUN), **kw})


@pytest.mark.parametrize("case", list(CASES))
def test_reward_model_killed_run_resumes_bitwise(case, family_model, rm_data, tmp_path, monkeypatch):
    model = family_model(case)
    full, killed = tmp_path / "full", tmp_path / "killed"
    reward_train.train(rm_config(model, rm_data, full), CPU)

    real_loss = reward_train.bce_loss
    calls = {"n": 0}

    def dying_loss(*args, **kw):  # 2 micro-batches per step: call 7 is step 4's first
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill in step 4")
        return real_loss(*args, **kw)

    monkeypatch.setattr(reward_train, "bce_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        reward_train.train(rm_config(model, rm_data, killed), CPU)
    monkeypatch.setattr(reward_train, "bce_loss", real_loss)
    assert (killed / "checkpoints" / "latest").read_text() == "step-00000002"
    assert not (killed / "final").exists() and not (killed / ".lock").exists()

    state = reward_train.train(rm_config(model, rm_data, killed, resume=True), CPU)
    assert state["step"] == 4
    for name in ("model.safetensors", "reward_head.safetensors"):
        a, b = load_file(full / "final" / name), load_file(killed / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    weights = load_file(full / "final" / "model.safetensors")
    head_keys = {"lm_head.weight", "embed_out.weight"} & weights.keys()
    assert bool(head_keys) == (not CASES[case][1])  # the untied head is exported...
    base = CheckpointFiles(Path(model))
    for k in head_keys:  # ...unchanged: frozen, it never trains
        assert torch.equal(weights[k], base.get(k))
    logs = [[deterministic(r) for r in read_log(out / "metrics.jsonl") if r["event"] in ("train", "eval")]
            for out in (full, killed)]
    assert [r["step"] for r in logs[0] if r["event"] == "train"] == [1, 2, 3, 4]
    assert logs[0] == logs[1]
    assert all(math.isfinite(r["loss"]) for r in logs[0] if r["event"] == "train")


# ----------------------------------------------------------------------------------------- PPO

@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "source": "test", "messages": [
        {"role": "user", "content": f"tell me about topic {i}" + " please" * (i % 3)}]}) + "\n" for i in range(16)))
    return path


@pytest.fixture(scope="module")
def reward_dir(family_model, tmp_path_factory):
    """get(case) -> a saved reward model on that case's backbone (same tokenizer as the policy)."""
    cache = {}

    def get(case):
        if case not in cache:
            d = tmp_path_factory.mktemp(f"rm_{case}")
            save_reward_model(build_reward_model(family_model(case), RewardConfig(max_length=64), device="cpu",
                                                 seed=1), d)
            cache[case] = d
        return cache[case]

    return get


# one minibatch per rollout (the same updates in 1 and 2 processes: each rank shuffles only its rows)
PPO_RUN = dict(rollouts=3, rollout_batch=4, minibatch=4, micro_batch=4, ppo_epochs=1, lr=1e-3, value_lr=1e-3,
               max_new_tokens=4, max_prompt_tokens=48, init_kl_coef=0.05, kl_horizon=100.0, save_every=2)


def ppo_config(model, reward_model, prompt_file, out, **kw) -> PPOConfig:
    return PPOConfig(**{**dict(model=str(model), reward_model=reward_model, prompts=str(prompt_file),
                               out_dir=out, **PPO_RUN), **kw})


# the critic from the reward model too (same tokenizer) where the head is untied
PPO_CASES = [(case, "policy") for case in CASES] + [(case, "reward") for case, (_, tied) in CASES.items() if not tied]


@pytest.mark.parametrize("case,value_init", PPO_CASES, ids=[f"{c}-{v}" for c, v in PPO_CASES])
def test_ppo_killed_run_resumes_bitwise(case, value_init, family_model, reward_dir, prompts, tmp_path, monkeypatch):
    model, rm = family_model(case), reward_dir(case)
    cfg = lambda out, **kw: ppo_config(model, rm, prompts, out, value_init=value_init, **kw)
    full, killed = tmp_path / "full", tmp_path / "killed"
    ppo_trainer.train(cfg(full), CPU)

    real = ppo_trainer.policy_loss
    calls = {"n": 0}

    def dying(*args, **kw):  # one policy loss per rollout: call 3 is rollout 3's update
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill in rollout 3")
        return real(*args, **kw)

    monkeypatch.setattr(ppo_trainer, "policy_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        ppo_trainer.train(cfg(killed), CPU)
    monkeypatch.setattr(ppo_trainer, "policy_loss", real)
    assert (killed / "checkpoints" / "latest").read_text() == "rollout-000002"
    assert not (killed / "policy").exists() and not (killed / ".lock").exists()

    state = ppo_trainer.train(cfg(killed, resume=True), CPU)
    assert state["rollout"] == 3
    a, b = load_file(full / "policy" / "model.safetensors"), load_file(killed / "policy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the last checkpoint: policy, critic and both optimizers, every tensor
    ckpt = [checkpoint_state(out / "checkpoints" / "rollout-000003", tmp_path / "scratch" / f"{out.name}.pt")
            for out in (full, killed)]
    assert_same_state(*ckpt, what=f"{case} final checkpoint")
    value_keys = [k for k in ckpt[0] if k.startswith("value.")]
    assert any(k.startswith("value.head.") for k in value_keys)
    assert any("lm_head" in k for k in value_keys) == (not CASES[case][1])
    # the critic's untied head is frozen: no optimizer state for it (what resume used to miss)
    assert not any("lm_head" in k for k in ckpt[0] if k.startswith("value_optim.state."))
    # the resumed logs read like the uninterrupted ones
    for name in ("metrics.jsonl", "samples.jsonl"):
        ra, rb = read_log(full / name), read_log(killed / name)
        assert [deterministic(r) for r in ra] == [deterministic(r) for r in rb], name
    rows = read_log(full / "metrics.jsonl")
    assert [r["rollout"] for r in rows] == [1, 2, 3]
    assert all(r["updates"] == 1 and math.isfinite(r["value_loss"]) for r in rows)


# ------------------------------------------------------------------------ torchrun, 2 processes

TORCHRUN_CASE = "llama_untied"  # the Llama-3.1-8B layout (4 heads / 1 KV head, own lm_head)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(script: str, args: list[str]) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / script), *args],
                         env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert VIEW_WARNING not in run.stderr, run.stderr[-4000:]
    return run


def test_reward_model_two_processes_stop_and_resume(family_model, rm_data, tmp_path):
    model = family_model(TORCHRUN_CASE)
    one, two = tmp_path / "one", tmp_path / "two"
    reward_train.train(rm_config(model, rm_data, one), CPU)
    args = ["--model", str(model), "--data", str(rm_data), "--out", str(two), "--device", "cpu",
            "--max-length", "64", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "3e-3",
            "--warmup-ratio", "0.25", "--max-steps", "4", "--eval-every", "4", "--save-every", "2",
            "--log-every", "1"]
    torchrun("train_rm.py", [*args, "--stop-after-steps", "2"])
    assert (two / "checkpoints" / "latest").read_text() == "step-00000002" and not (two / "final").exists()
    torchrun("train_rm.py", [*args, "--resume"])
    assert json.loads((two / "config.json").read_text())["resume"] is True

    losses = lambda out: [(r["step"], r["loss"]) for r in read_log(out / "metrics.jsonl") if r["event"] == "train"]
    assert [s for s, _ in losses(two)] == [1, 2, 3, 4]
    assert [l for _, l in losses(two)] == pytest.approx([l for _, l in losses(one)], abs=1e-5)
    # AdamW divides by sqrt(v) + eps: elements with a ~eps gradient amplify the other summation
    # order of 2 processes; 10% of one step (lr 3e-3). A resume that lost or reset the optimizer
    # state would be off by about a step.
    for name in ("model.safetensors", "reward_head.safetensors"):
        a, b = load_file(one / "final" / name), load_file(two / "final" / name)
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.allclose(a[k], b[k], atol=3e-4, rtol=0), (name, k, (a[k] - b[k]).abs().max())


def test_ppo_two_processes_stop_and_resume(family_model, reward_dir, prompts, tmp_path):
    model, rm = family_model(TORCHRUN_CASE), reward_dir(TORCHRUN_CASE)
    one, two = tmp_path / "one", tmp_path / "two"
    # greedy replies: 1 and 2 processes seed their samplers differently
    ppo_trainer.train(ppo_config(model, rm, prompts, one, value_init="reward", temperature=0.0), CPU)
    args = ["--model", str(model), "--reward-model", str(rm), "--prompts", str(prompts), "--out", str(two),
            "--device", "cpu", "--value-init", "reward", "--temperature", "0", "--rollouts", "3",
            "--rollout-batch", "4", "--minibatch", "4", "--micro-batch", "4", "--ppo-epochs", "1", "--lr", "1e-3",
            "--value-lr", "1e-3", "--max-new-tokens", "4", "--max-prompt-tokens", "48", "--init-kl-coef", "0.05",
            "--kl-horizon", "100", "--save-every", "2"]
    torchrun("ppo.py", [*args, "--stop-after-rollouts", "2"])
    assert (two / "checkpoints" / "latest").read_text() == "rollout-000002" and not (two / "policy").exists()
    torchrun("ppo.py", [*args, "--resume"])
    assert json.loads((two / "config.json").read_text())["world_size"] == 2

    a, b = read_log(one / "metrics.jsonl"), read_log(two / "metrics.jsonl")
    assert [r["rollout"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("score", "kl_seq", "response_len", "policy_loss", "value_loss", "approx_kl", "kl_coef_next"):
            assert abs(ra[key] - rb[key]) <= 1e-4 * max(1.0, abs(ra[key])), (ra["rollout"], key, ra[key], rb[key])
    # AdamW amplifies reduction-order differences of ~eps gradients: 10% of one step (lr 1e-3)
    wa, wb = load_file(one / "policy" / "model.safetensors"), load_file(two / "policy" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-4, rtol=0), (k, (wa[k] - wb[k]).abs().max())
    ca, cb = (checkpoint_state(out / "checkpoints" / "rollout-000003", tmp_path / f"{out.name}.pt")
              for out in (one, two))
    value = [k for k in ca if k.startswith("value.")]
    assert value and set(value) <= cb.keys()
    for k in value:
        assert torch.allclose(ca[k], cb[k], atol=1e-4, rtol=0), (k, (ca[k] - cb[k]).abs().max())
