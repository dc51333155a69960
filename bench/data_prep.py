"""Data pipeline throughput, CPU cost and peak memory on a SYNTHETIC Pushshift dump, per worker count.

Generates a dump with tests/synthetic.py (timed on its own; --posts 20000 gives 119k records,
the issue's "20k-post dump"; 80000, the paper-scale default, ~480k), measures the floor any
pipeline pays (decompress + split lines + orjson.loads of every line, one process), then runs
karma.data.prepare on it with each --workers count, --repeats times, interleaved. Each measurement
runs in its own process (this script re-invoked with --phase generate / parse / run) started by a
parent that imports nothing heavy, so the peak RSS reported is the pipeline's alone. Prints ONE
JSON object; per worker count the median run (by wall time):

  seconds, records_per_s      wall time of prepare() (fastText loaded before the clock)
  cpu_seconds                 user + system CPU of the main process and its workers together
  speedup                     seconds at 1 worker / seconds at N (needs 1 in --workers)
  cpu_ratio                   cpu_seconds / the parse-only floor's CPU seconds
  peak_rss_mib                the main process: getrusage(RUSAGE_SELF).ru_maxrss
  workers_peak_rss_max_mib    the largest worker: getrusage(RUSAGE_CHILDREN).ru_maxrss after the pool is joined
  workers_peak_rss_sum_mib    the workers' peaks added up (/proc/<pid>/status VmHWM sampled every 50 ms)
  outputs_sha256              of the shards and prompts-reddit.jsonl: the same for every worker count

    PYTHONPATH=. python bench/data_prep.py --posts 20000 --workers 1 2 [--repeats 3] [--keep DIR]
    PYTHONPATH=. python bench/data_prep.py --dump DIR --workers 1 2      # an existing dump
    PYTHONPATH=. python bench/data_prep.py --phase run --dump DIR --workers 2   # one run

Memory notes. On Linux a process's ru_maxrss starts from its parent's RSS at fork time (it survives
exec), which is why the parent stays small. The workers are forked from the main process when the
pipeline starts, so each worker's RSS includes the main process's pages at that moment
(`rss_after_imports_mib`: the interpreter, torch, which comes in with karma, and the fastText model),
shared copy-on-write and counted once per worker in the sum. The zstd reader keeps up to the
2 GiB window of decompressed history per open file, so on real dumps the reader's share grows
with the file size up to that window.
"""

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the pipeline's joined workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class WorkerPeaks(threading.Thread):
    """Samples VmHWM (peak RSS, KiB) of this process's children every `interval` seconds."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.peaks, self.done = interval, {}, threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            for pid in self._children():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue  # exited
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]))

    @staticmethod
    def _children() -> list[str]:
        pids = []
        for task in Path("/proc/self/task").iterdir():
            try:
                pids += (task / "children").read_text().split()
            except OSError:
                pass
        return pids

    def stop(self) -> list[int]:
        self.done.set()
        self.join()
        return list(self.peaks.values())


def run_pipeline(dump: Path, out: Path, workers: int) -> dict:
    """The pipeline alone, in this (fresh) process."""
    from karma.data.prepare import PrepConfig, prepare

    config = PrepConfig(inputs=[dump], out_dir=out, workers=workers)  # builds the language detector
    config.filters.detector.model  # load fastText before the clock starts (forked workers inherit it)
    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = WorkerPeaks()
    sampler.start()
    cpu, start = cpu_seconds(), time.perf_counter()
    stats = prepare(config)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    worker_peaks = sampler.stop()
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the workers, joined by now
    outputs = hashlib.sha256()
    for path in sorted(out.glob("*.jsonl")):
        outputs.update(path.name.encode() + b"\0" + path.read_bytes())
    return {
        "workers": workers,
        "records_read": stats["records_read"],
        "examples": stats["examples"],
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "records_per_s": round(stats["records_read"] / seconds),
        "peak_rss_mib": mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "workers_peak_rss_max_mib": mib(children_peak) if workers > 1 else None,
        "workers_peak_rss_sum_mib": mib(sum(worker_peaks)) if workers > 1 else None,
        "rss_after_imports_mib": mib(after_imports),
        "outputs_sha256": outputs.hexdigest()[:16],
    }


def parse_floor(dump: Path) -> dict:
    """Decompress, split lines and orjson.loads every line, in this one process: no pipeline pays less."""
    import orjson

    from karma.data.pushshift import read_lines

    cpu, start, lines = cpu_seconds(), time.perf_counter(), 0
    for path in sorted(p for p in dump.iterdir() if p.is_file()):
        for line in read_lines(path):
            if line.strip():
                orjson.loads(line)
                lines += 1
    return {"parse_lines": lines, "parse_seconds": round(time.perf_counter() - start, 2),
            "parse_cpu_seconds": round(cpu_seconds() - cpu, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=80_000, help="submissions to generate (default 80000)")
    parser.add_argument("--comments-per-post", type=float, default=5.0, help="mean comments per post (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="worker counts to run (default: 1 and the cores present)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per worker count; the median is reported")
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this directory instead of a temp dir")
    parser.add_argument("--phase", choices=["all", "generate", "parse", "run"], default="all",
                        help="all: generate (unless --dump), the parse floor, then the runs, each in a fresh "
                             "process; generate: write the dump to --dump; parse: the floor on --dump; "
                             "run: the pipeline on --dump with --workers (one count)")
    parser.add_argument("--dump", type=Path, help="the dump directory (--phase all: use it instead of generating)")
    parser.add_argument("--out", type=Path, help="--phase run: output directory (default: a temp dir)")
    args = parser.parse_args()

    if args.phase not in ("all",) and args.dump is None:
        parser.error(f"--phase {args.phase} needs --dump DIR")
    if any(n < 1 for n in args.workers or []) or args.repeats < 1:
        parser.error("--workers and --repeats must be at least 1")
    if args.phase == "generate":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test and bench tooling, not library
        from synthetic import write_dump

        start = time.perf_counter()
        counts = write_dump(args.dump, n_posts=args.posts, comments_per_post=args.comments_per_post, seed=args.seed)
        seconds = time.perf_counter() - start
        print(json.dumps({"posts": counts["submissions"], "comments": counts["comments"],
                          "generate_s": round(seconds, 2),
                          "generate_records_per_s": round((counts["submissions"] + counts["comments"]) / seconds),
                          "generate_peak_rss_mib": mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)}))
        return
    if args.phase == "parse":
        print(json.dumps(parse_floor(args.dump)))
        return
    if args.phase == "run":
        if args.workers is not None and len(args.workers) != 1:
            parser.error("--phase run takes one --workers count")
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_pipeline(args.dump, args.out or Path(tmp) / "out", (args.workers or [1])[0])))
        return

    counts = args.workers or sorted({1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count()})
    load_before = os.getloadavg()[0]  # other jobs on the machine slow every run: say how busy it was
    with tempfile.TemporaryDirectory() as tmp:
        if args.dump is not None:
            dump, generated = args.dump, {"posts": None, "comments": None}
        else:
            dump = args.keep or Path(tmp) / "dump"
            generated = _child("--phase", "generate", "--dump", dump, "--posts", args.posts,
                               "--comments-per-post", args.comments_per_post, "--seed", args.seed)
        dump_mb = round(sum(p.stat().st_size for p in dump.iterdir()) / 1e6, 1)
        floor = _child("--phase", "parse", "--dump", dump)
        runs = {n: [] for n in counts}
        for _ in range(args.repeats):  # interleaved, so a busy spell on the machine hits all counts alike
            for n in counts:
                runs[n].append(_child("--phase", "run", "--dump", dump, "--out", Path(tmp) / f"out{n}",
                                      "--workers", n))
    results = {}
    for n, rs in runs.items():
        median = sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]
        results[n] = {**median, "seconds_all": [r["seconds"] for r in rs],
                      "cpu_ratio": round(median["cpu_seconds"] / max(floor["parse_cpu_seconds"], 1e-9), 2)}
    if 1 in results:
        for r in results.values():
            r["speedup"] = round(results[1]["seconds"] / r["seconds"], 2)
    print(json.dumps({
        "bench": "data_prep", "command": "PYTHONPATH=. python bench/data_prep.py " + " ".join(sys.argv[1:]),
        **generated,
        "dump_mb": dump_mb,
        **floor,
        "runs": list(results.values()),
        "outputs_identical": len({r["outputs_sha256"] for r in results.values()}) == 1,
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(), "date": time.strftime("%Y-%m-%d"),
    }))


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


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
