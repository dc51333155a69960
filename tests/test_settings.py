"""Each program's settings are one dataclass (karma.settings): every field has a help and a flag whose
--help shows its default, a --config TOML file fills the same dataclass and flags override it, a bad
key, type or value is one line naming the file and key (or the flag), and the command lines of the
README and the Makefile parse to the configs they always gave."""

import ast
import dataclasses
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import dpo
import ppo
import train_rm
from karma.cli import run_main
from karma.dpo_train import DPOConfig
from karma.ppo.trainer import PPOConfig
from karma.reward_train import TrainRMConfig
from karma.run import config_dict
import karma.settings
from karma.settings import flag_of

ROOT = Path(__file__).resolve().parents[1]

SCRIPTS = [(ppo, PPOConfig, []), (train_rm, TrainRMConfig, []), (dpo, DPOConfig, ["--data", "pairs.jsonl"])]


def shown_default(f: dataclasses.Field) -> str:
    """How --help states a field's default."""
    if f.metadata.get("required"):
        return "(required, here or in --config)"
    if f.default is None:
        return f"(default: {f.metadata.get('unset') or 'none'})"
    if isinstance(f.default, bool):
        return "(default: on; this flag turns it off)" if f.default else "(default: off)"
    return f"(default: {f.default})"


@pytest.mark.parametrize("module, cls, needed", SCRIPTS)
def test_every_setting_has_one_line_help_and_a_flag_showing_its_default(module, cls, needed, capsys):
    with pytest.raises(SystemExit) as e:
        module.parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(cls):
        help_ = f.metadata["help"]
        assert help_ and "\n" not in help_ and "(default" not in help_, f.name  # the default is never hand-written
        assert f" {flag_of(f)} " in text, f.name
        assert f"{' '.join(help_.split())} {shown_default(f)}" in text, f.name


@pytest.mark.parametrize("module, cls, needed", SCRIPTS)
def test_the_defaults_are_the_dataclass(module, cls, needed):
    cfg, device = module.parse_args(needed)
    assert device is None
    expected = cls(data=[Path("pairs.jsonl")]) if cls is DPOConfig else cls()
    assert cfg == expected and config_dict(cfg) == config_dict(expected)


# ------------------------------------------------------------- the Makefile's and the README's command lines

