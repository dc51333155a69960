"""python -m karma MODEL [PROMPT]: sample replies with karma's decoder; --compare puts two models side by side.

    python -m karma smollm2-135m --chatml "Give me three tips for writing a good Reddit reply."
    python -m karma smollm2-135m --compare runs/demo/ppo/policy \\
        --prompts runs/demo/data/prompts-reddit.jsonl --n 3 --temperature 0.7 --seed 0

What each model is asked:
- PROMPT is continued as given, or sent as one ChatML user turn with --chatml.
- --prompts FILE takes the FIRST --n prompts of a data_prep.py prompts file (file order, not a
  random draw, so the same command always shows the same prompts). Each conversation is rendered
  as ChatML with --chatml (every message as <|im_start|>role\\ncontent<|im_end|>\\n, then
  <|im_start|>assistant\\n), else by karma.data.format.render_prompt ("User: ...\\n\\nAssistant:"),
  the text ppo.py's policy continues (with a reward model in the default "generalized" format).

Every model answers every prompt with the same seed and sampling settings, one prompt at a time, so
a reply depends only on (model, prompt, settings), not on --n or on the other prompts; at
temperature 0 it is karma.generate's greedy output. Models are loaded one after the other (one in
memory at a time). A reply stops at the tokenizer's stop ids, plus <|im_end|> with --chatml when the
tokenizer has that token. Replies go to stdout (identical for identical commands); load and speed
lines go to stderr. --out writes one JSON row per reply.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from karma.cli import add_debug_flag, device_arg, run_main
from karma.data.format import ROLE_LABELS, render_prompt
from karma.data.prompts import read_prompts
from karma.files import atomic_write
from karma.generate import generate
from karma.settings import seed_arg
from karma.tokenizer import load_tokenizer
from karma.weights import inspect_model, load_model


def chatml(messages: list[dict]) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def load_prompts(args) -> list[tuple[str, str]]:
    """-> [(prompt_id, text the models continue)]."""
    if args.prompts is None:
        return [("prompt", chatml([{"role": "user", "content": args.prompt}]) if args.chatml else args.prompt)]
    prompts = read_prompts(args.prompts)[:args.n]
    if not prompts:
        raise ValueError(f"{args.prompts}: no prompts")
    for p in prompts:
        roles = {m["role"] for m in p["messages"]} - set(ROLE_LABELS)
        if roles and not args.chatml:
            raise ValueError(f"{args.prompts}: prompt {p['id']}: role {sorted(roles)[0]!r} has no plain-text "
                             f"form (only user/assistant); use --chatml")
    return [(p["id"], chatml(p["messages"]) if args.chatml else render_prompt(p["messages"])) for p in prompts]


def check_models(names: list[str], max_new_tokens: int) -> None:
    """Each model resolves, its config and tokenizer read, and --max-new-tokens fits its positions:
    checked for --compare too before the first model loads, not after its replies."""
    for name in names:
        positions = inspect_model(name).max_position_embeddings
        load_tokenizer(name)
        if max_new_tokens > positions:
            raise ValueError(f"--max-new-tokens {max_new_tokens}: more than the {positions} positions "
                             f"of {name}")


def check_out(path: str) -> None:
    """--out can be written (its folder is created): checked before any model loads, not after
    the generation."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--out {path}: is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(f"--out {path}: cannot write into {out.parent} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def answer(label: str, name: str, prompts: list[tuple[str, str]], args) -> tuple[list[dict], str]:
    """Load one model and answer every prompt; -> (one row per prompt, a load and speed summary)."""
    start = time.perf_counter()
    model = load_model(name, device=args.device)
    tok = load_tokenizer(name)
    device = model.embed.weight.device
    stop_ids = list(tok.stop_ids)
    im_end = tok.tok.token_to_id("<|im_end|>")
    if args.chatml and im_end is not None and im_end not in stop_ids:
        stop_ids.append(im_end)
    loaded = time.perf_counter()
    rows = []
    for prompt_id, text in prompts:
        ids, mask = tok.encode_batch([text])
        out = generate(model, ids.to(device), mask.to(device), max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       stop_ids=stop_ids, pad_id=tok.pad_id, seed=args.seed)
        n = int(out.mask.sum())
        rows.append({"prompt_id": prompt_id, "prompt": text, "model": name, "reply": tok.decode(out.tokens[0, :n]),
                     "tokens": n, "ended_eos": bool(out.ended[0]), "label": label})
    done = time.perf_counter()
    n = sum(r["tokens"] for r in rows)
    stats = (f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
             f"{model.embed.weight.dtype} on {device}; loaded in {loaded - start:.1f} s; {n} tokens in "
             f"{done - loaded:.2f} s ({n / max(done - loaded, 1e-9):.1f} tok/s)")
    return rows, stats


