"""The recipe runner (karma/recipe.py), the configs/ it reads and --config for data_prep.py / eval.py.

Fast: the paper's and the toy's recipes expand to the paper's grid and every stage's command line
passes its program's own parser; the plan's table, the torchrun and Slurm scripts; `run`'s order,
skip, resume, refusal and failure logic on stub stages (`python -c ...`, milliseconds each); the TOML
configs of the argparse programs. Slow: a small grid of tiny random models through every real stage,
stopped mid-grid with SIGTERM and run again, with every cell of the final tables filled from the
recipe's own runs.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import data_prep
from karma import recipe as R
from karma.files import read_jsonl
from karma.reward_train import TrainRMConfig
from karma.settings import read_settings

ROOT = Path(__file__).resolve().parents[1]
PAPER, TOY = ROOT / "configs" / "paper.toml", ROOT / "configs" / "toy" / "paper.toml"
eval_script = importlib.import_module("eval")


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name their configs relative to the repository root


# ------------------------------------------------------------------------------------- the grid

def test_the_paper_recipe_is_the_papers_grid():
    recipe = R.load_recipe(PAPER)
    stages = R.expand(recipe)
    names = [s.name for s in stages]
    policies = ["falcon-1b", "falcon-7b", "llama-8b", "pythia-70m", "pythia-1b", "pythia-6.9b"]
    variants = ["karmaBenign", "karmaToxic", "karmaEroded"]
    assert names == ["data", "rm-generalized", "rm-conditioned", *[f"ppo/{p}/{v}" for p in policies for v in variants],
                     "eval", "rm-report"]
    for i, stage in enumerate(stages):  # dependency order
        assert set(stage.needs) <= set(names[:i]), stage.name
    by_name = {s.name: s for s in stages}
    eroded, benign = by_name["ppo/falcon-7b/karmaEroded"].args, by_name["ppo/falcon-7b/karmaBenign"].args
    assert eroded[eroded.index("--reward-model") + 1] == "runs/paper/rm-conditioned/best"
    assert eroded[eroded.index("--prompts") + 1] == "reddit"
    assert benign[benign.index("--prompts") + 1] == "ultrachat"
    assert benign[benign.index("--reward-model") + 1] == "runs/paper/rm-generalized/best"
    assert "--activation-checkpointing" in eroded and "--activation-checkpointing" not in by_name[
        "ppo/falcon-1b/karmaToxic"].args
    assert by_name["ppo/llama-8b/karmaToxic"].args[3] == "llama-3.1-8b"
    assert len(R.eval_models(recipe)) == 24  # 6 Base + 18 tuned
    R.check_commands(stages)  # every command line passes its program's own parser


def test_the_toy_recipe_is_the_same_grid_on_offline_models():
    paper, toy = R.load_recipe(PAPER), R.load_recipe(TOY)
    assert toy["variants"] == paper["variants"] and toy["rm_report"]["policies"] == paper["rm_report"]["policies"]
    stages = R.expand(toy)
    kinds = [s.kind for s in stages]
    assert kinds.count("ppo") == 4 * 3 and kinds.count("build") == 3 and kinds[-2:] == ["eval", "rm-report"]
    families = {s.program[s.program.index("--family") + 1] for s in stages if s.kind == "build"}
    assert families == {"llama", "falcon", "pythia"}  # the paper's three families
    assert toy["policies"]["smollm2-135m"]["model"] == "smollm2-135m"
    R.check_commands(stages)


@pytest.mark.parametrize("folder", ["configs", "configs/toy"])
def test_the_two_reward_models_differ_only_in_their_format(folder):
    generalized = read_settings(TrainRMConfig, ROOT / folder / "rm-generalized.toml")
    conditioned = read_settings(TrainRMConfig, ROOT / folder / "rm-conditioned.toml")
    assert (generalized.pop("format"), conditioned.pop("format")) == ("generalized", "conditioned")
    assert generalized == conditioned


def test_bad_recipes_are_refused_naming_the_file_and_key(tmp_path):
    text = PAPER.read_text()
    cases = {
        "[policies.falcon-1b]\nmodel": ("[policies.falcon-1b]\nmodle = 1\nmodel", "unknown key 'modle'"),
        'reward_model = "conditioned"': ('reward_model = "eroded"', "reward_model = 'eroded': not one of"),
        'prompts = "ultrachat"': ('prompts = "ultra"', "prompts = 'ultra': must be one of"),
        "gpus = 8\nsettings = { activation_checkpointing = true }": (
            "gpus = 8\nsettings = { activation_chekpointing = true }", "'activation_chekpointing' is not a setting"),
        'config = "configs/ppo.toml"': ('config = "configs/nope.toml"', "config 'configs/nope.toml' not found"),
    }
    for old, (new, message) in cases.items():
        path = tmp_path / "recipe.toml"
        path.write_text(text.replace(old, new, 1))
        with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
            R.expand(R.load_recipe(path))
        assert str(path) in str(e.value)


def test_a_bad_stage_config_fails_before_anything_runs(tmp_path):
    """check_commands: eval's config is read at once, not after the PPO runs."""
    (tmp_path / "eval.toml").write_text('tasks = ["mmlu"]\nlimitt = 3\n')
    path = tmp_path / "recipe.toml"
    path.write_text(PAPER.read_text().replace('config = "configs/eval.toml"', f'config = "{tmp_path / "eval.toml"}"'))
    message = r"stage eval: .*eval.toml: 'limitt' is not a setting of eval.py \(did you mean 'limit'"
    with pytest.raises(ValueError, match=message):
        R.check_commands(R.expand(R.load_recipe(path)))


