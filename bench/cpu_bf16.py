"""fp32 vs bf16 autocast (--cpu-bf16) on this CPU: one training micro-step (forward + backward of a
policy's response log-probs), or with --sample one batch of sampled replies (the demo report's
sampling), the two alternated in the same process. Prints JSON.

    python bench/cpu_bf16.py                      # SmolLM2-135M (built offline), 4 x 96 tokens
    python bench/cpu_bf16.py --model PATH --batch 8 --tokens 128
    python bench/cpu_bf16.py --sample --batch 48 --tokens 64 --reply 16   # karma.demo's batches

The first call of each kind is a warm-up (oneDNN builds its bf16 kernels then) and is not timed.
The speed-up needs AVX512-BF16 or AMX; without them bf16 can be slower than fp32."""

import argparse
import json
import statistics
import time

import torch

from karma.distributed import Dist, autocast
from karma.generate import generate
from karma.weights import load_model

CPU = Dist(0, 1, torch.device("cpu"))


def step(model, ids: torch.Tensor, reply: int, bf16: bool) -> float:
    """Seconds of one forward + backward of the mean log-prob of the last `reply` tokens."""
    start = time.perf_counter()
    with autocast(CPU, cpu_bf16=bf16):
        hidden = model(ids, output="hidden")[:, -reply - 1:-1]
        logprobs = torch.log_softmax(model.logits(hidden).float(), -1)
    logprobs.gather(-1, ids[:, -reply:, None]).mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def sample(model, ids: torch.Tensor, reply: int, bf16: bool) -> float:
    """Seconds to sample `reply` new tokens for every row of `ids` (no stop token: every row runs to the end)."""
    start = time.perf_counter()
    with autocast(CPU, cpu_bf16=bf16):
        generate(model, ids, max_new_tokens=reply, temperature=1.0, stop_ids=[], pad_id=0, seed=0)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=96, help="sequence length (prompt + reply)")
    p.add_argument("--reply", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sample", action="store_true",
                   help="time sampling `--reply` tokens after `--tokens` prompt tokens")
    args = p.parse_args()
    model = load_model(args.model).train(not args.sample)
    run = sample if args.sample else step
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
    times = {"fp32": [], "bf16": []}
    for bf16 in (False, True):
        run(model, ids, args.reply, bf16)  # warm-up
    for _ in range(args.repeats):
        for bf16 in (False, True):
            times["bf16" if bf16 else "fp32"].append(run(model, ids, args.reply, bf16))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"what": "sample" if args.sample else "step", "model": args.model, "batch": args.batch,
                      "tokens": args.tokens, "threads": torch.get_num_threads(),
                      "median_s": median, "min_s": {k: min(v) for k, v in times.items()},
                      "max_s": {k: max(v) for k, v in times.items()},
                      "speedup_median": median["fp32"] / median["bf16"]}, indent=1))


if __name__ == "__main__":
    main()
