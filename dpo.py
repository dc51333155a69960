"""Train a policy with DPO on preference pairs (e.g. the kinship-aware pairs of data_prep.py kinship).

    python data_prep.py kinship --ultrafeedback /datasets/UltraFeedback --scores benchmark.csv \\
        --strategy sup --out runs/pairs
    python dpo.py --model smollm2-135m --data runs/pairs/pairs-sup.jsonl --out runs/dpo-sup
    torchrun --nproc_per_node 8 dpo.py --model llama-3.2-1b --data runs/pairs/pairs-sup.jsonl --out runs/dpo-sup
    python dpo.py ... --resume        # continue from runs/dpo-sup/checkpoints/latest
    python dpo.py --config dpo.toml --beta 0.2   # settings from a TOML file; flags override it

Outputs in --out: metrics.jsonl (train/eval records with TRL's metric names), reference_logps.pt
(the reference's log-probs, computed once, with a record of what they were computed from: reused
only when it matches), policy/ (Hugging Face layout + tokenizer: loads in transformers and vLLM;
evaluate it with eval.py), checkpoints/ (exact-resume state), config.json, curves.png. Method and
loss: karma/dpo_train.py and karma/dpo.py.

Defaults against TRL 0.28's DPOConfig (with the transformers TrainingArguments it extends):
  the same: beta 0.1, lr 1e-6, sigmoid loss, label smoothing 0, no warmup, linear decay to 0,
    AdamW betas (0.9, 0.999) and eps 1e-8, no weight decay, gradient clipping at 1.0, max_length
    1024, max_prompt_length 512, a train record every 10 steps, per-token means for IPO;
  different:
    --epochs 1 (TRL: num_train_epochs 3);
    --batch-size 16 pairs per step over all processes (TRL: per_device_train_batch_size 8 per
      device, gradient_accumulation_steps 1);
    --seed 0 (TRL: 42);
    truncation: a prompt loses its oldest turns to fit --max-prompt-length, a reply its end to fit
      --max-length (TRL: the prompt keeps its last 512 tokens, then the sequence its last 1024,
      truncation_mode keep_end);
    no activation checkpointing unless --activation-checkpointing (TRL: gradient_checkpointing True;
      the numbers are the same, only memory and speed differ);
    held-out evaluation: --heldout-percent 5 of the pairs every --eval-every 100 steps (TRL: none
      unless an eval dataset and eval_strategy are given); a checkpoint every 100 steps (TRL: 500);
    the reference log-probs are computed once before training (TRL: precompute_ref_log_probs False,
      a reference model held and run alongside; the same numbers);
    with --warmup-ratio > 0, warmup step s trains at (s + 1) / warmup_steps of the peak (TRL: s /
      warmup_steps, so its first step has lr 0); --lr-scheduler cosine and --min-lr-ratio are options.
"""

import sys

from karma.cli import add_debug_flag, device_arg, run_main
from karma.distributed import cleanup, init_distributed
from karma.dpo_train import DPOConfig, train
from karma.settings import parse_settings, settings_parser


def parse_args(argv=None) -> tuple[DPOConfig, str | None]:
    """The settings (DPOConfig's defaults, then --config, then the flags given) and --device."""
    p = settings_parser(DPOConfig, __doc__)
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(p)
    cfg, args = parse_settings(DPOConfig, p, argv)
    return cfg, args.device


def main(argv=None):
    cfg, device = parse_args(argv)
    dist = init_distributed(device)
    try:
        state = train(cfg, dist)
        if dist.is_main:
            print(f"step {state['step']}: outputs in {cfg.out_dir}"
                  + (f"; policy in {cfg.out_dir / 'policy'}" if (cfg.out_dir / "policy").is_dir() else ""))
    finally:
        cleanup(dist)


if __name__ == "__main__":
    sys.exit(run_main(main))