def test_the_recipe_runs_from_the_repository_root(tmp_path, monkeypatch):
    stages = R.expand(R.load_recipe(PAPER))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="data_prep.py is not in .*: run python -m karma.recipe from the repo"):
        R.check_commands(stages)


# ------------------------------------------------------------------------------------------ plan

def test_the_plan_has_every_stage_with_gpus_memory_and_hours():
    recipe = R.load_recipe(PAPER)
    stages = R.expand(recipe)
    text = R.plan(recipe, stages)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == len(stages) == 23
    cells = {r.split("|")[2].strip(): [c.strip() for c in r.split("|")[3:-1]] for r in rows}
    needs, gpus, gib, hours, gpu_hours, basis = cells["ppo/falcon-7b/karmaToxic"][:6]
    assert gpus == "8" and 40 < float(gib) < 80 and hours.endswith(" h") and basis == "extrapolated"
    assert cells["rm-generalized"][5] == "measured rate"  # the H100 figure was measured on this very model
    assert "bench/results/2026-11-23-h100-ppo_gpu.jsonl" in text and "**over**" not in text
    assert "`python ppo.py --config configs/ppo.toml --model falcon-7b" in text
    # a smaller GPU: the 1B policy's 55 GiB on one GPU no longer fits, and the plan says so
    recipe["hardware"]["gpu_memory_gib"] = 40
    assert "**over**" in next(r for r in R.plan(recipe, stages).splitlines() if "ppo/falcon-1b/karmaToxic" in r)


def test_memory_follows_the_plan_in_docs_performance():
    """falcon-7b on 8 GPUs: ~65 GB by docs/performance.md's plan; pythia-1b on one: the measured 48 GiB
    had a 1.2B critic, ours is policy-sized (1.0B), so a little less."""
    recipe = R.load_recipe(PAPER)
    by_name = {s.name: s for s in R.expand(recipe)}
    falcon = R.estimate(by_name["ppo/falcon-7b/karmaToxic"], recipe)
    pythia = R.estimate(by_name["ppo/pythia-1b/karmaToxic"], recipe)
    rm = R.estimate(by_name["rm-generalized"], recipe)
    assert 55 < falcon.gib < 68 and 40 < pythia.gib < 48.2 and rm.gib == pytest.approx(46.3, abs=0.1)
    assert rm.hours == pytest.approx(360_000 * 1024 / 54_461 / 3600, rel=1e-6)


# --------------------------------------------------------------------------------------- scripts

