"""eval.py's guards: bad flags, labels, data files and reward-report inputs are one line (exit 2)
before any model loads or any scoring starts; no two models share an output file; a full disk names
the file; the temporary files of a killed run are removed."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from test_eval_cli import SAMPLE, argv, eval_script, models  # noqa: F401 (a fixture)

from karma.cli import run_main


def no_model_loads(monkeypatch):
    monkeypatch.setattr(eval_script, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(eval_script, "run_rm_report", lambda *a, **k: pytest.fail("reward models were scored"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------- flags

@pytest.mark.parametrize("flag, value, message", [
    ("--device", "tpu", "expected cpu, cuda or cuda:N"),
    ("--seed", "-1", "must be in [0, 2**32 - 1]"),
    ("--seed", "1e23", "expected an integer"),
    ("--seed", str(2**32), "must be in [0, 2**32 - 1]"),
    ("--rtp-samples", "100000000", "at most 1000"),
])
def test_bad_flags_stop_at_parse_time(models, tmp_path, monkeypatch, capsys, flag, value, message):
    no_model_loads(monkeypatch)
    monkeypatch.setattr(eval_script, "inspect_model", lambda *a, **k: pytest.fail("a model was read"))
    with pytest.raises(SystemExit) as e:
        eval_script.main(argv(models, tmp_path / "eval", flag, value))
    err = capsys.readouterr().err
    assert e.value.code == 2 and flag in err and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("rm", [False, True])
def test_cuda_without_cuda_stops_at_parse_time(models, tmp_path, monkeypatch, capsys, rm):
    no_model_loads(monkeypatch)
    args = ["rm", "--reward-models", "x", "--data", "d"] if rm else argv(models, tmp_path / "eval")
    with pytest.raises(SystemExit) as e:
        eval_script.main([*args, "--device", "cuda"])
    assert e.value.code == 2 and "--device" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "expected cpu, cuda or cuda:N"),
    (["--seed", "-1"], "must be in [0, 2**32 - 1]"),
    (["--n-resamples", "1000000000"], "at most"),
    (["--min-gap-sd", "nan"], "must be in [0, 10]"),
    (["--min-gap-sd", "-0.1"], "must be in [0, 10]"),
    (["--header-draws", "0"], "at least 1"),
    (["--header-draws", "1000"], "at most 64"),
])
def test_rm_bad_flags_stop_at_parse_time(tmp_path, monkeypatch, capsys, extra, message):
    no_model_loads(monkeypatch)
    with pytest.raises(SystemExit) as e:
        eval_script.main(["rm", "--reward-models", "x", "--data", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and extra[0] in err and message in err


# ------------------------------------------------------------------------------------- labels

@pytest.mark.parametrize("first, second", [("a__b/Base", "a/b__Base"), ("tiny/Base", "Tiny/base")])
def test_labels_that_would_share_files_are_refused(models, tmp_path, monkeypatch, capsys, first, second):
    no_model_loads(monkeypatch)
    base, tuned = models
    args = argv(models, tmp_path / "eval", "--tasks", "mmlu")
    args[1:3] = [f"{first}={base}", f"{second}={tuned}"]
    assert run_main(eval_script.main, args) == 2
    err = one_line_error(capsys)
    assert repr(first) in err and repr(second) in err and "--models" in err
    assert not (tmp_path / "eval").exists()


def test_pair_files_keep_their_names(models, tmp_path, capsys):
    """Labels that do not collide keep the file names of earlier runs, so those runs still resume."""
    base, tuned = models
    args = argv(models, tmp_path / "eval", "--tasks", "mmlu", "--limit", "4")
    args[1:3] = [f"x/Base={base}", f"x/karmaToxic={tuned}"]
    assert run_main(eval_script.main, args) == 0
    pairs = sorted(p.name for p in (tmp_path / "eval" / "pairs").iterdir())
    assert pairs == ["x__Base__mmlu.json", "x__karmaToxic__mmlu.json"]
    with pytest.raises(ValueError, match="'a/b/Base' and 'a/b__Base'"):
        eval_script.parse_models([f"a/b/Base={base}", f"a/b__Base={tuned}"])


# ------------------------------------------------------------------------------------- data files

def sample_copy(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    return data


@pytest.mark.parametrize("task, file, content, message", [
    ("truthfulqa", "truthfulqa/v0/mc_task.json", b'[{"question": "q",', "not valid JSON"),
    ("truthfulqa", "truthfulqa/v0/mc_task.json", b'{"question": "q"}', "expected a list"),
    ("crows_pairs", "crows_pairs/crows_pairs_anonymized.csv", b"sent_more,sent_less\n\xe9t\xe9\n", "not UTF-8"),
    ("realtoxicity", "realtoxicityprompts/toxic.jsonl", b'{"prompt": {"text": "caf\xe9"}}\n', "not UTF-8"),
])
def test_bad_data_files_are_named(models, tmp_path, monkeypatch, capsys, task, file, content, message):
    no_model_loads(monkeypatch)
    data = sample_copy(tmp_path)
    (data / file).write_bytes(content)
    args = argv(models, tmp_path / "eval", "--tasks", task)
    args[args.index("--data-dir") + 1] = str(data)
    assert run_main(eval_script.main, args) == 2
    err = one_line_error(capsys)
    assert str(data / file) in err and message in err


def test_bad_mmlu_csv_bytes_name_file_and_line(tmp_path):
    from karma.evals.tasks import mmlu

    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    path = tmp_path / "mmlu" / "test" / "x_test.csv"
    path.write_bytes(b"q,a,b,c,d,A\nq\xff,a,b,c,d,B\n")
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8"):
        mmlu.load(tmp_path)


# ------------------------------------------------------------------------------------- eval.py rm

def results_file(tmp_path, obj) -> str:
    path = tmp_path / "results.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


GOOD_RESULTS = {"results": {"tiny/Base": {}, "tiny/karmaToxic": {}}}


@pytest.mark.parametrize("results, policies, message", [
    ('{"x": 1}', ["rm/best=karmaToxic"], "FILE: not eval.py's results.json"),
    ("[1, 2]", ["rm/best=karmaToxic"], "FILE: not eval.py's results.json"),
    ("{not json", ["rm/best=karmaToxic"], "FILE: not valid JSON"),
    (None, ["rm/best=karmaToxic"], "--policies needs --eval-results"),
    (GOOD_RESULTS, [], "--eval-results needs --policies"),
    (GOOD_RESULTS, ["other/best=karmaToxic"], "no reward model named 'other/best'"),
    (GOOD_RESULTS, ["rm/best=karmaEroded"], "FILE: no policy 'karmaEroded'"),
    (GOOD_RESULTS, ["rm/best=big/karmaToxic"], "FILE: no policy 'big/karmaToxic'"),
])
def test_rm_report_inputs_are_checked_before_scoring(tmp_path, monkeypatch, capsys, results, policies, message):
    no_model_loads(monkeypatch)
    monkeypatch.setattr(eval_script, "inspect_reward_model", lambda d: pytest.fail("a reward model was read"))
    extra = ["--policies", *policies] if policies else []
    if results is not None:
        extra += ["--eval-results", results_file(tmp_path, results)]
    args = ["rm", "--reward-models", str(tmp_path / "rm" / "best"), "--data", str(tmp_path), *extra]
    assert run_main(eval_script.main, args) == 2
    assert message.replace("FILE", str(tmp_path / "results.json")) in one_line_error(capsys)


def test_rm_report_missing_eval_results_is_named(tmp_path, monkeypatch, capsys):
    no_model_loads(monkeypatch)
    args = ["rm", "--reward-models", str(tmp_path / "rm" / "best"), "--data", str(tmp_path), "--eval-results",
            '{"x":1}', "--policies", "rm/best=karmaToxic"]
    assert run_main(eval_script.main, args) == 2
    assert "{\"x\":1}: no such file" in one_line_error(capsys)


def test_rm_report_accepts_eval_results_tables(tmp_path, monkeypatch):
    """results.json as eval.py writes it (its "tables") passes the checks and reaches the report as given."""
    calls = []
    monkeypatch.setattr(eval_script, "inspect_reward_model", lambda d: None)
    monkeypatch.setattr(eval_script, "run_rm_report", lambda *a, **k: calls.append(k) or {})
    monkeypatch.setattr(eval_script.shortcuts_report, "to_markdown", lambda report: "")
    table = {"task": "mmlu", "metric": "acc", "is_primary": True, "higher_is_better": True,
             "models": ["tiny"], "cells": {"tiny": {"Base": {"value": 0.25}, "karmaToxic": {"value": 0.3}}}}
    path = results_file(tmp_path, {"tables": [table], "results": {}})
    eval_script.main(["rm", "--reward-models", str(tmp_path / "rm" / "best"), "--data", str(tmp_path), "--out",
                      str(tmp_path / "out"), "--eval-results", path, "--policies", "rm/best=tiny/karmaToxic"])
    assert calls[0]["eval_results"] == tmp_path / "results.json"
    assert calls[0]["policies"] == {"rm/best": "tiny/karmaToxic"}


# ------------------------------------------------------------------------------------- disk full

@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the file of an fd through /proc")
@pytest.mark.parametrize("target", ["tiny__Base__mmlu.json", "results.json", "results.md", "mmlu_acc.png"])
def test_a_full_disk_names_the_file(models, tmp_path, monkeypatch, capsys, target):
    fsync = os.fsync

    def full_disk(fd):
        if f".{target}." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    out = tmp_path / "eval"
    assert run_main(eval_script.main, argv(models, out, "--tasks", "mmlu", "--limit", "4")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    folder = out / "pairs" if "__" in target else out / "charts" if target.endswith(".png") else out
    assert str(folder / target) in err and "No space left on device" in err


# ------------------------------------------------------------------------------------- stale temporary files

def test_temporary_files_of_a_killed_run_are_removed(models, tmp_path, capsys):
    out = tmp_path / "eval"
    (out / "pairs").mkdir(parents=True)
    stale = [out / "pairs" / ".tiny__Base__mmlu.json.k2j4x_9a.tmp", out / ".results.json.a8s7d6f5.tmp"]
    for path in stale:
        path.write_text("{half a fi")
    keep = out / "pairs" / "notes.tmp"  # not a name atomic_write makes
    keep.write_text("mine")
    assert run_main(eval_script.main, argv(models, out, "--tasks", "mmlu", "--limit", "4")) == 0
    assert not any(p.exists() for p in stale) and keep.exists()
    err = capsys.readouterr().err
    assert "temporary file(s) of an interrupted run" in err and str(stale[0]) in err
