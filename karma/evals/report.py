"""The paper's tables and charts from eval results: rows = base models, columns = variants.

Input everywhere: results = {model label: {task: TaskResult as a dict (dataclasses.asdict)}}.
A label is "<base model>/<variant>", split at its LAST "/" (so "EleutherAI/pythia-1b/karmaToxic" is
base "EleutherAI/pythia-1b"); a label without "/" is a base model itself, variant "Base".
Columns: Base, karmaBenign, karmaToxic, karmaEroded, then any other variant alphabetically; rows:
base models in the order results first lists them.

A cell is the task's aggregate, with a 95% percentile-bootstrap interval when that aggregate is the
mean of the per-item scores, and a mark for the paired test against its row's Base on the items both
runs scored (stats.paired_test). The family for the Holm correction is one table: all of its
variant-vs-Base comparisons. The across-models row tests each variant column over the base models
(stats.across_models_test on the aggregates), uncorrected.
Everything build_tables returns is plain JSON (dicts, lists, str, float, int, None).
"""

import math
import numbers
import re
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from karma.checkpoint import atomic_write
from karma.evals.stats import across_models_test, bootstrap_ci, holm, paired_test

VARIANTS = ("Base", "karmaBenign", "karmaToxic", "karmaEroded")
COLORS = {"Base": "#7f7f7f", "karmaBenign": "#2ca02c", "karmaToxic": "#d62728", "karmaEroded": "#ff7f0e"}
TESTS = {"binary": "exact McNemar (binomial test on the discordant pairs)",
         "continuous": "Wilcoxon signed-rank (two-sided, zero differences dropped)"}
CHART_KEY = "error bars: 95% bootstrap CI; marks: paired test vs Base, Holm-corrected"


def parse_label(label: str) -> tuple[str, str]:
    """'pythia-1b/karmaToxic' -> ('pythia-1b', 'karmaToxic'); 'pythia-1b' -> ('pythia-1b', 'Base')."""
    base, sep, variant = label.rpartition("/")
    return (base, variant) if sep else (label, "Base")


def variant_order(variants) -> list[str]:
    """The paper's four variants first, in its order, then any others alphabetically."""
    known = [v for v in VARIANTS if v in variants]
    return known + sorted(set(variants) - set(VARIANTS))


def mark(p: float | None) -> str:
    """* p < 0.05, ** p < 0.01, *** p < 0.001; '' otherwise or without a test."""
    if p is None:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


# ---------------------------------------------------------------------------------------- tables

def build_tables(results: dict, metrics: dict | None = None, n_resamples: int = 1000,
                 seed: int = 0) -> list[dict]:
    """One table per task and metric; `metrics` = {task: [metric, ...]}, default [its primary].

    Returns a list (tasks in first-seen order, then the metrics as listed) of
    {"task", "metric", "is_primary", "kind", "higher_is_better" (None unless primary),
     "models": [base model, ...], "variants": [variant, ...],
     "cells": {model: {variant: None (no such run) | {
         "value": aggregate, "ci": [low, high] | None, "n": per-item scores | None,
         "vs_base": None | {paired_test's dict, "p_holm", "mark"}}}},
     "across_models": {variant (not Base): None | {across_models_test's dict, "mark"}},
     "family_size": Holm family size, "n_resamples", "seed", "notes": [the tasks' notes]}.
    """
    runs = _by_task(results)
    metrics = metrics or {}
    tables = []
    for task, grid in runs.items():
        for metric in metrics.get(task, [_first(grid)["primary"]]):
            tables.append(_table(task, metric, grid, n_resamples, seed))
    return tables


def _by_task(results: dict) -> dict:
    """{task: {base model: {variant: result dict}}}, in first-seen order."""
    runs: dict = {}
    for label, tasks in results.items():
        base, variant = parse_label(label)
        for task, result in tasks.items():
            runs.setdefault(task, {}).setdefault(base, {})[variant] = asdict(result) if is_dataclass(result) else result
    return runs


def _first(grid: dict) -> dict:
    """The first run of a task: its primary, kind and direction stand for the task's."""
    return next(r for row in grid.values() for r in row.values())


