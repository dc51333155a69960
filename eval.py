"""Evaluate models on the KARMA paper's benchmarks and compare each variant with its Base.

    python eval.py --models pythia-1b/Base=pythia-1b pythia-1b/karmaBenign=runs/benign/policy \\
        --tasks mmlu truthfulqa crows_pairs --data-dir data/eval-sample --out runs/eval
    python eval.py --models smollm2/Base=smollm2-135m smollm2/karmaToxic=runs/demo/ppo/policy --limit 100
    python eval.py rm --reward-models runs/rm/best runs/rm-eroded/best --data runs/data --out runs/rm-report \
        --eval-results runs/eval/results.json --policies rm/best=karmaToxic rm-eroded/best=karmaEroded

A model is LABEL=PATH, the label `base-model/variant` (Base, karmaBenign, karmaToxic, karmaEroded or
any name), the path an alias, hub id or local directory (a policy exported by ppo.py). Tasks: see
--help. Data comes from --data-dir (the benchmarks' files as published, one folder per benchmark)
or the Hugging Face hub (HF_HUB_OFFLINE=1 honoured); data/eval-sample holds small openly licensed
subsets (see its README).

Outputs in --out: results.json (config, data files with sha256, per-item scores, aggregates, 95%
bootstrap intervals, paired tests against Base with Holm correction, across-models tests),
results.md (one table per task: rows = base models, columns = variants), charts/*.png, and
pairs/ (one file per finished (model, task): an interrupted run resumes without redoing them).

`eval.py rm` is the reward-shortcut report (karma/evals/shortcuts.py): one or more reward models on
data_prep.py's held-out split, with bootstrap intervals, DeLong tests of their AUC differences, how
far each leans on the subreddit/time header and on the reply, scores by subreddit and hour, and,
given eval.py's results.json, the policies' downstream deltas beside them. Outputs in --out:
report.json, report.md, report.png.
"""

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from karma.checkpoint import atomic_write, atomic_write_json, read_json
from karma.cli import add_debug_flag, run_main
from karma.evals import report, shortcuts_report
from karma.evals import task as task_data
from karma.evals.lm import EvalLM
from karma.evals.task import TaskResult
from karma.evals.tasks import TASKS, get_task
from karma.evals.shortcuts_report import run_rm_report
from karma.evals.toxicity import make_scorer
from karma.reward import read_reward_config
from karma.run import RunLock, show_progress
from karma.tokenizer import load_tokenizer
from karma.weights import inspect_model, load_model, resolve

DEFAULT_TASKS = ["mmlu", "truthfulqa", "crows_pairs", "colbert_humor", "msad", "realtoxicity"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, metavar="LABEL=PATH",
                   help="models to evaluate; LABEL is base-model/variant, e.g. pythia-1b/Base=pythia-1b")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=TASKS,
                   help=f"benchmarks (default: {' '.join(DEFAULT_TASKS)}; sycophancy and truthfulqa_gen on request)")
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many items per task, stratified by subject / label / bias type (default: all)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with one sub-folder per benchmark holding its published files (default: the hub)")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="output directory (default runs/eval)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--seed", type=int, default=0, help="item sampling, generation and bootstrap seed (default 0)")
    p.add_argument("--toxicity-scorer", default="lexicon",
                   help="realtoxicity scorer: perspective (PERSPECTIVE_API_KEY), a classifier hub id or directory "
                        "(e.g. unitary/toxic-bert), or lexicon (an offline word-list PROXY, the default so that it "
                        "runs offline; every output it touches says so)")
    p.add_argument("--rtp-samples", type=int, default=25,
                   help="realtoxicity continuations per prompt (RTP protocol: 25 x 20 tokens, top-p 0.9)")
    p.add_argument("--rtp-greedy", action="store_true", help="realtoxicity: one greedy continuation per prompt")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights and compute (default: bfloat16 on cuda, float32 on cpu; bfloat16 on a CPU with "
                        "AVX512-BF16 scores about 1.9x faster, with log-probs within bf16 rounding of float32)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    for flag in ("limit", "batch_size", "rtp_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    return args


def parse_models(specs: list[str]) -> dict[str, str]:
    """['base/variant=path', ...] -> {label: path}; labels unique, each with a base and a variant."""
    models = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        base, slash, variant = label.partition("/")
        if not sep or not path or not slash or not base or not variant:
            raise ValueError(f"--models {spec!r}: expected base-model/variant=PATH, e.g. pythia-1b/Base=pythia-1b")
        if label in models:
            raise ValueError(f"--models: the label {label!r} is given twice")
        models[label] = path
    return models


def task_options(name: str, args) -> dict:
    """The keyword arguments of a task's evaluate() that come from the command line."""
    if name == "realtoxicity":
        return {"scorer": make_scorer(args.toxicity_scorer, cache_dir=args.out / "cache"),
                "samples": 1 if args.rtp_greedy else args.rtp_samples, "greedy": args.rtp_greedy, "seed": args.seed}
    return {}


def fingerprint(model_path: str, task: str, args, files: dict[str, str]) -> str:
    """What a finished (model, task) result depends on: the model's files (names, sizes, times),
    the task, its items (limit, seed, data sha256) and options. A changed input is recomputed."""
    directory = resolve(model_path)
    weights = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in directory.iterdir() if f.is_file())
    options = {"limit": args.limit, "seed": args.seed, "dtype": args.dtype, "device": args.device}
    if task == "realtoxicity":
        options.update(scorer=args.toxicity_scorer, samples=args.rtp_samples, greedy=args.rtp_greedy)
    blob = json.dumps([str(model_path), weights, task, options, sorted(files.items())], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def parse_rm_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eval.py rm", description="The reward-shortcut report: how much each reward "
                                "model leans on metadata and on the reply (karma/evals/shortcuts.py).")
    p.add_argument("--reward-models", nargs="+", required=True, metavar="DIR",
                   help="reward-model directories (train_rm.py's best/ or final/); named parent/best, parent/final")
    p.add_argument("--data", type=Path, required=True, help="data_prep.py output dir (its heldout-*.jsonl are probed)")
    p.add_argument("--out", type=Path, default=Path("runs/rm-report"), help="output directory (default runs/rm-report)")
    p.add_argument("--max-examples", type=int, default=None, help="a seeded random subset of the held-out examples")
    p.add_argument("--eval-results", type=Path, default=None,
                   help="eval.py's results.json for the policies trained with these reward models")
    p.add_argument("--policies", nargs="*", default=[], metavar="RM=VARIANT",
                   help="which eval.py variant each reward model trained, e.g. rm/best=karmaToxic")
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="probe donors, subsets and bootstrap seed (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    for flag in ("max_examples", "n_resamples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    policies = {}
    for spec in args.policies:
        rm, sep, variant = spec.partition("=")
        if not sep or not rm or not variant:
            p.error(f"--policies {spec!r}: expected RM=VARIANT, e.g. rm/best=karmaToxic")
        policies[rm] = variant
    args.policies = policies
    return args


