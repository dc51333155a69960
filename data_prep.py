"""Pushshift Reddit dumps -> reward-model examples (train/held-out JSONL) and PPO prompt sets.

    python data_prep.py --input data/sample --out runs/data
    python data_prep.py --input /dumps/RS_2015-01.zst /dumps/RC_2015-01.zst /dumps/RC_2015-02.zst \\
        --out runs/data --ultrachat /datasets/ultrachat_200k/data --ultrachat-limit 100000

Outputs in --out: train-*.jsonl, heldout-*.jsonl (examples), prompts-reddit.jsonl,
prompts-ultrachat.jsonl (with --ultrachat), stats.json. Schema and pipeline: karma/data/prepare.py.

    python data_prep.py kinship --ultrafeedback /datasets/UltraFeedback --scores benchmark.csv --out runs/pairs

builds the other KARMA's kinship-aware preference pairs for dpo.py (karma/data/kinship.py;
`python data_prep.py kinship --help`).
"""

import argparse
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from karma.checkpoint import atomic_write_json
from karma.cli import add_debug_flag, run_main
from karma.data import kinship, ultrachat
from karma.data.filters import FilterConfig
from karma.data.prepare import PrepConfig, default_workers, prepare
from karma.data.threads import ThreadConfig
from karma.data.prompts import write_prompts
from karma.records import require_pyarrow
from karma.run import RunLock, show_progress


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, type=Path,
                   help="dump files (RS_*/RC_* .zst, .gz, .ndjson, .jsonl) or directories holding them; "
                        "submission files are read first, so a reply can find its post in any file")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes that parse, filter, identify languages and build threads (default: the "
                        f"cores present, {default_workers()} here; 1: all in this process). Any count writes "
                        "the same files")
    g = p.add_argument_group("filters")
    g.add_argument("--min-chars", type=int, default=10, help="drop texts shorter than this (default 10)")
    g.add_argument("--min-score-age-hours", type=float, default=24.0,
                   help="drop records retrieved less than this long after creation: their score is not "
                        "final yet (default 24; records without a retrieval time pass)")
    g.add_argument("--min-english-prob", type=float, default=0.5,
                   help="keep texts whose probability of English, after a 10:1 prior for English on Reddit, is at "
                        "least this (default 0.5; fastText p(en) >= 1/11). See karma/data/filters.py")
    g.add_argument("--no-language-filter", action="store_true", help="keep all languages")
    g.add_argument("--bots", nargs="*", default=["AutoModerator"],
                   help="bot accounts to drop, besides names ending in 'bot' (default AutoModerator)")
    g = p.add_argument_group("threads and labels")
    g.add_argument("--reward-ratio", type=float, default=0.4,
                   help="a reply is rewarding iff score >= ratio * max(parent score, 1) (default 0.4, the paper's)")
    g.add_argument("--min-responses", type=int, default=2,
                   help="a submission needs this many kept top-level replies (default 2)")
    g.add_argument("--max-siblings", type=int, default=5, help="sibling replies stored per example (default 5)")
    g = p.add_argument_group("output")
    g.add_argument("--heldout-percent", type=float, default=10.0,
                   help="share of submissions (whole threads) in the held-out split (default 10)")
    g.add_argument("--shard-size", type=int, default=50_000, help="examples per JSONL shard (default 50000)")
    g.add_argument("--max-prompts", type=int, default=None, help="cap on Reddit PPO prompts (default: all)")
    g = p.add_argument_group("UltraChat prompts (karmaBenign)")
    g.add_argument("--ultrachat", nargs="*", type=Path, default=None,
                   help="UltraChat-200k parquet shards or JSONL files (or directories); parquet needs pyarrow")
    g.add_argument("--ultrachat-split", default="train_sft", help="parquet split to read (default train_sft)")
    g.add_argument("--ultrachat-limit", type=int, default=None, help="cap on UltraChat prompts (after dedup)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    for flag in ("min_chars", "min_responses", "shard_size", "max_prompts", "ultrachat_limit", "workers"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    for flag, low, high in (("min_english_prob", 0, 1), ("reward_ratio", 0, None), ("heldout_percent", 0, 100),
                            ("min_score_age_hours", 0, None)):
        value = getattr(args, flag)
        if not (low <= value and (high is None or value <= high)) or value != value:
            p.error(f"--{flag.replace('_', '-')} {value}: must be in [{low}, {high if high is not None else 'inf'}]")
    if args.max_siblings < 0:
        p.error(f"--max-siblings {args.max_siblings}: must be >= 0")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["kinship"]:  # the other KARMA's preference pairs (files written atomically)
        return kinship.main(argv[1:])
    args = parse_args(argv)
    created = not args.out.exists()
    try:
        with RunLock(args.out):
            run(args)
    except BaseException:
        if created and args.out.is_dir() and not any(p.name != ".lock" for p in args.out.iterdir()):
            shutil.rmtree(args.out)  # a failed run leaves no empty --out behind
        raise


def run(args):
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
    with tqdm(desc="records", unit=" rec", unit_scale=True, disable=not show_progress()) as bar:
        stats = prepare(cfg, progress=bar)
    if args.ultrachat is not None:
        prompts, uc_stats = ultrachat.read_ultrachat(ultrachat_files, split=args.ultrachat_split,
                                                     limit=args.ultrachat_limit)
        write_prompts(prompts, args.out / "prompts-ultrachat.jsonl")
        stats["ultrachat"] = uc_stats
        atomic_write_json(args.out / "stats.json", stats)
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
