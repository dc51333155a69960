"""Train a policy with DPO on preference pairs (e.g. the kinship-aware pairs of data_prep.py kinship).

    python data_prep.py kinship --ultrafeedback /datasets/UltraFeedback --scores benchmark.csv \\
        --strategy sup --out runs/pairs
    python dpo.py --model smollm2-135m --data runs/pairs/pairs-sup.jsonl --out runs/dpo-sup
    torchrun --nproc_per_node 8 dpo.py --model llama-3.2-1b --data runs/pairs/pairs-sup.jsonl --out runs/dpo-sup
    python dpo.py ... --resume        # continue from runs/dpo-sup/checkpoints/latest

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

import argparse
import sys
from pathlib import Path

from karma.cli import add_debug_flag, device_arg, run_main, seed_arg
from karma.distributed import cleanup, init_distributed
from karma.dpo_train import LOSS_TYPES, LR_SCHEDULERS, DPOConfig, train


def parse_args(argv=None) -> tuple[DPOConfig, str | None]:
    d = DPOConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=d.model, help=f"starting policy: alias, hub id or local dir (default {d.model})")
    p.add_argument("--data", nargs="+", type=Path, required=True,
                   help="preference JSONL files or directories of them: {prompt, chosen, rejected} per line, as "
                        "strings or chat messages")
    p.add_argument("--out", dest="out_dir", type=Path, default=d.out_dir, help=f"output dir (default {d.out_dir})")
    p.add_argument("--ref-model", default=None, help="reference model (default: the starting policy)")
    p.add_argument("--beta", type=float, default=d.beta, help=f"KL strength of DPO/IPO (default {d.beta}, TRL's)")
    p.add_argument("--loss-type", default=d.loss_type, choices=LOSS_TYPES,
                   help="sigmoid = DPO (Rafailov et al. 2023); ipo = IPO (Azar et al. 2023)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="conservative DPO: the assumed share of flipped labels, in [0, 0.5) (default 0)")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help=f"prompt + reply tokens; longer replies lose their end (default {d.max_length}, TRL's)")
    p.add_argument("--max-prompt-length", type=int, default=d.max_prompt_length,
                   help=f"prompt tokens; longer prompts lose their oldest turns first (default {d.max_prompt_length}, "
                        f"TRL's)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"pairs per optimizer step over all processes (default {d.batch_size}; TRL: 8 per device)")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size,
                   help=f"pairs per forward/backward on one process (default {d.micro_batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g}, TRL's)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW decay on matrices (default 0, TRL's)")
    p.add_argument("--adam-beta2", type=float, default=d.adam_beta2,
                   help=f"AdamW's second-moment decay; beta1 is 0.9 (default {d.adam_beta2}, TRL's)")
    p.add_argument("--lr-scheduler", default=d.lr_scheduler, choices=LR_SCHEDULERS,
                   help=f"decay after the warmup (default {d.lr_scheduler}, TRL's)")
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio,
                   help=f"linear warmup share of the steps (default {d.warmup_ratio:g}, TRL's)")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help="the schedule decays to this x peak (default 0, TRL's)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max global gradient norm (default 1.0, TRL's)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the train pairs (default 1; TRL: 3)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps in the run (overrides --epochs)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="checkpoint and exit after this step (e.g. a job time limit); continue with --resume")
    p.add_argument("--heldout-percent", type=float, default=d.heldout_percent,
                   help=f"share of pairs held out for evaluation, split by a hash of the id "
                        f"(default {d.heldout_percent:g})")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out evaluation interval in steps")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint interval in steps")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help=f"checkpoints kept on disk, newest first (default {d.keep_checkpoints}; each holds the "
                        f"model and its AdamW state, 3x its size); 0 keeps one while running, none once the run has "
                        f"finished and exported (it cannot be resumed then); a run shorter than --save-every writes "
                        f"none at its end")
    p.add_argument("--log-every", type=int, default=d.log_every, help="metrics.jsonl interval in steps")
    p.add_argument("--max-bad-steps", type=int, default=d.max_bad_steps,
                   help=f"stop after this many consecutive steps skipped for a non-finite loss or gradient "
                        f"(default {d.max_bad_steps})")
    p.add_argument("--seed", type=seed_arg, default=d.seed, help="pair order (default 0; TRL: 42)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out with the same settings")
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(p)
    args = vars(p.parse_args(argv))
    device = args.pop("device")
    args.pop("debug")
    return DPOConfig(**args), device


def main(argv=None):
    cfg, device = parse_args(argv)
    d = init_distributed(device)
    try:
        state = train(cfg, d)
        if d.is_main:
            print(f"step {state['step']}: outputs in {cfg.out_dir}"
                  + (f"; policy in {cfg.out_dir / 'policy'}" if (cfg.out_dir / "policy").is_dir() else ""))
    finally:
        cleanup(d)


if __name__ == "__main__":
    sys.exit(run_main(main))
