"""Data pipeline throughput and peak memory on a SYNTHETIC Pushshift dump (paper scale by default).

Generates a dump with karma.data.synthetic (timed on its own; ~80k posts, ~400k comments by
default), then runs karma.data.prepare on it. Each phase runs in its own process (this script
re-invoked with `--phase generate` / `--phase run`) started by a parent that imports nothing
heavy, so the peak RSS reported is the pipeline's alone. Prints ONE JSON object.

    PYTHONPATH=. python bench/data_prep.py [--posts 80000] [--comments-per-post 5] [--keep DIR]
    PYTHONPATH=. python bench/data_prep.py --phase run --dump DIR [--out DIR]   # pipeline only

Peak RSS: getrusage(RUSAGE_SELF).ru_maxrss of the pipeline process (KiB on Linux -> MiB). On
Linux a child's ru_maxrss starts from its parent's RSS at fork time (it survives exec), which is
why the parent stays small; `peak_vmhwm_mib` (/proc/self/status VmHWM, reset by exec) cross-checks
it. Both include the interpreter and imports (torch comes in with karma): `rss_after_imports_mib`.
The zstd reader keeps up to the 2 GiB window of decompressed history per open file, so on real
dumps the reader's share grows with the file size up to that window.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def vmhwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def run_pipeline(dump: Path, out: Path) -> dict:
    """The pipeline alone, in this (fresh) process."""
    from karma.data.prepare import PrepConfig, prepare

    config = PrepConfig(inputs=[dump], out_dir=out)  # builds the language detector
    config.filters.detector.model                     # load fastText before the clock starts
    after_imports = rss_mib()
    start = time.perf_counter()
    stats = prepare(config)
    seconds = time.perf_counter() - start
    splits = stats.get("splits", {})
    examples = stats["examples"]
    rewarding = sum(s.get("rewarding", 0) for s in splits.values())
    return {
        "records_read": stats["records_read"],
        "seconds": round(seconds, 2),
        "records_per_s": round(stats["records_read"] / seconds),
        "examples": examples,
        "rewarding_rate": round(rewarding / max(1, examples), 4),
        "posts_kept": stats.get("posts"),
        "peak_rss_mib": rss_mib(),
        "peak_vmhwm_mib": vmhwm_mib(),
        "rss_after_imports_mib": after_imports,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=80_000, help="submissions to generate (default 80000)")
    parser.add_argument("--comments-per-post", type=float, default=5.0, help="mean comments per post (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this directory instead of a temp dir")
    parser.add_argument("--phase", choices=["all", "generate", "run"], default="all",
                        help="all: generate, then run the pipeline, each in a fresh process; "
                             "generate: write the dump to --dump; run: the pipeline on --dump")
    parser.add_argument("--dump", type=Path, help="--phase generate/run: the dump directory")
    parser.add_argument("--out", type=Path, help="--phase run: output directory (default: a temp dir)")
    args = parser.parse_args()

    if args.phase != "all" and args.dump is None:
        parser.error(f"--phase {args.phase} needs --dump DIR")
    if args.phase == "generate":
        from karma.data.synthetic import write_dump

        start = time.perf_counter()
        counts = write_dump(args.dump, n_posts=args.posts, comments_per_post=args.comments_per_post, seed=args.seed)
        seconds = time.perf_counter() - start
        print(json.dumps({"posts": counts["submissions"], "comments": counts["comments"],
                          "generate_s": round(seconds, 2),
                          "generate_records_per_s": round((counts["submissions"] + counts["comments"]) / seconds),
                          "generate_peak_rss_mib": rss_mib()}))
        return
    if args.phase == "run":
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_pipeline(args.dump, args.out or Path(tmp) / "out")))
        return

    with tempfile.TemporaryDirectory() as tmp:
        dump = args.keep or Path(tmp) / "dump"
        generated = _child("--phase", "generate", "--dump", dump, "--posts", args.posts,
                           "--comments-per-post", args.comments_per_post, "--seed", args.seed)
        pipeline = _child("--phase", "run", "--dump", dump, "--out", Path(tmp) / "out")
        print(json.dumps({
            "bench": "data_prep", **generated,
            "dump_mb": round(sum(p.stat().st_size for p in dump.iterdir()) / 1e6, 1),
            **pipeline,
            "python": platform.python_version(), "cpus": os.cpu_count(),
        }))


def _child(*args) -> dict:
    """This script in a fresh process; its last stdout line is a JSON object."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    child = subprocess.run([sys.executable, __file__, *map(str, args)], env=env, capture_output=True, text=True)
    if child.returncode:
        sys.stderr.write(child.stderr)
        raise SystemExit(f"{' '.join(map(str, args[:2]))} failed with exit code {child.returncode}")
    return json.loads(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
