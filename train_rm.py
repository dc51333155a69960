"""Train the KARMA reward model on data_prep.py's examples.

    python train_rm.py --model llama-3.2-1b --data runs/data --out runs/rm            # KARMA (generalized)
    python train_rm.py --model llama-3.2-1b --data runs/data --out runs/rm-eroded --format conditioned
    torchrun --nproc_per_node 8 train_rm.py --model llama-3.2-1b --data runs/data --out runs/rm
    python train_rm.py ... --resume        # continue from runs/rm/checkpoints/latest

Outputs in --out: metrics.jsonl (train/eval records), eval.json (latest held-out metrics),
best/ and final/ (reward-model directories: backbone in Hugging Face layout + reward head +
tokenizer + reward_config.json), checkpoints/ (exact-resume state), config.json.
"""

import argparse
import sys
from pathlib import Path

from karma.cli import add_debug_flag, device_arg, run_main, seed_arg
from karma.distributed import cleanup, init_distributed
from karma.reward_train import TrainRMConfig, train


def parse_args(argv=None) -> TrainRMConfig:
    d = TrainRMConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=d.model,
                   help=f"base decoder: alias, hub id or local dir (default {d.model}, offline; the paper's is "
                        f"llama-3.2-1b, a hub download)")
    p.add_argument("--data", type=Path, default=d.data, help="data_prep.py output dir with train-*/heldout-*.jsonl")
    p.add_argument("--out", dest="out_dir", type=Path, default=d.out_dir, help=f"output dir (default {d.out_dir})")
    p.add_argument("--format", default=d.format, choices=["generalized", "conditioned"],
                   help="input format: generalized = KARMA, conditioned = karmaEroded (subreddit + time)")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help=f"tokens per example; longer contexts lose their oldest turns first (default {d.max_length})")
    p.add_argument("--head-hidden", type=int, default=None, help="width of the MLP head (default: the model's hidden size)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"examples per optimizer step over all processes (default {d.batch_size}, the paper's)")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size,
                   help="examples per forward/backward on one process; smaller = gradient accumulation")
    p.add_argument("--lr", type=float, default=d.lr,
                   help=f"peak learning rate (default {d.lr:g}: the paper omits it; 1e-5 is the usual choice for "
                        "full fine-tuning of ~1B reward models with AdamW at batch 16, as in TRL/OpenRLHF recipes)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay on matrices (default 0.01)")
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="linear warmup share of the steps (0.03)")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine decays to this x peak (0.1)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max global gradient norm (default 1.0)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the train split (default 1)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps in the run (overrides --epochs)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="checkpoint and exit after this step (e.g. a job time limit); continue with --resume")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out evaluation interval in steps")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--max-eval-examples", type=int, default=None, help="cap on held-out examples per evaluation")
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
    p.add_argument("--seed", type=seed_arg, default=d.seed,
                   help="data order and head initialisation (0 to 2**32 - 1)")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out, with the same settings (a changed "
                        "setting other than logging, evaluation and checkpoint intervals is refused)")
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(p)
    args = vars(p.parse_args(argv))
    device = args.pop("device")
    args.pop("debug")
    return TrainRMConfig(**args), device


def main(argv=None):
    cfg, device = parse_args(argv)
    d = init_distributed(device)
    try:
        state = train(cfg, d)
        if d.is_main:
            best = "none (no evaluation had a defined AUC)" if state["best_auc"] is None else \
                f"{state['best_auc']:.4f} at step {state['best_step']}"
            print(f"step {state['step']}: best held-out AUC {best}; {state['skipped_steps']} steps skipped "
                  f"(non-finite); outputs in {cfg.out_dir}")
    finally:
        cleanup(d)


if __name__ == "__main__":
    sys.exit(run_main(main))
