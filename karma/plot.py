"""Training curves of a run directory as one PNG.

    python -m karma.plot runs/ppo                  # writes runs/ppo/curves.png
    python -m karma.plot runs/rm --out rm.png

The run type comes from RUN_DIR/metrics.jsonl: records with "rollout" are a PPO run (ppo.py),
records with "rewards/margins" a DPO run (dpo.py), other records with "event" (data / train /
eval) a reward-model run (train_rm.py); the reward model's
reliability diagram comes from RUN_DIR/eval.json (its latest held-out evaluation), a PPO run's
held-out evaluations (ppo.py --eval-every) from RUN_DIR/eval.jsonl. A null or
missing value (a skipped step, a rollout without a finite score) is a gap in its curve, never an
error. Drawn on matplotlib Figure objects (no pyplot: no global backend or figure state) and
written atomically, so a reader never sees half a PNG.
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from karma.cli import add_debug_flag, run_main
from karma.files import atomic_write, read_json, read_jsonl
from karma.hacking_thresholds import DISTINCT_2_MIN, LENGTH_CORR_MAX, REPEAT_SHARE_MAX

DPI = 110
MARKERS_UP_TO = 60  # points per curve; more and the curve is drawn as a bare line
DIVERGED_COLOR = "#d62728"
WARNED_COLOR = "#ff7f0e"
BEST_COLOR = "black"


def plot_run(run_dir, out=None) -> Path:
    """Draw run_dir's training curves into `out` (default run_dir/curves.png); returns its path."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    records = read_metrics(path)
    name = run_dir.resolve().name
    if any("rollout" in r for r in records):
        evals = [r for _, r in read_jsonl(run_dir / "eval.jsonl")] if (run_dir / "eval.jsonl").exists() else []
        fig = ppo_figure(records, title=f"{name}: PPO", evals=[r for r in evals if isinstance(r, dict)])
    elif any("rewards/margins" in r for r in records):
        fig = dpo_figure(records, title=f"{name}: DPO")
    elif any(r.get("event") in ("data", "train", "eval") for r in records):
        evaluation = read_json(run_dir / "eval.json") if (run_dir / "eval.json").exists() else None
        fig = rm_figure(records, evaluation, title=f"{name}: reward model")
    else:
        raise ValueError(f'{path}: neither PPO records ("rollout") nor reward-model records ("event")')
    out = Path(out) if out is not None else run_dir / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=DPI))
    return out


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's records (karma.files.read_jsonl: a torn last line is left out); a bad
    line, or no record at all, is an error naming the file."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file (RUN_DIR must be the --out directory of "
                                f"ppo.py or train_rm.py)")
    records = [record for _, record in read_jsonl(path)]
    for n, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {n} is not a JSON object")
    if not records:
        raise ValueError(f"{path}: no records (the run stopped before it logged anything)")
    return records


# ------------------------------------------------------------------------------------------ PPO

def ppo_figure(records: list[dict], title: str, evals: list[dict] = ()) -> Figure:
    """Eight panels over the rollouts; a diverged rollout is a red vertical line on every panel, one
    with a reward-hacking warning an orange one. `evals`: eval.jsonl's held-out evaluations, drawn
    as open circles on the score, KL, length and diversity panels."""
    records = [r for r in records if "rollout" in r]
    x = _series(records, "rollout")
    fig = Figure(figsize=(14, 13), layout="constrained")
    axes = fig.subplots(4, 2, sharex=True).ravel()
    _mark_diverged(axes, x, records)
    _mark_warned(axes, x, records)
    _score_panel(axes[0], x, records, evals)
    _kl_panel(axes[1], x, records, evals)
    _entropy_panel(axes[2], x, records)
    _ppo_loss_panel(axes[3], x, records)
    _clip_panel(axes[4], x, records)
    _length_panel(axes[5], x, records, evals)
    _diversity_panel(axes[6], x, records, evals)
    _length_correlation_panel(axes[7], x, records)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # shared by every panel
    for ax in axes[-2:]:
        ax.set_xlabel("rollout")
    variant = records[-1].get("variant")
    fig.suptitle(f"{title}{f' ({variant})' if variant else ''}, {_count(len(records), 'rollout')}")
    return fig


