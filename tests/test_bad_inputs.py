"""Bad inputs to train_rm.py and ppo.py are refused in one line naming the file, key or flag, before
any model loads and before --out holds anything (issue 20, items 14, 15 and 16a):

- checkpoint configs with wrong types or ranges (config.json, tokenizer_config.json,
  generation_config.json, the sharded index, reward_config.json) and weights or a reward head whose
  shapes disagree with them;
- absurd flag values: --device, --seed, and sizes beyond any real run;
- prompt files that the reward model's format cannot render (a system turn, no meta for a
  conditioned reward model), and data without usable examples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import karma
import karma.ppo.trainer as ppo_trainer
from karma.data.prompts import read_prompts
from karma.weights import inspect_model
from test_ppo_trainer import LetterReward
from test_ppo_trainer import config as ppo_config
from test_robustness import base, data, no_loading, prompts, rm_dir  # noqa: F401 (fixtures)
from test_robustness import cli, error_line, ppo_argv, ppo_script, rm_argv, train_rm_script

CPU = karma.distributed.Dist(0, 1, torch.device("cpu"))


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, edit) -> None:
    """Replace the JSON file's content by edit(content) (which may return any JSON value)."""
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def refused(err: str, prog: str, *fragments: str) -> str:
    line = error_line(err, prog)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


# ------------------------------------------------------------ item 14: checkpoint configs, each field

@pytest.mark.parametrize("layout, edit, message", [
    ("llama_tied", lambda c: {**c, "hidden_size": "64"}, "hidden_size: expected a positive integer, got '64'"),
    ("llama_tied", lambda c: {**c, "num_attention_heads": 0},
     "num_attention_heads: expected a positive integer, got 0"),
    ("llama_tied", lambda c: [], "expected a JSON object, got list"),
    ("llama_tied", lambda c: {**c, "vocab_size": True}, "vocab_size: expected a positive integer, got True"),
    ("llama_tied", lambda c: {**c, "eos_token_id": "x"}, "eos_token_id: expected a token id"),
    ("llama_tied", lambda c: {**c, "rms_norm_eps": -1}, "rms_norm_eps: expected a positive number, got -1"),
    ("llama_tied", lambda c: {**c, "num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of the 3"),
    ("llama_tied", lambda c: {**c, "model_type": ["llama"]}, "unsupported model_type ['llama']"),
    ("llama_untied", lambda c: {**c, "rope_scaling": {**c["rope_scaling"], "factor": "8"}},
     "rope_scaling.factor: expected a positive number, got '8'"),
    ("falcon_7b", lambda c: {**c, "num_attention_heads": 3},
     "hidden_size 64 is not a multiple of num_attention_heads 3"),
    ("falcon_7b", lambda c: {**c, "multi_query": "yes"}, "multi_query: expected true or false, got 'yes'"),
    ("neox", lambda c: {**c, "rope_parameters": {**c["rope_parameters"], "partial_rotary_factor": 2}},
     "partial_rotary_factor: expected a number in (0, 1], got 2"),
    ("neox", lambda c: {**c, "rope_parameters": {**c["rope_parameters"], "partial_rotary_factor": 0.1}},
     "1 rotary dims per head (head_dim 16): RoPE needs an even number"),
])
def test_config_json_field_errors_name_file_and_key(layout, edit, message, checkpoint_factory, tmp_path, monkeypatch):
    d = copy(checkpoint_factory(layout).path, tmp_path / "ckpt")
    edit_json(d / "config.json", edit)
    monkeypatch.setattr(karma.weights.CheckpointFiles, "get", lambda *a: pytest.fail("a weight was read"))
    for load in (inspect_model, karma.load_model):
        with pytest.raises(ValueError) as exc:
            load(d)
        assert str(exc.value).startswith(f"{d / 'config.json'}: ") and message in str(exc.value), str(exc.value)
        assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name, edit, message", [
    ("tokenizer_config.json", lambda c: [], "tokenizer_config.json: expected a JSON object, got list"),
    ("special_tokens_map.json", lambda c: "eos", "special_tokens_map.json: expected a JSON object, got str"),
    ("generation_config.json", lambda c: {**c, "eos_token_id": "x"},
     "generation_config.json: eos_token_id: expected a token id (integer >= 0) or a list of token ids, got 'x'"),
    ("generation_config.json", lambda c: {**c, "eos_token_id": [289, None]}, "eos_token_id: expected a token id"),
    ("config.json", lambda c: {**c, "pad_token_id": "0"}, "config.json: pad_token_id: expected a token id"),
])
def test_tokenizer_side_files_are_checked(name, edit, message, checkpoint_factory, tmp_path):
    d = copy(checkpoint_factory("llama_tied").path, tmp_path / "ckpt")
    edit_json(d / name, edit)
    with pytest.raises(ValueError) as exc:
        karma.load_tokenizer(d)
    assert str(exc.value).startswith(str(d)) and message in str(exc.value), str(exc.value)


