"""Train a policy with DPO on preference pairs (e.g. the kinship-aware pairs of data_prep.py kinship).

    python data_prep.py kinship --ultrafeedback /datasets/UltraFeedback --scores benchmark.csv \\
        --strategy sup --out runs/pairs
    python dpo.py --model smollm2-135m --data runs/pairs/pairs-sup.jsonl --out runs/dpo-sup
    torchrun --nproc_per_node 8 dpo.py --model llama-3.2-1b --data runs/pairs/pairs-sup.jsonl --out runs/dpo-sup
    python dpo.py ... --resume        # continue from runs/dpo-sup/checkpoints/latest

Outputs in --out: metrics.jsonl (train/eval records with TRL's metric names), reference_logps.pt
(the reference's log-probs, computed once), policy/ (Hugging Face layout + tokenizer: loads in
transformers and vLLM; evaluate it with eval.py), checkpoints/ (exact-resume state), config.json,
curves.png. Method and loss: karma/dpo_train.py and karma/dpo.py.
"""

import argparse
import sys
from pathlib import Path

from karma.cli import add_debug_flag, run_main
from karma.distributed import cleanup, init_distributed
from karma.dpo_train import LOSS_TYPES, DPOConfig, train


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
    p.add_argument("--max-length", type=int, default=d.max_length, help=f"prompt + reply tokens (default {d.max_length})")
    p.add_argument("--max-prompt-length", type=int, default=d.max_prompt_length,
                   help=f"prompt tokens; longer prompts lose their oldest turns first (default {d.max_prompt_length})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"pairs per optimizer step over all processes "
                                                                          f"(default {d.batch_size})")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size,
                   help=f"pairs per forward/backward on one process (default {d.micro_batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g}, TRL's)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay on matrices (default 0)")
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help=f"linear warmup share (default {d.warmup_ratio})")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="cosine decays to this x peak (default 0)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max global gradient norm (default 1.0)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the train pairs (default 1)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps in the run (overrides --epochs)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="checkpoint and exit after this step (e.g. a job time limit); continue with --resume")
    p.add_argument("--heldout-percent", type=float, default=d.heldout_percent,
                   help=f"share of pairs held out for evaluation, split by a hash of the id (default {d.heldout_percent})")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out evaluation interval in steps")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint interval in steps")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help=f"checkpoints kept, newest first (default {d.keep_checkpoints}); 0: none once the run has "
                        f"finished and exported")
    p.add_argument("--log-every", type=int, default=d.log_every, help="metrics.jsonl interval in steps")
    p.add_argument("--seed", type=int, default=d.seed, help="pair order")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out with the same settings")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
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