def _mark_diverged(axes, x: np.ndarray, records: list[dict]) -> None:
    """A red line at each rollout whose update diverged ("diverged" holds the reason, "" if not);
    labelled once, in the first panel's legend."""
    diverged = [xi for xi, r in zip(x, records) if r.get("diverged") and math.isfinite(xi)]
    for i, ax in enumerate(axes):
        for j, xi in enumerate(diverged):
            ax.axvline(xi, color=DIVERGED_COLOR, alpha=0.4, lw=1.5,
                       label="diverged rollout" if i == 0 and j == 0 else None)


def _mark_warned(axes, x: np.ndarray, records: list[dict]) -> None:
    """An orange dotted line at each rollout with a reward-hacking warning ("hacking_warning")."""
    warned = [xi for xi, r in zip(x, records) if r.get("hacking_warning") and math.isfinite(xi)]
    for i, ax in enumerate(axes):
        for j, xi in enumerate(warned):
            ax.axvline(xi, color=WARNED_COLOR, alpha=0.5, lw=1.5, ls=":",
                       label="reward-hacking warning" if i == 0 and j == 0 else None)


def _held_out(ax, evals: list[dict], key: str, se_key: str | None = None, **kw) -> np.ndarray:
    """eval.jsonl's `key` per evaluation as open circles (with +- `se_key` bars); returns the values."""
    y = _series(evals, key)
    if len(evals):
        err = _series(evals, se_key) if se_key else None
        ax.errorbar(_series(evals, "rollout"), y, yerr=err, fmt="o", mfc="none", capsize=3, **kw)
    return y


def _score_panel(ax, x, records, evals=()) -> None:
    score, std = _series(records, "score"), _series(records, "score_std")
    ax.fill_between(x, score - std, score + std, alpha=0.25, label="± std over the rollout's replies")
    _line(ax, x, score, label="mean score")
    held_out = _held_out(ax, evals, "score", "score_se", color="C3", label="held-out prompts (± SE)")
    dropped = int(np.nansum(_series(records, "dropped_nonfinite_scores")))
    ax.set_title("reward-model score" + (f" ({dropped} non-finite scores dropped)" if dropped else ""))
    ax.set_ylabel("score")
    _finish(ax, score, held_out)


def _kl_panel(ax, x, records, evals=()) -> None:
    kl, kl_coef = _series(records, "kl_seq"), _series(records, "kl_coef")
    _line(ax, x, kl, label="KL per sequence (k1)")
    held_out = _held_out(ax, evals, "kl_seq", "kl_seq_se", color="C3", label="held-out prompts (± SE)")
    ax.set_ylabel("KL (nats)")
    twin = ax.twinx()
    _line(twin, x, kl_coef, color="C1", label="kl_coef used in the rollout")
    twin.set_ylabel("kl_coef")
    ax.set_title("KL to the reference policy and its coefficient")
    _finish(ax, kl, kl_coef, held_out, twin=twin)


def _entropy_panel(ax, x, records) -> None:
    entropy = _series(records, "entropy")
    _line(ax, x, entropy, label="entropy")
    ax.set_title("policy entropy per response token")
    ax.set_ylabel("nats")
    _finish(ax, entropy)


def _ppo_loss_panel(ax, x, records) -> None:
    policy, value = _series(records, "policy_loss"), _series(records, "value_loss")
    _line(ax, x, policy, label="policy loss")
    ax.set_ylabel("policy loss")
    twin = ax.twinx()
    _line(twin, x, value, color="C1", label="value loss")
    twin.set_ylabel("value loss")
    ax.set_title("losses (mean over the applied minibatches)")
    _finish(ax, policy, value, twin=twin)


def _clip_panel(ax, x, records) -> None:
    clip, value_clip, approx_kl = (_series(records, k) for k in ("clip_frac", "value_clip_frac", "approx_kl"))
    _line(ax, x, clip, label="policy clip fraction")
    _line(ax, x, value_clip, label="value clip fraction")
    ax.set_ylabel("fraction clipped")
    twin = ax.twinx()
    _line(twin, x, approx_kl, color="C2", label="approx KL (old -> new policy)")
    twin.set_ylabel("approx KL")
    ax.set_title("clipping and update size")
    _finish(ax, clip, value_clip, approx_kl, twin=twin)


