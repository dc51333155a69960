"""The reward-shortcut report's files: report.json, report.md and report.png from shortcuts.py's numbers.

run_rm_report (what `eval.py rm` calls) loads the reward models one at a time, reads the held-out
split, measures them with shortcuts.rm_report, puts the policies' downstream deltas beside them
(shortcuts.downstream_table) and writes the three files. to_markdown and plot read only the report
dict, so a saved report.json renders again without the models.
"""

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from karma.data.examples import TRAINING_KEYS, read_examples, split_files
from karma.evals.shortcuts import (CI_METRICS, CONTENT_PROBES, HEADER_DRAWS, META_PROBES, MIN_GAP_SD, THREAD_KEYS,
                                   downstream_table, rm_report, stream_seed, to_json)
from karma.files import atomic_write, atomic_write_json, read_json
from karma.reward import load_reward_model

RELIANCE_COLUMNS = ["RM", "probe", "input", "n (threads)", "mean abs Δ", "mean Δ", "rel.", "flips", "random",
                    "AUC ref → cf", "AUC Δ"]


# ------------------------------------------------------------------------------------- files

def rm_names(directories: list) -> list[str]:
    """The names the report gives the reward models (which --policies uses): the directory name,
    or parent/name for train_rm's best/ and final/, or the full paths if two would collide."""
    paths = [Path(d) for d in directories]
    names = [f"{p.parent.name}/{p.name}" if p.name in ("best", "final") else p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def run_rm_report(rm_dirs: list, data_dir, out_dir, max_examples: int | None = None, seed: int = 0,
                  eval_results=None, policies: dict | None = None, n_resamples: int = 1000,
                  device=None, dtype=None, log=None, min_gap_sd: float = MIN_GAP_SD,
                  header_draws: int = HEADER_DRAWS) -> dict:
    """Load the RMs, read the held-out split, run rm_report, write report.json / .md / .png.

    RM names: the directory name, or parent/name for train_rm's best/ and final/ exports (the full
    path if two would collide); `policies` uses these names. The held-out examples are read with
    karma.data.examples.read_examples (needs_meta=True: every probe needs meta), keeping the thread
    fields the content probes use (thread_id, parent_id, siblings, score). With max_examples, a
    seeded random subset (in file order), not the first N: the files are ordered by thread, and a
    prefix would cover few subreddits.
    eval_results: eval.py's results.json, as a dict or a path. The RMs are loaded one at a time
    (device: cuda when available; dtype: the checkpoint's). log: callable(str) for progress.
    min_gap_sd, header_draws: rm_report's (the flip threshold; headers averaged for no_header)."""
    paths, names = [Path(d) for d in rm_dirs], rm_names(rm_dirs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaders = {name: (lambda p=p: load_reward_model(p, dtype=dtype, device=device)) for name, p in zip(names, paths)}

    files = split_files(Path(data_dir), "heldout")
    examples, read_report = read_examples(files, needs_meta=True, keys=TRAINING_KEYS + THREAD_KEYS)
    if not examples:
        raise ValueError(f"{data_dir}: no usable held-out examples ({read_report})")
    if max_examples and len(examples) > max_examples:
        rng = np.random.default_rng(stream_seed(seed, "subset"))
        keep = np.sort(rng.choice(len(examples), max_examples, replace=False))
        examples = [examples[i] for i in keep]

    report = rm_report(loaders, examples, seed=seed, n_resamples=n_resamples, log=log, min_gap_sd=min_gap_sd,
                       header_draws=header_draws)
    report["data"] = {"dir": str(data_dir), "files": [str(f) for f in files], "read": read_report,
                      "max_examples": max_examples}
    report["rm_dirs"] = dict(zip(names, map(str, paths)))
    if isinstance(eval_results, (str, Path)):
        eval_results = read_json(eval_results)
    report["downstream"] = to_json(downstream_table(report, eval_results, policies))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    markdown = to_markdown(report)
    atomic_write(out / "report.md", lambda p: Path(p).write_text(markdown))
    plot(report, out / "report.png")
    return report


# ------------------------------------------------------------------------------------ markdown

def to_markdown(report: dict, top_groups: int = 15) -> str:
    """The report as markdown, one section after another (a section without data is left out)."""
    sections = [_title(report),
                _held_out_metrics(report),
                _auc_differences(report),
                _metadata_reliance(report),
                _content_reliance(report),
                _scores_by_group(report, "by_subreddit", "subreddit", top_groups),
                _scores_by_group(report, "by_hour", "UTC hour", top_groups),
                _downstream(report),
                _probes_and_notes(report)]
    return "\n".join(line for section in sections for line in section) + "\n"


def _title(report: dict) -> list[str]:
    threads = f" in {report['n_threads']} threads" if report.get("n_threads") else ""
    return [f"# Reward-shortcut report\n\n{report['n_examples']} held-out examples{threads}, seed {report['seed']}; "
            f"intervals: {_percent(report)}% percentile bootstrap over threads ({report['n_resamples']} resamples)."]


def _held_out_metrics(report: dict) -> list[str]:
    lines = ["\n## Held-out metrics\n", _row(["RM", "format", "accuracy", "F1", "AUC", "ECE"]), _rule(2, 4)]
    return lines + [_row([name, e["format"], *(_ci(e["metrics"][k], e["ci"][k]) for k in CI_METRICS)])
                    for name, e in report["rms"].items()]


def _auc_differences(report: dict) -> list[str]:
    """DeLong's test for every pair of RMs, Holm-corrected, with the paired-bootstrap interval beside it."""
    comparisons = report["comparisons"]
    if not comparisons:
        return []
    lines = ["\n## Paired AUC differences\n",
             f"DeLong's test (fast midrank algorithm, Sun & Xu 2014), Holm-corrected over the "
             f"{len(comparisons)} pair(s); the paired-bootstrap {_percent(report)}% interval beside it.\n",
             _row(["A vs B", "AUC A", "AUC B", "A − B [DeLong CI]", "bootstrap CI", "z", "p", "p (Holm)"]),
             _rule(1, 7)]
    for c in comparisons:
        boot = f"[{_f(c['bootstrap_ci'][0])}, {_f(c['bootstrap_ci'][1])}]" if c.get("bootstrap_ci") else "–"
        p = "–" if c["p"] is None else f"{c['p']:.3g}"
        p_holm = "–" if c.get("p_holm") is None else f"{c['p_holm']:.3g}{c['mark']}"
        lines.append(_row([f"{c['a']} vs {c['b']}", _f(c["auc_a"]), _f(c["auc_b"]), _ci(c["diff"], c["ci"]), boot,
                           _f(c["z"], 2), p, p_holm]))
    return lines


def _reliance_legend(report: dict) -> str:
    return (f"mean abs Δ, mean Δ: mean |score change| and mean change; rel.: mean abs Δ over the mean score gap "
            f"between two examples; flips: share of the clearly ordered pairs (reference gap ≥ "
            f"{report['min_gap_sd']} SD of the scores) whose order reverses: 0 = rankings intact, 1 = all reversed; "
            f"random: what a score re-drawn at random gives ({report['flip_random']}, derived in "
            f"shortcuts.flip_share). [{_percent(report)}% thread-bootstrap intervals]")


def _metadata_reliance(report: dict) -> list[str]:
    lines = ["\n## Metadata reliance\n", "Same (context, reply), header changed. " + _reliance_legend(report) + "\n",
             _row(RELIANCE_COLUMNS), _rule(3, len(RELIANCE_COLUMNS) - 3)]
    for name, e in report["rms"].items():
        lines += [_row([name, probe, e["metadata"][probe]["input"], *_reliance(e["metadata"][probe])])
                  for probe in META_PROBES]
    return lines


def _content_reliance(report: dict) -> list[str]:
    lines = ["\n## Content reliance\n",
             "Same context and header, reply changed; columns as above. karma: share of (reply, sibling) pairs the RM "
             "orders as Reddit scores do (0.5 = blind to the reply).\n",
             _row([*RELIANCE_COLUMNS[:2], *RELIANCE_COLUMNS[3:], "karma"]), _rule(2, len(RELIANCE_COLUMNS) - 2)]
    for name, e in report["rms"].items():
        agreement = e["content"]["sibling"]["karma_agreement"]
        lines.append(_row([name, "sibling", *_reliance(e["content"]["sibling"]),
                           f"{_ci(agreement['share'], agreement.get('ci'))} (n={agreement['n']})"]))
        lines.append(_row([name, "other_thread", *_reliance(e["content"]["other_thread"]), "–"]))
    return lines


def _scores_by_group(report: dict, key: str, title: str, top_groups: int) -> list[str]:
    """Mean score per group and RM beside n and the mean label (hours in order; the largest
    subreddits), then each RM's eta^2 and the labels'."""
    names = list(report["rms"])
    groups = report["rms"][names[0]][key]["groups"]  # n and mean label: the same for every RM
    shown = sorted(groups, key=lambda g: g["group"]) if key == "by_hour" else groups[:top_groups]
    means = {n: {str(g["group"]): g["mean_score"] for g in report["rms"][n][key]["groups"]} for n in names}
    more = f" (the {top_groups} largest of {len(groups)})" if len(groups) > len(shown) else ""
    lines = [f"\n## Mean score by {title}{more}\n", _row([title, "n", "mean label", *names]),
             _rule(1, 2 + len(names))]
    for g in shown:
        lines.append(_row([str(g["group"]), str(g["n"]), _f(g["mean_label"]),
                           *(_f(means[n][str(g["group"])]) for n in names)]))
    eta = [report["rms"][n][key]["eta_squared"] for n in names]
    lines.append(_row(["η² (share of variance between groups)", "", _f(eta[0]["label"]),
                       *(_f(e["score"]) for e in eta)]))
    return lines


def _downstream(report: dict) -> list[str]:
    d = report.get("downstream")
    if not d:
        return []
    lines = ["\n## Reward model vs its policy downstream\n",
             "AUC, reliance (swap_both flips: metadata; other_thread flips: content; "
             f"{report['flip_random']} = re-drawn at random) and each policy's change vs its Base on the primary "
             "metric (marks: Holm-corrected paired test from eval.py).\n",
             _row(["RM", "format", "policy", "AUC", "meta flips", "content flips",
                   *(col + _arrow(d, col) for col in d["columns"])]),
             _rule(3, 3 + len(d["columns"]))]
    for r in d["rows"]:
        deltas = ["–" if x is None else f"{x['delta']:+.3f}{x['mark']}"
                  for x in (r["downstream"][col] for col in d["columns"])]
        lines.append(_row([r["rm"], r["format"], r["policy"], _ci(r["auc"], r["auc_ci"]),
                           _ci(r["meta_flip_share"], r.get("meta_flip_ci")),
                           _ci(r["content_flip_share"], r.get("content_flip_ci")), *deltas]))
    return lines


def _probes_and_notes(report: dict) -> list[str]:
    lines = ["\n## Probes\n"] + [f"- **{k}** ({p['n']} probed, {p['n_skipped']} skipped): {p['definition']}"
                                 for k, p in report["probes"].items()]
    if report["notes"]:
        lines += ["\nNotes:\n"] + [f"- {n}" for n in report["notes"]]
    return lines


def _reliance(r: dict) -> list[str]:
    """One probe's cells: n (threads), |score change|, change, relative change, flips, their random
    reference, AUC reference → counterfactual and its change, with the intervals in r["ci"]."""
    ci = r.get("ci") or {}
    return [f"{r['n']} ({r.get('n_threads', '–')})", _ci(r["mean_abs_change"], ci.get("mean_abs_change")),
            _ci(r["mean_change"], ci.get("mean_change")), _ci(r["relative_change"], ci.get("relative_change")),
            _ci(r["flip_share"], ci.get("flip_share")), _f(r.get("flip_random"), 2),
            f"{_f(r['auc_reference'])} → {_ci(r['auc'], ci.get('auc'))}",
            _ci(r.get("auc_change"), ci.get("auc_change"))]


def _arrow(downstream: dict, column: str) -> str:
    """ ↑ / ↓: the column's direction (higher / lower is better), from its first filled cell."""
    cells = [r["downstream"][column] for r in downstream["rows"] if r["downstream"][column]]
    return {True: " ↑", False: " ↓", None: ""}[cells[0]["higher_is_better"] if cells else None]


def _percent(report: dict) -> int:
    return round(100 * report["confidence"])


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(point, ci) -> str:
    return _f(point) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _rule(n_text: int, n_numbers: int) -> str:
    return "|" + "---|" * n_text + "---:|" * n_numbers


# ---------------------------------------------------------------------------------------- plot

def plot(report: dict, path, top_groups: int = 12) -> str:
    """report.png: |score change| and ranking flips per probe and RM; mean score by subreddit and by
    UTC hour (lines/bars per RM, black marks: the mean label). Written atomically."""
    fig = Figure(figsize=(12, 8), layout="constrained")
    (ax_change, ax_flip), (ax_sub, ax_hour) = fig.subplots(2, 2)
    _plot_reliance(ax_change, ax_flip, report)
    _plot_by_subreddit(ax_sub, report, top_groups)
    _plot_by_hour(ax_hour, report)
    fig.legend(*ax_change.get_legend_handles_labels(), loc="outside lower center", ncols=max(1, len(report["rms"])),
               fontsize=8)
    fig.suptitle(f"Reward-shortcut report ({report['n_examples']} held-out examples)")
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return str(path)


def _plot_reliance(ax_change, ax_flip, report: dict) -> None:
    """Bars per probe (metadata | content), one colour per RM, with their thread-bootstrap intervals:
    mean |score change| and flip share (the dashed line: a score re-drawn at random)."""
    probes = [*META_PROBES, *CONTENT_PROBES]
    x = np.arange(len(probes))
    for j, (name, e) in enumerate(report["rms"].items()):
        rows = [(e["metadata"] if p in META_PROBES else e["content"])[p] for p in probes]
        offset, width = _dodge(x, j, len(report["rms"]))
        for ax, key in ((ax_change, "mean_abs_change"), (ax_flip, "flip_share")):
            bars = ax.bar(offset, [_nan(r[key]) for r in rows], width, yerr=_yerr(rows, key), color=f"C{j}",
                          error_kw={"lw": 0.8, "capsize": 2}, label=f"{name} ({e['format']})")
            ax.bar_label(bars, fmt="%.2f", fontsize=6)  # a zero bar is a finding: show its value
    for ax, title in ((ax_change, "mean |score change| under each probe"),
                      (ax_flip, f"share of clearly ordered pairs flipped (gap ≥ {report['min_gap_sd']} SD)")):
        ax.set_xticks(x, probes, rotation=20, ha="right", fontsize=8)
        ax.axvline(len(META_PROBES) - 0.5, color="grey", lw=0.8)
        ax.set_title(title, fontsize=10)
    ax_flip.axhline(report["flip_random"], color="grey", ls="--", lw=0.8)
    ax_flip.text(-0.45, report["flip_random"], "re-drawn at random", ha="left", va="bottom", fontsize=7, color="grey")
    ax_flip.set_ylim(0, max(1.05, ax_flip.get_ylim()[1]))
    ax_change.set_xlabel("metadata probes | content probes", fontsize=8)


def _yerr(rows: list[dict], key: str) -> np.ndarray:
    """[2, len(rows)] distances from each value down and up to its interval ends (0 without one)."""
    err = np.zeros((2, len(rows)))
    for k, r in enumerate(rows):
        ci = (r.get("ci") or {}).get(key)
        if ci and r[key] is not None:
            err[:, k] = max(r[key] - ci[0], 0.0), max(ci[1] - r[key], 0.0)
    return err


def _plot_by_subreddit(ax, report: dict, top_groups: int) -> None:
    """Mean score of the largest subreddits, a bar per RM, the mean label as a black mark."""
    names = list(report["rms"])
    groups = report["rms"][names[0]]["by_subreddit"]["groups"][:top_groups]
    xs = np.arange(len(groups))
    for j, name in enumerate(names):
        means = {str(g["group"]): g["mean_score"] for g in report["rms"][name]["by_subreddit"]["groups"]}
        offset, width = _dodge(xs, j, len(names))
        ax.bar(offset, [means[str(g["group"])] for g in groups], width, color=f"C{j}")
    ax.scatter(xs, [g["mean_label"] for g in groups], color="black", marker="_", s=200, zorder=3, label="mean label")
    ax.set_xticks(xs, [f"{g['group']}\n(n={g['n']})" for g in groups], rotation=30, ha="right", fontsize=7)
    ax.set_title("mean score by subreddit (largest groups)", fontsize=10)
    ax.legend(fontsize=7)


def _plot_by_hour(ax, report: dict) -> None:
    """Mean score per UTC hour, a line per RM, the mean label as black marks."""
    by_hour = [sorted(e["by_hour"]["groups"], key=lambda g: g["group"]) for e in report["rms"].values()]
    for j, hours in enumerate(by_hour):
        ax.plot([g["group"] for g in hours], [g["mean_score"] for g in hours], marker="o", ms=3, color=f"C{j}")
    ax.scatter([g["group"] for g in by_hour[0]], [g["mean_label"] for g in by_hour[0]], color="black", marker="_",
               s=80, zorder=3)
    ax.set_xlim(-0.5, 23.5)
    ax.set_xlabel("UTC hour of created_utc", fontsize=8)
    ax.set_title("mean score by hour (black: mean label)", fontsize=10)


def _dodge(x: np.ndarray, j: int, n: int) -> tuple[np.ndarray, float]:
    """Positions and width of bar series j of n, side by side within 0.8 around each x."""
    width = 0.8 / n
    return x + (j - (n - 1) / 2) * width, width


def _nan(x):
    return np.nan if x is None else x
