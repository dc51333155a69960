"""Reward model and train_rm: learns a learnable label, resumes exactly, FSDP matches one process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import karma.reward_train as reward_train
from karma.data.format import render
from karma.distributed import Dist
from karma.reward import RewardConfig, build_reward_model, encode, load_reward_model
from karma.reward_train import TrainRMConfig, train
from karma.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["great question, here is why it works", "thanks, the source explains it well", "good point and a clear answer"]
BAD = ["no idea lol", "who cares", "this is wrong and boring"]


def make_examples(directory: Path, n_train=320, n_heldout=80, seed=0):
    """A dataset whose label is readable from the reply's words (GOOD -> 1, BAD -> 0)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        with open(directory / f"{split}-00000.jsonl", "w") as f:
            for i in range(n):
                label = rng.random() < 0.5
                ex = {"id": f"t1_{split}{i}", "split": split, "thread_id": f"t3_{i}",
                      "messages": [{"role": "user", "content": f"topic {rng.randint(0, 99)}: what do you think?"}],
                      "response": rng.choice(GOOD if label else BAD) + f" {rng.randint(0, 9)}",
                      "label": int(label), "meta": {"subreddit": "test", "created_utc": 1420070400 + i}}
                f.write(json.dumps(ex) + "\n")
    return directory


@pytest.fixture(scope="module")
def base_model(checkpoint_factory):
    return checkpoint_factory("llama_tied").path


def config(base, data, out, **kw):
    defaults = dict(model=str(base), data=data, out_dir=out, max_length=64, batch_size=16, micro_batch_size=8,
                    lr=3e-3, warmup_ratio=0.1, max_steps=40, eval_every=20, save_every=20, log_every=5)
    return TrainRMConfig(**{**defaults, **kw})


def read_log(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_learns_a_learnable_label_and_saves_a_loadable_model(tmp_path, base_model):
    data = make_examples(tmp_path / "data")
    out = tmp_path / "rm"
    state = train(config(base_model, data, out), Dist(0, 1, torch.device("cpu")))
    result = json.loads((out / "eval.json").read_text())
    assert result["roc_auc"] > 0.9 and state["best_auc"] > 0.9, result
    events = read_log(out)
    assert {e["event"] for e in events} == {"data", "train", "eval"}
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0] and all(e["tokens_per_s"] > 0 for e in events if e["event"] == "train")

    rm = load_reward_model(out / "best")
    assert rm.cfg.format == "generalized" and rm.cfg.max_length == 64
    assert (out / "best" / "tokenizer.json").exists() and (out / "best" / "config.json").exists()
    heldout = [json.loads(line) for line in (data / "heldout-00000.jsonl").read_text().splitlines()]
    probs = rm.score([e["messages"] for e in heldout], [e["response"] for e in heldout])
    from karma.metrics import binary_metrics
    best = json.loads((out / "best" / "train_info.json").read_text())
    assert binary_metrics([e["label"] for e in heldout], probs.numpy())["roc_auc"] == pytest.approx(best["roc_auc"], abs=1e-6)
    # the backbone directory is a plain Hugging Face checkpoint
    import transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "best")
    assert hf.config.model_type == "llama"


