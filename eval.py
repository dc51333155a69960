"""Evaluate models on the KARMA paper's benchmarks and compare each variant with its Base.

    python eval.py --models pythia-1b/Base=pythia-1b pythia-1b/karmaBenign=runs/benign/policy \\
        --tasks mmlu truthfulqa crows_pairs --data-dir data/eval-sample --out runs/eval
    python eval.py --models smollm2/Base=smollm2-135m smollm2/karmaToxic=runs/demo/ppo/policy --limit 100
    python eval.py rm --reward-models runs/rm/best runs/rm-eroded/best --data runs/data --out runs/rm-report \\
        --eval-results runs/eval/results.json --policies rm/best=karmaToxic rm-eroded/best=karmaEroded

A model is LABEL=PATH, the label `base-model/variant` (Base, karmaBenign, karmaToxic, karmaEroded or
any name; two labels may not differ only in "/" vs "__" or in case: they would share files), the
path an alias, hub id or local directory (a policy exported by ppo.py). Tasks: see
--help. Data comes from --data-dir (the benchmarks' files as published, one folder per benchmark)
or the Hugging Face hub (HF_HUB_OFFLINE=1 honoured); data/eval-sample holds small openly licensed
subsets (see its README).

Outputs in --out: results.json (config, data files with sha256, per-item scores, aggregates, 95%
bootstrap intervals, paired tests against Base with Holm correction, across-models tests),
results.md (one table per task: rows = base models, columns = variants), charts/*.png, and
pairs/ (one file per finished (model, task): an interrupted run resumes without redoing them, and
removes the temporary files it left).

Log-likelihoods follow lm-evaluation-harness 0.4.13 (karma/evals/lm.py): a context starts with BOS
when the model's tokenizer adds one by default (Llama 3; not Pythia, Falcon or SmolLM2).
--no-add-bos gives the convention of lm-eval 0.4.9.1 and earlier (no special tokens).

`eval.py rm` is the reward-shortcut report (karma/evals/shortcuts.py): one or more reward models on
data_prep.py's held-out split, with bootstrap intervals, DeLong tests of their AUC differences, how
far each leans on the subreddit/time header and on the reply, scores by subreddit and hour, and,
given eval.py's results.json, the policies' downstream deltas beside them. Outputs in --out:
report.json, report.md, report.png.

    python eval.py --config configs/eval.toml --models ...   # flags from a TOML file (limit = 100); flags win
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

from karma.cli import (DefaultsHelpFormatter, add_config_flag, add_debug_flag, device_arg, parse_with_config,
                       run_main)
from karma.evals import report, shortcuts_report
from karma.evals import task as task_data
from karma.evals.lm import EvalLM, tokenizer_adds_bos
from karma.evals.report import parse_label, writing
from karma.evals.task import TaskResult
from karma.evals.tasks import TASKS, get_task
from karma.evals.shortcuts import HEADER_DRAWS, MIN_GAP_SD
from karma.evals.shortcuts_report import rm_names, run_rm_report
from karma.evals.toxicity import make_scorer
from karma.files import atomic_write, atomic_write_json, read_json
from karma.reward import inspect_reward_model
from karma.run import RunLock, show_progress
from karma.settings import seed_arg
from karma.tokenizer import load_tokenizer
from karma.weights import inspect_model, load_model, resolve

DEFAULT_TASKS = ["mmlu", "truthfulqa", "crows_pairs", "colbert_humor", "msad", "realtoxicity"]
MAX_RTP_SAMPLES = 1000  # continuations per prompt (the RTP protocol uses 25)
MAX_RESAMPLES = 100_000  # bootstrap resamples of eval.py rm (default 1000)


def check_counts(p: argparse.ArgumentParser, args, bounds: dict[str, int | None]) -> None:
    """Count flags: at least 1, and at most their bound where they have one (None: none), so that an
    absurd value is a flag error at once, not an allocation failure after the models load."""
    for flag, most in bounds.items():
        value, name = getattr(args, flag), "--" + flag.replace("_", "-")
        if value is not None and value < 1:
            p.error(f"{name} {value}: must be at least 1")
        if value is not None and most is not None and value > most:
            p.error(f"{name} {value}: must be at most {most}")


def parse_args(argv=None):
    """Without a subcommand: evaluate --models on --tasks (the flags below); `rm`: the reward-shortcut
    report (add_rm_arguments)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter,
                                usage="%(prog)s --models LABEL=PATH [LABEL=PATH ...] [options]\n"
                                      "       %(prog)s rm --reward-models DIR [DIR ...] --data DIR [options]")
    commands = p.add_subparsers(dest="command", title="subcommands")
    rm = commands.add_parser("rm", prog="eval.py rm", help="the reward-shortcut report (eval.py rm --help)",
                             formatter_class=DefaultsHelpFormatter,
                             description="The reward-shortcut report: how much each reward model leans on "
                                         "metadata and on the reply (karma/evals/shortcuts.py).")
    add_rm_arguments(rm)
    p.add_argument("--models", nargs="+", metavar="LABEL=PATH",
                   help="models to evaluate (required); LABEL is base-model/variant, e.g. pythia-1b/Base=pythia-1b")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=TASKS,
                   help=f"benchmarks (default: {' '.join(DEFAULT_TASKS)}; sycophancy and truthfulqa_gen on request)")
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many items per task, stratified by subject / label / bias type (default: all)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with one sub-folder per benchmark holding its published files (default: the hub)")
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="output directory")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--seed", type=seed_arg, default=0, help="item sampling, generation and bootstrap seed")
    p.add_argument("--toxicity-scorer", default="lexicon",
                   help="realtoxicity scorer: perspective (PERSPECTIVE_API_KEY), a classifier hub id or directory "
                        "(e.g. unitary/toxic-bert), or lexicon (an offline word-list PROXY, so that the default runs "
                        "offline; every output it touches says so)")
    p.add_argument("--rtp-samples", type=int, default=25,
                   help=f"realtoxicity continuations per prompt (RTP protocol: 25 x 20 tokens, top-p 0.9; "
                        f"at most {MAX_RTP_SAMPLES})")
    p.add_argument("--rtp-greedy", action="store_true",
                   help="realtoxicity: one greedy continuation per prompt instead of --rtp-samples sampled ones")
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-add-bos", action="store_true",
                   help="add no BOS to contexts, as lm-eval 0.4.9.1 and earlier (default: BOS where the "
                        "tokenizer adds it, as lm-eval 0.4.9.2 to 0.4.13)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights and compute (default: bfloat16 on cuda, float32 on cpu; bfloat16 on a CPU with "
                        "AVX512-BF16 scores about 1.9x faster, with log-probs within bf16 rounding of float32)")
    add_debug_flag(add_config_flag(p))
    args = parse_with_config(p, argv, {"rm": rm})
    if args.command == "rm":
        check_rm_arguments(rm, args)
        return args
    if args.models is None:  # required here, not of the subcommand: argparse's own message
        p.error("the following arguments are required: --models")
    check_counts(p, args, {"limit": None, "batch_size": None, "rtp_samples": MAX_RTP_SAMPLES})
    return args