def _length_panel(ax, x, records, evals=()) -> None:
    length, eos = _series(records, "response_len"), _series(records, "ended_eos")
    _line(ax, x, length, label="response length")
    held_out = _held_out(ax, evals, "response_len", color="C3", label="held-out prompts")
    ax.set_ylabel("tokens")
    twin = ax.twinx()
    _line(twin, x, eos, color="C1", label="share ending in EOS")
    twin.set_ylim(-0.02, 1.02)
    twin.set_ylabel("share")
    ax.set_title("responses")
    _finish(ax, length, eos, held_out, twin=twin)


def _diversity_panel(ax, x, records, evals=()) -> None:
    """distinct-1, distinct-2 and the share of exact repeats (karma/ppo/signals.py), with the
    collapse thresholds."""
    curves = [_series(records, k) for k in ("distinct_1", "distinct_2", "repeat_share")]
    for i, (y, label) in enumerate(zip(curves, ("distinct-1", "distinct-2", "share of exact repeats"))):
        _line(ax, x, y, color=f"C{i}", label=label)
    held_out = _held_out(ax, evals, "distinct_2", color="C1", label="held-out distinct-2")
    ax.axhline(DISTINCT_2_MIN, color="C1", ls="--", lw=1, label=f"collapse: distinct-2 < {DISTINCT_2_MIN}")
    ax.axhline(REPEAT_SHARE_MAX, color="C2", ls="--", lw=1, label=f"collapse: repeats >= {REPEAT_SHARE_MAX}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share")
    ax.set_title("diversity of the rollout's replies (word n-grams)")
    _finish(ax, *curves, held_out)


def _length_correlation_panel(ax, x, records) -> None:
    corr = _series(records, "score_length_corr")
    _line(ax, x, corr, label="Pearson r(score, length in tokens)")
    for sign in (1, -1):
        ax.axhline(sign * LENGTH_CORR_MAX, color="grey", ls="--", lw=1,
                   label=f"|r| > {LENGTH_CORR_MAX}: length explains the score" if sign > 0 else None)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("r")
    ax.set_title("score against reply length")
    _finish(ax, corr)


# --------------------------------------------------------------------------------- reward model

def rm_figure(records: list[dict], evaluation: dict | None, title: str) -> Figure:
    """Four panels: train loss and learning rate per logged step, held-out metrics per evaluation,
    and the reliability diagram of eval.json (None: no evaluation yet)."""
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    fig = Figure(figsize=(12, 8), layout="constrained")
    (loss_ax, eval_ax), (lr_ax, calibration_ax) = fig.subplots(2, 2)
    for ax in (eval_ax, lr_ax):
        ax.sharex(loss_ax)
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _rm_loss_panel(loss_ax, train)
    _heldout_panel(eval_ax, evals)
    _lr_panel(lr_ax, train)
    _calibration_panel(calibration_ax, evaluation)
    steps = [r["step"] for r in records if _number(r.get("step"))]
    fig.suptitle(f"{title}, {_count(max(steps, default=0), 'step')}")
    return fig