def demo_argv(script: str, *make_args: str) -> list[str]:
    """The arguments the Makefile's demo-train gives `script`, read from `make -n` (so tests follow the
    Makefile); make_args override its variables (DEMO_TRAIN_PROMPTS=64)."""
    plan = subprocess.run(["make", "-n", "--no-print-directory", "demo-train", *make_args], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.replace("\\\n", " ")
    line = next(line for line in plan.splitlines() if f" {script} " in line)
    return shlex.split(line.split(f" {script} ", 1)[1])


def test_the_demo_ppo_command_line():
    """ppo.py with DEMO_PPO at its defaults gives this configuration."""
    argv = demo_argv("ppo.py")
    expected = PPOConfig(model="smollm2-135m", reward_model=Path("runs/demo/rm/best"), data=Path("runs/demo/data"),
                         out_dir=Path("runs/demo/ppo"), rollouts=12, rollout_batch=32, minibatch=32, micro_batch=8,
                         ppo_epochs=2, max_new_tokens=16, max_prompt_tokens=64, lr=2e-4, value_lr=1e-4, lam=1.0,
                         normalize_scores=True, init_kl_coef=0.03, min_reply_chars=10, value_init="policy",
                         value_trainable_layers=8, activation_checkpointing=True, cpu_bf16=True, eval_every=4,
                         eval_prompts=16, keep_checkpoints=0, seed=0)
    assert ppo.parse_args(argv) == (expected, None)


def test_the_demo_trains_ppo_on_64_prompts_unless_told():
    """The demo's data_prep.py writes 64 of the train split's Reddit prompts; DEMO_TRAIN_PROMPTS= (empty) all."""
    assert demo_argv("data_prep.py") == ["--input", "data/sample", "--out", "runs/demo/data", "--max-prompts", "64"]
    assert demo_argv("data_prep.py", "DEMO_TRAIN_PROMPTS=") == ["--input", "data/sample", "--out", "runs/demo/data"]


def test_the_readme_ppo_command_lines():
    argv = "--model pythia-1b --reward-model runs/rm/best --prompts ultrachat --resume --device cpu".split()
    expected = PPOConfig(model="pythia-1b", reward_model=Path("runs/rm/best"), prompts="ultrachat", resume=True)
    assert ppo.parse_args(argv) == (expected, "cpu")
    argv = ["--no-whiten-advantages", "--kl", "fixed", "--kl-estimator", "k3", "--top-k", "5", "--top-p", "0.9",
            "--missing-eos-penalty", "1", "--stop-after-rollouts", "3"]
    expected = PPOConfig(whiten_advantages=False, kl="fixed", kl_estimator="k3", top_k=5, top_p=0.9,
                         missing_eos_penalty=1.0, stop_after_rollouts=3)
    assert ppo.parse_args(argv) == (expected, None)


def test_the_demo_and_readme_train_rm_command_lines():
    expected = TrainRMConfig(model="smollm2-135m", data=Path("runs/demo/data"), out_dir=Path("runs/demo/rm"),
                             max_length=192, max_steps=24, lr=1e-4, eval_every=24, save_every=24, micro_batch_size=4,
                             eval_batch_size=8, keep_checkpoints=0, cpu_bf16=True)
    assert train_rm.parse_args(demo_argv("train_rm.py")) == (expected, None)
    argv = "--model llama-3.2-1b --data runs/data --out runs/rm-eroded --format conditioned".split()
    expected = TrainRMConfig(model="llama-3.2-1b", data=Path("runs/data"), out_dir=Path("runs/rm-eroded"),
                             format="conditioned")
    assert train_rm.parse_args(argv) == (expected, None)


def test_the_readme_dpo_command_line():
    argv = "--model llama-3.2-1b --data runs/pairs/pairs-sup.jsonl more/ --out runs/dpo-sup --loss-type ipo".split()
    expected = DPOConfig(model="llama-3.2-1b", data=[Path("runs/pairs/pairs-sup.jsonl"), Path("more")],
                         out_dir=Path("runs/dpo-sup"), loss_type="ipo")
    assert dpo.parse_args(argv) == (expected, None)


# ---------------------------------------------------------------------------------- --config

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_toml_file_sets_settings_and_a_flag_overrides_one(tmp_path):
    toml = write(tmp_path / "run.toml", 'lr = 2e-6\ninit_kl_coef = 0.1\nout_dir = "runs/x"\nwhiten_advantages = false\n'
                                        'kl_horizon = 500\n')
    cfg, _ = ppo.parse_args(["--config", str(toml), "--init-kl-coef", "0.05"])
    assert cfg == PPOConfig(lr=2e-6, init_kl_coef=0.05, out_dir=Path("runs/x"), whiten_advantages=False,
                            kl_horizon=500.0)
    assert isinstance(cfg.kl_horizon, float)  # an integer in the file, a float setting: as --kl-horizon 500 gives


def test_a_toml_file_can_give_dpos_required_data(tmp_path):
    toml = write(tmp_path / "dpo.toml", 'data = ["a.jsonl", "b"]\nbeta = 0.2\n')
    assert dpo.parse_args(["--config", str(toml)])[0] == DPOConfig(data=[Path("a.jsonl"), Path("b")], beta=0.2)


def test_dpo_without_data_is_argparses_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        dpo.parse_args([])
    assert e.value.code == 2
    assert "error: the following arguments are required: --data" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("lrr = 1e-6\n", "'lrr' is not a setting (did you mean 'lr'?)"),
    ("rollouts = 1.5\n", "rollouts = 1.5: expected an integer"),
    ("rollouts = true\n", "rollouts = True: expected an integer"),
    ('lr = "fast"\n', "lr = 'fast': expected a number"),
    ("lr = -1\n", "lr = -1.0: must be > 0"),
    ('kl = "sometimes"\n', "kl = sometimes: must be one of adaptive, fixed"),
    ("seed = -1\n", "seed = -1: must be in [0, 2**32 - 1]"),
    ("rollouts = \n", "not valid TOML"),
])
def test_a_bad_toml_file_is_one_line_naming_file_and_key(text, message, tmp_path, capsys):
    toml = write(tmp_path / "run.toml", text)
    assert run_main(ppo.main, ["--config", str(toml)], prog="ppo.py") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ppo.py: error: {toml}: {message}"), err


def test_a_flag_given_overrides_a_bad_value_in_the_file(tmp_path):
    toml = write(tmp_path / "rm.toml", "max_length = 8\n")
    assert train_rm.parse_args(["--config", str(toml), "--max-length", "64"])[0] == TrainRMConfig(max_length=64)


def test_a_missing_toml_file_is_one_line(tmp_path):
    with pytest.raises(OSError, match=f"--config {tmp_path / 'none.toml'}: No such file"):
        ppo.parse_args(["--config", str(tmp_path / "none.toml")])


# --------------------------------------------------------------------------------- ranges

@pytest.mark.parametrize("module, argv, message", [
    (ppo, ["--init-kl-coef", "-1"], "--init-kl-coef -1.0: must be >= 0"),
    (ppo, ["--lr", "0"], "--lr 0.0: must be > 0"),
    (ppo, ["--lr", "inf"], "--lr inf: must be > 0"),
    (ppo, ["--rollout-batch", "0"], "--rollout-batch 0: must be at least 1"),
    (ppo, ["--rollout-batch", "100000"], "--rollout-batch 100000: must be in [1, 65536]"),
    (ppo, ["--missing-eos-penalty", "nan"], "--missing-eos-penalty nan: must be a finite number"),
    (train_rm, ["--max-length", "8"], "--max-length 8: must be at least 32 tokens"),
    (dpo, ["--data", "x", "--adam-beta2", "1"], "--adam-beta2 1.0: must be in [0, 1)"),
])
def test_an_out_of_range_flag_is_refused_when_parsing(module, argv, message):
    with pytest.raises(ValueError) as e:
        module.parse_args(argv)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_value_outside_its_choices_is_refused_without_the_command_line():
    """The choices are part of a setting's range for a config built in Python too (the tests, bench/)."""
    with pytest.raises(ValueError, match="--kl-estimator k4: must be one of k1, k2, k3, abs"):
        PPOConfig(kl_estimator="k4").check()


def test_settings_need_only_the_standard_library():
    """Reading settings loads no model, tensor or checkpoint code."""
    tree = ast.parse(Path(karma.settings.__file__).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in modules} <= sys.stdlib_module_names
