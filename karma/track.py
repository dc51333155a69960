"""Experiment tracking: every metrics.jsonl record of a run mirrored into TensorBoard or Weights & Biases.

    python train_rm.py ... --report-to tensorboard    # while it trains: <out>/tensorboard/
    tensorboard --logdir runs                         # every run under runs/ side by side
    python ppo.py ... --report-to wandb               # a W&B run; offline (WANDB_MODE=offline) in <out>/wandb/
    python -m karma.track runs/rm --to tensorboard    # afterwards: a run's metrics.jsonl replayed

metrics.jsonl stays the source of truth: a tracker gets each record as metrics.jsonl holds it
(`time` stamped, non-finite numbers already null; karma.run.MetricsLog), and a replay reads the same
records back, in the order they were written, so the two write the same points. So does eval.jsonl,
ppo.py's held-out evaluations (--eval-every), its records filed under "eval". A record becomes
scalars (`scalars`):
  * at its step: the record's `step` (reward model, DPO) or `rollout` (PPO); a trainer's record of
    its (re)start ("event": "data") has neither and stands at its `resumed_at`. A record without any
    of the three is left out;
  * named `<event>/<key>` (train/loss, eval/roc_auc), or `<key>` in a record without an event (PPO's
    rollouts); a nested table flattens with "/" (data/train/read); a boolean counts 0 or 1;
  * its text, lists and nulls are left out, counted by key; the tracker says what it left out when
    it closes. TensorBoard stamps each point with the record's `time`; W&B with its own clock.

The tracker libraries are optional extras (pip install tensorboard / wandb, or pip install -e
'.[track]'), imported only when asked for. A --report-to whose package is missing is refused with
the pip command before anything loads (TRACKER_INSTALLED is a rule of the report_to setting). Only
the main rank writes: karma.run.Run holds the mirror there.

A resumed run (karma.run.Run.resume has cut metrics.jsonl back to the checkpoint) opens its mirror
by first sending it metrics.jsonl as it stands, then goes on live:
  * TensorBoard: the log is written anew. The new event file starts with purge_step 0, which makes
    TensorBoard drop every point of the earlier files (SummaryWriter's purge_step), and those files
    are deleted once the new one holds their records. So the points a killed run logged past its
    checkpoint are gone, and TensorBoard shows metrics.jsonl exactly: no step twice, none missing,
    whether or not the earlier segments were mirrored;
  * W&B: a run's history only grows, with increasing steps (W&B drops a step below its latest one),
    so a resumed run continues the same W&B run: `<out>/wandb/karma.json` keeps its id and the last
    step sent, and only later steps are sent. The steps a killed run sent past its checkpoint keep
    that run's values: the same numbers (a resume is exact), only the timings differ.
"""

import argparse
import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path

from karma.files import atomic_write_json, read_json, read_jsonl

