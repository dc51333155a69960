"""Log-likelihood scoring throughput: karma's EvalLM against lm-evaluation-harness's HF backend
(lm_eval.models.huggingface.HFLM, transformers underneath) on the same model and the same requests,
side by side in one job: MMLU (lm-eval's zero-shot template, 4 one-token answers per question) or
TruthfulQA MC (the 6-shot QA primer before every question, each distinct mc1/mc2 answer scored).

lm-eval lives in its own environment (it needs transformers < 5 and datasets < 4; nothing is
installed at run time). Make it once:
    python -m venv /work/lmeval-venv && /work/lmeval-venv/bin/pip install torch==2.13.0 \\
        lm-eval==0.4.9 "transformers<5" "datasets<4"
then
    PYTHONPATH=. python bench/eval_loglikelihood.py --lmeval-python /work/lmeval-venv/bin/python

Runs alternate karma, lm-eval, karma, lm-eval, ... (--repeats pairs), each timing only the scoring
call (model loading excluded), with the same thread count. Prints one JSON object: items/s of
each (median), the ratio, and the agreement (max |log-prob difference|, accuracy of both).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from karma.evals.lm import EvalLM
from karma.evals.tasks import mmlu, truthfulqa
from karma.tokenizer import load_tokenizer
from karma.weights import load_model, resolve

LMEVAL_SCRIPT = r"""
import json, sys, time, torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
path, requests_file, batch_size, threads, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
requests = json.load(open(requests_file))
lm = HFLM(pretrained=path, batch_size=batch_size, device="cpu", dtype=dtype)
instances = [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i) for i, (c, x) in enumerate(requests)]
start = time.perf_counter()
out = lm.loglikelihood(instances, disable_tqdm=True)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "logprobs": [float(lp) for lp, _ in out]}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="alias, hub id or local dir (default smollm2-135m)")
    p.add_argument("--data-dir", type=Path, default=Path("data/eval-sample"))
    p.add_argument("--task", default="mmlu", choices=["mmlu", "truthfulqa"])
    p.add_argument("--limit", type=int, default=None, help="questions (default: all in --data-dir)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="alternating (karma, lm-eval) pairs")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both sides (default float32)")
    p.add_argument("--lmeval-python", default=os.environ.get("LMEVAL_PYTHON", "/work/lmeval-venv/bin/python"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.task == "mmlu":
        items = mmlu.load(args.data_dir, args.limit)
        requests = [(mmlu.prompt(item), f" {letter}") for item in items for letter in mmlu.LETTERS]
    else:
        items = truthfulqa.load_mc(args.data_dir, args.limit)
        requests = [(truthfulqa.mc_prompt(item["question"]), f" {c}") for item in items for c in item["mc1"]]
    directory = resolve(args.model)
    lm = EvalLM(load_model(directory, dtype=getattr(torch, args.dtype), device="cpu"), load_tokenizer(directory),
                batch_size=args.batch_size, progress=False)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(requests, f)
    karma_s, lmeval_s = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = lm.loglikelihood(requests)
        karma_s.append(time.perf_counter() - start)
        run = subprocess.run([args.lmeval_python, "-c", LMEVAL_SCRIPT, str(directory), f.name, str(args.batch_size),
                              str(args.threads), args.dtype], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if run.returncode:
            sys.exit(f"lm-eval run failed:\n{run.stderr[-3000:]}")
        theirs = json.loads(run.stdout.strip().splitlines()[-1])
        lmeval_s.append(theirs["seconds"])
    os.unlink(f.name)

    def accuracy(logprobs):  # mmlu acc, or truthfulqa mc1 (the true answer is the first mc1 choice)
        scores, correct = iter(logprobs), 0
        for item in items:
            row = [next(scores) for _ in (mmlu.LETTERS if args.task == "mmlu" else item["mc1"])]
            correct += row.index(max(row)) == (item["answer"] if args.task == "mmlu" else 0)
        return correct / len(items)

    karma_lp, lmeval_lp = [r.logprob for r in ours], theirs["logprobs"]
    n = len(items)
    print(json.dumps({
        "bench": "eval_loglikelihood", "model": args.model, "task": args.task,
        "items": n, "requests": len(requests), "batch_size": args.batch_size, "threads": args.threads,
        "device": "cpu", "dtype": args.dtype, "torch": torch.__version__,
        "karma_items_per_s": n / statistics.median(karma_s), "lmeval_items_per_s": n / statistics.median(lmeval_s),
        "speedup": statistics.median(lmeval_s) / statistics.median(karma_s),
        "karma_seconds": karma_s, "lmeval_seconds": lmeval_s,
        "max_abs_logprob_diff": max(abs(a - b) for a, b in zip(karma_lp, lmeval_lp)),
        "karma_acc": accuracy(karma_lp), "lmeval_acc": accuracy(lmeval_lp),
        "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