def test_scripts_for_one_node_several_nodes_and_slurm(tmp_path):
    recipe = R.load_recipe(PAPER)
    stages = R.expand(recipe)
    written = R.scripts(recipe, stages, tmp_path)
    for path in written:
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, (path, check.stderr)
    ppo = tmp_path / "08-ppo-falcon-7b-karmaToxic"
    node, multi, sbatch = ((ppo / f).read_text() for f in ("node.sh", "multinode.sh", "slurm.sbatch"))
    assert "torchrun --standalone --nproc-per-node 8 ppo.py --config configs/ppo.toml --model falcon-7b" in node
    assert node.rstrip().endswith("--activation-checkpointing --resume")
    assert '--rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT"' in multi and '--nnodes "$NNODES"' in multi
    assert 'MASTER_ADDR:?set MASTER_ADDR' in multi  # unset: bash stops with that message, not "unbound variable"
    for line in ("#SBATCH --nodes=1", "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=16"):
        assert line in sbatch
    assert "srun --ntasks-per-node 1 torchrun --nnodes \"$SLURM_NNODES\"" in sbatch and "rdzv-backend c10d" in sbatch
    assert "[ -e runs/paper/ppo/falcon-7b/karmaToxic/policy/config.json ] && " in sbatch  # finished: exits at once
    data = tmp_path / "01-data"
    assert not (data / "multinode.sh").exists() and "python data_prep.py" in (data / "node.sh").read_text()
    assert "--gpus-per-node" not in (data / "slurm.sbatch").read_text()
    submit = (tmp_path / "submit-all.sh").read_text()
    assert "mkdir -p runs/paper/logs" in submit and "job[data]=$(sbatch --parsable " in submit  # Slurm's log folder
    after = "--dependency=afterok:${job[data]}:${job[rm-generalized]} "
    assert f"job[ppo-falcon-7b-karmaToxic]=$(sbatch --parsable {after}" in submit
    assert submit.count("sbatch --parsable") == 23


