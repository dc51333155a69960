"""CPU: samples/s of a whole PPO iteration, karma's PPO against TRL 0.28's PPOTrainer (the last TRL
release with it), on the same random Llama, side by side in one job.

TRL lives in its own environment; nothing is installed at run time. Make it once (pip resolves
transformers 5.24.0, accelerate 1.15.0, datasets 5.2.0 for trl 0.28.0; torch 2.13.0 is the CPU build):
    python3 -m venv /work/trl-venv && /work/trl-venv/bin/pip install torch==2.13.0 trl==0.28.0
then, from the repository root (under flock when others time things on the same machine):
    PYTHONPATH=. python bench/ppo_vs_trl.py --trl-python /work/trl-venv/bin/python [--pairs 5] [--rollouts 3]

What both tools get, written once to a temporary directory by this process (karma's environment):
  - a random Llama of 16.6M parameters: vocab 32000, hidden 256, 8 layers, 4 heads (no GQA),
    SwiGLU 1024, tied embeddings, transformers' init (std 0.02), saved as HF safetensors; the
    policy, the frozen reference and the critic start from it;
  - a reward model of the same shape: that backbone with a fresh random head (karma: its MLP head,
    saved by save_reward_model; TRL: LlamaForSequenceClassification's linear `score`);
  - a tokenizer of 32001 tokens: byte-level BPE, filler tokens up to the model's 32000 ids, and
    EOS as id 32000, which the model cannot emit. Both tools stop at EOS, so every response has
    exactly --response-length tokens (the same rule in both, a fixed length);
  - 16 prompts of 30-38 tokens, rendered by karma's reward-model format and tokenized once: karma
    reads the text (and renders it to these ids), TRL reads the ids.
Every run is a fresh subprocess (karma: this interpreter; TRL: --trl-python) with --threads torch
threads, fp32, doing 1 warm-up rollout + --rollouts timed ones. A PPO iteration is everything from
the end of one rollout's update to the end of the next one's (generation, reward, rollout forward
passes, advantages, the update, logging); samples/s = rollout_batch / its seconds. Runs alternate
karma, TRL, TRL, karma, ... (--pairs pairs, the order flipped each pair); the ratio karma/TRL is
taken per pair and pooled. The settings both run with are SETTINGS below (TRL's names in brackets).
Prints one JSON object and writes it to --out.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = dict(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)
EOS = MODEL["vocab_size"]  # a tokenizer id the model has no logit for: generation never stops early
# the settings both tools run with (TRL's names in brackets where they differ)
SETTINGS = dict(
    rollout_batch=16,  # prompts per rollout [per_device_train_batch_size * gradient_accumulation_steps]
    minibatch=16,  # sequences per optimizer step [rollout_batch / num_mini_batches]
    micro_batch=8,  # sequences per forward/backward [per_device_train_batch_size]
    ppo_epochs=2,  # [num_ppo_epochs]
    clip=0.2,  # [cliprange]
    value_clip=0.2,  # [cliprange_value]
    kl_coef=0.05,  # fixed beta of the per-token KL penalty in the reward, k1 estimator [kl_coef, kl_estimator]
    gamma=1.0, lam=0.95,
    whiten_advantages=True,  # TRL always whitens advantages; rewards are not whitened in either
    temperature=1.0, top_k=None, top_p=None,
    lr=1e-6,  # linear decay
    dtype="float32", activation_checkpointing=False,  # [gradient_checkpointing=False; TRL's default is True]
    seed=0,
)
WORDS = ("the a of to and in is it you that for on with this was are be as have not but what can people question "
         "answer reddit thread reply comment think know good time really would just like").split()


# ---------------------------------------------------------------------------------------------- shared inputs

def build_inputs(root: Path, n_prompts: int) -> dict:
    """Tokenizer + policy checkpoint (root/policy), karma reward model (root/rm), prompts as text
    (root/prompts.jsonl) and as token ids (root/query_ids.json). Returns the model's description."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from karma.reward import RewardConfig, RewardModel, encode, save_reward_model
    from karma.tokenizer import load_tokenizer
    from karma.weights import load_model

    policy_dir = root / "policy"
    policy_dir.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40)) for i in range(200)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([f"<t{i}>" for i in range(tok.get_vocab_size(), EOS)])  # filler: every model id decodes
    tok.add_special_tokens(["<eos>"])
    assert tok.token_to_id("<eos>") == EOS and tok.token_to_id("<pad>") == 0
    tok.save(str(policy_dir / "tokenizer.json"))
    (policy_dir / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<eos>", "pad_token": "<pad>", "padding_side": "left", "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast"}))

    torch.manual_seed(SETTINGS["seed"])
    config = transformers.LlamaConfig(**MODEL, eos_token_id=EOS, bos_token_id=None, pad_token_id=None)
    transformers.LlamaForCausalLM(config).save_pretrained(policy_dir)
    rm = RewardModel(load_model(policy_dir, dtype=torch.float32), RewardConfig(max_length=512),
                     load_tokenizer(policy_dir))
    save_reward_model(rm, root / "rm")

    prompts = [{"id": f"p{i}", "messages": [{"role": "user", "content": " ".join(
        WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(16 + i % 9))}]} for i in range(n_prompts)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    # what karma's collect_rollout renders each prompt to; TRL gets these ids
    render = argparse.Namespace(format=rm.cfg.format, max_length=128)
    ids = [encode(rm.tokenizer, p["messages"], None, None, render) for p in prompts]
    (root / "query_ids.json").write_text(json.dumps(ids))
    params = sum(p.numel() for p in rm.backbone.parameters())
    return {**MODEL, "family": "llama", "parameters": params, "tokenizer_size": EOS + 1,
            "prompt_tokens": [min(map(len, ids)), max(map(len, ids))]}


# ---------------------------------------------------------------------------------------------- one run per tool

def karma_run(root: Path, rollouts: int, response_length: int) -> dict:
    """karma.ppo.trainer.train on the shared inputs; per-rollout seconds by phase."""
    import torch

    import karma.ppo.trainer as trainer
    from karma.distributed import Dist
    from karma.files import read_jsonl

    ends = []  # perf_counter at the end of each rollout (its progress line)
    progress_line = trainer.progress_line
    trainer.progress_line = lambda record: ends.append(time.perf_counter()) or progress_line(record)
    s = SETTINGS
    cfg = trainer.PPOConfig(
        model=str(root / "policy"), reward_model=root / "rm", prompts=str(root / "prompts.jsonl"),
        out_dir=root / f"karma-run-{os.getpid()}", value_init="policy", rollouts=rollouts + 1,
        rollout_batch=s["rollout_batch"], minibatch=s["minibatch"], micro_batch=s["micro_batch"],
        ppo_epochs=s["ppo_epochs"], lr=s["lr"], value_lr=s["lr"], clip=s["clip"], value_clip=s["value_clip"],
        gamma=s["gamma"], lam=s["lam"], whiten_advantages=s["whiten_advantages"], kl="fixed",
        init_kl_coef=s["kl_coef"], kl_estimator="k1", temperature=s["temperature"], max_new_tokens=response_length,
        max_prompt_tokens=128, save_every=10**6, keep_checkpoints=0, samples_per_rollout=0, seed=s["seed"],
        activation_checkpointing=s["activation_checkpointing"])
    trainer.train(cfg, Dist(0, 1, torch.device("cpu")))
    metrics = [record for _, record in read_jsonl(cfg.out_dir / "metrics.jsonl")]
    return {"rollouts": [
        {"iteration_s": end - previous, "generate_s": m["generate_s"],
         "rollout_forward_s": m["score_s"] + m["forward_s"], "update_s": m["update_s"],
         "response_tokens": m["generated_tokens"]}
        for previous, end, m in zip(ends, ends[1:], metrics[1:])]}


def trl_run(root: Path, rollouts: int, response_length: int) -> dict:
    """TRL 0.28's PPOTrainer on the shared inputs (run in the TRL environment); per-rollout seconds
    by phase, read from marks around its generation, after its advantage whitening (the end of the
    rollout) and at each step end."""
    import torch
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    marks = []  # (event, perf_counter)

    def marked(fn, before, after):
        def call(*args, **kwargs):
            if before:
                marks.append((before, time.perf_counter()))
            out = fn(*args, **kwargs)
            marks.append((after, time.perf_counter()))
            return out
        return call

    ppo_module.batch_generation = marked(ppo_module.batch_generation, "generate_start", "generate_end")
    ppo_module.masked_whiten = marked(ppo_module.masked_whiten, None, "rollout_end")  # advantages, once per rollout

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(("step_end", time.perf_counter()))

    s = SETTINGS
    policy_dir = str(root / "policy")
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    dataset = Dataset.from_dict({"input_ids": json.loads((root / "query_ids.json").read_text())})
    load = lambda cls, **kw: cls.from_pretrained(policy_dir, dtype=torch.float32, **kw)
    args = PPOConfig(
        output_dir=str(root / f"trl-run-{os.getpid()}"), per_device_train_batch_size=s["micro_batch"],
        gradient_accumulation_steps=s["rollout_batch"] // s["micro_batch"],
        num_mini_batches=s["rollout_batch"] // s["minibatch"], num_ppo_epochs=s["ppo_epochs"],
        total_episodes=(rollouts + 1) * s["rollout_batch"], local_rollout_forward_batch_size=s["rollout_batch"],
        response_length=response_length, stop_token="eos", temperature=s["temperature"], kl_coef=s["kl_coef"],
        kl_estimator="k1", cliprange=s["clip"], cliprange_value=s["value_clip"], vf_coef=1.0, gamma=s["gamma"],
        lam=s["lam"], whiten_rewards=False, learning_rate=s["lr"], lr_scheduler_type="linear",
        gradient_checkpointing=s["activation_checkpointing"], bf16=False, fp16=False, use_cpu=True,
        num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=s["seed"])
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=load(AutoModelForCausalLM),
                         ref_model=load(AutoModelForCausalLM), reward_model=load(AutoModelForSequenceClassification,
                                                                                 num_labels=1),
                         value_model=load(AutoModelForSequenceClassification, num_labels=1),
                         train_dataset=dataset, eval_dataset=dataset, callbacks=[StepEnd()])
    trainer.train()
    times = {}
    for event, t in marks:
        times.setdefault(event, []).append(t)
    ends = times["step_end"]
    optimizer = trainer.optimizer.optimizer
    return {"trl": trl.__version__, "optimizer": type(optimizer).__name__,
            "optimizer_defaults": {**{k: v for k, v in optimizer.defaults.items() if k in ("fused", "betas", "eps")},
                                   "weight_decay": sorted({g["weight_decay"] for g in optimizer.param_groups})},
            "rollouts": [
                {"iteration_s": end - previous, "generate_s": g1 - g0, "rollout_forward_s": r - g1,
                 "update_s": end - r, "response_tokens": s["rollout_batch"] * response_length}
                for previous, end, g0, g1, r in zip(ends, ends[1:], times["generate_start"][1:],
                                                    times["generate_end"][1:], times["rollout_end"][1:])]}


def side(args) -> None:
    """The body of one subprocess: run one tool, print its result as the last stdout line."""
    import torch

    torch.set_num_threads(args.threads)
    run = karma_run if args.side == "karma" else trl_run
    result = run(Path(args.root), args.rollouts, args.response_length)
    import transformers

    result.update(torch=torch.__version__, transformers=transformers.__version__, threads=torch.get_num_threads())
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------- the job

def run_side(tool: str, python: str, root: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = [python, str(Path(__file__).resolve()), "--side", tool, "--root", str(root),
               "--rollouts", str(args.rollouts), "--response-length", str(args.response_length),
               "--threads", str(args.threads)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{tool} run failed ({done.returncode}):\n{done.stderr[-5000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rollouts = result["rollouts"]
    result["samples_per_s"] = SETTINGS["rollout_batch"] * len(rollouts) / sum(r["iteration_s"] for r in rollouts)
    return result


def summary(runs: list[dict]) -> dict:
    out = {}
    for tool in ("karma", "trl"):
        mine = [r for r in runs if r["tool"] == tool]
        rollouts = [x for r in mine for x in r["rollouts"]]
        out[tool] = {
            "samples_per_s_pooled": SETTINGS["rollout_batch"] * len(rollouts) / sum(x["iteration_s"] for x in rollouts),
            "samples_per_s_per_run": [r["samples_per_s"] for r in mine],
            **{f"{phase}_median": statistics.median(x[phase] for x in rollouts)
               for phase in ("iteration_s", "generate_s", "rollout_forward_s", "update_s")}}
    pairs = [k / t for k, t in zip(*([r["samples_per_s"] for r in runs if r["tool"] == tool]
                                     for tool in ("karma", "trl")))]
    out["ratio_karma_over_trl"] = {
        "per_pair": pairs, "median": statistics.median(pairs), "min": min(pairs),
        "pooled": out["karma"]["samples_per_s_pooled"] / out["trl"]["samples_per_s_pooled"],
        "generate": out["trl"]["generate_s_median"] / out["karma"]["generate_s_median"],
        "update": out["trl"]["update_s_median"] / out["karma"]["update_s_median"]}
    return out


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=5, help="(karma, TRL) run pairs, order flipped each pair")
    p.add_argument("--rollouts", type=int, default=3, help="timed rollouts per run, after one warm-up rollout")
    p.add_argument("--prompts", type=int, default=16, help="distinct prompts (each rollout takes 16)")
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trl-python", default=os.environ.get("TRL_PYTHON", "/work/trl-venv/bin/python"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / f"{date.today()}-cpu-ppo_vs_trl.json")
    p.add_argument("--side", choices=["karma", "trl"], help=argparse.SUPPRESS)  # one run, in a subprocess
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return side(args)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_inputs(root, args.prompts)
        runs = []
        for pair in range(args.pairs):
            for tool in ("karma", "trl") if pair % 2 == 0 else ("trl", "karma"):
                python = sys.executable if tool == "karma" else args.trl_python
                runs.append({"tool": tool, "pair": pair, **run_side(tool, python, root, args)})
                print(f"pair {pair} {tool}: {runs[-1]['samples_per_s']:.2f} samples/s", file=sys.stderr)
    trl_run_info = next(r for r in runs if r["tool"] == "trl")
    result = {
        "bench": "ppo_vs_trl", "date": str(date.today()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, CPU", "threads": args.threads,
        "versions": {"karma_torch": runs[0]["torch"] if runs[0]["tool"] == "karma" else runs[1]["torch"],
                     "trl": trl_run_info["trl"], "trl_transformers": trl_run_info["transformers"],
                     "trl_torch": trl_run_info["torch"]},
        "model": model, "settings": {**SETTINGS, "response_length": args.response_length, "prompts": args.prompts},
        "trl_optimizer": {"class": trl_run_info["optimizer"], **trl_run_info["optimizer_defaults"]},
        "differences": [  # what the two cannot be set to do alike
            "karma clips gradients (norm 1.0, policy and critic separately); TRL's PPOTrainer does not clip",
            "karma: two fused AdamW (policy, critic; no weight decay); TRL: one AdamW over policy + critic "
            "(TrainingArguments' defaults, see trl_optimizer), loss = policy + 1.0 * value",
            "karma decodes each response and re-tokenizes it for its reward model (which may have another "
            "tokenizer); TRL scores the generated ids",
            "karma tests every micro-batch for skipping (non-finite loss, ratio, approx KL, value loss)",
            "TRL's default gradient_checkpointing=True is turned off, as karma's activation checkpointing is"],
        "pairs": args.pairs, "timed_rollouts_per_run": args.rollouts,
        "summary": summary(runs), "runs": runs}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