TRACKERS = ("none", "tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # --report-to -> the pip package it needs
STEP_KEYS = ("step", "rollout", "resumed_at")  # where a record's step is, in this order
LOGS = {"metrics.jsonl": None, "eval.jsonl": "eval"}  # the logs mirrored -> the event of their records without one


def installed(tracker: str) -> bool:
    """Whether --report-to `tracker` can run: "none", or a tracker whose package is there (looked up,
    not imported: importing wandb takes a second)."""
    return tracker not in PACKAGES or importlib.util.find_spec(PACKAGES[tracker]) is not None


# the rule of the report_to setting (karma.settings.check_settings): a missing package is refused
# when the flags are read, before any model loads: "--report-to wandb: must be installed first: ..."
TRACKER_INSTALLED = (installed, lambda tracker: f"installed first: pip install {PACKAGES[tracker]} (or pip install "
                                                f"-e '.[track]')")
REPORT_TO_HELP = ("mirror each metrics.jsonl record into an experiment tracker: tensorboard (<out>/tensorboard/) "
                  "or wandb (WANDB_MODE=offline works without a network); see karma/track.py")


# ------------------------------------------------------------------------------------------ records

def scalars(record: dict, skipped: Counter, event: str | None = None) -> tuple[int | None, dict[str, float]]:
    """(step, {tag: value}) of a log record (see the module doc), filed under its own "event", else
    `event`; (None, {}) for a record without a step. What is left out is counted in `skipped` by
    (reason, key)."""
    event = record.get("event", event)
    step_key = next((k for k in STEP_KEYS if type(record.get(k)) is int), None)
    if step_key is None:
        skipped["no step", event or "record"] += 1
        return None, {}
    prefix = f"{event}/" if event else ""
    values = {}

    def add(key: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{key}/{k}", v)
        elif isinstance(value, (bool, int, float)):
            values[prefix + key] = float(value)
        else:
            skipped["null" if value is None else "list" if isinstance(value, list) else "text", key] += 1

    for key, value in record.items():
        if key not in ("event", "time", step_key):
            add(key, value)
    return record[step_key], values


def left_out(skipped: Counter) -> str:
    """What a mirror left out, by reason: 'text: variant (12), diverged (12); null: loss (1)'."""
    reasons = {}
    for (reason, key), n in skipped.most_common():
        reasons.setdefault(reason, []).append(f"{key} ({n})")
    return "; ".join(f"{reason}: {', '.join(keys)}" for reason, keys in reasons.items()) or "nothing"


# ----------------------------------------------------------------------------------------- trackers

class TensorBoard:
    """Scalars into event files in `log_dir` through torch.utils.tensorboard.SummaryWriter (the
    `tensorboard` package). Event files already there (earlier segments of a resumed run) are
    replaced: the new file purges their points (purge_step 0) and `caught_up` deletes them."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.where = Path(log_dir)
        self.earlier = sorted(self.where.glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(str(self.where), purge_step=0 if self.earlier else None)

    def write(self, step: int, values: dict[str, float], walltime: float | None) -> bool:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step, walltime=walltime)
        self.writer.flush()  # a record every few steps: cheap, and the dashboard is current
        return True

    def caught_up(self) -> None:
        for path in self.earlier:
            path.unlink(missing_ok=True)
        self.earlier = []

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandB:
    """Scalars into a W&B run, files in `directory`/wandb/. With `state` (a live run's
    <out>/wandb/karma.json) the W&B run is the one recorded there, and steps up to the last one it
    was sent are not sent again (see the module doc); without, a new W&B run (a replay). The run file
    (wandb/*run-<id>/run-<id>.wandb) is complete once W&B's service process has exited (at this
    process's exit, or wandb.teardown()), not yet when run.finish() returns."""

    def __init__(self, directory: Path, name: str, config: dict, state: Path | None):
        import wandb
        self.state = state
        saved = read_json(state) if state is not None and state.exists() else {}
        self.floor = self.last = saved.get("step", -1)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "karma"), name=name, id=saved.get("id"),
                              resume="allow" if saved else None, dir=str(directory), config=config)
        self.where = f"W&B run {self.run.id} ({Path(self.run.dir).parent})"

    def write(self, step: int, values: dict[str, float], walltime: float | None) -> bool:
        if step <= self.floor:  # the W&B run has this step already (sent before the resume)
            return False
        self.run.log(values, step=step)
        self.last = max(self.last, step)
        if self.state is not None:
            atomic_write_json(self.state, {"id": self.run.id, "step": self.last})
        return True

    def caught_up(self) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Mirror:
    """metrics.jsonl records into one tracker; counts what it sent and what it left out."""

    def __init__(self, tracker, name: str):
        self.tracker, self.name = tracker, name
        self.records = self.points = self.sent_before = 0
        self.skipped = Counter()

    def write(self, record: dict, log: str = "metrics.jsonl") -> None:
        step, values = scalars(record, self.skipped, LOGS[log])
        if step is None:
            return
        if self.tracker.write(step, values, record.get("time")):
            self.records, self.points = self.records + 1, self.points + len(values)
        else:
            self.sent_before += 1

    def write_logs(self, run_dir: Path) -> None:
        """Every record of a run's logs (LOGS), in the order they were written (by their `time`; a
        torn last line is left out: read_jsonl)."""
        records = [(record.get("time", 0), log, record) for log in LOGS if (Path(run_dir) / log).exists()
                   for _, record in read_jsonl(Path(run_dir) / log)]
        for _, log, record in sorted(records, key=lambda r: r[0]):
            self.write(record, log)
        self.tracker.caught_up()

    def summary(self) -> str:
        again = f", {self.sent_before} records it had already" if self.sent_before else ""
        return (f"{self.name}: {self.records} records ({self.points} scalars) in {self.tracker.where}{again}; "
                f"left out: {left_out(self.skipped)}")

    def close(self, failed: bool = False) -> None:
        self.tracker.close(failed)


def open_mirror(tracker: str, out: Path) -> Mirror:
    """The live mirror of the run in `out` (karma.run.Run, main rank): --report-to `tracker`, first
    sent the logs as they stand (empty for a new run; cut back to the checkpoint for a resumed one)."""
    out = Path(out)
    if tracker == "tensorboard":
        mirror = Mirror(TensorBoard(out / "tensorboard"), tracker)
    else:
        config = read_json(out / "config.json") if (out / "config.json").exists() else {}
        mirror = Mirror(WandB(out, out.resolve().name, config, state=out / "wandb" / "karma.json"), tracker)
    mirror.write_logs(out)
    return mirror


# ------------------------------------------------------------------------------------------- replay

def replay(run_dir: Path, tracker: str, log_dir: Path | None = None) -> Mirror:
    """A run's logs (metrics.jsonl, and eval.jsonl if any) into `tracker`: TensorBoard event files in `log_dir` (default
    <run>/tensorboard), or a new W&B run with its files in `log_dir` (default the run's directory).
    Refused where the run's live mirror is (a second copy of its points would be written)."""
    run_dir = Path(run_dir)
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{log}: no such file (a run directory of train_rm.py, ppo.py or dpo.py?)")
    if tracker == "tensorboard":
        log_dir = Path(log_dir or run_dir / "tensorboard")
        if any(log_dir.glob("events.out.tfevents.*")):
            raise ValueError(f"{log_dir}: holds TensorBoard event files already (the run mirrored with --report-to "
                             f"tensorboard, or replayed before); pass --log-dir DIR, or delete them")
        mirror = Mirror(TensorBoard(log_dir), tracker)
    else:
        live = run_dir / "wandb" / "karma.json"
        if log_dir is None and live.exists():
            raise ValueError(f"{run_dir}: was mirrored to W&B while it ran (run {read_json(live)['id']}); a replay "
                             f"would make a second W&B run: pass --log-dir DIR to make it anyway")
        config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
        mirror = Mirror(WandB(log_dir or run_dir, run_dir.resolve().name, config, state=None), tracker)
    try:
        mirror.write_logs(run_dir)
    finally:
        mirror.close()
    return mirror


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m karma.track", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run's --out (train_rm.py, ppo.py, dpo.py): its metrics.jsonl")
    p.add_argument("--to", required=True, choices=TRACKERS[1:], help="the tracker (required)")
    p.add_argument("--log-dir", type=Path, help="where the tracker's files go (default: <run_dir>/tensorboard for "
                                                "tensorboard, <run_dir>/wandb for wandb)")
    args = p.parse_args(argv)
    if not installed(args.to):
        raise ValueError(f"--to {args.to}: must be {TRACKER_INSTALLED[1](args.to)}")
    print(replay(args.run_dir, args.to, args.log_dir).summary())


if __name__ == "__main__":
    from karma.cli import run_main
    sys.exit(run_main(main, prog="python -m karma.track"))
