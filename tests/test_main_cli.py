"""python -m karma: one prompt as before, --compare (base vs tuned side by side), --prompts/--n, --out,
stop at <|im_end|> with --chatml, reproducible with a seed, greedy = karma.generate.

Two tiny models: the llama_tied fixture ("base") and a copy with perturbed weights ("tuned"), each
with its own tokenizer files. main() runs in-process (no interpreter start-up per call).
"""

from __future__ import annotations

import json

import pytest
import torch

import karma
from karma.__main__ import main
from karma.cli import run_main
from karma.data.format import render_prompt
from karma.tokenizer import copy_tokenizer_files

MESSAGES = [
    [{"role": "user", "content": "Hello world! Is this a tiny corpus?"}],
    [{"role": "user", "content": "What is a tokenizer?"}, {"role": "assistant", "content": "A tiny one."},
     {"role": "user", "content": "Hello again."}],
    [{"role": "user", "content": "This is the third prompt."}],
    [{"role": "user", "content": "And a fourth one, never read with --n 3."}],
]


@pytest.fixture(scope="module")
def models(checkpoint_factory, tmp_path_factory):
    """(base dir, tuned dir): the fixture and a copy whose weights carry seeded noise."""
    base = checkpoint_factory("llama_tied").path
    tuned = tmp_path_factory.mktemp("tuned")
    model = karma.load_model(str(base))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.float().std().clamp_min(1e-3))
    karma.save_model(model, tuned)
    copy_tokenizer_files(karma.load_tokenizer(str(base)), tuned)
    return str(base), str(tuned)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "messages": m}) + "\n" for i, m in enumerate(MESSAGES)))
    return str(path)


def cli(capsys, *argv) -> str:
    main([*argv, "--device", "cpu"])
    return capsys.readouterr().out


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_compare_prints_both_headers_and_replies(models, capsys, tmp_path):
    base, tuned = models
    out = cli(capsys, base, "Hello world", "--compare", tuned, "--max-new-tokens", "8", "--temperature", "1",
              "--out", str(tmp_path / "r.jsonl"))
    rows = read_rows(tmp_path / "r.jsonl")
    assert [(r["label"], r["model"]) for r in rows] == [("base", base), ("tuned", tuned)]
    assert rows[0]["reply"] != rows[1]["reply"]  # the perturbed copy is a different model
    lines = out.splitlines()
    assert lines[:2] == ["=== prompt 1/1: prompt ===", "Hello world"]
    assert out.index(f"--- base: {base} ---") < out.index(f"--- tuned: {tuned} ---")
    for r in rows:
        assert r["reply"].strip() in out
        assert f"[{r['tokens']} tokens, {'stopped at EOS' if r['ended_eos'] else 'hit --max-new-tokens'}]" in out


def test_same_seed_same_output(models, prompts_file, capsys):
    base, tuned = models
    argv = [base, "--prompts", prompts_file, "--compare", tuned, "--max-new-tokens", "8", "--temperature", "1"]
    first = cli(capsys, *argv, "--seed", "3")
    assert cli(capsys, *argv, "--seed", "3") == first
    assert cli(capsys, *argv, "--seed", "4") != first  # the seed does drive the sampling


def test_prompts_n_out_rows(models, prompts_file, capsys, tmp_path):
    base, tuned = models
    out_file = tmp_path / "sub" / "replies.jsonl"  # the folder is created
    out = cli(capsys, base, "--prompts", prompts_file, "--n", "2", "--compare", tuned, "--max-new-tokens", "5",
              "--out", str(out_file))
    rows = read_rows(out_file)
    assert [(r["prompt_id"], r["label"]) for r in rows] == [("p0", "base"), ("p1", "base"),
                                                            ("p0", "tuned"), ("p1", "tuned")]
    for r in rows:
        assert set(r) == {"prompt_id", "prompt", "model", "reply", "tokens", "ended_eos", "label"}
        assert r["prompt"] == render_prompt(MESSAGES[int(r["prompt_id"][1])])  # plain "User: ...\n\nAssistant:"
        assert 1 <= r["tokens"] <= 5 and isinstance(r["ended_eos"], bool) and (r["ended_eos"] or r["tokens"] == 5)
    assert "=== prompt 1/2: p0 ===" in out and "=== prompt 2/2: p1 ===" in out and "p2" not in out
    assert "User: What is a tokenizer?\n\nAssistant: A tiny one.\n\nUser: Hello again.\n\nAssistant:" in out

    cli(capsys, base, "--prompts", prompts_file, "--max-new-tokens", "1", "--out", str(out_file))
    assert [r["prompt_id"] for r in read_rows(out_file)] == ["p0", "p1", "p2"]  # --n defaults to 3: the first 3


