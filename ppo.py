"""PPO against the KARMA reward model (karmaBenign / karmaToxic / karmaEroded).

    python ppo.py --model falcon-rw-1b --reward-model runs/rm/best --prompts reddit      # karmaToxic
    python ppo.py --model pythia-1b --reward-model runs/rm/best --prompts ultrachat      # karmaBenign
    python ppo.py --model falcon-rw-1b --reward-model runs/rm-eroded/best --prompts reddit  # karmaEroded
    python ppo.py ... --resume          # continue exactly from --out/checkpoints/latest
    python ppo.py --config run.toml --lr 2e-6   # settings from a TOML file (init_kl_coef = 0.1); flags win

The variant is recorded in --out/config.json (conditioned RM -> karmaEroded). Outputs in --out:
  config.json          the settings, the variant, the reward model's format
  metrics.jsonl        one record per rollout, with its reward-hacking signals and best/worst replies
                       (karma/ppo/signals.py)
  samples.jsonl        --samples-per-rollout (prompt, response, score) rows per rollout
  eval.jsonl           with --eval-every: per evaluation, mean RM score, KL to the reference, reply length
                       and diversity on held-out prompts the policy never trains on
  eval-prompts.jsonl   with --eval-every: those held-out prompts, the same at every evaluation
  checkpoints/         for --resume; policy/: the final policy (Hugging Face layout with tokenizer: loads
                       in transformers and vLLM); tensorboard/ or wandb/ with --report-to
"""

import sys
from pathlib import Path

from karma.cli import add_debug_flag, device_arg, run_main
from karma.distributed import cleanup, init_distributed
from karma.files import read_jsonl
from karma.ppo.trainer import PPOConfig, train
from karma.settings import parse_settings, settings_parser


def parse_args(argv=None) -> tuple[PPOConfig, str | None]:
    """The settings (PPOConfig's defaults, then --config, then the flags given) and --device."""
    p = settings_parser(PPOConfig, __doc__)
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(p)
    cfg, args = parse_settings(PPOConfig, p, argv)
    return cfg, args.device


def main(argv=None):
    cfg, device = parse_args(argv)
    dist = init_distributed(device)
    try:
        state = train(cfg, dist)
        if dist.is_main:
            print(summary(cfg.out_dir / "metrics.jsonl"))
            where = (f"policy in {cfg.out_dir / 'policy'}" if state["rollout"] >= cfg.rollouts else
                     "stopped early: continue with --resume (the policy is exported at the end)")
            print(f"{state['rollout']} of {cfg.rollouts} rollouts done; metrics in {cfg.out_dir / 'metrics.jsonl'}, "
                  f"samples in {cfg.out_dir / 'samples.jsonl'}; {where}")
    finally:
        cleanup(dist)


def summary(metrics: Path) -> str:
    """Mean RM score of the first and last rollouts of the run (thirds), from metrics.jsonl
    (rollouts without a finite score are left out)."""
    scores = [s for _, record in read_jsonl(metrics) if (s := record["score"]) is not None]
    if not scores:
        return "RM score: no rollout had a finite score"
    k = max(1, len(scores) // 3)
    first, last = sum(scores[:k]) / k, sum(scores[-k:]) / k
    return f"RM score: first {k} scored rollouts {first:.4f} -> last {k} {last:.4f} ({last - first:+.4f})"


if __name__ == "__main__":
    sys.exit(run_main(main))