def test_generation_config_without_eos_is_fine(checkpoint_factory, tmp_path):
    d = copy(checkpoint_factory("llama_tied").path, tmp_path / "ckpt")
    edit_json(d / "generation_config.json", lambda c: {**c, "eos_token_id": None})
    tok = karma.load_tokenizer(d)
    assert tok.stop_ids == [tok.eos_id]


@pytest.mark.parametrize("index, message", [
    ({"metadata": {}}, 'no "weight_map"'),
    ([], 'no "weight_map"'),
    ({"weight_map": ["model-00001-of-00002.safetensors"]}, "weight_map: expected a non-empty object"),
    ({"weight_map": {"lm_head.weight": "../elsewhere.safetensors"}}, "weight_map: expected a non-empty object"),
])
def test_sharded_index_without_a_weight_map_names_the_index(index, message, checkpoint_factory, tmp_path):
    d = copy(checkpoint_factory("llama_tied", sharded=True).path, tmp_path / "ckpt")
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError) as exc:
        inspect_model(d)
    assert str(exc.value).startswith(f"{d / 'model.safetensors.index.json'}: {message}"), str(exc.value)


def test_weight_shapes_are_checked_from_the_headers(checkpoint_factory, tmp_path, monkeypatch):
    """config.json and the weights disagree: inspect_model (what the scripts call before loading)
    finds it from the file headers, reading no tensor."""
    d = copy(checkpoint_factory("llama_tied").path, tmp_path / "ckpt")
    edit_json(d / "config.json", lambda c: {**c, "intermediate_size": 96})
    monkeypatch.setattr(karma.weights.CheckpointFiles, "get", lambda *a: pytest.fail("a weight was read"))
    with pytest.raises(ValueError, match=r"shape mismatch for 'model.layers.0.mlp.gate_proj.weight'.*\(128, 64\).*"
                                         r"config.json implies \(96, 64\)"):
        inspect_model(d)


def test_train_rm_refuses_a_bad_config_before_loading(tmp_path, base, data, capsys, no_loading):
    model = copy(base, tmp_path / "model")
    edit_json(model / "config.json", lambda c: {**c, "hidden_size": "64"})
    rc, _, err = cli(train_rm_script, rm_argv(model, data, tmp_path / "out"), capsys, "train_rm.py")
    assert rc == 2
    refused(err, "train_rm.py", f"{model / 'config.json'}: hidden_size: expected a positive integer, got '64'")
    assert no_loading == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, fragments", [
    (lambda c: {**c, "head_hidden": "64"},
     ["reward_config.json: head_hidden: expected null or an integer in [1, 65536], got '64'"]),
    (lambda c: {**c, "head_hidden": 10**9}, ["head_hidden: expected null or an integer in [1, 65536]"]),
    (lambda c: {**c, "max_length": 0}, ["reward_config.json: max_length: expected a positive integer, got 0"]),
    (lambda c: {**c, "format": "karma"}, ["reward_config.json: format: expected one of generalized, conditioned"]),
    (lambda c: {**c, "base_model": 3}, ["reward_config.json: base_model: expected a string, got 3"]),
    (lambda c: [], ["reward_config.json: expected the keys", "not an object"]),
    (lambda c: {**c, "head_hidden": 32}, ["reward_head.safetensors: tensors", "head_hidden 32", "hidden size 64"]),
])
def test_ppo_refuses_a_bad_reward_model_before_loading(edit, fragments, tmp_path, base, rm_dir, prompts, capsys,
                                                       no_loading):
    rm = copy(rm_dir, tmp_path / "rm")
    edit_json(rm / "reward_config.json", edit)
    rc, _, err = cli(ppo_script, ppo_argv(base, rm, prompts, tmp_path / "out"), capsys, "ppo.py")
    assert rc == 2
    refused(err, "ppo.py", str(rm), *fragments)
    assert no_loading == [] and not (tmp_path / "out").exists()


