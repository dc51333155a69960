"""CPU forward throughput: karma's decoder vs transformers on the same small checkpoint, same process.

For each family, build a random-weight checkpoint with transformers, load it in both, and time
no-grad forward passes (fp32, SDPA) alternately, so both see the same machine state.
Prints one JSON object per family: tokens/s of each and the ratio karma / transformers.

    PYTHONPATH=. python bench/forward_cpu.py [--batch 4] [--seq 256] [--iters 10]
"""

import argparse
import json
import statistics
import tempfile
import time

import torch
import transformers

import karma

SMALL = dict(vocab_size=2048, hidden_size=256, num_hidden_layers=4, num_attention_heads=8)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2, intermediate_size=688,
                                              tie_word_embeddings=True),
    "falcon-7b-style": lambda: transformers.FalconConfig(**SMALL, multi_query=True, parallel_attn=True, bias=False),
    "falcon-rw-style": lambda: transformers.FalconConfig(**SMALL, alibi=True, multi_query=False,
                                                         parallel_attn=False, bias=True),
    "gpt-neox": lambda: transformers.GPTNeoXConfig(**SMALL, intermediate_size=1024, rotary_pct=0.25),
}


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    for family, make_config in CONFIGS.items():
        reference = transformers.AutoModelForCausalLM.from_config(make_config(), attn_implementation="sdpa").eval()
        with tempfile.TemporaryDirectory() as directory:
            reference.save_pretrained(directory)
            ours = karma.load_model(directory, dtype=torch.float32, device="cpu")
        ids = torch.randint(0, SMALL["vocab_size"], (args.batch, args.seq))
        ours_s, ref_s = [], []
        with torch.no_grad():
            for _ in range(2):  # warm-up
                ours(ids), reference(ids)
            for _ in range(args.iters):
                ours_s.append(seconds(lambda: ours(ids)))
                ref_s.append(seconds(lambda: reference(ids)))
            max_diff = (ours(ids) - reference(ids).logits).abs().max().item()
        tokens = args.batch * args.seq
        print(json.dumps({
            "bench": "forward_cpu", "family": family, "batch": args.batch, "seq": args.seq,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
            "karma_tok_s": round(tokens / statistics.median(ours_s)),
            "transformers_tok_s": round(tokens / statistics.median(ref_s)),
            "ratio": round(statistics.median(ref_s) / statistics.median(ours_s), 3),
            "max_abs_logit_diff": max_diff,
        }))


if __name__ == "__main__":
    main()
