"""data_prep.py's guards: a run replaces --out as a whole (a kill at any point leaves the previous
outputs or the new ones, never a mix), numeric flags checked at parse time, a failed write names
its file and leaves no temporary files, and a later run removes what a killed one left.

Kills are real: the run goes on in a forked child that ends with os._exit at the chosen point, so
no `finally` or `except` of the pipeline runs, as with SIGKILL."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

import data_prep
from karma.cli import run_main
from karma.data import prepare as prep
from synthetic import write_dump

KILLED = 77  # the child's exit status when the kill point was reached
TIMING = ("seconds", "records_per_s")


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    d = tmp_path_factory.mktemp("dump")
    write_dump(d, n_posts=60, seed=1, compression="ndjson")
    ultrachat = tmp_path_factory.mktemp("ultrachat") / "ultrachat.jsonl"
    ultrachat.write_text("".join(json.dumps({"prompt": p, "messages": [{"role": "user", "content": p}]}) + "\n"
                                 for p in ("How do tides work?", "Write a haiku about rain.")))
    return d, ultrachat


def argv(dump, out, *flags):
    d, ultrachat = dump
    return ["--input", str(d), "--out", str(out), "--workers", "1", "--ultrachat", str(ultrachat), *flags]


OLD_FLAGS = ("--heldout-percent", "50", "--shard-size", "10")  # the previous run: another split, other shards
NEW_FLAGS = ("--shard-size", "60")


def snapshot(out) -> dict:
    """What a reader of --out sees: every file's content (stats.json without timings and out_dir)."""
    files = {}
    for p in sorted(out.iterdir()):
        if p.name == ".lock":
            continue
        if p.is_dir():
            files[p.name] = "a directory"
        elif p.name == "stats.json":
            stats = json.loads(p.read_text())
            config = {k: v for k, v in stats.pop("config").items() if k != "out_dir"}
            files[p.name] = {**{k: v for k, v in stats.items() if k not in TIMING}, "config": config}
        else:
            files[p.name] = p.read_bytes()
    return files


@pytest.fixture(scope="module")
def sets(dump, tmp_path_factory):
    """The previous run's outputs (kept as a directory to copy) and the snapshot of the new run's."""
    base = tmp_path_factory.mktemp("sets")
    assert run_main(data_prep.main, argv(dump, base / "old", *OLD_FLAGS)) == 0
    assert run_main(data_prep.main, argv(dump, base / "new", *NEW_FLAGS)) == 0
    old, new = snapshot(base / "old"), snapshot(base / "new")
    assert old != new and {n for n in old if n.startswith("train-")} != {n for n in new if n.startswith("train-")}
    return base / "old", old, new


def run_killed(args, target, name: str, calls: int = 1, when=lambda *a, **k: True) -> int:
    """data_prep.main(args) in a forked child that dies (os._exit, no cleanup) at the `calls`-th call
    of target.name for which when(arguments) holds; returns the child's exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            original, seen = getattr(target, name), [0]

            def die_at(*a, **k):
                if when(*a, **k):
                    seen[0] += 1
                    if seen[0] == calls:
                        os._exit(KILLED)
                return original(*a, **k)

            setattr(target, name, die_at)
            data_prep.main(args)
        finally:
            os._exit(0)  # reached only when the kill point never came
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


KILL_POINTS = {  # in the order a run reaches them
    "second_shard": (prep.ShardWriter, "_finish", 2, None),
    "reddit_prompts": (prep, "write_lines", 1, None),
    "pipeline_stats": (prep, "atomic_write_json", 1, None),
    "ultrachat_prompts": (data_prep, "write_prompts", 1, None),
    "final_stats": (data_prep, "atomic_write_json", 1, None),
    # karma.checkpoint.replace_directory renames out -> .out.old, then the new set tmp -> out
    "between_the_renames": (os, "rename", 1, lambda src, dst: os.path.basename(src).startswith(".out.tmp-")),
    "deleting_the_old_set": (shutil, "rmtree", 1, lambda path, *a, **k: str(path).endswith(".old")),
    "releasing_the_lock": (data_prep.RunLock, "__exit__", 1, None),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_kill_leaves_the_previous_outputs_or_the_new_ones(point, dump, sets, tmp_path):
    old_dir, old, new = sets
    out = tmp_path / "out"
    shutil.copytree(old_dir, out)
    target, name, calls, when = KILL_POINTS[point]
    assert run_killed(argv(dump, out, *NEW_FLAGS), target, name, calls, when or (lambda *a, **k: True)) == KILLED
    prep.recover_outputs(out)  # what the next run does first: a kill between the renames left no --out,
    assert snapshot(out) in (old, new)  # and the previous set in .out.old
    expected = new if point in ("deleting_the_old_set", "releasing_the_lock") else old
    assert snapshot(out) == expected
    # the next run takes over the dead run's lock, removes its leftovers and replaces the set
    assert run_main(data_prep.main, argv(dump, out, *NEW_FLAGS)) == 0
    assert snapshot(out) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.tmp-<pid>, no .out.old
    assert not (out / ".lock").exists()


def test_out_holding_other_files_is_refused_before_any_work(dump, sets, tmp_path, capsys):
    old_dir, old, _ = sets
    out = tmp_path / "out"
    shutil.copytree(old_dir, out)
    (out / "notes.txt").write_text("mine\n")
    (out / "rm").mkdir()
    capsys.readouterr()
    assert run_main(data_prep.main, argv(dump, out, *NEW_FLAGS), prog="data_prep.py") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"data_prep.py: error: {out}: holds notes.txt, rm, which data_prep.py does not write")
    assert snapshot(out) == {**old, "notes.txt": b"mine\n", "rm": "a directory"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_symlinked_out_stays_a_symlink(dump, sets, tmp_path):
    _, _, new = sets
    real, link = tmp_path / "disk" / "data", tmp_path / "data"
    real.mkdir(parents=True)
    link.symlink_to(real, target_is_directory=True)
    assert run_main(data_prep.main, argv(dump, link, *NEW_FLAGS)) == 0
    assert link.is_symlink() and snapshot(real) == new


class FullDisk:
    """A shard file on a full disk: every write fails, as does close (it flushes the buffer)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
        self.f.close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self):
        return self.f.fileno()


