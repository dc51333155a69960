"""python -m karma MODEL PROMPT: sample a continuation with karma's decoder (see --help)."""

import argparse
import sys
import time

from karma.cli import add_debug_flag, run_main
from karma.generate import generate
from karma.tokenizer import load_tokenizer
from karma.weights import load_model


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m karma",
                                     description="Sample a continuation of a prompt with karma's decoder.")
    parser.add_argument("model", help="checkpoint directory, hub id or alias (e.g. pythia-70m, smollm2-135m)")
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--chatml", action="store_true",
                        help="wrap the prompt as one ChatML user turn (<|im_start|>user ... assistant), "
                             "the format of chat models such as SmolLM2-Instruct")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to sample at most (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.temperature < 0 or args.max_new_tokens < 0:
        parser.error(f"--temperature {args.temperature} and --max-new-tokens {args.max_new_tokens} must be >= 0")

    start = time.perf_counter()
    model = load_model(args.model, device=args.device)
    tok = load_tokenizer(args.model)
    prompt = f"<|im_start|>user\n{args.prompt}<|im_end|>\n<|im_start|>assistant\n" if args.chatml else args.prompt
    ids, mask = tok.encode_batch([prompt])
    device = model.embed.weight.device
    loaded = time.perf_counter()
    out = generate(model, ids.to(device), mask.to(device), max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   stop_ids=tok.stop_ids, pad_id=tok.pad_id, seed=args.seed)
    done = time.perf_counter()
    n = int(out.mask.sum())
    print(f"{prompt}{tok.decode(out.tokens[0, :n])}")
    print(f"\n[{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"{model.embed.weight.dtype} on {device}; loaded in {loaded - start:.1f} s; {n} tokens in "
          f"{done - loaded:.2f} s ({n / (done - loaded):.1f} tok/s); "
          f"{'stopped at EOS' if out.ended[0] else 'hit --max-new-tokens'}]")


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m karma"))