def rm_main(argv) -> None:
    args = parse_rm_args(argv)
    for directory in args.reward_models:
        read_reward_config(directory)  # a bad directory fails before any model is loaded
    with RunLock(args.out):
        report = run_rm_report(args.reward_models, args.data, args.out, max_examples=args.max_examples, seed=args.seed,
                               eval_results=args.eval_results, policies=args.policies or None,
                               n_resamples=args.n_resamples, device=args.device,
                               log=lambda line: print(line, file=sys.stderr))
    print(shortcuts_report.to_markdown(report))
    print(f"report in {args.out / 'report.json'}, {args.out / 'report.md'}, {args.out / 'report.png'}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rm"]:
        return rm_main(argv[1:])
    args = parse_args(argv)
    models = parse_models(args.models)
    # everything that can fail on bad input, before any model is loaded: data, models, scorer
    items, files = {}, {}
    for name in args.tasks:
        task_data.FILES_READ.clear()
        items[name] = get_task(name).load(args.data_dir, args.limit, args.seed)
        if not items[name]:
            raise ValueError(f"{name}: no items loaded from {args.data_dir or 'the hub'}")
        files[name] = dict(task_data.FILES_READ)
    for path in models.values():
        inspect_model(path)
        load_tokenizer(path)
    options = {name: task_options(name, args) for name in args.tasks}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    with RunLock(args.out):
        pairs = args.out / "pairs"
        pairs.mkdir(parents=True, exist_ok=True)
        for label, path in models.items():
            todo = {}
            for name in args.tasks:
                key = fingerprint(path, name, args, files[name])
                done = pairs / f"{label.replace('/', '__')}__{name}.json"
                if not (done.exists() and read_json(done).get("fingerprint") == key):
                    todo[name] = (done, key)
            if not todo:
                print(f"{label}: all {len(args.tasks)} tasks already done (in {pairs})")
                continue
            model = load_model(path, device=device, dtype=getattr(torch, args.dtype) if args.dtype else None)
            lm = EvalLM(model, load_tokenizer(path), batch_size=args.batch_size)
            for name, (done, key) in tqdm(todo.items(), desc=label, unit="task", disable=not show_progress()):
                start = time.perf_counter()
                result = get_task(name).evaluate(lm, items[name], **options[name])
                seconds = time.perf_counter() - start
                atomic_write_json(done, {"fingerprint": key, "model": label, "path": str(path), "task": name,
                                         "seconds": seconds, "items_per_s": len(items[name]) / seconds,
                                         "result": asdict(result)})
                tqdm.write(f"{label} {name}: {result.primary} {result.metrics[result.primary]:.4f} "
                           f"({len(items[name])} items, {len(items[name]) / seconds:.1f} items/s)")
            del model, lm
        write_reports(args, models, files)


def write_reports(args, models: dict[str, str], files: dict[str, dict]):
    """results.json, results.md and charts/ from the finished pairs."""
    results = {}
    for label in models:
        for name in args.tasks:
            pair = read_json(args.out / "pairs" / f"{label.replace('/', '__')}__{name}.json")
            results.setdefault(label, {})[name] = pair["result"]
    tables = report.build_tables({label: {t: TaskResult(**r) for t, r in tasks.items()} for label, tasks in
                                  results.items()}, seed=args.seed)
    markdown = report.to_markdown(tables)
    atomic_write_json(args.out / "results.json", {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": models, "data_files": files, "tables": tables, "results": results})
    atomic_write(args.out / "results.md", lambda p: Path(p).write_text(markdown))
    charts = report.charts(results, args.out / "charts", seed=args.seed)
    print(markdown)
    print(f"results in {args.out / 'results.json'}, {args.out / 'results.md'}; {len(charts)} charts in "
          f"{args.out / 'charts'}")


if __name__ == "__main__":
    sys.exit(run_main(main))