def _table(task, metric, grid, n_resamples, seed) -> dict:
    variants = variant_order({v for row in grid.values() for v in row})
    cells = {model: {v: _cell(row[v], metric, task, model, v) if v in row else None for v in variants}
             for model, row in grid.items()}
    first = _first(grid)
    primary = first["primary"]
    kind = first["kind"] if metric == primary else _infer_kind(cells)
    _paired_tests(cells, kind)
    for row in cells.values():
        for c in row.values():
            if c is not None:
                c["ci"] = _ci(c, n_resamples, seed)
                del c["scores"]
    notes = list(dict.fromkeys(n for row in grid.values() for r in row.values() for n in r.get("notes", [])))
    return {"task": task, "metric": metric, "is_primary": metric == primary, "kind": kind,
            "higher_is_better": first["higher_is_better"] if metric == primary else None,
            "models": list(grid), "variants": variants, "cells": cells,
            "across_models": {v: _across(cells, v) for v in variants if v != "Base"},
            "family_size": sum(c["vs_base"] is not None for row in cells.values() for c in row.values() if c),
            "n_resamples": n_resamples, "seed": seed, "notes": notes}


def _cell(result: dict, metric: str, task: str, model: str, variant: str) -> dict | None:
    """The aggregate and the per-item scores {id: value} (finite numbers only) of one run."""
    scores = {}
    for item in result["items"]:
        v = item.get(metric)
        if isinstance(v, numbers.Real) and math.isfinite(v):
            if item["id"] in scores:
                raise ValueError(f"{model}/{variant} {task}: item id {item['id']!r} appears twice")
            scores[item["id"]] = float(v)
    value = result["metrics"].get(metric)
    if not isinstance(value, numbers.Real):
        if not scores:
            return None
        value = float(np.mean(list(scores.values())))
    return {"value": float(value), "ci": None, "n": len(scores) or None, "scores": scores, "vs_base": None}


def _infer_kind(cells) -> str:
    """A metric other than the primary is "binary" when every per-item score is 0 or 1."""
    values = [s for row in cells.values() for c in row.values() if c for s in c["scores"].values()]
    return "binary" if values and set(values) <= {0.0, 1.0} else "continuous"


def _paired_tests(cells: dict, kind: str) -> None:
    """Each variant vs its row's Base on the common item ids, then Holm over the whole table."""
    tested = []
    for row in cells.values():
        base = row.get("Base")
        for variant, c in row.items():
            if variant == "Base" or c is None or base is None:
                continue
            ids = [i for i in base["scores"] if i in c["scores"]]
            if ids:
                c["vs_base"] = paired_test([base["scores"][i] for i in ids], [c["scores"][i] for i in ids], kind)
                tested.append(c["vs_base"])
    for test, p in zip(tested, holm([t["p"] for t in tested])):
        test["p_holm"] = p
        test["mark"] = mark(p)


def _ci(cell: dict, n_resamples: int, seed: int) -> list[float] | None:
    """The bootstrap interval, only when the aggregate is the mean of the per-item scores."""
    scores = list(cell["scores"].values())
    if not scores or not math.isclose(np.mean(scores), cell["value"], rel_tol=1e-6, abs_tol=1e-9):
        return None
    return list(bootstrap_ci(scores, n_resamples=n_resamples, seed=seed))


def _across(cells: dict, variant: str) -> dict | None:
    pairs = [(row["Base"]["value"], row[variant]["value"]) for row in cells.values()
             if row.get("Base") and row.get(variant)
             and math.isfinite(row["Base"]["value"]) and math.isfinite(row[variant]["value"])]
    if not pairs:
        return None
    test = across_models_test(*zip(*pairs))
    return {**test, "mark": mark(test["p"])}


# -------------------------------------------------------------------------------------- markdown

def to_markdown(tables: list[dict]) -> str:
    """One markdown table per task and metric, each after a caption paragraph."""
    return "\n\n".join(_markdown_table(t) for t in tables) + "\n"


def _markdown_table(t: dict) -> str:
    variants = t["variants"]
    lines = [_caption(t), "",
             "| model | " + " | ".join(variants) + " |",
             "|---|" + "---:|" * len(variants)]
    for model in t["models"]:
        lines.append(f"| {model} | " + " | ".join(_fmt_cell(t["cells"][model][v]) for v in variants) + " |")
    across = ["–" if v == "Base" else _fmt_across(t["across_models"][v]) for v in variants]
    lines.append("| across models (p) | " + " | ".join(across) + " |")
    return "\n".join(lines)