def ending(row: dict) -> str:
    return "stopped at EOS" if row["ended_eos"] else "hit --max-new-tokens"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m karma", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sample replies with karma's decoder. --compare shows a second model's replies to the same\n"
                    "prompts with the same seed and sampling settings (e.g. the base model vs its PPO policy).",
        epilog="examples:\n"
               "  python -m karma smollm2-135m --chatml \"Give me three tips for writing a good Reddit reply.\"\n"
               "  python -m karma smollm2-135m --compare runs/demo/ppo/policy \\\n"
               "      --prompts runs/demo/data/prompts-reddit.jsonl --n 3 --temperature 0.7 --seed 0")
    parser.add_argument("model", help="checkpoint directory, hub id or alias (e.g. pythia-70m, smollm2-135m)")
    parser.add_argument("prompt", nargs="?", help="the prompt text (omit with --prompts)")
    parser.add_argument("--compare", metavar="OTHER_MODEL",
                        help="also answer with this model (e.g. runs/demo/ppo/policy) and print the two replies "
                             "under 'base: MODEL' and 'tuned: OTHER_MODEL' (default: none: one model)")
    parser.add_argument("--prompts", metavar="FILE.jsonl",
                        help="a data_prep.py prompts file ({\"id\", \"messages\"} per line) instead of PROMPT (default: none)")
    parser.add_argument("--n", type=int, default=3,
                        help="with --prompts: the first N prompts, in file order (default 3)")
    parser.add_argument("--out", metavar="FILE.jsonl", help="also write one JSON row per reply: "
                        "prompt_id, prompt, model, reply, tokens, ended_eos (and label: base/tuned/model) (default: none: print only)")
    parser.add_argument("--chatml", action="store_true",
                        help="render prompts as ChatML (<|im_start|>user ... <|im_start|>assistant), the format "
                             "of chat models such as SmolLM2-Instruct, and also stop at <|im_end|> if it is a "
                             "token; without it, PROMPT is continued as is and --prompts conversations are "
                             "rendered as 'User: ...\\n\\nAssistant:' (default: off)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to sample at most (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples")
    parser.add_argument("--top-k", type=int, default=None, help="sample only among the k most likely tokens (default: none: all)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default: none: 1.0)")
    parser.add_argument("--seed", type=seed_arg, default=0,
                        help="sampling seed (default 0), the same for every reply")
    parser.add_argument("--device", type=device_arg, default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(parser)
    args = parser.parse_intermixed_args(argv)  # the PROMPT may come after flags: MODEL --chatml "PROMPT"
    if args.temperature < 0 or args.max_new_tokens < 0:
        parser.error(f"--temperature {args.temperature} and --max-new-tokens {args.max_new_tokens} must be >= 0")
    if args.top_k is not None and args.top_k < 0:
        parser.error(f"--top-k {args.top_k} must be >= 0")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p {args.top_p} must be in (0, 1]")
    if (args.prompt is None) == (args.prompts is None):
        parser.error("give a PROMPT or --prompts FILE.jsonl" + (", not both" if args.prompts else ""))
    if args.n < 1:
        parser.error(f"--n {args.n} must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    prompts = load_prompts(args)
    models = [("base", args.model), ("tuned", args.compare)] if args.compare else [("model", args.model)]
    check_models([name for _, name in models], args.max_new_tokens)
    if args.out:
        check_out(args.out)
    if args.prompts and len(prompts) < args.n:
        print(f"[{args.prompts}: only {len(prompts)} prompt(s), fewer than --n {args.n}]", file=sys.stderr)
    rows = []
    for label, name in models:
        answered, stats = answer(label, name, prompts, args)
        rows += answered
        if args.compare or args.prompts:
            print(f"[{label}: {stats}]", file=sys.stderr)

    if not args.compare and not args.prompts:  # one model, one PROMPT: the original output
        print(f"{rows[0]['prompt']}{rows[0]['reply']}")
        print(f"\n[{stats}; {ending(rows[0])}]")
    else:  # prompt by prompt, each model's reply under its own header
        for i, (prompt_id, text) in enumerate(prompts):
            print(f"=== prompt {i + 1}/{len(prompts)}: {prompt_id} ===\n{text.rstrip()}")
            for row in rows[i::len(prompts)]:
                print(f"--- {row['label']}: {row['model']} ---\n{row['reply'].strip()}\n"
                      f"[{row['tokens']} tokens, {ending(row)}]")
            print()
    if args.out:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        atomic_write(args.out, lambda p: Path(p).write_text(lines, encoding="utf-8"))
        print(f"[wrote {len(rows)} replies to {args.out}]", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m karma"))
