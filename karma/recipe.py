"""The paper as one recipe: every stage of KARMA's experiment grid from config files, in order.

    python -m karma.recipe configs/paper.toml plan       # stages, commands, GPUs, memory, hours
    python -m karma.recipe configs/paper.toml scripts    # torchrun (one node, several nodes) and Slurm files
    python -m karma.recipe configs/toy/paper.toml run    # run them here; skips finished ones, resumes the rest
    python -m karma.recipe configs/toy/paper.toml report # the paper's tables from the results

A recipe (a TOML file, see configs/paper.toml) names one config file per stage program and the grid:
policies x variants. It expands into these stages, in dependency order:

    data                     data_prep.py            Reddit examples, Reddit and UltraChat prompts
    rm-<name>                train_rm.py             one per reward model (generalized, conditioned)
    model/<policy>           the policy's `build`    only for a policy built here (the toy's tiny models)
    ppo/<policy>/<variant>   ppo.py                  every policy x variant, with the variant's prompts and RM
    eval                     eval.py                 every policy's Base and variants, across-models tests
    rm-report                eval.py rm              the RMs' held-out metrics and shortcuts, beside their policies

A stage's command is its program, `--config` with its TOML file (the settings all cells share), and
flags for what the grid decides (model, prompts, reward model, output dir), so the command line shows
where a cell sits in the grid. Every output lives under the recipe's `out`.

`run` (on this machine, stages one after another): a stage whose output is complete is skipped (its
marker file exists and it was made by the same command and config contents, recorded in
<out>/stages/); a trainer stage that started is continued with the program's own --resume; the first
failure stops the run and names its log. Each stage's output goes to <out>/logs/<stage>.log, and the
terminal gets a line at least every HEARTBEAT_S seconds. Before any stage starts, every stage's
command line is parsed by its program's own parser, so a typo in the last config fails at once.
"""

import argparse
import hashlib
import importlib
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from karma.cli import DefaultsHelpFormatter, add_debug_flag, run_main
from karma.evals.report import mark
from karma.evals.stats import across_models_test
from karma.files import atomic_write, atomic_write_json, read_json
from karma.ppo.trainer import PPOConfig
from karma.reward_train import TrainRMConfig
from karma.settings import flag_of, read_settings, read_toml

HEARTBEAT_S = 30.0  # the terminal hears from a running stage at least this often
VARIANT_PROMPTS = ("reddit", "ultrachat")

# ------------------------------------------------------------------------------------------ recipe
# The recipe's tables and their keys: (required, optional). An unknown key is an error naming it.
SCHEMA = {
    "": ({"out", "data", "reward_models", "ppo", "variants", "policies", "eval"},
         {"hardware", "slurm", "rm_report"}),
    "hardware": (set(), {"device", "gpu_memory_gib", "gpus_per_node"}),
    "slurm": (set(), {"time_margin", "lines"}),
    "data": ({"config"}, {"records", "train_examples"}),
    "reward_model": ({"config"}, {"gpus"}),
    "ppo": ({"config"}, set()),
    "variant": ({"prompts", "reward_model"}, set()),
    "policy": ({"model"}, {"gpus", "settings", "build", "params"}),
    "eval": ({"config"}, {"gpus", "items"}),
    "rm_report": ({"config"}, {"gpus", "policies"}),
}


