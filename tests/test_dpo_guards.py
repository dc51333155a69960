"""dpo.py's guards (issue 20): the reference cache knows what it was computed from, a policy equal to
its reference scores margins of exactly 0, non-finite numbers stop the run instead of reaching the
export, bad flags and unusable data are one-line errors, and the defaults are TRL's (or say why not).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dpo
import karma.dpo_train as dpo_train
from karma.checkpoint import latest_checkpoint
from karma.cli import run_main
from test_dpo_train import CPU, RUN, config, make_pairs, read_log
from karma.errors import TrainingDiverged

WORDS = "the a cat dog why how karma reddit thread reply source great bad wrong right question answer".split()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def long_pairs(path: Path, n: int = 16, seed: int = 0) -> Path:
    """Prompts and replies of very different lengths (up to ~200 tokens): batches of them are padded
    differently, and at these lengths float32 log-probs depend on the padding (~1e-5)."""
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "prompt": text(rng.randint(5, 40)), "chosen": text(rng.randint(2, 40)),
                                "rejected": text(rng.randint(2, 40))}) + "\n")
    return path


# ------------------------------------------------------------------ policy == reference: margins 0

def test_policy_equal_to_reference_scores_exactly_zero(checkpoint_factory, tmp_path):
    """The reference pass scores every pair in the micro-batches the training and evaluation passes
    use, so while the policy equals the reference (step 1; lr so small that no weight moves) every
    reward is exactly 0 and no pair counts as won (TRL's strict chosen > rejected)."""
    data = long_pairs(tmp_path / "pairs.jsonl", n=24)
    out = tmp_path / "run"
    dpo_train.train(config(checkpoint_factory("llama_tied").path, data, out, max_length=256, max_prompt_length=128,
                           batch_size=8, micro_batch_size=3, lr=1e-30, max_steps=2, eval_every=1, heldout_percent=30.0),
                    CPU)
    log = read_log(out / "metrics.jsonl")
    assert {r["event"] for r in log} == {"data", "train", "eval"} and log[0]["heldout_pairs"] > 0
    for r in log[1:]:
        assert r["rewards/chosen"] == r["rewards/rejected"] == r["rewards/margins"] == 0.0, r
        assert r["rewards/accuracies"] == 0.0, r


# ----------------------------------------------------------------------------- the reference cache

def reference_of(out: Path) -> torch.Tensor:
    cached = torch.load(out / "reference_logps.pt", weights_only=True)
    return cached["logps"] if isinstance(cached, dict) else cached  # (a bare tensor: what dpo.py wrote before)


def start_and_kill(model, data, out: Path, monkeypatch, **kw) -> None:
    """A run killed in its first step: --out holds its config.json and reference cache, no checkpoint
    (--resume starts such a run over, reading the cache)."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed in step 1")

    with monkeypatch.context() as m:
        m.setattr(dpo_train, "dpo_loss", killed)
        with pytest.raises(KeyboardInterrupt):
            dpo_train.train(config(model, data, out, **kw), CPU)


@pytest.mark.parametrize("change", ["loss_type", "max_length", "ref_model"])
def test_stale_reference_cache_is_recomputed(change, checkpoint_factory, pairs, tmp_path, monkeypatch, capsys):
    """A cache computed with other settings is never used: IPO takes per-token means (a few nats)
    where DPO caches sums (tens), another --max-length scores other tokens, another --ref-model is
    another model. Found in a run's --out, it is recomputed, with a message, to what a clean run gets."""
    model = checkpoint_factory("llama_tied").path
    run, other = tmp_path / "run", tmp_path / "other"
    start_and_kill(model, pairs, run, monkeypatch)
    clean = reference_of(run)
    kw = {"loss_type": dict(loss_type="ipo"), "max_length": dict(max_length=40),
          "ref_model": dict(ref_model=str(checkpoint_factory("llama_untied").path))}[change]
    start_and_kill(model, pairs, other, monkeypatch, **kw)
    assert not torch.equal(reference_of(other), clean)
    if change == "loss_type":
        assert reference_of(other).abs().max() < 0.5 * clean.abs().max()
    shutil.copy(other / "reference_logps.pt", run / "reference_logps.pt")
    capsys.readouterr()
    dpo_train.train(config(model, pairs, run, resume=True), CPU)
    assert "reference_logps.pt: computed from other settings" in capsys.readouterr().err
    assert torch.equal(reference_of(run), clean)


def test_matching_cache_is_reused(checkpoint_factory, pairs, tmp_path, monkeypatch):
    model = checkpoint_factory("llama_tied").path
    run = tmp_path / "run"
    start_and_kill(model, pairs, run, monkeypatch)
    cached = reference_of(run)
    monkeypatch.setattr(dpo_train, "compute_reference", None)  # a reference pass would be a TypeError
    dpo_train.train(config(model, pairs, run, resume=True), CPU)
    assert torch.equal(reference_of(run), cached)


def cli_flags(**kw) -> list[str]:
    """test_dpo_train's RUN settings as dpo.py flags."""
    args = []
    for k, v in {**RUN, **kw}.items():
        flag = "--" + k.replace("_", "-")
        args += [flag] if v is True else [flag, str(v)]
    return args


def spoil(path: Path, content: str, good: torch.Tensor) -> None:
    if content == "pickle":
        torch.save({"logps": good, "identity": Path("/etc")}, path)  # a Path is not allowed by weights_only
    elif content == "old format":
        torch.save(good, path)
    else:
        path.write_bytes(b"\x80\x02garbage")


@pytest.mark.parametrize("content", ["garbage", "pickle", "old format"])
def test_unreadable_cache_is_recomputed_or_named(content, checkpoint_factory, pairs, tmp_path, monkeypatch, capsys):
    """A corrupt file and a pickle that is not plain tensors (never unpickled: weights_only): a
    resumed run whose policy has trained, so is no longer the reference, stops with one line naming
    the file. The bare tensor an older dpo.py cached has no record of its settings: a resumed run
    keeps it as its own (its settings were checked against config.json), with a message. Before any
    step, all three are recomputed."""
    model = checkpoint_factory("llama_tied").path
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    dpo_train.train(config(model, pairs, out, stop_after_steps=2), CPU)
    good = reference_of(out)
    spoil(out / "reference_logps.pt", content, good)
    capsys.readouterr()
    code = run_main(dpo.main, ["--model", str(model), "--data", str(pairs), "--out", str(out), "--device", "cpu",
                               *cli_flags(resume=True)], prog="dpo.py")
    err = capsys.readouterr().err.strip().splitlines()
    if content == "old format":
        assert code == 0 and (out / "policy").is_dir() and "older dpo.py" in err[0] and "kept" in err[0], err
    else:
        assert code == 2 and len(err) == 1 and str(out / "reference_logps.pt") in err[0], err

    start_and_kill(model, pairs, fresh, monkeypatch)
    spoil(fresh / "reference_logps.pt", content, good)
    dpo_train.train(config(model, pairs, fresh, resume=True), CPU)
    assert "recomputing" in capsys.readouterr().err
    assert torch.equal(reference_of(fresh), good)


# ---------------------------------------------------------------------------------- non-finite

def test_nonfinite_steps_stop_the_run_before_any_nan_reaches_the_weights(checkpoint_factory, pairs, tmp_path,
                                                                          monkeypatch):
    """From step 3 on every loss is NaN: those steps are skipped (never applied, so the weights stay
    finite), and after --max-bad-steps of them in a row the run stops with TrainingDiverged naming
    the step and the last checkpoint; nothing is exported, no NaN is averaged into the log."""
    model = checkpoint_factory("llama_tied").path
    out = tmp_path / "run"
    real = dpo_train.dpo_loss
    calls = {"n": 0}

    def nan_from_step_3(*args, **kw):  # 2 micro-batches per step, no evaluation before step 4
        calls["n"] += 1
        loss, metrics = real(*args, **kw)
        return (loss * float("nan") if calls["n"] > 4 else loss), metrics

    monkeypatch.setattr(dpo_train, "dpo_loss", nan_from_step_3)
    with pytest.raises(TrainingDiverged, match=r"step 4.*step-00000002"):
        dpo_train.train(config(model, pairs, out, max_steps=6, max_bad_steps=2, eval_every=100), CPU)
    assert not (out / "policy").exists()
    assert latest_checkpoint(out / "checkpoints").name == "step-00000002"
    train = [r for r in read_log(out / "metrics.jsonl") if r["event"] == "train"]
    assert [r["skipped_steps"] for r in train] == [0, 0, 1, 2]
    assert train[2]["loss"] is None and math.isfinite(train[1]["loss"])


def test_nan_weight_is_refused_before_training(checkpoint_factory, pairs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(checkpoint_factory("llama_tied").path, model)
    weights = load_file(model / "model.safetensors")
    name = sorted(k for k in weights if k.endswith("mlp.down_proj.weight"))[0]
    weights[name][0, 0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not finite"):
        dpo_train.train(config(model, pairs, tmp_path / "run"), CPU)
    assert not (tmp_path / "run" / "policy").exists()


# ---------------------------------------------------------------------------- flags and data

@pytest.mark.parametrize("flags, message", [
    (["--device", "tpu"], "--device"), (["--seed", "-1"], "--seed"), (["--seed", "1e23"], "--seed"),
    (["--lr-scheduler", "step"], "--lr-scheduler"),
])
def test_bad_flags_are_refused_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        dpo.parse_args(["--data", "x.jsonl", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(capsys):
    with pytest.raises(SystemExit):
        dpo.parse_args(["--data", "x.jsonl", "--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("kw, flag", [
    (dict(adam_beta2=1.0), "--adam-beta2"), (dict(warmup_ratio=1.0), "--warmup-ratio"),
    (dict(max_bad_steps=0), "--max-bad-steps"), (dict(beta=float("inf")), "--beta"),
    (dict(max_length=10**9), "--max-length"), (dict(epochs=10**24), "--epochs"), (dict(max_steps=2**70), "--max-steps"),
    (dict(max_prompt_length=1), "--max-prompt-length"),  # the tokenizer's BOS alone fills it
])
def test_out_of_range_values_are_named_before_any_model_loads(kw, flag, checkpoint_factory, pairs, tmp_path,
                                                              monkeypatch):
    monkeypatch.setattr(dpo_train, "load_model", None)  # loading a model would be a TypeError
    with pytest.raises(ValueError, match=flag):
        dpo_train.train(config(checkpoint_factory("llama_tied").path, pairs, tmp_path / "run", **kw), CPU)


def test_all_pairs_held_out_says_so(checkpoint_factory, tmp_path):
    data = make_pairs(tmp_path / "pairs.jsonl", n=6)
    with pytest.raises(ValueError, match=r"all 6 usable pairs .*held.out.*--heldout-percent"):
        dpo_train.train(config(checkpoint_factory("llama_tied").path, data, tmp_path / "run", heldout_percent=99.99),
                        CPU)


# ------------------------------------------------------------------------------------- defaults

def test_defaults_are_trls_dpo_defaults():
    """TRL 0.28's DPOConfig (and the transformers TrainingArguments it inherits): beta 0.1, lr 1e-6,
    no warmup, linear decay to 0, AdamW betas (0.9, 0.999), eps 1e-8, no weight decay, clipping at
    1.0, max_length 1024, max_prompt_length 512. The other differences are stated in --help."""
    d = dpo_train.DPOConfig()
    assert (d.beta, d.lr, d.warmup_ratio, d.lr_scheduler, d.min_lr_ratio, d.adam_beta2, d.weight_decay,
            d.grad_clip, d.max_length, d.max_prompt_length, d.loss_type, d.label_smoothing) == \
           (0.1, 1e-6, 0.0, "linear", 0.0, 0.999, 0.0, 1.0, 1024, 512, "sigmoid", 0.0)
    help_text = dpo.__doc__
    for difference in ("epochs", "batch", "gradient_checkpointing", "truncat", "held-out"):
        assert difference in help_text, difference


def test_linear_schedule_is_transformers_one():
    from transformers import get_linear_schedule_with_warmup

    def lrs(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        out = []
        for _ in range(10):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    ours = lrs(lambda opt: dpo_train.lr_schedule(opt, 10, dpo_train.DPOConfig()))
    assert ours == pytest.approx(lrs(lambda opt: get_linear_schedule_with_warmup(opt, 0, 10)), abs=1e-12)


def test_a_run_whose_model_moved_resumes_with_its_cache(checkpoint_factory, pairs, tmp_path):
    """The cache is keyed on content, not on paths: a run that has trained (so cannot recompute the
    reference) resumes from a moved copy of its model, as check_resumable allows."""
    model = tmp_path / "model"
    shutil.copytree(checkpoint_factory("llama_tied").path, model)
    out = tmp_path / "run"
    dpo_train.train(config(model, pairs, out, stop_after_steps=2, save_every=2), CPU)
    cached = reference_of(out)
    model.rename(tmp_path / "model-moved")
    dpo_train.train(config(tmp_path / "model-moved", pairs, out, resume=True, save_every=2), CPU)
    assert torch.equal(reference_of(out), cached)