def test_reward_head_of_the_wrong_width_is_refused_by_the_loader(tmp_path, rm_dir):
    rm = copy(rm_dir, tmp_path / "rm")
    head = load_file(rm / "reward_head.safetensors")
    head = {"0.weight": head["0.weight"][:8], "0.bias": head["0.bias"][:8], "2.weight": head["2.weight"][:, :8],
            "2.bias": head["2.bias"]}  # an 8-wide head; reward_config.json says the backbone's width (64)
    save_file(head, rm / "reward_head.safetensors")
    with pytest.raises(ValueError, match=r"reward_head.safetensors: tensors .*\(8, 64\).*head_hidden None"):
        karma.reward.load_reward_model(rm)


# ------------------------------------------------------------------------- item 15: the scripts' flags

@pytest.mark.parametrize("script, prog", [("train_rm", "train_rm.py"), ("ppo", "ppo.py")])
@pytest.mark.parametrize("flag, value, message", [
    ("--device", "tpu", "argument --device: 'tpu': expected cpu, cuda or cuda:N"),
    ("--device", "cuda:x", "argument --device: 'cuda:x': expected cpu, cuda or cuda:N"),
    ("--seed", "-1", "argument --seed: -1: must be in [0, 2**32 - 1]"),
    ("--seed", "1e23", "argument --seed: '1e23': expected an integer"),
    ("--seed", str(2**32), f"argument --seed: {2**32}: must be in [0, 2**32 - 1]"),
])
def test_device_and_seed_are_checked_when_parsing(script, prog, flag, value, message, tmp_path, base, data, rm_dir,
                                                  prompts, capsys, no_loading):
    module = train_rm_script if script == "train_rm" else ppo_script
    argv = (rm_argv(base, data, tmp_path / "out") if script == "train_rm" else
            ppo_argv(base, rm_dir, prompts, tmp_path / "out"))
    with pytest.raises(SystemExit) as exc:
        cli(module, [*argv, flag, value], capsys, prog)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert no_loading == [] and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_when_parsing(tmp_path, base, data, capsys, no_loading):
    with pytest.raises(SystemExit):
        cli(train_rm_script, [*rm_argv(base, data, tmp_path / "out"), "--device", "cuda"], capsys, "train_rm.py")
    assert "argument --device: 'cuda': no CUDA device is available here" in capsys.readouterr().err
    assert no_loading == []


@pytest.mark.parametrize("flag, value, message", [
    ("--head-hidden", "1000000000", "--head-hidden 1000000000: must be in [1, 65536]"),
    ("--batch-size", "100000000", "--batch-size 100000000: must be in [1, 65536]"),
    ("--micro-batch-size", "100000000", "--micro-batch-size 100000000: must be in [1, 65536]"),
    ("--eval-batch-size", "100000000", "--eval-batch-size 100000000: must be in [1, 65536]"),
])
def test_train_rm_sizes_have_an_upper_bound(flag, value, message, tmp_path, base, data, capsys, no_loading):
    rc, _, err = cli(train_rm_script, rm_argv(base, data, tmp_path / "out", flag, value), capsys, "train_rm.py")
    assert rc == 2
    refused(err, "train_rm.py", f"train_rm.py: error: {message}")
    assert no_loading == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--rollout-batch", "100000000"], "--rollout-batch 100000000: must be in [1, 65536]"),
    (["--minibatch", "100000000"], "--minibatch 100000000: must be in [1, 65536]"),
    (["--micro-batch", "100000000"], "--micro-batch 100000000: must be in [1, 65536]"),
    (["--temperature", "1e-40"], "--temperature 1e-40: must be >= 0 (0 = greedy; otherwise at least 0.001)"),
])
def test_ppo_sizes_have_an_upper_bound(extra, message, tmp_path, base, rm_dir, prompts, capsys, no_loading):
    rc, _, err = cli(ppo_script, ppo_argv(base, rm_dir, prompts, tmp_path / "out", *extra), capsys, "ppo.py")
    assert rc == 2
    refused(err, "ppo.py", f"ppo.py: error: {message}")
    assert no_loading == [] and not (tmp_path / "out").exists()


# ----------------------------------------------------------- item 16a: prompts and data, checked first