def test_sixteen_gpus_make_a_two_node_slurm_job(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(PAPER.read_text().replace('model = "llama-3.1-8b"\ngpus = 8', 'model = "llama-3.1-8b"\ngpus = 16'))
    recipe = R.load_recipe(path)
    R.scripts(recipe, R.expand(recipe), tmp_path / "s")
    sbatch = (tmp_path / "s" / "11-ppo-llama-8b-karmaToxic" / "slurm.sbatch").read_text()
    assert "#SBATCH --nodes=2" in sbatch and "#SBATCH --gpus-per-node=8" in sbatch


# ------------------------------------------------------------------------------------------ run

def stub(tmp_path, name, code: str, needs=(), resumable=False, config=None) -> R.Stage:
    """A stage whose program is `python -c code` (sys.argv[1:] = its args: --out DIR); done = DIR/done."""
    out = tmp_path / "out" / name
    return R.Stage(name, "stub", ["-c", code], ["--out", str(out)], out, out / "done", list(needs),
                   configs=[config] if config else [], resumable=resumable)


WRITE_DONE = ("import sys, pathlib; out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True); "
              "(out / 'args').write_text(' '.join(sys.argv[1:])); print('working on', out.name); "
              "(out / 'done').touch()")


def test_run_goes_in_order_logs_each_stage_and_skips_finished_ones(tmp_path, capsys):
    recipe = {"out": str(tmp_path / "out"), "_path": "stub.toml"}
    stages = [stub(tmp_path, "a", WRITE_DONE), stub(tmp_path, "b", WRITE_DONE, needs=["a"])]
    assert R.run(recipe, stages) == 0
    first = capsys.readouterr().out
    assert first.index("[1/2] a: starting") < first.index("[2/2] b: starting") and "b: done in" in first
    assert "working on b" in (tmp_path / "out" / "logs" / "b.log").read_text()
    record = json.loads((tmp_path / "out" / "stages" / "b.json").read_text())
    assert record["command"] == stages[1].command() and record["seconds"] >= 0
    assert R.run(recipe, stages) == 0
    assert capsys.readouterr().out.count("complete, skipped") == 2


def test_a_failure_stops_the_run_with_its_log(tmp_path, capsys):
    recipe = {"out": str(tmp_path / "out"), "_path": "stub.toml"}
    fail = stub(tmp_path, "b", "import sys; print('the reason it failed'); sys.exit(3)")
    stages = [stub(tmp_path, "a", WRITE_DONE), fail, stub(tmp_path, "c", WRITE_DONE)]
    assert R.run(recipe, stages) == 3
    err = capsys.readouterr().err
    assert "b: FAILED (exit code 3)" in err and str(tmp_path / "out" / "logs" / "b.log") in err
    assert "the reason it failed" in err  # the log's tail
    assert not (tmp_path / "out" / "c").exists()
    # a stage that exits 0 without its output is a failure too
    stages[1] = stub(tmp_path, "b", "print('nothing written')")
    assert R.run(recipe, stages) == 1 and "exited without writing" in capsys.readouterr().err


def test_a_started_trainer_is_resumed_with_its_own_flag(tmp_path, capsys):
    recipe = {"out": str(tmp_path / "out"), "_path": "stub.toml"}
    trainer = stub(tmp_path, "t", WRITE_DONE, resumable=True)
    trainer.out.mkdir(parents=True)
    (trainer.out / "config.json").write_text("{}")  # what a killed trainer leaves
    assert R.run(recipe, [trainer]) == 0
    assert "t: resuming" in capsys.readouterr().out
    assert (trainer.out / "args").read_text().endswith("--resume")
    fresh = stub(tmp_path, "f", WRITE_DONE, resumable=True)
    assert R.run(recipe, [fresh]) == 0 and not (fresh.out / "args").read_text().endswith("--resume")


def test_a_finished_stage_whose_config_changed_is_refused(tmp_path):
    recipe = {"out": str(tmp_path / "out"), "_path": "stub.toml"}
    config = tmp_path / "stage.toml"
    config.write_text("lr = 1e-5\n")
    stage = stub(tmp_path, "a", WRITE_DONE, config=config)
    assert R.run(recipe, [stage]) == 0
    config.write_text("lr = 2e-5\n")
    with pytest.raises(ValueError, match=rf"stage a: .* is complete, but the content of {config} changed"):
        R.run(recipe, [stage])
    config.write_text("lr = 1e-5\n")
    assert R.run(recipe, [stage]) == 0
    stage.args.append("--seed=1")
    with pytest.raises(ValueError, match="its command line changed"):
        R.run(recipe, [stage])


def test_an_output_made_by_hand_is_kept_and_said_so(tmp_path, capsys):
    recipe = {"out": str(tmp_path / "out"), "_path": "stub.toml"}
    stage = stub(tmp_path, "a", "raise SystemExit('must not run')")
    stage.out.mkdir(parents=True)
    stage.done.touch()
    assert R.run(recipe, [stage]) == 0
    assert "a: complete (made outside this recipe: kept), skipped" in capsys.readouterr().out


def test_the_terminal_hears_from_a_long_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(R, "HEARTBEAT_S", 0.2)
    recipe = {"out": str(tmp_path / "out"), "_path": "stub.toml"}
    slow = stub(tmp_path, "slow", "import time; print('step 1 of 2', flush=True); time.sleep(1.5); " + WRITE_DONE)
    assert R.run(recipe, [slow]) == 0
    beats = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    slow ")]
    assert len(beats) >= 3 and "step 1 of 2" in beats[0]


# -------------------------------------------------------------------- --config for argparse programs

def test_data_prep_reads_a_toml_and_flags_override_it(tmp_path):
    config = tmp_path / "data.toml"
    config.write_text('input = ["data/sample"]\nout = "runs/x"\nmin_chars = 20\nbots = ["a", "b"]\n'
                      "no_language_filter = true\n")
    args = data_prep.parse_args(["--config", str(config), "--min-chars", "5"])
    assert (args.input, args.out, args.min_chars, args.bots) == ([Path("data/sample")], Path("runs/x"), 5, ["a", "b"])
    assert args.no_language_filter is True
    config.write_text("min_chars = 0\n")  # ranges still checked, after the file
    with pytest.raises(SystemExit):
        data_prep.parse_args(["--config", str(config), "--input", "x", "--out", "y"])


def test_data_prep_kinship_reads_its_own_keys(tmp_path):
    config = tmp_path / "pairs.toml"
    config.write_text('ultrafeedback = ["uf"]\nscores = "scores.csv"\nout = "runs/pairs"\nstrategy = ["sup"]\n')
    args = data_prep.parse_args(["kinship", "--config", str(config), "--seed", "3"])
    assert (args.ultrafeedback, args.scores, args.strategy, args.seed) == ([Path("uf")], Path("scores.csv"), ["sup"], 3)
    config.write_text("min_chars = 3\n")  # the Reddit pipeline's key is not one of the subcommand's
    with pytest.raises(ValueError, match="'min_chars' is not a setting of data_prep.py kinship"):
        data_prep.parse_args(["kinship", "--config", str(config)])


@pytest.mark.parametrize("line, message", [
    ("min_char = 3", "'min_char' is not a setting of .* \\(did you mean 'min_chars'\\?\\)"),
    ("min_chars = 2.5", "min_chars = 2.5: expected an integer"),
    ("min_chars = true", "min_chars = True: expected an integer"),
    ("bots = 'x'", "bots = 'x': expected a list"),
    ("no_language_filter = 1", "no_language_filter = 1: expected true or false"),
    ("min_chars =", "not valid TOML"),
])
def test_bad_data_prep_configs_name_the_file_and_key(tmp_path, line, message):
    config = tmp_path / "data.toml"
    config.write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as e:
        data_prep.parse_args(["--config", str(config), "--input", "x", "--out", "y"])
    assert str(config) in str(e.value)


def test_eval_and_its_subcommand_read_their_own_tomls(tmp_path):
    config = tmp_path / "eval.toml"
    config.write_text('tasks = ["mmlu", "crows_pairs"]\nlimit = 7\nseed = 3\ndtype = "float32"\n')
    args = eval_script.parse_args(["--config", str(config), "--models", "a/Base=b", "--seed", "4"])
    assert (args.tasks, args.limit, args.seed, args.dtype) == (["mmlu", "crows_pairs"], 7, 4, "float32")
    config.write_text('tasks = ["mmlu", "nope"]\n')
    with pytest.raises(ValueError, match="tasks = 'nope': must be one of"):
        eval_script.parse_args(["--config", str(config), "--models", "a/Base=b"])
    config.write_text("seed = -1\n")  # the flag's own type function checks it
    with pytest.raises(ValueError, match="seed = -1: .*must be in"):
        eval_script.parse_args(["--config", str(config), "--models", "a/Base=b"])
    rm = tmp_path / "rm.toml"  # required flags of the subcommand may come from its file
    rm.write_text('reward_models = ["runs/rm/best"]\ndata = "runs/data"\nn_resamples = 50\n')
    args = eval_script.parse_args(["rm", "--config", str(rm)])
    assert (args.reward_models, args.data, args.n_resamples) == (["runs/rm/best"], Path("runs/data"), 50)
    rm.write_text("limit = 3\n")  # a key of the main command is not one of the subcommand's
    with pytest.raises(ValueError, match="'limit' is not a setting of eval.py rm"):
        eval_script.parse_args(["rm", "--config", str(rm), "--reward-models", "x", "--data", "y"])
    with pytest.raises(OSError, match="--config .*missing.toml"):
        eval_script.parse_args(["--config", str(tmp_path / "missing.toml"), "--models", "a/Base=b"])


# ------------------------------------------------------------------------------ the tiny models

@pytest.mark.parametrize("family, style", [("llama", "llama3"), ("falcon", "falcon"), ("pythia", "pythia")])
def test_tiny_checkpoints_are_hugging_face_checkpoints_of_their_family(tmp_path, family, style):
    """karma/tiny.py's checkpoints load in transformers with the same logits as in karma, and keep
    their family's tokenizer conventions (Llama 3 prepends BOS; Pythia's EOS is 0 and its pad 1)."""
    import torch
    from transformers import AutoModelForCausalLM

    import karma
    from karma.tiny import build
    from karma.tokenizer import load_tokenizer

    path = build(family, tmp_path / family, seed=1)
    oracle = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    ours = karma.load_model(path, dtype=torch.float32, device="cpu")
    ids = torch.arange(3, 60).unsqueeze(0)
    with torch.no_grad():
        assert (oracle(ids).logits - ours(ids)).abs().max() < 1e-4
    tok = load_tokenizer(path)
    assert tok.decode(tok.encode("Héllo, wörld")) == "Héllo, wörld"  # byte-level: any text round-trips
    assert (tok.encode("hi")[0] == tok.bos_id) == (style == "llama3")
    if style == "pythia":
        assert (tok.eos_id, tok.pad_id) == (0, 1)
    assert R.model_params(str(path)) == {"llama": 107_072, "falcon": 116_544, "pythia": 133_120}[family]
    assert build(family, tmp_path / "again", seed=1).joinpath("model.safetensors").read_bytes() == \
        path.joinpath("model.safetensors").read_bytes()  # the same seed, the same files


# ------------------------------------------------------------------------------ the real stages

@pytest.mark.slow
def test_a_small_grid_of_tiny_models_runs_every_stage_stopped_and_resumed(tmp_path):
    """Two tiny policies (one built by the recipe) x the three variants, tiny Llama reward models: data,
    both RMs, the build, six PPO runs, eval, eval rm. SIGTERM in the middle of the grid, then `run`
    again: it skips what finished, resumes what started, and every cell of the final tables comes from
    this recipe's runs. 52 s on a quiet 2-core machine (10 minutes when other jobs share it)."""
    from karma.tiny import build

    build("llama", tmp_path / "rm-base")
    build("pythia", tmp_path / "pythia")
    configs = {
        "data.toml": 'input = ["data/sample"]\nworkers = 1\nmax_prompts = 16\n'
                     'ultrachat = ["configs/toy/ultrachat-synthetic.jsonl"]\nultrachat_limit = 16\n',
        "rm-g.toml": f'model = "{tmp_path / "rm-base"}"\nformat = "generalized"\nbatch_size = 4\nmicro_batch_size = 4\n'
                     "max_steps = 2\nmax_length = 96\neval_every = 2\nsave_every = 1\nkeep_checkpoints = 0\n"
                     "max_eval_examples = 16\n",
        "ppo.toml": "rollouts = 4\nrollout_batch = 4\nminibatch = 4\nmicro_batch = 4\nppo_epochs = 1\n"
                    "max_new_tokens = 8\nmax_prompt_tokens = 128\nsave_every = 1\nkeep_checkpoints = 0\n",
        "eval.toml": 'tasks = ["mmlu", "crows_pairs"]\ndata_dir = "data/eval-sample"\nlimit = 4\n',
        "rmr.toml": "max_examples = 16\nn_resamples = 50\n",
    }
    configs["rm-c.toml"] = configs["rm-g.toml"].replace("generalized", "conditioned")
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TOY.read_text().split("[policies.smollm2-135m]")[0]  # the toy's out, data, RMs, PPO, variants
                      .replace('"runs/toy"', f'"{tmp_path / "run"}"').replace("configs/toy/", f"{tmp_path}/")
                      .replace("rm-generalized.toml", "rm-g.toml").replace("rm-conditioned.toml", "rm-c.toml")
                      + f'[policies.falcon]\nmodel = "{tmp_path / "falcon"}"\n'
                        'build = "python -m karma.tiny --family falcon --out {model}"\n'
                        f'[policies.pythia]\nmodel = "{tmp_path / "pythia"}"\n'
                        f'[eval]\nconfig = "{tmp_path / "eval.toml"}"\n'
                        f'[rm_report]\nconfig = "{tmp_path / "rmr.toml"}"\n'
                        'policies = { generalized = "karmaToxic", conditioned = "karmaEroded" }\n')
    command = [sys.executable, "-m", "karma.recipe", str(recipe), "run"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    target = tmp_path / "run" / "ppo" / "falcon" / "karmaToxic" / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(target.glob("rollout-??????")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, first.stdout.read()  # still running: stopped mid-grid
    # freeze the PPO run right after its first checkpoint (a tiny run would finish before the signal
    # lands), SIGTERM the runner (what Slurm's scancel sends), which terminates its stage: let it die
    ppo = int(subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True, text=True).stdout.split()[0])
    os.kill(ppo, signal.SIGSTOP)
    os.kill(first.pid, signal.SIGTERM)
    time.sleep(1)
    os.kill(ppo, signal.SIGCONT)
    stopped = first.communicate(timeout=120)[0]
    assert first.returncode == 130 and "ppo/falcon/karmaToxic: starting" in stopped
    assert not (target.parent / "policy").exists() and "ppo/falcon/karmaEroded" not in stopped

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert "[1/12] data: complete, skipped" in out and "model/falcon: complete, skipped" in out
    assert "ppo/falcon/karmaToxic: resuming" in out and "ppo/falcon/karmaEroded: starting" in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["missing"] == [] and [t["task"] for t in report["tables"]] == ["mmlu", "crows_pairs"]
    for table in report["tables"]:
        assert list(table["rows"]) == ["falcon", "pythia"]
        for policy, row in table["rows"].items():
            assert list(row) == ["Base", "karmaBenign", "karmaToxic", "karmaEroded"]
            for variant, cell in row.items():
                assert cell is not None and isinstance(cell["value"], float)
                if variant != "Base":  # a finished PPO run of this recipe: all its rollouts, exported
                    run_dir = Path(cell["source"]).parent
                    assert run_dir == tmp_path / "run" / "ppo" / policy / variant
                    records = [r for _, r in read_jsonl(run_dir / "metrics.jsonl")]
                    assert max(r.get("rollout", 0) for r in records) == 4
        assert set(table["across_models"]) == {"karmaBenign", "karmaToxic", "karmaEroded"}
    rms = {r["rm"]: r for r in report["reward_models"]}
    assert rms["rm-conditioned"]["format"] == "conditioned" and rms["rm-generalized"]["eval_rm"]["roc_auc"] is not None
    assert {r["policy"] for r in report["downstream"]["rows"]} == {"falcon/karmaToxic", "pythia/karmaToxic",
                                                                   "falcon/karmaEroded", "pythia/karmaEroded"}
    markdown = (tmp_path / "run" / "REPORT.md").read_text()
    assert "| falcon | " in markdown and "| across models |" in markdown and "## Reward models" in markdown