def check_keys(path: Path, where: str, table, kind: str) -> dict:
    """`table` (a TOML table) has the keys SCHEMA[kind] requires and no others."""
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [{where}] must be a table, got {table!r:.60}")
    required, optional = SCHEMA[kind]
    name = f"[{where}]" if where else "the top level"
    unknown = sorted(set(table) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ValueError(f"{path}: {name}: unknown key {unknown[0]!r} (allowed: {allowed})")
    missing = sorted(required - set(table))
    if missing:
        raise ValueError(f"{path}: {name}: missing key {missing[0]!r}")
    return table


def load_recipe(path) -> dict:
    """The recipe TOML, its keys checked; the stage configs it names must exist."""
    path = Path(path)
    recipe = read_toml(path, label=str(path))
    check_keys(path, "", recipe, "")
    for name in ("hardware", "slurm", "data", "ppo", "eval", "rm_report"):
        if name in recipe:
            check_keys(path, name, recipe[name], name)
    for kind, plural in (("reward_model", "reward_models"), ("variant", "variants"), ("policy", "policies")):
        if not recipe[plural]:
            raise ValueError(f"{path}: [{plural}] is empty")
        for key, table in recipe[plural].items():
            check_keys(path, f"{plural}.{key}", table, kind)
    for key, v in recipe["variants"].items():
        if v["prompts"] not in VARIANT_PROMPTS:
            raise ValueError(f"{path}: [variants.{key}] prompts = {v['prompts']!r}: must be one of {VARIANT_PROMPTS}")
        if v["reward_model"] not in recipe["reward_models"]:
            raise ValueError(f"{path}: [variants.{key}] reward_model = {v['reward_model']!r}: not one of "
                             f"[reward_models] ({', '.join(recipe['reward_models'])})")
    for key in recipe["policies"]:
        if "/" in key or "=" in key:
            raise ValueError(f"{path}: [policies.{key}]: a policy's name is a row label: no '/' or '='")
    tables = [(f"{plural}.{k}", t) for plural in ("reward_models", "policies") for k, t in recipe[plural].items()]
    for where, t in tables + [(s, recipe[s]) for s in ("eval", "rm_report") if s in recipe]:
        if not (isinstance(t.get("gpus", 0), int) and t.get("gpus", 0) >= 0):
            raise ValueError(f"{path}: [{where}] gpus = {t['gpus']!r}: expected a whole number >= 0")
    for rm in recipe.get("rm_report", {}).get("policies", {}):
        if rm not in recipe["reward_models"]:
            raise ValueError(f"{path}: [rm_report] policies: {rm!r} is not one of [reward_models]")
    configs = [recipe[s]["config"] for s in ("data", "ppo", "eval", "rm_report") if s in recipe]
    configs += [t["config"] for t in recipe["reward_models"].values()]
    for config in configs:
        if not Path(config).is_file():
            raise FileNotFoundError(f"{path}: config {config!r} not found (paths are relative to where you run, "
                                    f"the repository root)")
    recipe["_path"] = path
    return recipe


# ------------------------------------------------------------------------------------------ stages

@dataclass
class Stage:
    name: str  # data, rm-<name>, model/<policy>, ppo/<policy>/<variant>, eval, rm-report
    kind: str  # data | rm | build | ppo | eval | rm-report
    program: list[str]  # what follows `python`: ["ppo.py"], ["eval.py", "rm"], ["-m", "karma.tiny", ...]
    args: list[str]
    out: Path  # its output directory (or the model it builds)
    done: Path  # exists once the stage has finished (its program writes it last, atomically)
    needs: list[str]
    configs: list[Path] = field(default_factory=list)  # TOML files it reads: part of its identity
    gpus: int = 0  # 0: no GPU
    resumable: bool = False  # a trainer: --resume continues it
    settings: dict = field(default_factory=dict)  # a trainer's settings from its config, for the estimates
    model: str = ""  # the model it trains, for the estimates
    params: float | None = None  # its parameter count, where the recipe gives it
    rm_model: str = ""  # PPO: the base model of its reward model

    def command(self) -> list[str]:
        """The stage's command line as plan shows it and stages/ records it."""
        return ["python", *self.program, *self.args]


def expand(recipe: dict) -> list[Stage]:
    """The recipe's stages, in dependency order: data, the reward models, the models to build, PPO for
    every policy x variant, the evaluation, the reward-shortcut report."""
    stages = [data_stage(recipe)]
    stages += [rm_stage(recipe, key) for key in recipe["reward_models"]]
    stages += [build_stage(recipe, name) for name, p in recipe["policies"].items() if "build" in p]
    stages += [ppo_stage(recipe, name, variant) for name in recipe["policies"] for variant in recipe["variants"]]
    stages.append(eval_stage(recipe, needs=[s.name for s in stages if s.kind in ("ppo", "build")]))
    if "rm_report" in recipe:
        stages.append(rm_report_stage(recipe))
    return stages


def data_stage(recipe: dict) -> Stage:
    config, out = recipe["data"]["config"], Path(recipe["out"]) / "data"
    return Stage("data", "data", ["data_prep.py"], ["--config", config, "--out", str(out)], out, out / "stats.json",
                 [], [Path(config)])


def rm_stage(recipe: dict, key: str) -> Stage:
    t, out = recipe["reward_models"][key], Path(recipe["out"]) / f"rm-{key}"
    settings = read_settings(TrainRMConfig, Path(t["config"]))
    return Stage(f"rm-{key}", "rm", ["train_rm.py"],
                 ["--config", t["config"], "--data", str(Path(recipe["out"]) / "data"), "--out", str(out)],
                 out, out / "final" / "reward_config.json", ["data"], [Path(t["config"])], gpus=t.get("gpus", 1),
                 resumable=True, settings=settings, model=settings.get("model", TrainRMConfig.model))


def build_stage(recipe: dict, name: str) -> Stage:
    """model/<policy>: the policy's `build` command (`python ...`, {model} = its model path)."""
    p = recipe["policies"][name]
    words = shlex.split(p["build"].format(model=p["model"]))
    if words[0] != "python" or len(words) < 2:
        raise ValueError(f"{recipe['_path']}: [policies.{name}] build: expected `python ...`, got {p['build']!r}")
    return Stage(f"model/{name}", "build", words[1:], [], Path(p["model"]), Path(p["model"]) / "config.json", [])


def ppo_stage(recipe: dict, name: str, variant: str) -> Stage:
    """ppo/<policy>/<variant>: the shared PPO config, the grid's coordinates as flags, the policy's own settings."""
    p, v, config = recipe["policies"][name], recipe["variants"][variant], recipe["ppo"]["config"]
    out, rm = Path(recipe["out"]) / "ppo" / name / variant, f"rm-{v['reward_model']}"
    own = p.get("settings", {})
    flags = setting_flags(PPOConfig, own, f"{recipe['_path']}: [policies.{name}]")
    rm_config = Path(recipe["reward_models"][v["reward_model"]]["config"])
    return Stage(f"ppo/{name}/{variant}", "ppo", ["ppo.py"],
                 ["--config", config, "--model", p["model"], "--reward-model", str(Path(recipe["out"]) / rm / "best"),
                  "--prompts", v["prompts"], "--data", str(Path(recipe["out"]) / "data"), "--out", str(out), *flags],
                 out, out / "policy" / "config.json", ["data", rm] + ([f"model/{name}"] if "build" in p else []),
                 [Path(config)], gpus=p.get("gpus", 1), resumable=True,
                 settings={**read_settings(PPOConfig, Path(config)), **own}, model=p["model"], params=p.get("params"),
                 rm_model=read_settings(TrainRMConfig, rm_config).get("model", TrainRMConfig.model))


def eval_stage(recipe: dict, needs: list[str]) -> Stage:
    config, out = recipe["eval"]["config"], Path(recipe["out"]) / "eval"
    labels = [f"{label}={path}" for label, path in eval_models(recipe).items()]
    return Stage("eval", "eval", ["eval.py"], ["--config", config, "--out", str(out), "--models", *labels],
                 out, out / "results.json", needs, [Path(config)], gpus=recipe["eval"].get("gpus", 1))


def rm_report_stage(recipe: dict) -> Stage:
    """rm-report: eval.py rm over the reward models' best/, beside the policies each one trained."""
    r, out = recipe["rm_report"], Path(recipe["out"])
    rms = [str(out / f"rm-{key}" / "best") for key in recipe["reward_models"]]
    policies = [f"rm-{key}/best={variant}" for key, variant in r.get("policies", {}).items()]
    downstream = ["--eval-results", str(out / "eval" / "results.json"), "--policies", *policies] if policies else []
    return Stage("rm-report", "rm-report", ["eval.py", "rm"],
                 ["--config", r["config"], "--reward-models", *rms, "--data", str(out / "data"),
                  "--out", str(out / "rm-report"), *downstream],
                 out / "rm-report", out / "rm-report" / "report.json",
                 [f"rm-{key}" for key in recipe["reward_models"]] + (["eval"] if policies else []), [Path(r["config"])],
                 gpus=r.get("gpus", 1))


def setting_flags(cls, settings: dict, where: str) -> list[str]:
    """A policy's own settings (`settings = {activation_checkpointing = true}`) as the program's flags."""
    fields = {f.name: f for f in cls.__dataclass_fields__.values()}
    flags = []
    for key, value in settings.items():
        if key not in fields:
            raise ValueError(f"{where}: settings: {key!r} is not a setting of {cls.__name__}")
        if isinstance(value, bool):
            flags += [flag_of(fields[key])] if value != fields[key].default else []
        else:
            flags += [flag_of(fields[key]), *map(str, value if isinstance(value, list) else [value])]
    return flags


def eval_models(recipe: dict) -> dict[str, str]:
    """eval.py's models, {label: path}: each policy's Base (the model it starts from) and its PPO
    policy in each variant (ppo.py's export in <out>/ppo/<policy>/<variant>/policy)."""
    out = Path(recipe["out"])
    models = {f"{name}/Base": p["model"] for name, p in recipe["policies"].items()}
    models.update({f"{name}/{variant}": str(out / "ppo" / name / variant / "policy")
                   for name in recipe["policies"] for variant in recipe["variants"]})
    return models


SCRIPT_MODULES = {"data_prep.py": "data_prep", "train_rm.py": "train_rm", "ppo.py": "ppo", "eval.py": "eval"}


def check_commands(stages: list[Stage]) -> None:
    """Parse every stage's command line with its program's own parser (flags, --config keys and
    ranges), before anything runs: a typo in the evaluation's config fails now, not after the PPO
    runs. Needs the repository root on sys.path (python -m karma.recipe run from there)."""
    program_name = sys.argv[0]
    for stage in stages:
        if stage.program[0] not in SCRIPT_MODULES:
            continue
        if not Path(stage.program[0]).is_file():
            raise FileNotFoundError(f"{stage.program[0]} is not in {Path.cwd()}: run python -m karma.recipe from the "
                                    f"repository root (the recipe's paths are relative to it)")
        parse_args = importlib.import_module(SCRIPT_MODULES[stage.program[0]]).parse_args
        sys.argv[0] = stage.program[0]  # argparse names the program after it in its messages
        try:
            parse_args(stage.program[1:] + stage.args)
        except SystemExit as e:  # argparse printed its message
            raise ValueError(f"stage {stage.name}: {stage.program[0]} refuses its command line (above)") from e
        except (OSError, ValueError) as e:
            raise type(e)(f"stage {stage.name}: {e}") from None
        finally:
            sys.argv[0] = program_name


# ---------------------------------------------------------------------------------------- estimates
# Parameter counts of the hub checkpoints: the three 1B models as bench/gpu_decoder.py loaded them
# (bench/results/2026-11-23-h100-gpu_decoder.jsonl); the others built from their config.json on the
# meta device (karma.config.ModelConfig, karma.model.Transformer).
PARAMS = {"falcon-rw-1b": 1_311_625_216, "falcon-7b": 6_921_720_704, "llama-3.2-1b": 1_235_814_400,
          "llama-3.1-8b": 8_030_261_248, "pythia-70m": 70_426_624, "pythia-1b": 1_011_781_632,
          "pythia-6.9b": 6_857_302_016, "smollm2-135m": 134_515_008}

# What the estimates scale from, per device; M = measured there, with its source (docs/performance.md).
ANCHORS = {
    "h100": {
        "device": "one H100 80GB",
        "data": {"records_per_s": 37_800, "rss_gib": 0.75,
                 "source": "M 2-core CPU, 2 workers, synthetic dump (bench/results/2026-11-30-cpu-data_prep.json)"},
        "rm": {"tokens_per_s": 54_461, "params": 1_235_814_400, "gib": 46.3, "tokens": 16 * 1024,
               "source": "M H100, Llama-3.2-1B, 16 x 1024 tokens (bench/results/2026-11-23-h100-rm_train_gpu.jsonl)"},
        "ppo": {"seconds_per_rollout": 4.08, "trained": 2_247_596_032, "prompts": 64, "new_tokens": 128, "epochs": 4,
                "gib": 48.17, "frozen": 3_259_377_664, "frozen_bytes": 2, "replica": 1,
                "source": "M H100, Pythia-1B policy + 1.2B critic, 64 prompts x 128 tokens, 4 epochs "
                          "(bench/results/2026-11-23-h100-ppo_gpu.jsonl)"},
        # no GPU measurement of eval.py: the 2-core CPU's seconds per item, times the ratio of FLOP rates
        # (H100 at the 34.4% MFU measured for training, 340 TFLOP/s, over ~200 GFLOP/s on the 2 cores)
        "eval": {"seconds_per_item": 0.2625 * 200e9 / 340e12, "params": 134_515_008, "weight_bytes": 2,
                 "source": "E from the 2-core CPU's eval.py (make demo) by FLOP rate: no GPU measurement"},
    },
    "cpu": {
        "device": "2-core CPU (AVX512-BF16)",
        "data": {"records_per_s": 29_700, "rss_gib": 0.6,
                 "source": "M 2-core CPU, 1 worker (bench/results/2026-11-30-cpu-data_prep.json)"},
        "rm": {"tokens_per_s": 24 * 16 * 192 / 121, "params": 134_515_008, "gib": 5.7, "tokens": 4 * 192,
               "source": "M 2-core CPU, SmolLM2-135M, make demo 2026-12-06 (24 steps x 16 x 192 tokens, 121 s, bf16)"},
        "ppo": {"seconds_per_rollout": 119 / 12, "trained": 2 * 134_515_008, "prompts": 16, "new_tokens": 32,
                "epochs": 1, "gib": 5.9, "frozen": 2 * 134_515_008, "frozen_bytes": 4, "replica": 0,
                "source": "M 2-core CPU, SmolLM2-135M, make demo 2026-12-06 (12 rollouts of 16 x 32 tokens, 119 s)"},
        "eval": {"seconds_per_item": 126 / (2 * 6 * 40), "params": 134_515_008, "weight_bytes": 4,
                 "source": "M 2-core CPU, SmolLM2-135M, make demo 2026-12-06 (2 models x 6 tasks x 40 items, 126 s)"},
    },
}
TRAINED_BYTES = 16  # per trained parameter: fp32 weights 4 + gradients 4 + AdamW moments 8, sharded (FSDP2)


def model_params(model: str, given: float | None = None) -> float | None:
    """A model's parameter count: the recipe's `params`, the table above, or a local checkpoint's
    config.json (counted on the meta device); None when unknown (a hub model not in the table)."""
    if given is not None:
        return float(given)
    if model in PARAMS:
        return float(PARAMS[model])
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    from karma.config import ModelConfig
    from karma.model import Transformer
    with torch.device("meta"):
        return float(sum(p.numel() for p in Transformer(ModelConfig.from_json(config)).parameters()))


@dataclass
class Estimate:
    gib: float | None  # memory per GPU (RAM for a stage without GPU)
    hours: float | None  # wall hours on the stage's GPUs
    basis: str  # "measured rate" (the anchor's model and shapes), "extrapolated ...", "unknown: ..."


def estimate(stage: Stage, recipe: dict) -> Estimate:
    """Memory per GPU and wall hours of a stage, scaled from the measured anchors of the recipe's device.

    Memory, as docs/performance.md's plan counts it: TRAINED_BYTES per trained parameter (the RM; PPO's
    policy and critic), sharded over the GPUs; each frozen copy (PPO's reference, reward model and, on
    GPU, the bf16 generation replica) 2 bytes per parameter per GPU (4 on CPU: fp32); plus the
    activations and buffers the anchor measured beyond those. Time: linear in parameters and in tokens
    (or prompts x epochs x new tokens), and over GPUs a linear speed-up (FSDP's communication is not
    counted): extrapolated, except a reward model of the anchor's size and shapes on one GPU."""
    anchors = ANCHORS[recipe.get("hardware", {}).get("device", "h100")]
    kinds = {"data": data_estimate, "rm": rm_estimate, "ppo": ppo_estimate, "eval": eval_estimate}
    if stage.kind not in kinds:
        return Estimate(None, None, "not estimated")
    return kinds[stage.kind](stage, recipe, anchors[stage.kind], max(1, stage.gpus))


def data_estimate(stage: Stage, recipe: dict, a: dict, gpus: int) -> Estimate:
    stats = stage.out / "stats.json"
    records = read_json(stats)["records_read"] if stats.is_file() else recipe["data"].get("records")
    if records is None:
        return Estimate(a["rss_gib"], None, "unknown: give [data] records")
    return Estimate(a["rss_gib"], records / a["records_per_s"] / 3600, "extrapolated (synthetic dump's records/s)")


def rm_estimate(stage: Stage, recipe: dict, a: dict, gpus: int) -> Estimate:
    s, params = stage.settings, model_params(stage.model)
    if params is None:
        return Estimate(None, None, f"unknown: parameters of {stage.model} (karma.recipe.PARAMS)")
    length = s.get("max_length", TrainRMConfig.max_length)
    if s.get("max_steps"):
        examples = s["max_steps"] * s.get("batch_size", TrainRMConfig.batch_size)
    else:  # epochs over the train split: data_prep.py's count once it has run, else the recipe's
        stats = Path(recipe["out"]) / "data" / "stats.json"
        train = (read_json(stats)["splits"]["train"]["examples"] if stats.is_file()
                 else recipe["data"].get("train_examples", 0))
        examples = train * s.get("epochs", TrainRMConfig.epochs)
    hours = examples * length / (a["tokens_per_s"] * a["params"] / params) / gpus / 3600
    tokens = s.get("micro_batch_size", TrainRMConfig.micro_batch_size) * length  # per GPU per forward
    measured = a["gib"] - TRAINED_BYTES * a["params"] / 2**30  # the anchor's activations
    gib = TRAINED_BYTES * params / gpus / 2**30 + measured * tokens / a["tokens"] * params / a["params"]
    same = params == a["params"] and gpus == 1 and tokens == a["tokens"]
    return Estimate(gib, hours, "measured rate" if same else "extrapolated")


def ppo_estimate(stage: Stage, recipe: dict, a: dict, gpus: int) -> Estimate:
    s, policy, rm = stage.settings, model_params(stage.model, stage.params), model_params(stage.rm_model)
    if policy is None or rm is None:
        return Estimate(None, None, "unknown: a model's parameters (give the policy `params`)")
    trained = 2 * policy  # the policy and its policy-sized critic (value_init = "policy")
    frozen = policy * (1 + a["replica"]) + rm  # the reference, (on GPU) the generation replica, the RM
    measured = a["gib"] - (TRAINED_BYTES * a["trained"] + a["frozen_bytes"] * a["frozen"]) / 2**30
    gib = (TRAINED_BYTES * trained / gpus + a["frozen_bytes"] * frozen) / 2**30 + measured
    per_rollout = (a["seconds_per_rollout"] * trained / a["trained"]
                   * s.get("rollout_batch", PPOConfig.rollout_batch) / a["prompts"]
                   * s.get("ppo_epochs", PPOConfig.ppo_epochs) / a["epochs"]
                   * s.get("max_new_tokens", PPOConfig.max_new_tokens) / a["new_tokens"]) / gpus
    return Estimate(gib, per_rollout * s.get("rollouts", PPOConfig.rollouts) / 3600, "extrapolated")


def eval_estimate(stage: Stage, recipe: dict, a: dict, gpus: int) -> Estimate:
    """Every policy's Base and variants, each on the items of every task (eval_items)."""
    sizes = [model_params(p["model"], p.get("params")) for p in recipe["policies"].values()]
    items = eval_items(recipe)
    if None in sizes or items is None:
        return Estimate(None, None, "unknown: a model's parameters, or the items (limit or [eval] items)")
    runs = 1 + len(recipe["variants"])
    seconds = sum(items * a["seconds_per_item"] * p / a["params"] * runs for p in sizes)
    return Estimate(a["weight_bytes"] * max(sizes) / 2**30 + 2, seconds / gpus / 3600, "extrapolated (rough)")


def eval_items(recipe: dict) -> float | None:
    """Items one model is scored on: the eval config's `limit` for each task, else the recipe's
    [eval] items; a realtoxicity item counts rtp_samples / 4 times (the CPU anchor drew 4 samples)."""
    config = read_toml(recipe["eval"]["config"], label=str(recipe["eval"]["config"]))
    tasks = config.get("tasks", ["mmlu", "truthfulqa", "crows_pairs", "colbert_humor", "msad", "realtoxicity"])
    sizes = {t: config["limit"] for t in tasks} if config.get("limit") else recipe["eval"].get("items", {})
    if set(tasks) - set(sizes):
        return None
    weight = {"realtoxicity": (1 if config.get("rtp_greedy") else config.get("rtp_samples", 25)) / 4}
    return sum(sizes[t] * weight.get(t, 1) for t in tasks)


# --------------------------------------------------------------------------------------------- plan

def plan(recipe: dict, stages: list[Stage]) -> str:
    """The stages as a table (GPUs, memory per GPU, hours), their commands and the estimates' sources."""
    hardware = recipe.get("hardware", {})
    device = hardware.get("device", "h100")
    limit = hardware.get("gpu_memory_gib", 80)
    lines = [f"# Plan: {recipe['_path']} -> {recipe['out']}", "",
             f"{len(stages)} stages; hours on {ANCHORS[device]['device']} per GPU (recipe [hardware] device = "
             f"{device!r}); memory per GPU in GiB (RAM for stages without GPU).", "",
             "| # | stage | needs | GPUs | GiB/GPU | time | GPU-hours | basis |",
             "|---:|---|---|---:|---:|---:|---:|---|"]
    total = gpu_hours = 0.0
    for i, stage in enumerate(stages, 1):
        e = estimate(stage, recipe)
        record = Path(recipe["out"]) / "stages" / f"{slug(stage.name)}.json"
        if stage.done.exists() and record.is_file() and "seconds" in read_json(record):
            e.hours, e.basis = read_json(record)["seconds"] / 3600, "measured: this recipe's run (stages/)"
        done = " (done)" if stage.done.exists() else ""
        over = " **over**" if e.gib and stage.gpus and e.gib > limit else ""
        needs = ", ".join(stage.needs) if len(stage.needs) <= 2 else f"{len(stage.needs)} stages"
        stage_gpu_hours = e.hours * stage.gpus if e.hours is not None and stage.gpus else None
        lines.append(f"| {i} | {stage.name}{done} | {needs or '–'} | {stage.gpus or '–'} | {_num(e.gib)}{over} | "
                     f"{_duration(e.hours)} | {_num(stage_gpu_hours)} | {e.basis} |")
        total += e.hours or 0
        gpu_hours += stage_gpu_hours or 0
    lines += [f"| | **all, one after another** | | | | **{_duration(total)}** | **{_num(gpu_hours or None)}** | |", "",
              "Estimates scale from these anchors (M: measured, E: extrapolated; details in docs/performance.md):", ""]
    lines += [f"- {kind}: {a['source']}" for kind, a in ANCHORS[device].items() if kind != "device"]
    lines += ["- other sizes: linear in parameters (and tokens, prompts, epochs, new tokens); several GPUs: linear "
              "speed-up (E). Memory: 16 bytes per trained parameter sharded over the GPUs, 2 per frozen bf16 copy "
              "(4 on CPU), plus the anchor's measured activations (E for other sizes).",
              f"- over: more than the recipe's gpu_memory_gib = {limit} per GPU: give that stage more GPUs or settings "
              "that save memory (activation_checkpointing).",
              "- the paper reports 20 A100 GPU-hours for its reward model (arXiv 2605.26738).", "", "Commands:", ""]
    lines += [f"{i}. `{shlex.join(stage.command())}`" for i, stage in enumerate(stages, 1)]
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:,.3g}" if x < 10 else f"{x:,.0f}"