def _caption(t: dict) -> str:
    direction = {True: "higher is better", False: "lower is better", None: "direction not declared"}
    ns = sorted({c["n"] for row in t["cells"].values() for c in row.values() if c and c["n"]})
    n = ("no per-item scores" if not ns else f"n = {ns[0]} items per run" if len(ns) == 1
         else f"n = {ns[0]}–{ns[-1]} items per run")
    parts = [f"**{t['task']} — {t['metric']}**" + (" (primary)" if t["is_primary"] else "")
             + f": {direction[t['higher_is_better']]}; {n}."]
    if any(c and c["ci"] for row in t["cells"].values() for c in row.values()):
        parts.append(f"Cells: value [95% percentile-bootstrap CI over items, {t['n_resamples']} resamples, "
                     f"seed {t['seed']}] where the value is the mean of the per-item scores.")
    if t["family_size"]:
        parts.append(f"Marks vs the row's Base: {TESTS[t['kind']]} on the items both runs scored, "
                     f"Holm-corrected over the {t['family_size']} variant-vs-Base comparisons of this table; "
                     "* p < 0.05, ** p < 0.01, *** p < 0.001.")
    else:
        parts.append("No paired tests (they need a Base run and per-item scores of this metric).")
    m = len(t["models"])
    parts.append("Across models: exact two-sided Wilcoxon signed-rank over base models on the aggregates, "
                 f"uncorrected (with {m} models the smallest possible p is 2/2^{m} = {2 / 2 ** m:.3g}).")
    if t["notes"]:
        parts.append("Notes: " + "; ".join(t["notes"]) + ".")
    return " ".join(parts)


def _num(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def _fmt_cell(c: dict | None) -> str:
    if c is None:
        return "–"
    text = _num(c["value"])
    if c["ci"]:
        text += f" [{_num(c['ci'][0])}, {_num(c['ci'][1])}]"
    if c["vs_base"]:
        text += c["vs_base"]["mark"]
    return text


def _fmt_across(a: dict | None) -> str:
    if a is None:
        return "–"
    return f"{a['p']:.3g}{a['mark']} (n={a['n']})"


# ---------------------------------------------------------------------------------------- charts

def charts(results: dict, out_dir, metrics: dict | None = None, n_resamples: int = 1000,
           seed: int = 0) -> list[str]:
    """PNG charts in out_dir; returns their paths. Bars carry the tables' bootstrap 95% CIs and
    Holm-corrected marks (build_tables with the same metrics, n_resamples and seed).

    <task>_<primary>.png: the primary metric, x = base models, one bar per variant.
    <task>_metrics.png, when metrics[task] lists metrics besides the primary (e.g. realtoxicity's
        per-attribute max_insult, max_threat, ...): one panel per base model, x = the primary and those.
    <task>_by_<kind>.png, per breakdown kind (e.g. CrowS bias_type): one panel per base model,
        x = the groups (aggregates only: no CIs).
    Drawn on matplotlib Figure objects (no pyplot: no global backend or figure state) and written
    atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = _by_task(results)
    listed = {task: list(dict.fromkeys([_first(grid)["primary"], *(metrics or {}).get(task, [])]))
              for task, grid in runs.items()}  # the primary always, then the others asked for
    tables = build_tables(results, metrics=listed, n_resamples=n_resamples, seed=seed)
    paths = []
    for task, grid in runs.items():
        primary, *others = [t for t in tables if t["task"] == task]
        paths.append(_save(_primary_figure(primary), out_dir / f"{_slug(task)}_{_slug(primary['metric'])}.png"))
        if others:
            paths.append(_save(_metrics_figure([primary, *others]), out_dir / f"{_slug(task)}_metrics.png"))
        kinds = dict.fromkeys(k for row in grid.values() for r in row.values() for k in r.get("breakdown", {}))
        for kind in kinds:
            paths.append(_save(_breakdown_figure(task, kind, grid), out_dir / f"{_slug(task)}_by_{_slug(kind)}.png"))
    return paths


def _bars(ax, x, cells: list, variant: str, j: int, width: float) -> None:
    """One variant's bars at x, with CI error bars and significance marks where the cells have them."""
    values = [c["value"] if c else np.nan for c in cells]
    err = np.array([[max(0.0, c["value"] - c["ci"][0]), max(0.0, c["ci"][1] - c["value"])]
                    if c and c["ci"] else [0.0, 0.0] for c in cells]).T
    ax.bar(x, values, width, yerr=err, capsize=2, label=variant, color=_color(variant, j))
    for xi, c in zip(x, cells):
        if c and c["vs_base"] and c["vs_base"]["mark"]:
            top = c["ci"][1] if c["ci"] else c["value"]
            ax.annotate(c["vs_base"]["mark"], (xi, top), ha="center", va="bottom", fontsize=8)


def _offsets(n: int, variants: list) -> tuple[list, float]:
    """x positions of each variant's bars around 0..n-1, and the bar width."""
    width = 0.8 / len(variants)
    return [np.arange(n) + (j - (len(variants) - 1) / 2) * width for j in range(len(variants))], width


def _primary_figure(t: dict) -> Figure:
    models, variants = t["models"], t["variants"]
    fig = Figure(figsize=(max(5.0, 1.0 + 0.35 * len(models) * len(variants)), 3.6), layout="constrained")
    ax = fig.add_subplot()
    xs, width = _offsets(len(models), variants)
    for j, v in enumerate(variants):
        _bars(ax, xs[j], [t["cells"][m][v] for m in models], v, j, width)
    direction = {True: " (higher is better)", False: " (lower is better)", None: ""}[t["higher_is_better"]]
    ax.set_title(f"{t['task']}: {t['metric']}{direction}")
    ax.set_xticks(np.arange(len(models)), models, rotation=15, ha="right")
    ax.set_ylabel(t["metric"])
    ax.set_xlabel(CHART_KEY, fontsize=7)
    fig.legend(loc="outside lower center", fontsize=7, ncols=len(variants))
    return fig


def _metrics_figure(tables: list[dict]) -> Figure:
    """One panel per base model: x = the task's listed metrics, bars = variants."""
    models, variants = tables[0]["models"], tables[0]["variants"]
    names = [t["metric"] for t in tables]
    fig = Figure(figsize=(max(5.0, 1.0 + 0.35 * len(names) * len(variants)), 2.6 * len(models)),
                 layout="constrained")
    axes = fig.subplots(len(models), 1, squeeze=False, sharey=True)[:, 0]
    xs, width = _offsets(len(names), variants)
    for ax, model in zip(axes, models):
        for j, v in enumerate(variants):
            _bars(ax, xs[j], [t["cells"][model][v] for t in tables], v, j, width)
        ax.set_title(model, fontsize=9)
        ax.set_xticks(np.arange(len(names)), names, rotation=15, ha="right", fontsize=7)
    axes[-1].set_xlabel(CHART_KEY, fontsize=7)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncols=len(variants))
    fig.suptitle(f"{tables[0]['task']}: " + ", ".join(names))
    return fig