def _rm_loss_panel(ax, train: list[dict]) -> None:
    step, loss = _series(train, "step"), _series(train, "loss")
    _line(ax, step, loss, label="train loss (mean since the last record)")
    skipped = int(np.nanmax(_series(train, "skipped_steps"), initial=0))
    ax.set_title("train loss" + (f" ({skipped} steps skipped: non-finite; gaps)" if skipped else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("binary cross-entropy")
    _finish(ax, loss)


def _heldout_panel(ax, evals: list[dict]) -> None:
    step = _series(evals, "step")
    curves = {name: _series(evals, key) for name, key in
              (("ROC-AUC", "roc_auc"), ("accuracy", "accuracy"), ("F1", "f1"))}
    for name, y in curves.items():
        _line(ax, step, y, label=name)
    # the step the trainer exported as best/: the first highest AUC of an evaluation without NaN scores
    usable = [r for r in evals
              if _number(r.get("roc_auc")) and _number(r.get("step")) and not r.get("nonfinite_scores")]
    best = max(usable, key=lambda r: r["roc_auc"], default=None)
    if best is not None:
        ax.axvline(best["step"], color=BEST_COLOR, ls=":", lw=1)
        ax.plot([best["step"]], [best["roc_auc"]], marker="*", ms=14, color=BEST_COLOR, ls="none",
                label=f"best ROC-AUC {best['roc_auc']:.4f} (step {best['step']})")
    ax.set_title("held-out metrics")
    ax.set_xlabel("step")
    _finish(ax, *curves.values())


def _lr_panel(ax, train: list[dict]) -> None:
    step, lr = _series(train, "step"), _series(train, "lr")
    _line(ax, step, lr, label="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title("learning rate")
    ax.set_xlabel("step")
    _finish(ax, lr)


def _calibration_panel(ax, evaluation: dict | None) -> None:
    """Reliability diagram: per probability bin, the share of positive labels (bar) against the
    mean predicted probability (dot); a calibrated model sits on the diagonal."""
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    bins = [b for b in (evaluation or {}).get("calibration") or []
            if isinstance(b, dict) and all(_number(b.get(k)) for k in ("lo", "hi", "mean_prob", "frac_positive"))]
    lo, hi, mean_p, frac, count = (np.array([b.get(k) or 0 for b in bins], dtype=float)
                                   for k in ("lo", "hi", "mean_prob", "frac_positive", "count"))
    ax.bar(lo, frac, width=hi - lo, align="edge", alpha=0.3, edgecolor="C0", label="share positive per bin")
    _line(ax, mean_p, frac, marker="o", label="at the bin's mean probability")
    for x, n in zip((lo + hi) / 2, count):
        ax.annotate(f"{n:.0f}", (x, 0.01), ha="center", va="bottom", fontsize=6)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="predicted probability", ylabel="share of positive labels")
    if evaluation is None:
        ax.set_title("calibration: no eval.json yet")
    else:
        ece = evaluation.get("ece")
        ax.set_title(f"calibration at step {evaluation.get('step', '?')} "
                     f"(ECE {f'{ece:.4f}' if _number(ece) else 'n/a'}; bar labels: examples)")
    _finish(ax, frac)


# ------------------------------------------------------------------------------------------ DPO

def dpo_figure(records: list[dict], title: str) -> Figure:
    """Four panels over the steps, train (lines) and held-out (dots): loss, implicit rewards of the
    chosen and rejected replies, reward accuracy, policy log-probs."""
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    panels = (("loss", ("loss",), "DPO loss"),
              ("implicit rewards: beta log pi/ref", ("rewards/chosen", "rewards/rejected", "rewards/margins"),
               "reward"),
              ("reward accuracy (chosen above rejected)", ("rewards/accuracies",), "share of pairs"),
              ("policy log-probs of the replies", ("logps/chosen", "logps/rejected"), "log-prob"))
    for ax, (panel_title, keys, ylabel) in zip(axes, panels):
        ys = []
        for i, key in enumerate(keys):
            y = _series(train, key)
            _line(ax, _series(train, "step"), y, color=f"C{i}", label=f"train {key}")
            held_out = _series(evals, key)
            ax.plot(_series(evals, "step"), held_out, "o", color=f"C{i}", mfc="none", label=f"held-out {key}")
            ys += [y, held_out]
        ax.set(title=panel_title, xlabel="step", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax, *ys)
    steps = [r["step"] for r in records if _number(r.get("step"))]
    fig.suptitle(f"{title}, {_count(max(steps, default=0), 'step')}")
    return fig


# ---------------------------------------------------------------------------------------- helpers

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _series(records: list[dict], key: str) -> np.ndarray:
    """records[i][key] as floats; null, missing or non-numeric values become NaN (a gap in a line)."""
    return np.array([r[key] if _number(r.get(key)) else np.nan for r in records], dtype=float)


def _line(ax, x, y, **kw) -> None:
    """A curve, with a dot on each point while there are few (else a lone point between gaps vanishes)."""
    ax.plot(x, y, **{"marker": "." if len(x) <= MARKERS_UP_TO else None, **kw})


def _finish(ax, *ys, twin=None) -> None:
    """One legend for the panel and its twin axis; a note where the panel has no value to show."""
    handles, labels = [], []
    for a in (ax, twin) if twin is not None else (ax,):
        h, lab = a.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    (twin or ax).legend(handles, labels, fontsize=7)
    if not any(np.isfinite(y).any() for y in ys):
        ax.text(0.5, 0.5, "no values logged", transform=ax.transAxes, ha="center", va="center", color="grey")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m karma.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the --out directory of a ppo.py or train_rm.py run")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: RUN_DIR/curves.png)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out))


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m karma.plot"))