def _duration(hours: float | None) -> str:
    """2.4 h, 13 min, 40 s."""
    if hours is None:
        return "–"
    return f"{hours:,.1f} h" if hours >= 1 else f"{hours * 60:.0f} min" if hours >= 1 / 60 else f"{hours * 3600:.0f} s"


# ------------------------------------------------------------------------------------------ scripts

def scripts(recipe: dict, stages: list[Stage], into: Path) -> list[Path]:
    """For each stage a folder NN-<stage> with node.sh (one node), multinode.sh (the trainers: run on
    every node) and slurm.sbatch; and submit-all.sh, which submits them in order, each after the jobs
    of the stages it needs (sbatch --dependency=afterok). Trainer commands carry --resume (a requeued
    job continues; on an empty --out it starts), and every script exits at once when its stage's
    output is complete. Returns the files written."""
    root = Path.cwd().resolve()  # the scripts cd there: the recipe's paths are relative to it
    written, logs = [], Path(recipe["out"]) / "logs"  # Slurm writes its logs there and makes no folder
    submit = ["#!/bin/bash", "# every stage in order; a stage's job waits for the jobs of the stages it needs",
              "set -euo pipefail", f"cd {shlex.quote(str(root))}", f"mkdir -p {shlex.quote(str(logs))}",
              "declare -A job"]
    for i, stage in enumerate(stages, 1):
        folder = into / f"{i:02d}-{slug(stage.name)}"
        folder.mkdir(parents=True, exist_ok=True)
        head = ["#!/bin/bash", f"# stage {i} of {recipe['_path']}: {stage.name}", "set -euo pipefail",
                f"cd {shlex.quote(str(root))}", skip_if_done(stage)]
        nodes, gpus = layout(stage, recipe)
        args = shlex.join(stage.program + stage.args + (["--resume"] if stage.resumable else []))
        if stage.resumable:  # torchrun: one node, every node of several (c10d rendezvous), Slurm
            node = f"torchrun --standalone --nproc-per-node {gpus} {args}"
            _write(folder / "multinode.sh", head[:4] + [
                "# run on each of NNODES nodes, MASTER_ADDR = the first node's address (c10d rendezvous)",
                f"NNODES=${{NNODES:-{nodes}}}", "MASTER_PORT=${MASTER_PORT:-29500}",
                ": \"${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}\"", skip_if_done(stage),
                f'torchrun --nnodes "$NNODES" --nproc-per-node {gpus} --rdzv-backend c10d '
                f'--rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id karma-{slug(stage.name)} {args}'], written)
            launch = ['head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                      f'srun --ntasks-per-node 1 torchrun --nnodes "$SLURM_NNODES" --nproc-per-node {gpus} '
                      f'--rdzv-backend c10d --rdzv-endpoint "$head:29500" --rdzv-id "$SLURM_JOB_ID" {args}']
        else:  # data_prep.py, eval.py: one process
            node, launch = f"python {args}", [f"python {args}"]
        _write(folder / "node.sh", head + [node], written)
        _write(folder / "slurm.sbatch", sbatch_header(stage, recipe, root, nodes, gpus)
               + ["set -euo pipefail", skip_if_done(stage), *launch], written)
        after = ":".join(f"${{job[{slug(n)}]}}" for n in stage.needs)
        submit.append(f"job[{slug(stage.name)}]=$(sbatch --parsable{' --dependency=afterok:' + after if after else ''} "
                      f"{shlex.quote(str(folder / 'slurm.sbatch'))})")
    _write(into / "submit-all.sh", submit + ['echo "submitted ${#job[@]} jobs: ${job[*]}"'], written)
    return written