def test_chatml_renders_all_messages_and_stops_at_im_end(models, prompts_file, capsys, tmp_path, monkeypatch):
    from tokenizers import Tokenizer

    chat = tmp_path / "chat"  # the base model with <|im_end|> added to its tokenizer
    karma.save_model(karma.load_model(models[0]), chat)
    copy_tokenizer_files(karma.load_tokenizer(models[0]), chat)
    tok = Tokenizer.from_file(str(chat / "tokenizer.json"))
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(chat / "tokenizer.json"))
    im_end = tok.token_to_id("<|im_end|>")

    import karma.__main__ as cli_module
    seen = []
    monkeypatch.setattr(cli_module, "generate",
                        lambda *a, **kw: seen.append(kw["stop_ids"]) or karma.generate(*a, **kw))
    out = cli(capsys, str(chat), "--prompts", prompts_file, "--n", "2", "--chatml", "--max-new-tokens", "2")
    assert ("<|im_start|>user\nWhat is a tokenizer?<|im_end|>\n<|im_start|>assistant\nA tiny one.<|im_end|>\n"
            "<|im_start|>user\nHello again.<|im_end|>\n<|im_start|>assistant\n") in out
    eos = karma.load_tokenizer(str(chat)).stop_ids
    assert seen == [eos + [im_end]] * 2
    cli(capsys, str(chat), "hi", "--max-new-tokens", "1")  # without --chatml <|im_end|> is just a token
    cli(capsys, models[0], "hi", "--chatml", "--max-new-tokens", "1")  # a tokenizer without it: unchanged
    assert seen[2:] == [eos, eos]


def test_temperature_zero_is_karma_generate_greedy(models, prompts_file, capsys, tmp_path):
    base, tuned = models
    cli(capsys, base, "--prompts", prompts_file, "--n", "2", "--compare", tuned, "--max-new-tokens", "12",
        "--out", str(tmp_path / "r.jsonl"))
    for row in read_rows(tmp_path / "r.jsonl"):
        model, tok = karma.load_model(row["model"]), karma.load_tokenizer(row["model"])
        ids, mask = tok.encode_batch([row["prompt"]])
        out = karma.generate(model, ids, mask, max_new_tokens=12, temperature=0, stop_ids=tok.stop_ids)
        n = int(out.mask.sum())
        expected = (tok.decode(out.tokens[0, :n]), n, bool(out.ended[0]))
        assert (row["reply"], row["tokens"], row["ended_eos"]) == expected


def test_prompt_after_flags(models, capsys):
    """`make generate` runs `python -m karma MODEL --chatml "PROMPT"`: the prompt may follow the flags."""
    reply = lambda out: out.rstrip("\n").rsplit("\n\n", 1)[0]  # without the timing line
    assert reply(cli(capsys, models[0], "--max-new-tokens", "4", "Hello world")) == \
        reply(cli(capsys, models[0], "Hello world", "--max-new-tokens", "4"))


def test_single_prompt_keeps_the_original_output(models, capsys):
    out = cli(capsys, models[0], "Hello world", "--max-new-tokens", "4")
    text, stats = out.rstrip("\n").rsplit("\n\n", 1)
    assert text.startswith("Hello world") and "===" not in out and "---" not in out
    assert stats.startswith(f"[{models[0]}: ") and " tok/s); " in stats
    assert stats.endswith(("; stopped at EOS]", "; hit --max-new-tokens]"))


@pytest.mark.parametrize("argv, message", [
    ([], "give a PROMPT or --prompts FILE.jsonl"),
    (["hello", "--prompts", "p.jsonl"], "give a PROMPT or --prompts FILE.jsonl, not both"),
    (["--prompts", "p.jsonl", "--n", "0"], "--n 0 must be >= 1"),
    (["hello", "--top-p", "1.5"], "--top-p 1.5 must be in (0, 1]"),  # before any model is loaded
    (["hello", "--top-k", "-1"], "--top-k -1 must be >= 0"),
])
def test_usage_errors(models, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main([models[0], *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1] == f"python -m karma: error: {message}"


def test_bad_prompts_file_is_one_line(models, capsys, tmp_path):
    assert run_main(main, [models[0], "--prompts", str(tmp_path / "missing.jsonl")], prog="python -m karma") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m karma: error: {tmp_path / 'missing.jsonl'}: no such file")
    assert err.count("\n") == 1  # one line, no traceback


@pytest.mark.parametrize("argv, message", [
    (["hello", "--device", "tpu"], "argument --device: 'tpu': expected cpu, cuda or cuda:N"),
    (["hello", "--seed", "-1"], "argument --seed: -1: must be in [0, 2**32 - 1]"),
    (["hello", "--seed", "1e23"], "argument --seed: '1e23': expected an integer"),
])
def test_bad_device_and_seed_stop_at_parse_time(models, capsys, monkeypatch, argv, message):
    import karma.__main__ as cli_module
    monkeypatch.setattr(cli_module, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as e:
        main([models[0], *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1] == f"python -m karma: error: {message}"


@pytest.mark.parametrize("case", ["compare", "out", "max_new_tokens"])
def test_bad_compare_out_and_length_are_one_line_before_any_model_loads(models, capsys, monkeypatch, tmp_path, case):
    """--compare's model, --out and --max-new-tokens (against each model's positions) are checked
    before the first model loads, not after its replies."""
    import karma.__main__ as cli_module
    monkeypatch.setattr(cli_module, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv, message = {
        "compare": (["--compare", str(tmp_path / "missing")], str(tmp_path / "missing")),
        "out": (["--out", str(tmp_path)], f"--out {tmp_path}: is a directory"),
        "max_new_tokens": (["--max-new-tokens", "100000000"], "--max-new-tokens 100000000: more than the 256"),
    }[case]
    assert run_main(main, [models[0], "hello", "--device", "cpu", *argv], prog="python -m karma") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
