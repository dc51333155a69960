"""Pushshift Reddit dumps -> reward-model examples (train/held-out JSONL) and PPO prompt sets.

    python data_prep.py --input data/sample --out runs/data
    python data_prep.py --input /dumps/RS_2015-01.zst /dumps/RC_2015-01.zst /dumps/RC_2015-02.zst \\
        --out runs/data --ultrachat /datasets/ultrachat_200k/data --ultrachat-limit 100000

Outputs in --out: train-*.jsonl, heldout-*.jsonl (examples), prompts-reddit.jsonl,
prompts-ultrachat.jsonl (with --ultrachat), stats.json. Schema and pipeline: karma/data/prepare.py.
A run replaces them as a whole: they are written into a temporary directory beside --out that takes
its place once complete, so a killed or failed run leaves the previous outputs, never a mix (the disk
holds both sets meanwhile). --out must hold nothing else.

    python data_prep.py kinship --ultrafeedback /datasets/UltraFeedback --scores benchmark.csv --out runs/pairs

builds the other KARMA's kinship-aware preference pairs for dpo.py (karma/data/kinship.py;
`python data_prep.py kinship --help`).

    python data_prep.py --config configs/data.toml --out runs/paper/data   # flags from a TOML file (min_chars = 20)
"""

import argparse
import math
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from karma.cli import DefaultsHelpFormatter, add_config_flag, add_debug_flag, parse_with_config, run_main
from karma.data import kinship, ultrachat
from karma.data.filters import FilterConfig
from karma.data.prepare import (PrepConfig, default_workers, naming_errors, prepare, recover_outputs,
                                 replacing_outputs)
from karma.data.threads import ThreadConfig
from karma.data.prompts import write_prompts
from karma.files import atomic_write_json
from karma.records import require_pyarrow
from karma.run import RunLock, show_progress