def slug(name: str) -> str:
    """A stage's name as a file or job name: ppo/falcon-7b/karmaToxic -> ppo-falcon-7b-karmaToxic."""
    return name.replace("/", "-")


def skip_if_done(stage: Stage) -> str:
    return f"[ -e {shlex.quote(str(stage.done))} ] && {{ echo '{stage.name}: already complete'; exit 0; }}"


def layout(stage: Stage, recipe: dict) -> tuple[int, int]:
    """(nodes, GPUs per node) of a stage: its GPUs over the recipe's gpus_per_node."""
    per_node = max(1, recipe.get("hardware", {}).get("gpus_per_node", 8))
    return max(1, math.ceil(stage.gpus / per_node)), min(max(stage.gpus, 1), per_node)


def sbatch_header(stage: Stage, recipe: dict, root: Path, nodes: int, gpus: int) -> list[str]:
    """The #SBATCH lines: nodes, GPUs, a time limit of the plan's hours x time_margin (at least 1 h),
    the log in <out>/logs, and the recipe's own lines (partition, account...)."""
    slurm = recipe.get("slurm", {})
    minutes = math.ceil(60 * max(1.0, (estimate(stage, recipe).hours or 1.0) * slurm.get("time_margin", 2.0)))
    return ["#!/bin/bash", f"#SBATCH --job-name=karma-{slug(stage.name)}", f"#SBATCH --nodes={nodes}",
            "#SBATCH --ntasks-per-node=1", f"#SBATCH --time={minutes // 60}:{minutes % 60:02d}:00",
            f"#SBATCH --output={root / recipe['out'] / 'logs'}/%x-%j.log", f"#SBATCH --chdir={root}",
            *([f"#SBATCH --gpus-per-node={gpus}"] if stage.gpus else []), *slurm.get("lines", [])]


