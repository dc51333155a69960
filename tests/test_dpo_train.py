"""The DPO trainer (karma/dpo_train.py, dpo.py) on tiny random checkpoints.

    * a synthetic preference with a known answer (the chosen reply is always one of two fixed
      texts, the rejected one of two others): margin and accuracy rise, the loss falls;
    * a run killed mid-step and resumed ends with bitwise the same policy and logs as an
      uninterrupted run, for tied and untied heads (Llama, Falcon, GPT-NeoX layouts);
    * torchrun with 2 processes (FSDP2 on CPU, gloo), stopped and resumed, ends within float
      tolerance of one process;
    * the export loads in transformers with the trained weights; bad inputs are named.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import karma.dpo_train as dpo_train
from hf_fixtures import load_oracle
from karma.distributed import Dist
from karma.dpo_train import DPOConfig, parse_pair
from karma.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
CPU = Dist(0, 1, torch.device("cpu"))
GOOD = ["great question, here is why it works", "thanks, the source explains it well"]
BAD = ["no idea lol", "who cares, this is wrong"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread


def make_pairs(path: Path, n: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"pair-{i}",
                                "prompt": [{"role": "user", "content": f"topic {rng.randint(0, 99)}: what do you think?"}],
                                "chosen": [{"role": "assistant", "content": rng.choice(GOOD)}],
                                "rejected": [{"role": "assistant", "content": rng.choice(BAD)}]}) + "\n")
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


RUN = dict(max_length=48, max_prompt_length=24, batch_size=4, micro_batch_size=2, lr=3e-3, warmup_ratio=0.25,
           max_steps=4, heldout_percent=25.0, eval_every=4, save_every=2, log_every=1)


def config(model, data, out, **kw) -> DPOConfig:
    return DPOConfig(**{**dict(model=str(model), data=[data], out_dir=out, **RUN), **kw})


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def deterministic(record: dict) -> dict:
    timing = lambda k: k == "time" or k.endswith("_s") or k.startswith("peak_mem")
    return {k: v for k, v in record.items() if not timing(k)}


def test_known_preference_is_learned(checkpoint_factory, pairs, tmp_path):
    out = tmp_path / "run"
    dpo_train.train(config(checkpoint_factory("llama_tied").path, pairs, out, max_steps=12, eval_every=6,
                           heldout_percent=0.0, save_every=100, log_every=1), CPU)
    train = [r for r in read_log(out / "metrics.jsonl") if r["event"] == "train"]
    first, last = train[0], train[-1]
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at step 1: log 2
    assert first["rewards/margins"] == 0.0 and first["rewards/accuracies"] == 0.0  # scored in the reference's batches
    assert last["loss"] < 0.2 and last["rewards/accuracies"] == 1.0
    assert last["rewards/margins"] > first["rewards/margins"] + 1.0
    assert last["rewards/chosen"] > last["rewards/rejected"]
    assert (out / "policy" / "config.json").exists() and (out / "reference_logps.pt").exists()
    assert (out / "curves.png").exists()


CASES = ["llama_tied", "llama_untied", "falcon_7b", "neox"]


@pytest.mark.parametrize("case", CASES)
def test_killed_run_resumes_bitwise(case, checkpoint_factory, pairs, tmp_path, monkeypatch):
    model = checkpoint_factory(case).path
    full, killed = tmp_path / "full", tmp_path / "killed"
    dpo_train.train(config(model, pairs, full), CPU)

    real = dpo_train.dpo_loss
    calls = {"n": 0}

    def dying_loss(*args, **kw):  # 2 micro-batches per step; eval at step 4 comes after: call 7 is step 4's first
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill in step 4")
        return real(*args, **kw)

    monkeypatch.setattr(dpo_train, "dpo_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        dpo_train.train(config(model, pairs, killed), CPU)
    monkeypatch.setattr(dpo_train, "dpo_loss", real)
    assert (killed / "checkpoints" / "latest").read_text() == "step-00000002"
    assert not (killed / "policy").exists() and not (killed / ".lock").exists()

    state = dpo_train.train(config(model, pairs, killed, resume=True), CPU)
    assert state["step"] == 4
    a, b = load_file(full / "policy" / "model.safetensors"), load_file(killed / "policy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[deterministic(r) for r in read_log(out / "metrics.jsonl") if r["event"] != "data"] for out in (full, killed)]
    assert [r["step"] for r in logs[0] if r["event"] == "train"] == [1, 2, 3, 4]
    assert logs[0] == logs[1]


def test_export_loads_in_transformers(checkpoint_factory, pairs, tmp_path):
    out = tmp_path / "run"
    dpo_train.train(config(checkpoint_factory("llama_untied").path, pairs, out), CPU)
    ours = load_model(out / "policy", dtype=torch.float32, device="cpu")
    oracle = load_oracle(out / "policy")
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        assert (ours(ids) - oracle(ids).logits).abs().max() < 1e-4
    base = load_model(checkpoint_factory("llama_untied").path, dtype=torch.float32, device="cpu")
    assert not torch.equal(ours.embed.weight, base.embed.weight)  # it trained


def test_ipo_and_label_smoothing_run(checkpoint_factory, pairs, tmp_path):
    model = checkpoint_factory("llama_tied").path
    for name, kw in {"ipo": dict(loss_type="ipo"), "cdpo": dict(label_smoothing=0.1)}.items():
        out = tmp_path / name
        dpo_train.train(config(model, pairs, out, **kw), CPU)
        train = [r for r in read_log(out / "metrics.jsonl") if r["event"] == "train"]
        assert len(train) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    with pytest.raises(ValueError, match="label.smoothing"):
        dpo_train.train(config(model, pairs, tmp_path / "bad", loss_type="ipo", label_smoothing=0.1), CPU)


def test_unusable_lines_are_counted_and_bad_paths_named(checkpoint_factory, tmp_path):
    data = make_pairs(tmp_path / "pairs.jsonl", n=8)
    with open(data, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
        f.write(json.dumps({"prompt": "q", "chosen": "fine"}) + "\n")
    out = tmp_path / "run"
    dpo_train.train(config(checkpoint_factory("llama_tied").path, data, out, max_steps=1, heldout_percent=0.0), CPU)
    report = read_log(out / "metrics.jsonl")[0]
    assert report["event"] == "data" and report["read"] == 11 and report["train_pairs"] == 8
    assert report["skipped"] == {"malformed_json": 1, "identical_replies": 1, "bad_value:rejected": 1}
    assert report["skip_locations"]["malformed_json"] == [f"{data}:9"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        dpo_train.train(config(checkpoint_factory("llama_tied").path, tmp_path / "missing.jsonl", tmp_path / "x"), CPU)


def test_pair_layouts():
    conversation = [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello"}]
    rejected = [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "go away"}]
    pair_id, prompt, chosen, rej = parse_pair({"chosen": conversation, "rejected": rejected})  # H4 binarized
    assert prompt == conversation[:1] and chosen == "hello" and rej == "go away" and len(pair_id) == 16
    assert parse_pair({"id": "x", "prompt": "q", "chosen": "a", "rejected": "b"})[1] == [{"role": "user", "content": "q"}]
    assert parse_pair({"prompt": "q", "chosen": " ", "rejected": "b"}) == "empty_reply"
    assert parse_pair({"prompt": 3, "chosen": "a", "rejected": "b"}) == "bad_value:prompt"


def test_resume_needs_the_reference_cache(checkpoint_factory, pairs, tmp_path):
    model = checkpoint_factory("llama_tied").path
    out = tmp_path / "run"
    dpo_train.train(config(model, pairs, out, stop_after_steps=2), CPU)
    (out / "reference_logps.pt").unlink()
    with pytest.raises(FileNotFoundError, match="reference_logps.pt"):
        dpo_train.train(config(model, pairs, out, resume=True), CPU)


# ------------------------------------------------------------------------ torchrun, 2 processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_stop_and_resume(checkpoint_factory, pairs, tmp_path):
    model = checkpoint_factory("llama_untied").path
    one, two = tmp_path / "one", tmp_path / "two"
    dpo_train.train(config(model, pairs, one), CPU)
    args = ["--model", str(model), "--data", str(pairs), "--out", str(two), "--device", "cpu", "--max-length", "48",
            "--max-prompt-length", "24", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "3e-3",
            "--warmup-ratio", "0.25", "--max-steps", "4", "--heldout-percent", "25", "--eval-every", "4",
            "--save-every", "2", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for extra in (["--stop-after-steps", "2"], ["--resume"]):
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                              "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "dpo.py"), *args, *extra],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-4000:]
    losses = lambda out: [(r["step"], r["loss"]) for r in read_log(out / "metrics.jsonl") if r["event"] == "train"]
    assert [s for s, _ in losses(two)] == [1, 2, 3, 4]
    assert [l for _, l in losses(two)] == pytest.approx([l for _, l in losses(one)], abs=1e-5)
    # AdamW hardly sees a constant gradient scale: the norms show one (FSDP's reduction must sum, not average)
    grad_norms = lambda out: [r["grad_norm"] for r in read_log(out / "metrics.jsonl") if r["event"] == "train"]
    assert grad_norms(two) == pytest.approx(grad_norms(one), rel=1e-4)
    a, b = load_file(one / "policy" / "model.safetensors"), load_file(two / "policy" / "model.safetensors")
    for k in a:  # AdamW amplifies the other summation order of 2 processes on ~eps gradients (see test_resume_families)
        assert torch.allclose(a[k], b[k], atol=3e-4, rtol=0), (k, (a[k] - b[k]).abs().max())