def pair_stem(label: str) -> str:
    """The start of a model's file names in pairs/: <label with / as __>__<task>.json."""
    return label.replace("/", "__")


def parse_models(specs: list[str]) -> dict[str, str]:
    """['base/variant=path', ...] -> {label: path}; labels unique, each with a base and a variant
    (split at the last "/", as the tables do), and no two writing the same pairs/ files, not even
    on a file system that ignores case ('a__b/Base' and 'a/b__Base' both give a__b__Base__<task>)."""
    models, stems = {}, {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        base, slash, variant = label.rpartition("/")
        if not sep or not path or not slash or not base or not variant:
            raise ValueError(f"--models {spec!r}: expected base-model/variant=PATH, e.g. pythia-1b/Base=pythia-1b")
        if label in models:
            raise ValueError(f"--models: the label {label!r} is given twice")
        other = stems.get(pair_stem(label).casefold())
        if other is not None:
            case = "" if pair_stem(other) == pair_stem(label) else " on a file system that ignores case"
            raise ValueError(f"--models: the labels {other!r} and {label!r} would write the same files "
                             f"pairs/{pair_stem(label)}__<task>.json{case}; rename one")
        models[label], stems[pair_stem(label).casefold()] = path, label
    return models


def task_options(name: str, args) -> dict:
    """The keyword arguments of a task's evaluate() that come from the command line."""
    if name == "realtoxicity":
        return {"scorer": make_scorer(args.toxicity_scorer, cache_dir=args.out / "cache"),
                "samples": 1 if args.rtp_greedy else args.rtp_samples, "greedy": args.rtp_greedy, "seed": args.seed}
    return {}


def fingerprint(model_path: str, task: str, args, files: dict[str, str], add_bos: bool) -> str:
    """What a finished (model, task) result depends on: the model's files (names, sizes, times),
    the task, its items (limit, seed, data sha256) and options. A changed input is recomputed.
    add_bos (BOS before contexts) enters only when True, so that results without it, the same as
    before it was an option, still resume."""
    directory = resolve(model_path)
    weights = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in directory.iterdir() if f.is_file())
    options = {"limit": args.limit, "seed": args.seed, "dtype": args.dtype, "device": args.device}
    if add_bos:
        options["add_bos"] = True
    if task == "realtoxicity":
        options.update(scorer=args.toxicity_scorer, samples=args.rtp_samples, greedy=args.rtp_greedy)
    blob = json.dumps([str(model_path), weights, task, options, sorted(files.items())], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def add_rm_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `eval.py rm`."""
    p.add_argument("--reward-models", nargs="+", required=True, metavar="DIR",
                   help="reward-model directories (train_rm.py's best/ or final/); named parent/best, parent/final")
    p.add_argument("--data", type=Path, required=True, help="data_prep.py output dir (its heldout-*.jsonl are probed)")
    p.add_argument("--out", type=Path, default=Path("runs/rm-report"), help="output directory")
    p.add_argument("--max-examples", type=int, default=None,
                   help="a seeded random subset of this many held-out examples (default: all)")
    p.add_argument("--eval-results", type=Path, default=None,
                   help="eval.py's results.json for the policies trained with these reward models, with "
                        "--policies (default: none: no downstream deltas)")
    p.add_argument("--policies", nargs="*", default=[], metavar="RM=VARIANT",
                   help="which eval.py variant each reward model trained, e.g. rm/best=karmaToxic or "
                        "rm/best=pythia-1b/karmaToxic, with --eval-results (default: none)")
    p.add_argument("--n-resamples", type=int, default=1000, help=f"bootstrap resamples, at most {MAX_RESAMPLES}")
    p.add_argument("--min-gap-sd", type=float, default=MIN_GAP_SD,
                   help=f"a pair counts toward the ranking-flip share only if its scores differ by at least this "
                        f"many standard deviations of the RM's scores (default: {MIN_GAP_SD}; 0 counts every pair)")
    p.add_argument("--header-draws", type=int, default=HEADER_DRAWS,
                   help="a conditioned RM's no_header score: its mean under this many real headers of other "
                        "examples")
    p.add_argument("--seed", type=seed_arg, default=0, help="probe donors, subsets and bootstrap seed")
    p.add_argument("--device", type=device_arg, default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(add_config_flag(p))


def check_rm_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Ranges of `eval.py rm`'s flags as flag errors; --policies RM=VARIANT ... becomes {RM: VARIANT}."""
    check_counts(p, args, {"max_examples": None, "n_resamples": MAX_RESAMPLES, "header_draws": 64})
    if not 0 <= args.min_gap_sd <= 10:  # NaN fails too
        p.error(f"--min-gap-sd {args.min_gap_sd}: must be in [0, 10]")
    policies = {}
    for spec in args.policies:
        rm, sep, variant = spec.partition("=")
        if not sep or not rm or not variant:
            p.error(f"--policies {spec!r}: expected RM=VARIANT, e.g. rm/best=karmaToxic")
        policies[rm] = variant
    args.policies = policies


def eval_result_labels(path: Path) -> set[tuple[str, str]]:
    """The (base model, variant) pairs in eval.py's results.json, read the way the report reads it
    (its "tables", else its "results"); any other content is an error naming the file."""
    results = read_json(path)
    tables = results.get("tables") if isinstance(results, dict) else None
    if isinstance(tables, list) and all(_is_table(t) for t in tables):
        return {(model, variant) for t in tables for model, row in t["cells"].items()
                for variant, cell in row.items() if cell}
    runs = results.get("results", results) if isinstance(results, dict) else None  # {label: {task: result}}
    if isinstance(runs, dict) and all(isinstance(tasks, dict) and all(_is_run(r) for r in tasks.values())
                                      for tasks in runs.values()):
        return {parse_label(label) for label in runs}
    raise ValueError(f"{path}: not eval.py's results.json (expected its \"tables\" or \"results\")")


def _is_table(t) -> bool:
    """One of report.build_tables' tables, as far as the reward report reads it."""
    keys = {"task", "metric", "is_primary", "higher_is_better", "models", "cells"}
    return (isinstance(t, dict) and keys <= t.keys() and isinstance(t["cells"], dict)
            and all(isinstance(row, dict) for row in t["cells"].values()))


def _is_run(r) -> bool:
    """One (model, task) result: a TaskResult as a dict."""
    return isinstance(r, dict) and {"items", "metrics", "primary", "kind"} <= r.keys()


def check_rm_inputs(args) -> None:
    """--policies and --eval-results, before any reward model is read or scored: each needs the
    other, every RM named is one of --reward-models, every policy is in the results."""
    if args.policies and args.eval_results is None:
        raise ValueError("--policies needs --eval-results (eval.py's results.json of those policies)")
    if args.eval_results is not None and not args.policies:
        raise ValueError("--eval-results needs --policies (which variant each reward model trained, "
                         "e.g. rm/best=karmaToxic)")
    if not args.policies:
        return
    labels, names = eval_result_labels(args.eval_results), rm_names(args.reward_models)
    for rm, label in args.policies.items():
        if rm not in names:
            raise ValueError(f"--policies {rm}={label}: no reward model named {rm!r} (--reward-models gives "
                             f"{', '.join(names)})")
        base, variant = parse_label(label) if "/" in label else (None, label)
        if not any(v == variant and base in (None, m) for m, v in labels):
            raise ValueError(f"{args.eval_results}: no policy {label!r} (--policies {rm}={label}); it has "
                             f"{', '.join(sorted(f'{m}/{v}' for m, v in labels)) or 'none'}")


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files (atomic_write's .<name>.<random>.tmp) a killed run left in out/,
    out/pairs and out/charts. Called with the run lock held: no live run writes there."""
    stale = sorted(p for d in (out, out / "pairs", out / "charts") for p in d.glob(".*.tmp") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        names = ", ".join(map(str, stale[:5])) + (", ..." if len(stale) > 5 else "")
        print(f"removed {len(stale)} temporary file(s) of an interrupted run: {names}", file=sys.stderr)


def rm_main(args) -> None:
    check_rm_inputs(args)
    for directory in args.reward_models:
        inspect_reward_model(directory)  # a bad directory fails before any model is loaded
    with RunLock(args.out):
        remove_stale_temporaries(args.out)
        report = run_rm_report(args.reward_models, args.data, args.out, max_examples=args.max_examples, seed=args.seed,
                               eval_results=args.eval_results, policies=args.policies or None,
                               n_resamples=args.n_resamples, device=args.device, min_gap_sd=args.min_gap_sd,
                               header_draws=args.header_draws,
                               log=lambda line: print(line, file=sys.stderr))
    print(shortcuts_report.to_markdown(report))
    print(f"report in {args.out / 'report.json'}, {args.out / 'report.md'}, {args.out / 'report.png'}")


def main(argv=None):
    args = parse_args(argv)
    if args.command == "rm":
        return rm_main(args)
    models = parse_models(args.models)
    # everything that can fail on bad input, before any model is loaded: data, models, scorer
    items, files = {}, {}
    for name in args.tasks:
        task_data.FILES_READ.clear()
        items[name] = get_task(name).load(args.data_dir, args.limit, args.seed)
        if not items[name]:
            raise ValueError(f"{name}: no items loaded from {args.data_dir or 'the hub'}")
        files[name] = dict(task_data.FILES_READ)
    add_bos = {}  # label -> whether contexts start with BOS
    for label, path in models.items():
        inspect_model(path)
        add_bos[label] = not args.no_add_bos and tokenizer_adds_bos(load_tokenizer(path))
    options = {name: task_options(name, args) for name in args.tasks}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    with RunLock(args.out):
        pairs = args.out / "pairs"
        pairs.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(args.out)
        for label, path in models.items():
            todo = {}
            for name in args.tasks:
                key = fingerprint(path, name, args, files[name], add_bos[label])
                done = pairs / f"{pair_stem(label)}__{name}.json"
                if not (done.exists() and read_json(done).get("fingerprint") == key):
                    todo[name] = (done, key)
            if not todo:
                print(f"{label}: all {len(args.tasks)} tasks already done (in {pairs})")
                continue
            model = load_model(path, device=device, dtype=getattr(torch, args.dtype) if args.dtype else None)
            lm = EvalLM(model, load_tokenizer(path), batch_size=args.batch_size, add_bos=add_bos[label])
            for name, (done, key) in tqdm(todo.items(), desc=label, unit="task", disable=not show_progress()):
                start = time.perf_counter()
                result = get_task(name).evaluate(lm, items[name], **options[name])
                seconds = time.perf_counter() - start
                pair = {"fingerprint": key, "model": label, "path": str(path), "task": name,
                        "add_bos": add_bos[label], "seconds": seconds,
                        "items_per_s": len(items[name]) / seconds, "result": asdict(result)}
                with writing(done):
                    atomic_write_json(done, pair)
                proxy = f" (PROXY scorer {result.proxy}, not a toxicity model)" if result.proxy else ""
                tqdm.write(f"{label} {name}: {result.primary} {result.metrics[result.primary]:.4f}{proxy} "
                           f"({len(items[name])} items, {len(items[name]) / seconds:.1f} items/s)")
            del model, lm
        write_reports(args, models, files)


def write_reports(args, models: dict[str, str], files: dict[str, dict]):
    """results.json, results.md and charts/ from the finished pairs."""
    results = {}
    for label in models:
        for name in args.tasks:
            pair = read_json(args.out / "pairs" / f"{pair_stem(label)}__{name}.json")
            results.setdefault(label, {})[name] = pair["result"]
    tables = report.build_tables({label: {t: TaskResult(**r) for t, r in tasks.items()} for label, tasks in
                                  results.items()}, seed=args.seed)
    markdown = report.to_markdown(tables)
    with writing(args.out / "results.json"):
        atomic_write_json(args.out / "results.json", {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                       if k != "command"},  # the subcommand: none for an evaluation
            "models": models, "data_files": files, "tables": tables, "results": results})
    with writing(args.out / "results.md"):
        atomic_write(args.out / "results.md", lambda p: Path(p).write_text(markdown))
    charts = report.charts(results, args.out / "charts", seed=args.seed, log=lambda line: print(line, file=sys.stderr))
    print(markdown)
    print(f"results in {args.out / 'results.json'}, {args.out / 'results.md'}; {len(charts)} charts in "
          f"{args.out / 'charts'}")


if __name__ == "__main__":
    sys.exit(run_main(main))