def _write(path: Path, lines: list[str], written: list) -> None:
    atomic_write(path, lambda p: Path(p).write_text("\n".join(lines) + "\n"))
    path.chmod(0o755)
    written.append(path)


# ---------------------------------------------------------------------------------------------- run

def identity(stage: Stage) -> dict:
    """What makes a finished stage's output the one this recipe asks for: its command and the content
    of the config files it reads."""
    return {"command": stage.command(),
            "configs": {str(c): hashlib.sha256(c.read_bytes()).hexdigest() for c in stage.configs}}


def status(stage: Stage, record: Path) -> str:
    """done (complete, by this command and configs, or found complete without a record), changed
    (complete, but made by another command or config: refused), started (a trainer with a run in its
    --out: resumed) or new."""
    if stage.done.exists():
        return "changed" if record.is_file() and changes(read_json(record), identity(stage)) else "done"
    if stage.resumable and (stage.out / "config.json").is_file():
        return "started"
    return "new"


def changes(recorded: dict, now: dict) -> str:
    """What differs between a stage's recorded identity and its identity now ("" if nothing)."""
    what = ["its command line"] if recorded.get("command") != now["command"] else []
    configs = recorded.get("configs", {})
    what += [f"the content of {c}" for c, h in now["configs"].items() if configs.get(c) != h]
    return " and ".join(what)


