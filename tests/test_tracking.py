"""--report-to and python -m karma.track: what a short real run of a tiny model mirrors into TensorBoard
(read back with TensorBoard's own EventAccumulator) and W&B (offline; read back from its run file)
is metrics.jsonl, point for point; a replay writes the same; a resumed run (killed past its last
checkpoint, or mirrored only from its resume on) shows each step once and none missing; a tracker
that is not installed is refused before anything loads, naming the pip command."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

import karma.ppo.trainer as ppo_trainer
import karma.run as run
import karma.track as track
from karma.distributed import Dist
from karma.reward_train import TrainRMConfig, train
from test_reward import make_examples
from test_ppo_trainer import LetterReward
from test_ppo_trainer import config as ppo_config
from test_robustness import _script, cli, error_line, ppo_script, prompts, rm_argv, train_rm_script  # noqa: F401

dpo_script = _script("dpo")

CPU = Dist(0, 1, torch.device("cpu"))


@pytest.fixture(scope="module")
def base(checkpoint_factory):
    return checkpoint_factory("llama_tied").path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_examples(tmp_path_factory.mktemp("data"), n_train=32, n_heldout=16)


def rm_config(base, data, out, **kw) -> TrainRMConfig:
    """4 steps of 8 examples, a train record each step, an evaluation every 2."""
    defaults = dict(model=str(base), data=data, out_dir=out, max_length=64, batch_size=8, micro_batch_size=8,
                    lr=1e-4, max_steps=4, eval_every=2, save_every=2, log_every=1, report_to="tensorboard")
    return TrainRMConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def finished(base, data, tmp_path_factory) -> Path:
    """A finished run mirrored live into TensorBoard."""
    out = tmp_path_factory.mktemp("finished") / "rm"
    train(rm_config(base, data, out), CPU)
    return out


def expected(metrics: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, value as float32, wall time)] of every number in metrics.jsonl (karma.track.scalars)."""
    points = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        step, values = track.scalars(record, Counter())
        for tag, value in values.items():
            points.setdefault(tag, []).append((step, float(torch.tensor(value, dtype=torch.float32)), record["time"]))
    return points