SYSTEM_PROMPT = {"id": "s", "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]}


def test_ppo_refuses_a_system_turn_before_loading_and_leaves_nothing(tmp_path, base, rm_dir, prompts, capsys,
                                                                     no_loading):
    path = tmp_path / "chat.jsonl"
    path.write_text(prompts.read_text() + json.dumps(SYSTEM_PROMPT) + "\n")
    n = len(prompts.read_text().splitlines()) + 1
    rc, _, err = cli(ppo_script, ppo_argv(base, rm_dir, path, tmp_path / "out"), capsys, "ppo.py")
    assert rc == 2
    refused(err, "ppo.py", f"{path}:{n}: messages[0]: role 'system' has no form in the reward model's text format",
            "put a system message's text into the first user turn")
    assert no_loading == [] and not (tmp_path / "out").exists()


def test_ppo_with_a_conditioned_reward_model_needs_meta_on_every_prompt(tmp_path, base, rm_dir, prompts, capsys,
                                                                        no_loading):
    rm = copy(rm_dir, tmp_path / "rm")
    edit_json(rm / "reward_config.json", lambda c: {**c, "format": "conditioned"})
    rc, _, err = cli(ppo_script, ppo_argv(base, rm, prompts, tmp_path / "out"), capsys, "ppo.py")
    assert rc == 2
    refused(err, "ppo.py", f"{prompts}:1: the conditioned reward model needs \"meta\"", '"meta" is None')
    assert no_loading == [] and not (tmp_path / "out").exists()


def test_custom_reward_format_decides_the_prompt_check(tmp_path, base):
    """train(reward=...) checks the prompts against that reward's format (no reward-model dir)."""
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(SYSTEM_PROMPT) + "\n")
    with pytest.raises(ValueError, match=r"chat.jsonl:1: messages\[0\]: role 'system'"):
        ppo_trainer.train(ppo_config(base, path, tmp_path / "out", rollouts=1), CPU, reward=LetterReward())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, fmt, message", [
    ("[1, 2]", None, 'a prompt needs a string "id"'),
    ('{"id": 3, "messages": [{"role": "user", "content": "x"}]}', None, '"id" is 3'),
    ('{"id": "a", "messages": "hello"}', None, "\"messages\" is 'hello'"),
    ('{"id": "a", "messages": [{"role": "user", "content": 5}]}', None,
     "messages[0] is {'role': 'user', 'content': 5}"),
    (json.dumps(SYSTEM_PROMPT), "generalized", "messages[0]: role 'system' has no form"),
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}]}', "conditioned", '"meta" is None'),
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}], "meta": {"subreddit": "x", "created_utc": "1"}}',
     "conditioned", "\"meta\" is {'subreddit': 'x', 'created_utc': '1'}"),
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}], "meta": {"subreddit": "x", "created_utc": 10**30}}'
     .replace("10**30", str(10**30)), "conditioned", f"created_utc {10**30} is not a representable time"),
])
def test_read_prompts_names_file_line_and_the_bad_value(line, fmt, message, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "ok", "messages": [{"role": "user", "content": "fine"}], '
                    '"meta": {"subreddit": "x", "created_utc": 1420070400}}\n' + line + "\n")
    with pytest.raises(ValueError) as exc:
        read_prompts(path, fmt=fmt)
    assert str(exc.value).startswith(f"{path}:2: ") and message in str(exc.value), str(exc.value)


def test_system_turns_stay_readable_without_a_format(tmp_path):
    """python -m karma renders prompts as ChatML, which has a system role: only PPO's check refuses it."""
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(SYSTEM_PROMPT) + "\n")
    assert read_prompts(path) == [SYSTEM_PROMPT]


def test_train_rm_without_usable_examples_is_refused_before_loading(tmp_path, base, capsys, no_loading):
    """Every line of the data is unusable: refused before the model loads, and no config.json."""
    use = tmp_path / "data"
    use.mkdir()
    for split in ("train", "heldout"):
        (use / f"{split}-00000.jsonl").write_text(json.dumps({"messages": [], "response": "x", "label": 1}) + "\n")
    rc, _, err = cli(train_rm_script, rm_argv(base, use, tmp_path / "out"), capsys, "train_rm.py")
    assert rc == 2
    refused(err, "train_rm.py", f"{use}: no usable train or held-out examples")
    assert no_loading == [] and not (tmp_path / "out").exists()