def run(recipe: dict, stages: list[Stage]) -> int:
    """Run the stages here in order (see the module docstring), then write the report; returns the
    exit code: 0, or the first failed stage's."""
    check_commands(stages)
    print(f"{len(stages)} stages; logs in {Path(recipe['out']) / 'logs'}", flush=True)
    for i, stage in enumerate(stages, 1):
        code = run_stage(stage, Path(recipe["out"]), f"[{i}/{len(stages)}] {stage.name}")
        if code:
            return code
    if any(s.kind == "eval" for s in stages):
        print(write_report(recipe), flush=True)
    return 0


def run_stage(stage: Stage, out: Path, title: str) -> int:
    """Skip the stage if complete, else start or resume it; its record in <out>/stages/ says which
    command and configs made its output. Returns its exit code (1 if it wrote no output)."""
    record, log = out / "stages" / f"{slug(stage.name)}.json", out / "logs" / f"{slug(stage.name)}.log"
    state = status(stage, record)
    if state == "done":
        print(f"{title}: complete{'' if record.is_file() else ' (made outside this recipe: kept)'}, skipped",
              flush=True)
        return 0
    if state == "changed":
        what = changes(read_json(record), identity(stage))
        raise ValueError(f"stage {stage.name}: {stage.out} is complete, but {what} changed since it was made "
                         f"(recorded in {record}); delete {stage.out} to redo it with this recipe, or restore "
                         f"the recipe")
    argv = local_command(stage, resume=state == "started")
    print(f"{title}: {'resuming' if state == 'started' else 'starting'}: {shlex.join(argv)}", flush=True)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {**identity(stage), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    start = time.monotonic()
    try:
        code = execute(argv, log, stage.name)
    except KeyboardInterrupt:
        print(f"{title}: stopped after {_clock(time.monotonic() - start)}; run again to continue (log: {log})",
              file=sys.stderr, flush=True)
        raise
    seconds = time.monotonic() - start
    if code != 0 or not stage.done.exists():
        why = f"exit code {code}" if code else f"it exited without writing {stage.done}"
        print(f"{title}: FAILED ({why}) after {_clock(seconds)}; log: {log}\n{_tail(log, 12)}", file=sys.stderr,
              flush=True)
        return code or 1
    atomic_write_json(record, {**read_json(record), "seconds": round(seconds, 1),
                               "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"{title}: done in {_clock(seconds)}", flush=True)
    return 0


def local_command(stage: Stage, resume: bool) -> list[str]:
    """The stage's command on this machine: this Python; a trainer under torchrun on as many of this
    machine's GPUs as it asks for (one process when there is none or it asks for one)."""
    args = stage.program + stage.args + (["--resume"] if resume else [])
    gpus = min(stage.gpus, torch.cuda.device_count())
    if stage.resumable and gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus), *args]
    return [sys.executable, *args]


def execute(argv: list[str], log: Path, name: str) -> int:
    """Run argv with its output appended to `log`; print the log's last line every HEARTBEAT_S seconds.
    Ctrl-C (or SIGTERM) stops it too, and what it finished stays for the next `run`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        f.flush()
        child = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env)
        start = time.monotonic()
        try:
            while True:
                try:
                    return child.wait(timeout=HEARTBEAT_S)
                except subprocess.TimeoutExpired:
                    print(f"    {name} {_clock(time.monotonic() - start)}  {_last_line(log)}", flush=True)
        except BaseException:
            child.terminate()  # the trainers keep their checkpoints; eval.py its finished pairs
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
            raise


def _last_line(log: Path, width: int = 110) -> str:
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        text = f.read().decode(errors="replace").replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:width] if lines else ""


def _tail(log: Path, n: int) -> str:
    lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join("    " + line for line in lines[-n:])


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ------------------------------------------------------------------------------------------- report
# The paper's reward-model numbers on its held-out Reddit split (arXiv 2605.26738, reward-model results):
# the conditioned RM's accuracy is given only as "3-4% higher".
PAPER_RM = {"generalized": {"accuracy": 0.708, "f1": 0.7166, "roc_auc": 0.7497},
            "conditioned": {"accuracy": None, "f1": 0.7521, "roc_auc": 0.772}}


def build_report(recipe: dict) -> dict:
    """The recipe's results as plain JSON: one table per benchmark (rows = policies, columns = Base
    and the variants; each cell eval.py's value with its paired-test mark, and the run it came from),
    the across-models tests, the reward models' metrics, and the cells still missing."""
    out = Path(recipe["out"])
    results_path = out / "eval" / "results.json"
    results = read_json(results_path) if results_path.is_file() else {"tables": [], "models": {}}
    expected = eval_models(recipe)  # label -> the path this recipe evaluates it from
    policies, variants = list(recipe["policies"]), ["Base", *recipe["variants"]]
    tables, missing = [], []
    for t in results["tables"]:
        if not t["is_primary"]:
            continue
        rows = {}
        for policy in policies:
            for variant in variants:
                label = f"{policy}/{variant}"
                cell = t["cells"].get(policy, {}).get(variant)
                if cell is None or results["models"].get(label) != expected.get(label):
                    missing.append(f"{t['task']}: {label}")
                    rows.setdefault(policy, {})[variant] = None
                    continue
                vs = cell.get("vs_base") or {}
                rows.setdefault(policy, {})[variant] = {"value": cell["value"], "ci": cell["ci"], "n": cell["n"],
                                                        "p_holm": vs.get("p_holm"), "mark": vs.get("mark", ""),
                                                        "source": results["models"][label]}
        across = {v: t["across_models"].get(v) for v in variants[1:]}
        tables.append({"task": t["task"], "metric": t["metric"], "higher_is_better": t["higher_is_better"],
                       "proxy": t.get("proxy", ""), "rows": rows, "across_models": across,
                       "versus": versus(rows, recipe)})
    if not tables:
        missing.append(f"every benchmark: no {results_path}")
    return {"recipe": str(recipe["_path"]), "out": str(out), "tables": tables,
            "reward_models": reward_model_rows(recipe, out), "downstream": downstream_rows(out),
            "missing": missing}


def versus(rows: dict, recipe: dict) -> dict | None:
    """The paper's comparison in one table: the variant of the conditioned RM against that of the
    generalized one on the same prompts (karmaEroded vs karmaToxic, from [rm_report] policies), over
    the policies that have both: exact Wilcoxon signed-rank on the aggregates (across_models_test)."""
    variants = list(recipe.get("rm_report", {}).get("policies", {}).values())
    if len(variants) != 2:
        return None
    a, b = variants
    pairs = [(row[a]["value"], row[b]["value"]) for row in rows.values() if row.get(a) and row.get(b)]
    if len(pairs) < 2:
        return None
    test = across_models_test(*zip(*pairs))
    return {"a": a, "b": b, **test, "mark": mark(test["p"])}


def reward_model_rows(recipe: dict, out: Path) -> list[dict]:
    """Per reward model: train_rm.py's best held-out metrics (best/train_info.json), eval.py rm's on
    the held-out split with intervals and its rankings' flips under swapped metadata or replies
    (rm-report/report.json), and the paper's numbers for its format."""
    path = out / "rm-report" / "report.json"
    shortcuts = read_json(path)["rms"] if path.is_file() else {}
    keys = ("accuracy", "f1", "roc_auc")
    rows = []
    for key, t in recipe["reward_models"].items():
        info = out / f"rm-{key}" / "best" / "train_info.json"
        info = read_json(info) if info.is_file() else None
        s = shortcuts.get(f"rm-{key}/best")
        fmt = read_settings(TrainRMConfig, Path(t["config"])).get("format", "generalized")
        rows.append({"rm": f"rm-{key}", "format": fmt, "paper": PAPER_RM.get(fmt),
                     "train_rm": info and {k: info.get(k) for k in ("step", "n", *keys)},
                     "eval_rm": s and {**{k: s["metrics"].get(k) for k in keys},
                                       "ci": {k: s["ci"].get(k) for k in keys},
                                       "metadata_flips": s["metadata"]["swap_both"]["flip_share"],
                                       "content_flips": s["content"]["other_thread"]["flip_share"]}})
    return rows


def downstream_rows(out: Path) -> dict | None:
    """eval.py rm's table of each RM beside its policies' changes vs Base (None before that stage)."""
    path = out / "rm-report" / "report.json"
    return read_json(path).get("downstream") if path.is_file() else None


def report_markdown(report: dict) -> str:
    """REPORT.md: the benchmark tables, the reward models, each RM beside its policies, what is missing."""
    lines = [f"# KARMA recipe report: {report['recipe']}", "",
             "Benchmarks, primary metric: rows = policies, columns = variants; marks: paired test against the row's "
             "Base, Holm-corrected within the table (* p < 0.05, ** p < 0.01, *** p < 0.001); across models: exact "
             "two-sided Wilcoxon signed-rank over the policies' aggregates (eval.py). Intervals and footnotes: "
             f"{report['out']}/eval/results.md.", ""]
    for t in report["tables"]:
        lines += _benchmark_table(t)
    lines += _reward_model_table(report["reward_models"]) + _downstream_table(report["downstream"])
    lines += [f"Full reward-shortcut report: {report['out']}/rm-report/report.md", ""]
    if report["missing"]:
        lines += [f"Missing ({len(report['missing'])}): " + "; ".join(report["missing"][:20]), ""]
    return "\n".join(lines)


def _benchmark_table(t: dict) -> list[str]:
    variants = list(next(iter(t["rows"].values())))
    direction = {True: "higher is better", False: "lower is better", None: "direction not declared"}
    proxy = f", PROXY scorer {t['proxy']}" if t["proxy"] else ""
    lines = [f"**{t['task']} — {t['metric']}** ({direction[t['higher_is_better']]}{proxy})", "",
             "| policy | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for policy, row in t["rows"].items():
        cells = ["–" if c is None else f"{_fmt(c['value'])}{c['mark']}" for c in row.values()]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    across = ["–" if a is None else f"p {a['p']:.3g}{a['mark']}" for a in t["across_models"].values()]
    lines += ["| across models | – | " + " | ".join(across) + " |", ""]
    if v := t["versus"]:
        lines += [f"{v['b']} vs {v['a']} over the {v['n']} policies: mean difference {v['mean_diff']:+.3f}, "
                  f"p {v['p']:.3g}{v['mark']} (exact Wilcoxon signed-rank)", ""]
    return lines


def _reward_model_table(rows: list[dict]) -> list[str]:
    lines = ["## Reward models", "",
             "| RM | format | train_rm best: acc / F1 / AUC (step) | eval.py rm: acc / F1 / AUC [95% CI] "
             "| metadata flips | reply flips | paper: acc / F1 / AUC |", "|---|---|---|---|---:|---:|---|"]
    for r in rows:
        tr, ev, paper = r["train_rm"], r["eval_rm"], r["paper"] or {}
        trained = f"{_fmt(tr['accuracy'])} / {_fmt(tr['f1'])} / {_fmt(tr['roc_auc'])} ({tr['step']})" if tr else "–"
        held = (f"{_fmt(ev['accuracy'])} / {_fmt(ev['f1'])} / {_fmt(ev['roc_auc'])} "
                f"[{_fmt(ev['ci']['roc_auc'][0])}, {_fmt(ev['ci']['roc_auc'][1])}]") if ev else "–"
        flips = [_fmt(ev[k]) if ev else "–" for k in ("metadata_flips", "content_flips")]
        lines.append(f"| {r['rm']} | {r['format']} | {trained} | {held} | {' | '.join(flips)} | "
                     + " / ".join(_fmt(paper.get(k)) for k in ("accuracy", "f1", "roc_auc")) + " |")
    return lines + [""]


def _downstream_table(d: dict | None) -> list[str]:
    if not d:
        return []
    lines = ["Each reward model beside its policies' change against Base (primary metrics; eval.py rm):", "",
             "| RM | policy | AUC | " + " | ".join(d["columns"]) + " |", "|---|---|---:|" + "---:|" * len(d["columns"])]
    for r in d["rows"]:
        deltas = ["–" if (x := r["downstream"].get(c)) is None else f"{x['delta']:+.3f}{x['mark']}"
                  for c in d["columns"]]
        lines.append(f"| {r['rm']} | {r['policy']} | {_fmt(r['auc'])} | " + " | ".join(deltas) + " |")
    return lines + [""]


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def write_report(recipe: dict) -> str:
    """REPORT.md and report.json in the recipe's out; returns a one-line summary."""
    report = build_report(recipe)
    out = Path(recipe["out"])
    atomic_write_json(out / "report.json", report)
    markdown = report_markdown(report)
    atomic_write(out / "REPORT.md", lambda p: Path(p).write_text(markdown))
    filled = sum(c is not None for t in report["tables"] for row in t["rows"].values() for c in row.values())
    return (f"report: {out / 'REPORT.md'}, {out / 'report.json'}: {len(report['tables'])} tables, {filled} cells "
            f"filled, {len(report['missing'])} missing")


# ------------------------------------------------------------------------------------------ command

def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m karma.recipe", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("recipe", type=Path, help="the recipe TOML (configs/paper.toml, configs/toy/paper.toml)")
    p.add_argument("command", choices=["plan", "scripts", "run", "report"],
                   help="plan: stages, GPUs, memory, hours; scripts: torchrun and Slurm files; run: here, in order; "
                        "report: the tables from the results")
    p.add_argument("--into", type=Path, default=None, help="scripts: the folder to write (default: <out>/scripts)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe)
    stages = expand(recipe)
    if args.command == "plan":
        check_commands(stages)
        print(plan(recipe, stages), end="")
    elif args.command == "scripts":
        check_commands(stages)
        into = args.into or Path(recipe["out"]) / "scripts"
        written = scripts(recipe, stages, into)
        print(f"{len(written)} files in {into}; submit all with: bash {into / 'submit-all.sh'}")
    elif args.command == "run":
        signal.signal(signal.SIGTERM, _interrupt)
        code = run(recipe, stages)
        if code:
            sys.exit(code)
    else:
        print(write_report(recipe))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m karma.recipe"))
