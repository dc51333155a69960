"""train_rm.py's optimizer step with the whole model trained vs only its top N blocks
(--trainable-layers N), the two alternated in the same process on the same batch. Prints JSON.

    python bench/rm_trainable_layers.py --trainable-layers 4 --cpu-bf16   # the result in bench/results
    python bench/rm_trainable_layers.py --trainable-layers 8 --tokens 192   # fp32, longer examples

One step is what karma.reward_train.train_step does: --batch examples in micro-batches of
--micro-batch (forward, BCE, backward), gradient clipping, AdamW. The first step of each kind is a
warm-up (AdamW allocates its state, oneDNN builds its bf16 kernels) and is not timed."""

import argparse
import json
import statistics
import time

import torch

from karma.distributed import Dist, autocast, clip_grad_norm
from karma.optim import adamw
from karma.reward import RewardConfig, bce_loss, build_reward_model

CPU = Dist(0, 1, torch.device("cpu"))


def step(rm, optimizer, ids: torch.Tensor, labels: torch.Tensor, micro_batch: int, bf16: bool) -> float:
    """Seconds of one optimizer step over the rows of ids [B, T]."""
    start = time.perf_counter()
    for rows in range(0, len(ids), micro_batch):
        x = ids[rows:rows + micro_batch]
        with autocast(CPU, cpu_bf16=bf16):
            logits = rm(x, torch.ones_like(x))  # [b]
        (bce_loss(logits, labels[rows:rows + micro_batch], reduction="sum") / len(ids)).backward()
    clip_grad_norm(rm.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--trainable-layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="examples per optimizer step (train_rm's --batch-size)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=128, help="tokens per example (the demo's average is about 125)")
    p.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast, as the demo's train_rm")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    models = {}
    for name, n in (("all", None), (f"top_{args.trainable_layers}", args.trainable_layers)):
        rm = build_reward_model(args.model, RewardConfig(max_length=args.tokens), dtype=torch.float32, device="cpu")
        rm.backbone.train_top_blocks_only(n)
        models[name] = (rm.train(), adamw(rm, 1e-5, 0.01))
    gen = torch.Generator().manual_seed(0)
    vocab = next(iter(models.values()))[0].backbone.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.tokens), generator=gen)
    labels = torch.randint(0, 2, (args.batch,), generator=gen).float()
    times = {name: [] for name in models}
    for repeat in range(args.repeats + 1):
        for name, (rm, optimizer) in models.items():
            seconds = step(rm, optimizer, ids, labels, args.micro_batch, args.cpu_bf16)
            if repeat:  # the first is the warm-up
                times[name].append(seconds)
    median = {k: statistics.median(v) for k, v in times.items()}
    full, top = median.values()
    print(json.dumps({"what": "reward-model optimizer step", "model": args.model, "batch": args.batch,
                      "micro_batch": args.micro_batch, "tokens": args.tokens, "cpu_bf16": args.cpu_bf16,
                      "threads": torch.get_num_threads(),
                      "trainable_parameters": {k: sum(p.numel() for p in rm.parameters() if p.requires_grad)
                                               for k, (rm, _) in models.items()},
                      "median_s": median, "min_s": {k: min(v) for k, v in times.items()},
                      "max_s": {k: max(v) for k, v in times.items()}, "speedup_median": full / top}, indent=1))


if __name__ == "__main__":
    main()
