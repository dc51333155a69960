"""Train the KARMA reward model on data_prep.py's examples.

    python train_rm.py --model llama-3.2-1b --data runs/data --out runs/rm            # KARMA (generalized)
    python train_rm.py --model llama-3.2-1b --data runs/data --out runs/rm-eroded --format conditioned
    torchrun --nproc_per_node 8 train_rm.py --model llama-3.2-1b --data runs/data --out runs/rm
    python train_rm.py ... --resume        # continue from runs/rm/checkpoints/latest
    python train_rm.py --config rm.toml --seed 1   # settings from a TOML file; flags override it

Outputs in --out: metrics.jsonl (train/eval records), eval.json (latest held-out metrics),
best/ and final/ (reward-model directories: backbone in Hugging Face layout + reward head +
tokenizer + reward_config.json), checkpoints/ (exact-resume state), config.json.
"""

import sys

from karma.cli import add_debug_flag, device_arg, run_main
from karma.distributed import cleanup, init_distributed
from karma.reward_train import TrainRMConfig, train
from karma.settings import parse_settings, settings_parser


def parse_args(argv=None) -> tuple[TrainRMConfig, str | None]:
    """The settings (TrainRMConfig's defaults, then --config, then the flags given) and --device."""
    p = settings_parser(TrainRMConfig, __doc__)
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(p)
    cfg, args = parse_settings(TrainRMConfig, p, argv)
    return cfg, args.device


def main(argv=None):
    cfg, device = parse_args(argv)
    dist = init_distributed(device)
    try:
        state = train(cfg, dist)
        if dist.is_main:
            best = "none (no evaluation had a defined AUC)" if state["best_auc"] is None else \
                f"{state['best_auc']:.4f} at step {state['best_step']}"
            print(f"step {state['step']}: best held-out AUC {best}; {state['skipped_steps']} steps skipped "
                  f"(non-finite); outputs in {cfg.out_dir}")
    finally:
        cleanup(dist)


if __name__ == "__main__":
    sys.exit(run_main(main))
