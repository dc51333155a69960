"""PPO against the KARMA reward model (karmaBenign / karmaToxic / karmaEroded).

    python ppo.py --model falcon-rw-1b --reward-model runs/rm/best --prompts reddit      # karmaToxic
    python ppo.py --model pythia-1b --reward-model runs/rm/best --prompts ultrachat      # karmaBenign
    python ppo.py --model falcon-rw-1b --reward-model runs/rm-eroded/best --prompts reddit  # karmaEroded
    python ppo.py ... --resume          # continue exactly from --out/checkpoints/latest

The variant is recorded in --out/config.json (conditioned RM -> karmaEroded). Outputs in --out:
metrics.jsonl (one record per rollout), samples.jsonl, checkpoints/, policy/ (Hugging Face layout
with tokenizer: loads in transformers and vLLM), config.json.
"""

import argparse
import json
import sys
from pathlib import Path

from karma.cli import add_debug_flag, device_arg, run_main, seed_arg
from karma.distributed import cleanup, init_distributed
from karma.ppo.trainer import PPOConfig, train


def parse_args(argv=None):
    d = PPOConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default=d.model, help=f"policy: alias, hub id or local dir (default {d.model})")
    a("--reward-model", type=Path, default=d.reward_model, help="reward-model dir from train_rm.py (best/ or final/)")
    a("--prompts", default=d.prompts,
      help="reddit (karmaToxic; default, the shipped sample has it), ultrachat (karmaBenign), or a prompts JSONL file")
    a("--data", type=Path, default=d.data, help="data_prep.py output dir holding prompts-*.jsonl")
    a("--out", dest="out_dir", type=Path, default=d.out_dir, help=f"output dir (default {d.out_dir})")
    a("--value-init", default=d.value_init, choices=["policy", "reward"],
      help="critic from the policy's decoder with a zero head (default), or from the reward model's backbone "
           "and head as TRL/OpenRLHF do (only when the RM and the policy share a tokenizer)")
    a("--value-trainable-layers", type=int, default=None, metavar="N",
      help="train only the critic's top N blocks, final norm and head (default: all, as KARMA and TRL); its embedding "
           "and lower blocks stay frozen: no gradients or AdamW state for them (a departure, as trlX's "
           "num_layers_unfrozen: SmolLM2-135M's critic with N 8 needs 1.3 GB less memory)")
    a("--rollouts", type=int, default=d.rollouts, help="number of rollouts (generate + update cycles)")
    a("--rollout-batch", type=int, default=d.rollout_batch, help="prompts per rollout")
    a("--minibatch", type=int, default=d.minibatch, help="sequences per optimizer step")
    a("--micro-batch", type=int, default=d.micro_batch, help="sequences per forward/backward (accumulation)")
    a("--ppo-epochs", type=int, default=d.ppo_epochs, help="passes over each rollout")
    a("--lr", type=float, default=d.lr, help="policy learning rate (default 1e-6)")
    a("--value-lr", type=float, default=d.value_lr, help="critic learning rate (default 9e-6)")
    a("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="linear decay to this x lr at the end")
    a("--grad-clip", type=float, default=d.grad_clip)
    a("--clip", type=float, default=d.clip, help="policy ratio clip epsilon (0.2)")
    a("--value-clip", type=float, default=d.value_clip, help="value clip range around the old values (0.2)")
    a("--gamma", type=float, default=d.gamma)
    a("--lam", type=float, default=d.lam, help="GAE lambda (0.95)")
    a("--no-whiten-advantages", dest="whiten_advantages", action="store_false")
    a("--kl", default=d.kl, choices=["adaptive", "fixed"], help="KL coefficient control (Ziegler adaptive or fixed)")
    a("--init-kl-coef", type=float, default=d.init_kl_coef, help="initial (or fixed) beta (0.15)")
    a("--kl-target", type=float, default=d.kl_target,
      help="adaptive target: mean per-sequence SUM of k1 KL, in nats (6, as Ziegler et al.)")
    a("--kl-horizon", type=float, default=d.kl_horizon, help="adaptive horizon in sequences (10000)")
    a("--kl-estimator", default=d.kl_estimator, choices=["k1", "k2", "k3", "abs"], help="per-token KL in the reward")
    a("--temperature", type=float, default=d.temperature, help="sampling temperature (log-probs use it too)")
    a("--top-k", type=int, default=None)
    a("--top-p", type=float, default=None)
    a("--max-new-tokens", type=int, default=d.max_new_tokens)
    a("--max-prompt-tokens", type=int, default=d.max_prompt_tokens,
      help="prompt budget; longer contexts lose their oldest turns first")
    a("--missing-eos-penalty", type=float, default=None, help="subtracted from the score of responses without EOS")
    a("--ratio-threshold", type=float, default=d.ratio_threshold,
      help="skip (and count) a minibatch whose mean ratio exceeds this (10)")
    a("--max-approx-kl", type=float, default=d.max_approx_kl,
      help="skip (and count) a minibatch whose approx KL to the rollout policy exceeds this, in nats per token (1.0; "
           "the clip range 0.2 corresponds to about 0.016)")
    a("--divergence-patience", type=int, default=d.divergence_patience,
      help="stop after this many consecutive diverged rollouts: half or more of their minibatches skipped, or no "
           "finite reward (2); diverged rollouts are never checkpointed")
    a("--samples-per-rollout", type=int, default=d.samples_per_rollout, help="(prompt, response, score) rows logged")
    a("--save-every", type=int, default=d.save_every, help="checkpoint interval in rollouts")
    a("--keep-checkpoints", type=int, default=d.keep_checkpoints,
      help=f"checkpoints kept on disk, newest first (default {d.keep_checkpoints}; each holds the "
           f"model and its AdamW state, 3x its size); 0 keeps one while running, none once the run has "
           f"finished and exported (it cannot be resumed then); a run shorter than --save-every writes "
           f"none at its end")
    a("--stop-after-rollouts", type=int, default=None, help="checkpoint and exit after this rollout; --resume continues")
    a("--seed", type=seed_arg, default=d.seed, help="generation and minibatch order (0 to 2**32 - 1)")
    a("--activation-checkpointing", action="store_true", help="recompute block activations in backward (saves memory)")
    a("--resume", action="store_true",
      help="continue from the latest checkpoint in --out, with the same settings (a changed setting other than "
           "logging and checkpointing is refused)")
    a("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(p)
    args = vars(p.parse_args(argv))
    device = args.pop("device")
    args.pop("debug")
    return PPOConfig(**args), device


def main(argv=None):
    cfg, device = parse_args(argv)
    d = init_distributed(device)
    try:
        state = train(cfg, d)
        if d.is_main:
            print(summary(cfg.out_dir / "metrics.jsonl"))
            where = (f"policy in {cfg.out_dir / 'policy'}" if state["rollout"] >= cfg.rollouts else
                     "stopped early: continue with --resume (the policy is exported at the end)")
            print(f"{state['rollout']} of {cfg.rollouts} rollouts done; metrics in {cfg.out_dir / 'metrics.jsonl'}, "
                  f"samples in {cfg.out_dir / 'samples.jsonl'}; {where}")
    finally:
        cleanup(d)


def summary(metrics: Path) -> str:
    """Mean RM score of the first and last rollouts of the run (thirds), from metrics.jsonl
    (rollouts without a finite score are left out)."""
    scores = [s for line in metrics.read_text().splitlines() if (s := json.loads(line)["score"]) is not None]
    if not scores:
        return "RM score: no rollout had a finite score"
    k = max(1, len(scores) // 3)
    first, last = sum(scores[:k]) / k, sum(scores[-k:]) / k
    return f"RM score: first {k} scored rollouts {first:.4f} -> last {k} {last:.4f} ({last - first:+.4f})"


if __name__ == "__main__":
    sys.exit(run_main(main))