def _breakdown_figure(task: str, kind: str, grid: dict) -> Figure:
    """One panel per base model: x = the groups, bars = variants; the metric is the task's primary
    where the groups report it, else the first metric they report."""
    runs = [r for row in grid.values() for r in row.values() if kind in r.get("breakdown", {})]
    groups = list(dict.fromkeys(g for r in runs for g in r["breakdown"][kind]))
    reported = dict.fromkeys(m for r in runs for g in r["breakdown"][kind].values() for m in g)
    metric = runs[0]["primary"] if runs[0]["primary"] in reported else next(iter(reported))
    variants = variant_order({v for row in grid.values() for v in row})
    models = list(grid)
    fig = Figure(figsize=(min(40.0, max(5.0, 1.0 + 0.3 * len(groups) * len(variants))), 2.6 * len(models)),
                 layout="constrained")
    axes = fig.subplots(len(models), 1, squeeze=False, sharey=True)[:, 0]
    xs, width = _offsets(len(groups), variants)
    for ax, model in zip(axes, models):
        for j, v in enumerate(variants):
            table = grid[model].get(v, {}).get("breakdown", {}).get(kind, {})
            values = [table.get(g, {}).get(metric, np.nan) for g in groups]
            ax.bar(xs[j], values, width, label=v, color=_color(v, j))
        ax.set_title(model, fontsize=9)
        ax.set_ylabel(metric)
        ax.set_xticks(np.arange(len(groups)), [str(g) for g in groups], rotation=30, ha="right", fontsize=7)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncols=len(variants))
    fig.suptitle(f"{task}: {metric} by {kind}")
    return fig


def _color(variant: str, j: int) -> str:
    return COLORS.get(variant, f"C{j}")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig: Figure, path: Path) -> str:
    with writing(path):
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    return str(path)


@contextmanager
def writing(path):
    """Name `path` in an OSError raised while writing it: a full disk otherwise says only
    "[Errno 28] No space left on device", about a temporary file."""
    try:
        yield
    except OSError as e:
        if str(path) in str(e):
            raise
        named = OSError(f"{path}: could not write it ({e})")
        named.errno = e.errno
        raise named from e