def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(dump, sets, tmp_path, capsys, monkeypatch):
    old_dir, old, _ = sets
    out = tmp_path / "out"
    shutil.copytree(old_dir, out)
    start = prep.ShardWriter._start

    def start_on_full_disk(self, split):
        shard = start(self, split)
        shard[0] = FullDisk(shard[0])
        return shard

    monkeypatch.setattr(prep.ShardWriter, "_start", start_on_full_disk)
    capsys.readouterr()
    assert run_main(data_prep.main, argv(dump, out, *NEW_FLAGS), prog="data_prep.py") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"data_prep.py: error: [Errno 28] {out / 'train-00000.jsonl'}: No space left on device (")
    assert line.endswith(f"; nothing in {out} was changed (--debug shows the traceback)")
    assert snapshot(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(old)  # no .train-*.tmp, no lock


def test_shard_writer_removes_its_temporary_files_when_the_disk_is_full(tmp_path, monkeypatch):
    start = prep.ShardWriter._start
    monkeypatch.setattr(prep.ShardWriter, "_start", lambda self, split: [FullDisk(start(self, split)[0]),
                                                                           *self.open[split][1:]])
    with pytest.raises(OSError) as e:
        with prep.ShardWriter(tmp_path, shard_size=2) as writer:
            writer.write("train", b"{}")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "train-00000.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_a_later_run_removes_what_killed_runs_left(dump, sets, tmp_path):
    old_dir, _, new = sets
    out = tmp_path / "out"
    shutil.copytree(old_dir, out)
    (out / ".train-k2j3h4.tmp").write_text("a shard an earlier version was writing\n")
    (out / ".stats.json.x1y2.tmp").write_text("{")
    stale = tmp_path / f".out.tmp-{2**22 + 1}"  # a killed run's new set, half written
    stale.mkdir()
    (stale / "train-00000.jsonl").write_text("{}\n")
    assert run_main(data_prep.main, argv(dump, out, *NEW_FLAGS)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert snapshot(out) == new and not any(p.name.startswith(".") for p in out.iterdir())


# ----------------------------------------------------------------------------------- numeric flags

RATIO, AGE, PROB, PERCENT = ("must be a finite number in [0, 100]", "must be a finite number >= 0",
                              "must be a finite number in [0, 1]", "must be a finite number in [0, 100]")
BAD_VALUES = [  # flag, value given, value shown, what it must be
    ("--reward-ratio", "inf", "inf", RATIO), ("--reward-ratio", "nan", "nan", RATIO),
    ("--reward-ratio", "-0.1", "-0.1", RATIO), ("--reward-ratio", "1e9", "1000000000.0", RATIO),
    ("--min-score-age-hours", "inf", "inf", AGE), ("--min-score-age-hours", "-1", "-1.0", AGE),
    ("--min-english-prob", "nan", "nan", PROB), ("--min-english-prob", "1.5", "1.5", PROB),
    ("--heldout-percent", "-inf", "-inf", PERCENT), ("--heldout-percent", "101", "101.0", PERCENT),
    ("--min-chars", "0", "0", "must be at least 1"), ("--min-responses", "0", "0", "must be at least 1"),
    ("--max-siblings", "-1", "-1", "must be at least 0"), ("--shard-size", "0", "0", "must be at least 1"),
    ("--max-prompts", "0", "0", "must be at least 1"), ("--ultrachat-limit", "-5", "-5", "must be at least 1"),
    ("--workers", "0", "0", "must be at least 1"),
]


@pytest.mark.parametrize("flag,value,shown,expected", BAD_VALUES)
def test_numeric_flags_are_checked_at_parse_time(flag, value, shown, expected, capsys):
    with pytest.raises(SystemExit) as e:
        data_prep.parse_args(["--input", "x", "--out", "y", f"{flag}={value}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f": error: {flag} {shown}: {expected}")


def test_workers_far_beyond_the_cores_are_refused(capsys):
    most = 4 * prep.default_workers()
    assert data_prep.parse_args(["--input", "x", "--out", "y", "--workers", str(most)]).workers == most
    with pytest.raises(SystemExit):
        data_prep.parse_args(["--input", "x", "--out", "y", "--workers", str(most + 1)])
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --workers {most + 1}: must be at most {most} (4 per core this process may use)")


def test_the_paper_settings_and_the_extremes_still_parse():
    args = data_prep.parse_args(["--input", "x", "--out", "y", "--reward-ratio", "0", "--heldout-percent", "100",
                                 "--min-english-prob", "1", "--min-score-age-hours", "0", "--max-siblings", "0"])
    assert (args.reward_ratio, args.heldout_percent, args.min_english_prob) == (0, 100, 1)
    assert data_prep.parse_args(["--input", "x", "--out", "y"]).reward_ratio == 0.4
