"""eval.py end to end on two tiny models and the shipped sample: outputs, resume, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import karma
from karma.cli import run_main
from karma.tokenizer import copy_tokenizer_files

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "eval-sample"
spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
eval_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_script)


@pytest.fixture(scope="module")
def models(checkpoint_factory, tmp_path_factory):
    """A tiny Base and a perturbed copy standing in for a tuned policy."""
    base = checkpoint_factory("llama_tied").path
    tuned = tmp_path_factory.mktemp("tuned")
    model = karma.load_model(base)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    karma.save_model(model, tuned)
    copy_tokenizer_files(karma.load_tokenizer(base), tuned)
    return base, tuned


def argv(models, out, *extra):
    base, tuned = models
    return ["--models", f"tiny/Base={base}", f"tiny/karmaToxic={tuned}", "--data-dir", str(SAMPLE), "--limit", "8",
            "--rtp-samples", "2", "--device", "cpu", "--out", str(out), *extra]


def test_eval_writes_tables_charts_and_resumes_without_redoing(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    tasks = ["mmlu", "crows_pairs", "msad", "realtoxicity"]
    assert run_main(eval_script.main, argv(models, out, "--tasks", *tasks)) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"tiny/Base", "tiny/karmaToxic"}
    for label in results["results"]:
        assert set(results["results"][label]) == set(tasks)
        assert len(results["results"][label]["mmlu"]["items"]) == 8
    for task in tasks:  # every data file read is recorded with its sha256
        assert results["data_files"][task] and all(len(h) == 64 for h in results["data_files"][task].values())
    table = next(t for t in results["tables"] if t["task"] == "mmlu" and t["is_primary"])
    assert table["variants"] == ["Base", "karmaToxic"] and table["cells"]["tiny"]["karmaToxic"]["vs_base"]["test"]
    markdown = (out / "results.md").read_text()
    assert "| model | Base | karmaToxic |" in markdown and "lexicon-proxy" in markdown
    charts = list((out / "charts").glob("*.png"))
    assert charts and all(c.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for c in charts)
    printed = capsys.readouterr()
    toxicity = [line for line in printed.out.split("\n") if "realtoxicity" in line]
    assert toxicity and all("PROXY" in line for line in toxicity)  # every line with a lexicon number says so
    assert "mmlu_by_subject.png: not drawn: fewer than 2 subject groups of n >= 10" in printed.err  # --limit 8

    # a rerun finds every (model, task) done; a changed --limit redoes them
    monkeypatch.setattr(eval_script, "load_model", lambda *a, **k: pytest.fail("a finished pair was recomputed"))
    assert run_main(eval_script.main, argv(models, out, "--tasks", *tasks)) == 0
    assert "all 4 tasks already done" in capsys.readouterr().out
    monkeypatch.undo()
    before = (out / "pairs" / "tiny__Base__mmlu.json").read_text()
    assert run_main(eval_script.main, argv(models, out, "--tasks", "mmlu", "--limit", "6")) == 0
    assert (out / "pairs" / "tiny__Base__mmlu.json").read_text() != before


@pytest.mark.parametrize("change, message", [
    (["--models", "no-variant=x"], "expected base-model/variant=PATH"),
    (["--data-dir", "EMPTY"], "mmlu"),
    (["--toxicity-scorer", "perspective"], "PERSPECTIVE_API_KEY"),
])
def test_bad_input_is_one_line_before_any_model_is_loaded(models, tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(eval_script, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    args = argv(models, tmp_path / "eval", "--tasks", "mmlu", "realtoxicity")
    if change[0] == "--models":
        args[args.index("--models") + 1:args.index("--models") + 3] = change[1:]
    else:
        (tmp_path / "empty").mkdir()
        args += [change[0], str(tmp_path / "empty") if change[1] == "EMPTY" else change[1]]
    assert run_main(eval_script.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_sample_licenses_travel_with_the_data():
    readme = (SAMPLE / "README.md").read_text()
    for folder in ("mmlu", "truthfulqa", "crows_pairs", "colbert_humor", "msad", "realtoxicityprompts"):
        assert (SAMPLE / folder).is_dir() and f"`{folder}/" in readme
    for license_file in ("truthfulqa/LICENSE", "colbert_humor/LICENSE", "crows_pairs/README.md"):
        assert (SAMPLE / license_file).stat().st_size > 0
    assert sum(f.stat().st_size for f in SAMPLE.rglob("*") if f.is_file()) < 2_000_000


def test_bos_follows_the_tokenizer_and_no_add_bos_recomputes(models, tmp_path, capsys):
    """The tiny Llama's tokenizer adds BOS: by default contexts start with it (lm-eval 0.4.13); with
    --no-add-bos they do not (lm-eval 0.4.9.1), and a pair computed the other way is recomputed
    (the scores themselves: tests/test_eval_lm.py)."""
    out = tmp_path / "eval"
    args = argv(models, out, "--tasks", "mmlu", "--limit", "4")
    pair = out / "pairs" / "tiny__Base__mmlu.json"
    assert run_main(eval_script.main, args) == 0
    with_bos = json.loads(pair.read_text())
    assert run_main(eval_script.main, [*args, "--no-add-bos"]) == 0
    without = json.loads(pair.read_text())
    assert (with_bos["add_bos"], without["add_bos"]) == (True, False)
    assert with_bos["fingerprint"] != without["fingerprint"]
    assert json.loads((out / "results.json").read_text())["config"]["no_add_bos"] is True
    capsys.readouterr()
    assert run_main(eval_script.main, [*args, "--no-add-bos"]) == 0
    assert "all 1 tasks already done" in capsys.readouterr().out