@pytest.mark.parametrize("trainable_layers", [None, 1])
def test_killed_run_resumes_to_bitwise_equal_weights(tmp_path, base_model, monkeypatch, trainable_layers):
    data = make_examples(tmp_path / "data")
    d = Dist(0, 1, torch.device("cpu"))
    full = tmp_path / "full"
    settings = dict(max_steps=10, save_every=4, eval_every=5, trainable_layers=trainable_layers)
    train(config(base_model, data, full, **settings), d)

    calls = {"n": 0}
    real_loss = reward_train.bce_loss

    def dying_loss(*args, **kw):  # 2 micro-batches per step: the 13th call is step 7's first
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt("simulated kill in the middle of step 7")
        return real_loss(*args, **kw)

    killed = tmp_path / "killed"
    monkeypatch.setattr(reward_train, "bce_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train(config(base_model, data, killed, **settings), d)
    monkeypatch.setattr(reward_train, "bce_loss", real_loss)
    assert (killed / "checkpoints" / "latest").read_text() == "step-00000004"
    state = train(config(base_model, data, killed, **settings, resume=True), d)
    assert state["step"] == 10
    a, b = load_file(full / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = load_file(full / "final" / "reward_head.safetensors"), load_file(killed / "final" / "reward_head.safetensors")
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
    train_losses = lambda out: [(e["step"], e["loss"]) for e in read_log(out) if e["event"] == "train"]
    assert train_losses(full) == train_losses(killed)  # the killed run's extra records were dropped on resume


@pytest.mark.parametrize("extra, port", [([], 29517), (["--trainable-layers", "1"], 29518)])
def test_two_process_fsdp_matches_one_process(tmp_path, base_model, extra, port):
    """Also with frozen lower blocks: FSDP2 then shards a root whose embedding is frozen while its
    final norm and head train."""
    data = make_examples(tmp_path / "data", n_train=96, n_heldout=24)
    common = ["--model", str(base_model), "--data", str(data), "--max-length", "64", "--batch-size", "16",
              "--micro-batch-size", "4", "--lr", "3e-3", "--max-steps", "4", "--eval-every", "4",
              "--save-every", "4", "--log-every", "1", "--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, str(ROOT / "train_rm.py"), "--out", str(one), *common],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(port), str(ROOT / "train_rm.py"), "--out", str(two), *common],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    loss = lambda out: [e["loss"] for e in read_log(out) if e["event"] == "train"]
    assert len(loss(one)) == len(loss(two)) == 4
    assert loss(one) == pytest.approx(loss(two), abs=1e-5)
    # AdamW hardly sees a constant gradient scale: the norms show one (FSDP's reduction must sum, not average)
    grad_norm = lambda out: [e["grad_norm"] for e in read_log(out) if e["event"] == "train"]
    assert grad_norm(one) == pytest.approx(grad_norm(two), rel=1e-4)
    eval_one, eval_two = (json.loads((o / "eval.json").read_text()) for o in (one, two))
    assert eval_one["log_loss"] == pytest.approx(eval_two["log_loss"], abs=1e-5)
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_trainable_layers_trains_only_the_top_blocks_norm_and_head(tmp_path, base_model):
    """--trainable-layers 1: the embedding and lower blocks keep the base checkpoint's weights; the top
    block, final norm and head train. More blocks than the model has is refused before anything is
    written."""
    data = make_examples(tmp_path / "data", n_train=64, n_heldout=16)
    out = tmp_path / "rm"
    train(config(base_model, data, out, trainable_layers=1, max_steps=3, eval_every=3, save_every=3),
          Dist(0, 1, torch.device("cpu")))
    base = load_model(base_model).state_dict()
    trained = load_reward_model(out / "final").backbone.state_dict()
    top = f"blocks.{len(load_model(base_model).blocks) - 1}."
    for name, weight in base.items():
        assert torch.equal(weight, trained[name]) != name.startswith((top, "norm.")), name
    head_before = build_reward_model(base_model, RewardConfig(max_length=64), seed=0).head.state_dict()
    head_after = load_file(out / "final" / "reward_head.safetensors")
    assert not torch.equal(head_before["2.weight"], head_after["2.weight"])
    with pytest.raises(ValueError, match=r"--trainable-layers 99: more than .*'s \d+ blocks"):
        train(config(base_model, data, tmp_path / "refused", trainable_layers=99), Dist(0, 1, torch.device("cpu")))
    assert not (tmp_path / "refused").exists()
    for n in (0, len(load_model(base_model).blocks) + 1):  # the library call refuses too
        with pytest.raises(ValueError, match=f"{n} trainable blocks: the model has"):
            load_model(base_model).train_top_blocks_only(n)


def test_bad_examples_are_reported_with_file_and_line(tmp_path, base_model):
    data = make_examples(tmp_path / "data", n_train=40, n_heldout=16)
    path = data / "train-00000.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, '{"messages": [], "response": "x", "label": 1')  # malformed JSON: line 3
    lines.insert(4, json.dumps({"messages": [{"role": "user", "content": "q"}], "label": 1}))  # line 5
    lines.insert(6, json.dumps({"messages": [{"role": "user", "content": "q"}], "response": "r", "label": "yes"}))
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "rm"
    train(config(base_model, data, out, max_steps=2, eval_every=2, save_every=2), Dist(0, 1, torch.device("cpu")))
    [report] = [e for e in read_log(out) if e["event"] == "data"]
    assert report["train"]["skipped"] == {"malformed_json": 1, "missing_field:response": 1, "bad_type:label": 1}
    assert report["train"]["skip_locations"]["malformed_json"] == [f"{path}:3"]
    assert report["train"]["skip_locations"]["missing_field:response"] == [f"{path}:5"]
    assert report["train"]["used"] == 40
    with pytest.raises(FileNotFoundError, match="no train-"):
        train(config(base_model, tmp_path / "nowhere", out), Dist(0, 1, torch.device("cpu")))


def test_encode_keeps_the_reply_and_drops_the_oldest_turns(base_model):
    rm = build_reward_model(base_model, RewardConfig(), device="cpu")
    tok = rm.tokenizer
    messages = [{"role": "user", "content": "a long opening post " * 8},
                {"role": "assistant", "content": "an older reply"}, {"role": "user", "content": "the parent"}]
    lengths = [len(tok.encode(render(messages[i:], "the candidate reply"))) for i in range(3)]
    assert lengths[0] > lengths[1] > lengths[2]
    rm.cfg.max_length = lengths[1]  # room for everything but the post
    assert encode(tok, messages, "the candidate reply", None, rm.cfg) == tok.encode(render(messages[1:], "the candidate reply"))
    rm.cfg.max_length = lengths[1] - 1  # the older reply has to go too
    assert encode(tok, messages, "the candidate reply", None, rm.cfg) == tok.encode(render(messages[2:], "the candidate reply"))
    rm.cfg.max_length = 40  # the reply alone is too long: its end is kept
    huge = encode(tok, messages[:1], "word " * 200, None, rm.cfg)
    assert len(huge) == 40 and tok.decode(huge).rstrip().endswith("word")


def test_score_reads_the_last_real_token_under_either_padding(base_model):
    rm = build_reward_model(base_model, RewardConfig(max_length=64), device="cpu")
    seqs = [rm.tokenizer.encode("User: hello there\n\nAssistant: hi"), rm.tokenizer.encode("User: x\n\nAssistant: y")]
    width = max(map(len, seqs))
    left = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    right = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask_left = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    mask_right = mask_left.flip(1)
    with torch.no_grad():
        alone = torch.cat([rm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs])
        assert torch.allclose(rm(left, mask_left), alone, atol=1e-5)
        assert torch.allclose(rm(right, mask_right), alone, atol=1e-5)


def test_conditioned_format_is_recorded_and_needs_metadata(tmp_path, base_model):
    data = make_examples(tmp_path / "data", n_train=40, n_heldout=16)
    path = data / "train-00000.jsonl"
    lines = path.read_text().splitlines()
    no_meta = json.loads(lines[0])
    del no_meta["meta"]
    path.write_text("\n".join([json.dumps(no_meta)] + lines[1:]) + "\n")
    out = tmp_path / "rm"
    train(config(base_model, data, out, format="conditioned", max_steps=2, eval_every=2, save_every=2),
          Dist(0, 1, torch.device("cpu")))
    [report] = [e for e in read_log(out) if e["event"] == "data"]
    assert report["train"]["skipped"] == {"missing_field:meta": 1}
    rm = load_reward_model(out / "final")
    assert rm.cfg.format == "conditioned"
    ex = json.loads(lines[1])
    ids = encode(rm.tokenizer, ex["messages"], ex["response"], ex["meta"], rm.cfg)
    assert rm.tokenizer.decode(ids).startswith("[Subreddit: r/test | Posted: 2015-01-01")