def parse_args(argv=None):
    """Without a subcommand: the Reddit examples and prompts (the flags below); `kinship`: the
    preference pairs (karma/data/kinship.py's flags)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter,
                                usage="%(prog)s --input PATH [PATH ...] --out DIR [options]\n"
                                      "       %(prog)s kinship --ultrafeedback PATH [PATH ...] --scores FILE --out DIR "
                                      "[options]")
    commands = p.add_subparsers(dest="command", title="subcommands")
    pairs = commands.add_parser("kinship", prog="data_prep.py kinship", description=kinship.HELP,
                                formatter_class=DefaultsHelpFormatter,
                                help="kinship-aware preference pairs for dpo.py (data_prep.py kinship --help)")
    add_debug_flag(add_config_flag(kinship.add_arguments(pairs)))
    p.add_argument("--input", nargs="+", type=Path,
                   help="dump files (RS_*/RC_* .zst, .gz, .ndjson, .jsonl) or directories holding them; "
                        "submission files are read first, so a reply can find its post in any file (required)")
    p.add_argument("--out", type=Path, help="output directory (required)")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes that parse, filter, identify languages and build threads (default: the "
                        f"cores present, {default_workers()} here; 1: all in this process). Any count writes "
                        "the same files")
    g = p.add_argument_group("filters")
    g.add_argument("--min-chars", type=int, default=10, help="drop texts shorter than this")
    g.add_argument("--min-score-age-hours", type=float, default=24.0,
                   help="drop records retrieved less than this long after creation: their score is not "
                        "final yet; records without a retrieval time pass")
    g.add_argument("--min-english-prob", type=float, default=0.5,
                   help="keep texts whose probability of English, after a 10:1 prior for English on Reddit, is at "
                        "least this (default: 0.5; fastText p(en) >= 1/11). See karma/data/filters.py")
    g.add_argument("--no-language-filter", action="store_true",
                   help="keep all languages (default: off: English only, see --min-english-prob)")
    g.add_argument("--bots", nargs="*", default=["AutoModerator"],
                   help="bot accounts to drop, besides names ending in 'bot'")
    g = p.add_argument_group("threads and labels")
    g.add_argument("--reward-ratio", type=float, default=0.4,
                   help="a reply is rewarding iff score >= ratio * max(parent score, 1) (default: 0.4, the "
                        "paper's; 0 to 100)")
    g.add_argument("--min-responses", type=int, default=2,
                   help="a submission needs this many kept top-level replies")
    g.add_argument("--max-siblings", type=int, default=5, help="sibling replies stored per example")
    g = p.add_argument_group("output")
    g.add_argument("--heldout-percent", type=float, default=10.0,
                   help="share of submissions (whole threads) in the held-out split, in percent")
    g.add_argument("--shard-size", type=int, default=50_000, help="examples per JSONL shard")
    g.add_argument("--max-prompts", type=int, default=None, help="cap on Reddit PPO prompts (default: all)")
    g = p.add_argument_group("UltraChat prompts (karmaBenign)")
    g.add_argument("--ultrachat", nargs="*", type=Path, default=None,
                   help="UltraChat-200k parquet shards or JSONL files (or directories); parquet needs pyarrow "
                        "(default: none: no UltraChat prompts)")
    g.add_argument("--ultrachat-split", default="train_sft", help="parquet split to read")
    g.add_argument("--ultrachat-limit", type=int, default=None,
                   help="cap on UltraChat prompts, after dedup (default: all)")
    add_debug_flag(add_config_flag(p))
    args = parse_with_config(p, argv, {"kinship": pairs})
    if args.command == "kinship":
        kinship.check_arguments(pairs, args)
        return args
    missing = [flag for flag in ("--input", "--out") if getattr(args, flag[2:]) is None]
    if missing:  # required here, not of the subcommand: argparse's own message
        p.error(f"the following arguments are required: {', '.join(missing)}")
    check_numbers(p, args)
    return args


AT_LEAST = {"workers": 1, "min_chars": 1, "min_responses": 1, "max_siblings": 0, "shard_size": 1, "max_prompts": 1,
            "ultrachat_limit": 1}  # integer flags (None: unset)
IN_RANGE = {"min_score_age_hours": (0, math.inf), "min_english_prob": (0, 1), "reward_ratio": (0, 100),
            "heldout_percent": (0, 100)}  # float flags: finite, low <= value <= high


def check_numbers(p: argparse.ArgumentParser, args) -> None:
    """Every numeric flag in its range before any record is read; floats finite: `--reward-ratio inf`
    would run for hours and label every example 0, NaN fails every comparison."""
    for flag, low in AT_LEAST.items():
        value = getattr(args, flag)
        if value is not None and value < low:
            p.error(f"--{flag.replace('_', '-')} {value}: must be at least {low}")
    for flag, (low, high) in IN_RANGE.items():
        value = getattr(args, flag)
        if not (math.isfinite(value) and low <= value <= high):
            p.error(f"--{flag.replace('_', '-')} {value}: must be a finite number "
                    + (f"in [{low}, {high}]" if math.isfinite(high) else f">= {low}"))
    most = 4 * default_workers()  # more processes than that add only memory and start-up time
    if args.workers > most:
        p.error(f"--workers {args.workers}: must be at most {most} (4 per core this process may use)")


def main(argv=None):
    args = parse_args(argv)
    if args.command == "kinship":  # the other KARMA's preference pairs (files written atomically)
        return kinship.command(args)
    recover_outputs(args.out)  # a run killed while swapping its outputs in; before the lock creates --out
    created = not args.out.exists()
    try:
        with RunLock(args.out) as lock:
            run(args, carried=(lock.path.name,))
    except BaseException:
        if created and args.out.is_dir() and not any(p.name != ".lock" for p in args.out.iterdir()):
            shutil.rmtree(args.out)  # a failed run leaves no empty --out behind
        raise


def run(args, carried: tuple[str, ...] = ()):
    """The outputs are written into a temporary directory that replaces --out as a whole once all
    are complete (prepare.replacing_outputs); `carried`: the lock's file name, kept in --out."""
    cfg = PrepConfig(
        inputs=args.input, out_dir=args.out, heldout_percent=args.heldout_percent,
        shard_size=args.shard_size, max_prompts=args.max_prompts, workers=args.workers,
        filters=FilterConfig(min_chars=args.min_chars, min_score_age_hours=args.min_score_age_hours,
                             english=not args.no_language_filter, min_english_prob=args.min_english_prob,
                             bot_authors=tuple(args.bots)),
        threads=ThreadConfig(reward_ratio=args.reward_ratio, min_responses=args.min_responses,
                             max_siblings=args.max_siblings),
    )
    if args.ultrachat is not None:  # a bad --ultrachat path fails now, not after the Reddit pass
        ultrachat_files = ultrachat.find_files(args.ultrachat, args.ultrachat_split)
        require_pyarrow(ultrachat_files)
    with replacing_outputs(args.out, carried) as tmp:
        with tqdm(desc="records", unit=" rec", unit_scale=True, disable=not show_progress()) as bar:
            stats = prepare(cfg, progress=bar, into=tmp)
        if args.ultrachat is not None:
            prompts, uc_stats = ultrachat.read_ultrachat(ultrachat_files, split=args.ultrachat_split,
                                                         limit=args.ultrachat_limit)
            with naming_errors(tmp / "prompts-ultrachat.jsonl"):
                write_prompts(prompts, tmp / "prompts-ultrachat.jsonl")
            stats["ultrachat"] = uc_stats
            with naming_errors(tmp / "stats.json"):
                atomic_write_json(tmp / "stats.json", stats)
    print(summary(stats))
    print(f"outputs and stats.json in {args.out}")


def summary(stats: dict) -> str:
    lines = [f"read {stats['records_read']:,} records: kept {stats['records_kept']:,}, "
             f"skipped {stats['records_skipped']:,} ({stats['records_per_s']:,} records/s)"]
    for kind, s in stats["by_kind"].items():
        reasons = ", ".join(f"{r} {n:,}" for r, n in s["skipped"].items()) or "none"
        lines.append(f"  {kind}s: read {s['read']:,}, kept {s['kept']:,}; skipped: {reasons}")
    if stats.get("ignored_files"):
        lines.append(f"  ignored (not dumps): {', '.join(stats['ignored_files'][:10])}"
                     + (f" and {len(stats['ignored_files']) - 10} more" if len(stats["ignored_files"]) > 10 else ""))
    for t in stats["truncated_files"]:
        lines.append(f"  TRUNCATED: {t['file']} (read {t['readable_lines']:,} lines)")
    for split, s in stats["splits"].items():
        lines.append(f"  {split}: {s['examples']:,} examples from {s['threads']:,} threads, "
                     f"rewarding rate {s['rewarding_rate']:.3f}")
    lines.append(f"  {stats['subreddits']:,} subreddits; {stats['reddit_prompts']:,} Reddit prompts"
                 + (f"; {stats['ultrachat']['kept']:,} UltraChat prompts" if "ultrachat" in stats else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main(main))