def tensorboard_points(log_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, value, wall time)] as TensorBoard reads `log_dir` (every point kept; orphans purged)."""
    events = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# ----------------------------------------------------------------------------------- the records

def test_a_record_becomes_scalars_at_its_step_and_what_is_not_a_number_is_counted():
    skipped = Counter()
    step, values = track.scalars({"event": "train", "step": 7, "time": 1.5, "loss": 0.25, "lr": 1e-5,
                                  "nonfinite": ["grad_norm"], "grad_norm": None, "resumed": True}, skipped)
    assert step == 7 and values == {"train/loss": 0.25, "train/lr": 1e-5, "train/resumed": 1.0}
    step, values = track.scalars({"rollout": 3, "score": 0.5, "variant": "karmaToxic", "skip_reasons": {"ratio": 2},
                                  "time": 2.0}, skipped)
    assert step == 3 and values == {"score": 0.5, "skip_reasons/ratio": 2.0}
    step, values = track.scalars({"event": "data", "resumed_at": 12, "train": {"read": 40, "skipped": {"empty": 1}},
                                  "total_steps": 20}, skipped)
    assert step == 12 and values == {"data/train/read": 40.0, "data/train/skipped/empty": 1.0,
                                     "data/total_steps": 20.0}
    assert track.scalars({"event": "note", "text": "hello"}, skipped) == (None, {})
    assert skipped == Counter({("list", "nonfinite"): 1, ("null", "grad_norm"): 1, ("text", "variant"): 1,
                               ("no step", "note"): 1})
    assert track.left_out(skipped) == "list: nonfinite (1); null: grad_norm (1); text: variant (1); no step: note (1)"


# ----------------------------------------------------------------------------------- TensorBoard

def test_the_live_tensorboard_mirror_is_metrics_jsonl_and_a_replay_writes_the_same(finished, tmp_path):
    out = finished
    live = tensorboard_points(out / "tensorboard")
    want = expected(out / "metrics.jsonl")
    assert live == want
    assert [s for s, _, _ in live["train/loss"]] == [1, 2, 3, 4] and [s for s, _, _ in live["eval/roc_auc"]] == [2, 4]
    assert live["data/train_tokens_mean"][0][0] == 0  # the start record, at its resumed_at

    mirror = track.replay(out, "tensorboard", tmp_path / "replayed")
    assert tensorboard_points(tmp_path / "replayed") == live
    assert mirror.records == 7 and mirror.points == sum(map(len, want.values()))
    with pytest.raises(ValueError, match="holds TensorBoard event files already"):  # the live mirror's directory
        track.replay(out, "tensorboard")


def killed_in_step(n: int, monkeypatch):
    """Kill the run (KeyboardInterrupt) in step `n`, after step n - 1 was logged; undo with monkeypatch.undo."""
    calls, real = Counter(), run.Throughput.add

    def add(self, *args):
        calls["add"] += 1
        if calls["add"] == n:
            raise KeyboardInterrupt(f"simulated kill in step {n}")
        real(self, *args)

    monkeypatch.setattr(run.Throughput, "add", add)


def test_a_resumed_run_shows_each_step_once_whether_or_not_it_was_mirrored_before(tmp_path, base, data, monkeypatch,
                                                                                   capsys):
    # killed in step 4 with its last checkpoint at step 2: step 3 is in the logs and in TensorBoard
    # (at wall times of a run that no longer counts), then resumed, mirrored both times
    out = tmp_path / "rm"
    killed_in_step(4, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(rm_config(base, data, out), CPU)
    monkeypatch.undo()
    orphan = tensorboard_points(out / "tensorboard")["train/loss"][-1]
    assert orphan[0] == 3
    capsys.readouterr()
    train(rm_config(base, data, out, resume=True), CPU)
    # said at the end: data, train 1-2, eval 2 from metrics.jsonl; data, train 3-4, eval 4 live
    assert "tensorboard: 8 records (" in capsys.readouterr().err
    live = tensorboard_points(out / "tensorboard")
    assert live == expected(out / "metrics.jsonl")
    assert [s for s, _, _ in live["train/loss"]] == [1, 2, 3, 4] and orphan not in live["train/loss"]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # the earlier files replaced

    # mirrored only from its resume on: the resumed run first sends what metrics.jsonl holds
    late = tmp_path / "late"
    train(rm_config(base, data, late, stop_after_steps=2, report_to="none"), CPU)
    assert not (late / "tensorboard").exists()
    train(rm_config(base, data, late, resume=True), CPU)
    assert tensorboard_points(late / "tensorboard") == expected(late / "metrics.jsonl")
    assert [s for s, _, _ in tensorboard_points(late / "tensorboard")["train/loss"]] == [1, 2, 3, 4]


def test_the_replay_command(finished, tmp_path, capsys):
    out = finished
    run_dir = tmp_path / "copy"  # a run mirrored by no tracker: its metrics.jsonl alone
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_bytes((out / "metrics.jsonl").read_bytes())
    assert track.main([str(run_dir), "--to", "tensorboard"]) is None
    line = capsys.readouterr().out.strip()
    assert line.startswith("tensorboard: 7 records (") and f"in {run_dir / 'tensorboard'}" in line, line
    assert tensorboard_points(run_dir / "tensorboard") == expected(out / "metrics.jsonl")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl: no such file"):
        track.main([str(tmp_path / "nothing"), "--to", "tensorboard"])


def test_a_ppo_run_is_mirrored_by_rollout(tmp_path, base, prompts, capsys):  # noqa: F811
    out = tmp_path / "ppo"
    cfg = ppo_config(base, prompts, out, rollouts=2, rollout_batch=2, minibatch=2, micro_batch=2, ppo_epochs=1,
                     max_new_tokens=4, max_prompt_tokens=32, report_to="tensorboard")
    ppo_trainer.train(cfg, CPU, reward=LetterReward())
    points = tensorboard_points(out / "tensorboard")
    assert points == expected(out / "metrics.jsonl")
    assert [s for s, _, _ in points["score"]] == [1, 2] and "kl_coef" in points
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tensorboard: 2 records (")]
    assert len(said) == 1 and "text: variant (2)" in said[0] and "diverged (2)" in said[0]  # text left out, counted


@dataclass
class Settings:  # what karma.run.Run reads of a trainer's config
    out_dir: Path
    report_to: str = "tensorboard"
    resume: bool = False
    save_every: int = 10
    keep_checkpoints: int = 1


@pytest.mark.parametrize("rank", [0, 1])
def test_only_the_main_rank_mirrors(rank, tmp_path):
    out = tmp_path / "run"
    with run.Run(Settings(out), Dist(rank, 2, torch.device("cpu")), counter="step", stop_after=None) as r:
        r.resume({}, {"step": 0})
        r.log({"event": "train", "step": 1, "loss": 0.5})
    assert (r.mirror is not None) == (rank == 0)
    assert (out / "tensorboard").is_dir() == (rank == 0)


def test_ppo_evaluations_are_mirrored_under_eval_in_the_order_written(tmp_path):
    run_dir = tmp_path / "ppo"  # ppo.py --eval-every 2: eval.jsonl beside metrics.jsonl
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"time": 100.0 + 2 * r, "rollout": r, "score": r / 10, "variant": "karmaToxic"}) + "\n"
        for r in (1, 2, 3, 4)))
    (run_dir / "eval.jsonl").write_text("".join(
        json.dumps({"time": 100.5 + 2 * r, "rollout": r, "score": r / 20, "samples": ["a reply"]}) + "\n"
        for r in (0, 2, 4)))
    mirror = track.replay(run_dir, "tensorboard")
    points = tensorboard_points(run_dir / "tensorboard")
    assert points["score"] == [(r, pytest.approx(r / 10), 100.0 + 2 * r) for r in (1, 2, 3, 4)]
    assert points["eval/score"] == [(r, pytest.approx(r / 20), 100.5 + 2 * r) for r in (0, 2, 4)]
    assert mirror.records == 7 and track.left_out(mirror.skipped) == "text: variant (4); list: samples (3)"


# --------------------------------------------------------------------------- missing trackers

@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_tracker_that_is_not_installed_is_refused_before_anything_loads(tracker, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(track.PACKAGES, tracker, "karma_no_such_package")
    missing_model = tmp_path / "no-model"  # never opened: the flags are refused first
    argv = rm_argv(missing_model, tmp_path / "no-data", tmp_path / "rm", "--report-to", tracker)
    rc, _, err = cli(train_rm_script, argv, capsys, "train_rm.py")
    assert rc == 2
    assert f"--report-to {tracker}: must be installed first: pip install karma_no_such_package" \
        in error_line(err, "train_rm.py")
    assert not (tmp_path / "rm").exists()
    with pytest.raises(ValueError, match=f"--to {tracker}: must be installed first: pip install"):
        track.main([str(tmp_path), "--to", tracker])


def test_every_trainer_takes_report_to_and_a_resume_may_change_it():
    import karma.dpo_train as dpo_train
    import karma.ppo.trainer as ppo_trainer
    import karma.reward_train as reward_train
    for module in (reward_train, ppo_trainer, dpo_train):
        assert "report_to" in module.RESUMABLE_CHANGES  # it decides where metrics go, not what is trained
    assert ppo_script.parse_args(["--report-to", "wandb"])[0].report_to == "wandb"
    assert dpo_script.parse_args(["--data", "pairs.jsonl", "--report-to", "tensorboard"])[0].report_to == "tensorboard"
    assert train_rm_script.parse_args([])[0].report_to == "none"


# ------------------------------------------------------------------------------------- W&B

BLOCK = 32 * 1024  # the .wandb file is a LevelDB log of wandb_internal_pb2.Record messages


def wandb_run_dirs(out: Path) -> list[Path]:
    """W&B's run folders under `out`/wandb in the order they were started. A folder is named
    offline-run-<YYYYmmdd_HHMMSS>-<run id>, and a resumed run started in the same second as the
    one before gets a "-1" suffix (then "-2", ...), which plain name order puts first."""
    key = lambda d: re.fullmatch(r"(?:offline-)?run-(\d{8}_\d{6})-([a-z0-9]+)(?:-(\d+))?", d.name).group(1, 3)
    return sorted(out.glob("wandb/*run-*_*"), key=lambda d: (key(d)[0], int(key(d)[1] or 0)))


def wandb_history(out: Path) -> list[dict]:
    """The history rows of every W&B run file under `out`/wandb, in order (W&B 0.31 has no Python
    reader of its own: the LevelDB log framing is read here, the records by W&B's protobuf).

    Read after wandb.teardown(), which waits for W&B's service process to exit: run.finish() returns
    before that process has written the run file, which can hold only its 7-byte header then."""
    import wandb
    from wandb.proto import wandb_internal_pb2 as pb
    wandb.teardown()
    rows = []
    for path in [f for run_dir in wandb_run_dirs(out) for f in run_dir.glob("run-*.wandb")]:
        data, pos, chunk = path.read_bytes(), 7, b""  # header: ":W&B", 2-byte magic, version
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a record header is padding
                pos += BLOCK - pos % BLOCK
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            chunk += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # FULL or LAST
                record = pb.Record()
                record.ParseFromString(chunk)
                chunk = b""
                if record.WhichOneof("record_type") == "history":
                    row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                           for item in record.history.item}
                    rows.append({k: v for k, v in row.items() if k == "_step" or not k.startswith("_")})
    return rows


def expected_rows(metrics: Path, resumed_at: int = -1) -> list[dict]:
    """metrics.jsonl as W&B history rows: one per step, the records of a step merged; a run resumed at
    step `resumed_at` does not send its start record ("data", at that step: the W&B run is past it)."""
    rows = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        step, values = track.scalars(record, Counter())
        if record.get("resumed_at") != resumed_at or resumed_at < 0:
            rows.setdefault(step, {"_step": step}).update(values)
    return list(rows.values())


@pytest.fixture
def wandb_offline(monkeypatch):
    import wandb
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_DISABLE_GIT": "true", "WANDB_ERROR_REPORTING": "false"}.items():
        monkeypatch.setenv(name, value)
    yield
    wandb.teardown()


def test_wandb_offline_live_mirror_replay_and_resume(tmp_path, base, data, wandb_offline):
    out = tmp_path / "rm"
    with pytest.MonkeyPatch.context() as kill, pytest.raises(KeyboardInterrupt):  # undone here, not W&B's env
        killed_in_step(4, kill)  # past its checkpoint at step 2
        train(rm_config(base, data, out, report_to="wandb"), CPU)
    state = json.loads((out / "wandb" / "karma.json").read_text())
    assert state["step"] == 3
    first = expected_rows(out / "metrics.jsonl")
    assert wandb_history(out) == first

    train(rm_config(base, data, out, report_to="wandb", resume=True), CPU)
    assert json.loads((out / "wandb" / "karma.json").read_text()) == {"id": state["id"], "step": 4}
    runs = wandb_run_dirs(out)  # one W&B run, resumed: two folders with the same run id
    assert len(runs) == 2 and all(re.search(rf"-{state['id']}(-\d+)?$", r.name) for r in runs)
    rows = wandb_history(out)
    # step 3 is not sent again (W&B keeps its history's steps increasing): the killed run's row stays,
    # the same numbers as the resumed run's but for the timings
    assert [r["_step"] for r in rows] == [0, 1, 2, 3, 4]
    timing = ("train/examples_per_s", "train/tokens_per_s", "train/steps_per_s", "train/peak_mem_gib")
    strip = lambda row: {k: v for k, v in row.items() if k not in timing}
    assert list(map(strip, rows)) == list(map(strip, expected_rows(out / "metrics.jsonl", resumed_at=2)))
    assert rows[:4] == first

    replayed = tmp_path / "replayed"
    track.replay(out, "wandb", replayed)
    assert wandb_history(replayed)[-1] == expected_rows(out / "metrics.jsonl")[-1]
    with pytest.raises(ValueError, match="was mirrored to W&B while it ran"):
        track.replay(out, "wandb")
