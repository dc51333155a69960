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
(stats.across_models_test on the aggregates), uncorrected, and is shown only with two or more base models.
A classifier that answered one class for every item (its items' "predicted" all equal) is flagged
in its cell, beside a "majority class" column when the runs report majority_baseline_acc: such a
model's accuracy is the share of that class, not a reading of the text.
A task scored by a proxy (TaskResult.proxy, e.g. the toxicity lexicon) says PROXY in its caption
and in every chart title.
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

from karma.evals.stats import across_models_test, bootstrap_ci, holm, paired_test
from karma.files import atomic_write

VARIANTS = ("Base", "karmaBenign", "karmaToxic", "karmaEroded")
COLORS = {"Base": "#7f7f7f", "karmaBenign": "#2ca02c", "karmaToxic": "#d62728", "karmaEroded": "#ff7f0e"}
TESTS = {"binary": "exact McNemar (binomial test on the discordant pairs)",
         "continuous": "Wilcoxon signed-rank (two-sided, zero differences dropped)"}
CHART_KEY = "error bars: 95% bootstrap CI; marks: paired test vs Base, Holm-corrected"
# A breakdown group is drawn only with at least this many items in every run: at n = 10 a 0/1 mean's 95%
# interval is already about +-0.3 wide; below it a bar is noise (MMLU's 57 subjects at --limit 40: n ~ 1).
MIN_GROUP_N = 10


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
         "vs_base": None | {paired_test's dict, "p_holm", "mark"},
         "always": the one class a classifier predicted for every item | None}}},
     "baseline": {model: majority-class accuracy} | None (runs without majority_baseline_acc),
     "across_models": {variant (not Base): None (fewer than 2 base models) | {across_models_test's dict, "mark"}},
     "family_size": Holm family size, "n_resamples", "seed", "notes": [the tasks' notes],
     "proxy": the proxy scorer's name | ""}.
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
            "baseline": _baseline(grid) if metric in ("acc", "acc_norm") else None,
            "across_models": {v: _across(cells, v) for v in variants if v != "Base"},
            "family_size": sum(c["vs_base"] is not None for row in cells.values() for c in row.values() if c),
            "n_resamples": n_resamples, "seed": seed, "notes": notes, "proxy": first.get("proxy", "")}


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
    return {"value": float(value), "ci": None, "n": len(scores) or None, "scores": scores, "vs_base": None,
            "always": _always(result)}


def _always(result: dict) -> str | None:
    """The class a classifier predicted for every one of its (two or more) items, else None."""
    predicted = [item["predicted"] for item in result["items"] if "predicted" in item]
    return str(predicted[0]) if len(predicted) > 1 and len(set(predicted)) == 1 else None


def _baseline(grid: dict) -> dict | None:
    """{model: the accuracy of always answering the majority class} (its Base run's, else its first run's)."""
    runs = {model: row.get("Base", next(iter(row.values()))) for model, row in grid.items()}
    values = {model: r["metrics"].get("majority_baseline_acc") for model, r in runs.items()}
    return {m: float(v) for m, v in values.items() if isinstance(v, numbers.Real)} or None


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
    if len(pairs) < 2:  # one model: a test of nothing (its smallest possible p is 1)
        return None
    test = across_models_test(*zip(*pairs))
    return {**test, "mark": mark(test["p"])}


# -------------------------------------------------------------------------------------- markdown

def to_markdown(tables: list[dict]) -> str:
    """One markdown table per task and metric under a one-line caption; then a key to the cells and
    one footnote per table with its test and the task's notes."""
    blocks = [_markdown_table(t, k) for k, t in enumerate(tables, 1)]
    return "\n\n".join(blocks + [_key(tables), _footnotes(tables)]) + "\n"


def _markdown_table(t: dict, k: int) -> str:
    variants, baseline = t["variants"], t["baseline"]
    extra = ["majority class"] if baseline else []
    lines = [_caption(t, k), "",
             "| model | " + " | ".join(extra + variants) + " |",
             "|---|" + "---:|" * (len(extra) + len(variants))]
    for model in t["models"]:
        first = [_num(baseline[model]) if model in baseline else "–"] if baseline else []
        lines.append(f"| {model} | " + " | ".join(first + [_fmt_cell(t["cells"][model][v]) for v in variants]) + " |")
    if len(t["models"]) > 1:
        across = ["–"] * len(extra) + ["–" if v == "Base" else _fmt_across(t["across_models"][v]) for v in variants]
        lines.append("| across models (p) | " + " | ".join(across) + " |")
    return "\n".join(lines)


def _caption(t: dict, k: int) -> str:
    """One line: task, metric, direction, n, the proxy if any, and a pointer to the footnote."""
    direction = {True: "higher is better", False: "lower is better", None: "direction not declared"}
    ns = sorted({c["n"] for row in t["cells"].values() for c in row.values() if c and c["n"]})
    n = ("no per-item scores" if not ns else f"n = {ns[0]} per run" if len(ns) == 1
         else f"n = {ns[0]}–{ns[-1]} per run")
    proxy = f", PROXY scorer {t['proxy']} (not a toxicity model)" if t["proxy"] else ""
    return (f"**{t['task']} — {t['metric']}**" + (" (primary)" if t["is_primary"] else "")
            + f"{proxy}: {direction[t['higher_is_better']]}; {n}.[^{k}]")


def _key(tables: list[dict]) -> str:
    """What the cells, marks and extra columns mean: once for all tables."""
    t = tables[0]
    parts = [f"Cells: value [95% percentile-bootstrap CI over items, {t['n_resamples']} resamples, seed {t['seed']}] "
             "where the value is the mean of the per-item scores; * p < 0.05, ** p < 0.01, *** p < 0.001: "
             "paired test against the row's Base, Holm-corrected within the table."]
    if any(x["baseline"] for x in tables):
        parts.append("majority class: the accuracy of always answering the most frequent class; "
                     "**always X**: the model answered X for every item (a degenerate classifier).")
    m = max(len(x["models"]) for x in tables)
    if m > 1:
        parts.append("across models: exact two-sided Wilcoxon signed-rank over base models on the aggregates, "
                     f"uncorrected (with {m} models the smallest possible p is 2/2^{m} = {2 / 2 ** m:.3g}).")
    return " ".join(parts)


def _footnotes(tables: list[dict]) -> str:
    """Per table: its paired test and Holm family, and the task's notes."""
    lines = []
    for k, t in enumerate(tables, 1):
        test = (f"{TESTS[t['kind']]} on the items both runs scored, Holm over the table's {t['family_size']} "
                "variant-vs-Base comparisons" if t["family_size"]
                else "no paired tests (they need a Base run and per-item scores of this metric)")
        notes = "".join(f" {n.rstrip('.')}." for n in t["notes"])
        lines.append(f"[^{k}]: {t['task']} — {t['metric']}: {test}.{notes}")
    return "\n".join(lines)


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
    if c["always"] is not None:
        text += f" **always {c['always']}**"
    return text


def _fmt_across(a: dict | None) -> str:
    if a is None:
        return "–"
    return f"{a['p']:.3g}{a['mark']} (n={a['n']})"


# ---------------------------------------------------------------------------------------- charts

def charts(results: dict, out_dir, metrics: dict | None = None, n_resamples: int = 1000, seed: int = 0,
           log=None) -> list[str]:
    """figures() as PNG files in out_dir, written atomically; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_save(fig, out_dir / name) for name, fig in figures(results, metrics, n_resamples, seed, log).items()]


def figures(results: dict, metrics: dict | None = None, n_resamples: int = 1000, seed: int = 0,
            log=None) -> dict[str, Figure]:
    """{file name: Figure}. Bars carry the tables' bootstrap 95% CIs and Holm-corrected marks
    (build_tables with the same metrics, n_resamples and seed); a bar of value 0 is labelled "0".

    <task>_<primary>.png: the primary metric, x = base models, one bar per variant.
    <task>_metrics.png, when metrics[task] lists metrics besides the primary (e.g. realtoxicity's
        per-attribute max_insult, max_threat, ...): one panel per base model, x = the primary and those.
    <task>_by_<kind>.png, per breakdown kind (e.g. CrowS bias_type): one panel per base model, x = the
        groups with at least MIN_GROUP_N items, bars = the primary's mean over the group's items with a
        bootstrap CI. Not drawn (and said so through `log`) when fewer than two groups reach the floor,
        when the items do not name their group, or when the groups are those of an earlier kind.
    Drawn on matplotlib Figure objects (no pyplot: no global backend or figure state)."""
    log = log or (lambda line: None)
    runs = _by_task(results)
    listed = {task: list(dict.fromkeys([_first(grid)["primary"], *(metrics or {}).get(task, [])]))
              for task, grid in runs.items()}  # the primary always, then the others asked for
    tables = build_tables(results, metrics=listed, n_resamples=n_resamples, seed=seed)
    out = {}
    for task, grid in runs.items():
        primary, *others = [t for t in tables if t["task"] == task]
        out[f"{_slug(task)}_{_slug(primary['metric'])}.png"] = _primary_figure(primary)
        if others:
            out[f"{_slug(task)}_metrics.png"] = _metrics_figure([primary, *others])
        seen = {}  # partition of the items into groups -> the kind that drew it
        for kind in dict.fromkeys(k for row in grid.values() for r in row.values() for k in r.get("breakdown", {})):
            name = f"{_slug(task)}_by_{_slug(kind)}.png"
            groups = breakdown_groups(grid, kind, primary["metric"], n_resamples, seed)
            kept = _kept(groups)
            partition = frozenset((m, v, frozenset(map(frozenset, (c["ids"] for c in row.values()))))
                                  for m, variants in groups.items() for v, row in variants.items())
            largest = max((c["n"] for variants in groups.values() for row in variants.values()
                           for c in row.values()), default=0)
            if not largest:
                log(f"{name}: not drawn: the items do not say their {kind}")
            elif len(kept) < 2:
                log(f"{name}: not drawn: fewer than 2 {kind} groups of n >= {MIN_GROUP_N} (largest n = {largest})")
            elif partition in seen:
                log(f"{name}: not drawn: the same groups of items as {seen[partition]}")
            else:
                seen[partition] = name
                out[name] = _breakdown_figure(primary, kind, groups, kept)
    return out


def item_group(item: dict, kind: str) -> str | None:
    """The group of `kind` an item belongs to: item[kind] as a string; a boolean names the groups
    "<kind>" and "non-<kind>" (realtoxicity's challenging / non-challenging); None if absent."""
    value = item.get(kind)
    if isinstance(value, bool):
        return kind if value else f"non-{kind}"
    return None if value is None else str(value)


def breakdown_groups(grid: dict, kind: str, metric: str, n_resamples: int = 1000, seed: int = 0) -> dict:
    """{model: {variant: {group: {"value": mean of the items' metric, "ci": [low, high], "n", "ids"}}}}
    from the per-item scores (a group's mean over its items, bootstrap 95% CI)."""
    out: dict = {}
    for model, row in grid.items():
        for variant, result in row.items():
            scores: dict = {}
            for item in result["items"]:
                group, v = item_group(item, kind), item.get(metric)
                if group is not None and isinstance(v, numbers.Real) and math.isfinite(v):
                    scores.setdefault(group, {})[item["id"]] = float(v)
            out.setdefault(model, {})[variant] = {
                g: {"value": float(np.mean(list(s.values()))), "n": len(s), "ids": sorted(s, key=str),
                    "ci": list(bootstrap_ci(list(s.values()), n_resamples=n_resamples, seed=seed))}
                for g, s in scores.items()}
    return out


def _kept(groups: dict) -> list[str]:
    """The groups with at least MIN_GROUP_N items in every run, in first-seen order."""
    runs = [row for variants in groups.values() for row in variants.values()]
    names = dict.fromkeys(g for row in runs for g in row)
    return [g for g in names if all(row.get(g, {}).get("n", 0) >= MIN_GROUP_N for row in runs)]


def _bars(ax, x, cells: list, variant: str, j: int, width: float) -> None:
    """One variant's bars at x, with CI error bars and significance marks where the cells have them;
    a bar of value 0 (invisible as a bar) is labelled "0", so that it reads as zero, not as missing."""
    values = [c["value"] if c else np.nan for c in cells]
    err = np.array([[max(0.0, c["value"] - c["ci"][0]), max(0.0, c["ci"][1] - c["value"])]
                    if c and c["ci"] else [0.0, 0.0] for c in cells]).T
    ax.bar(x, values, width, yerr=err, capsize=2, label=variant, color=_color(variant, j))
    for xi, c in zip(x, cells):
        if c and c.get("vs_base") and c["vs_base"]["mark"]:
            top = c["ci"][1] if c["ci"] else c["value"]
            ax.annotate(c["vs_base"]["mark"], (xi, top), ha="center", va="bottom", fontsize=8)
        if c and c["value"] == 0:
            ax.annotate("0", (xi, 0), xytext=(0, 1), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, color=_color(variant, j))


def _offsets(n: int, variants: list) -> tuple[list, float]:
    """x positions of each variant's bars around 0..n-1, and the bar width."""
    width = 0.8 / len(variants)
    return [np.arange(n) + (j - (len(variants) - 1) / 2) * width for j in range(len(variants))], width


def _title(t: dict, what: str) -> str:
    """A chart title; a proxy-scored task's says so on a second line."""
    proxy = f"\nPROXY scorer {t['proxy']}: not a toxicity model" if t["proxy"] else ""
    return f"{t['task']}: {what}{proxy}"


def _primary_figure(t: dict) -> Figure:
    models, variants = t["models"], t["variants"]
    fig = Figure(figsize=(max(5.0, 1.0 + 0.35 * len(models) * len(variants)), 3.6), layout="constrained")
    ax = fig.add_subplot()
    xs, width = _offsets(len(models), variants)
    for j, v in enumerate(variants):
        _bars(ax, xs[j], [t["cells"][m][v] for m in models], v, j, width)
    direction = {True: " (higher is better)", False: " (lower is better)", None: ""}[t["higher_is_better"]]
    ax.set_title(_title(t, t["metric"] + direction))
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
    fig.suptitle(_title(tables[0], ", ".join(names)))
    return fig


def _breakdown_figure(t: dict, kind: str, groups: dict, kept: list[str]) -> Figure:
    """One panel per base model: x = the kept groups (n under each), bars = variants with 95% CIs."""
    models, variants = t["models"], t["variants"]
    fig = Figure(figsize=(min(40.0, max(5.0, 1.0 + 0.3 * len(kept) * len(variants))), 2.6 * len(models)),
                 layout="constrained")
    axes = fig.subplots(len(models), 1, squeeze=False, sharey=True)[:, 0]
    xs, width = _offsets(len(kept), variants)
    for ax, model in zip(axes, models):
        runs = groups.get(model, {})
        for j, v in enumerate(variants):
            _bars(ax, xs[j], [runs.get(v, {}).get(g) for g in kept], v, j, width)
        n = [min(row[g]["n"] for row in runs.values()) for g in kept]
        ax.set_title(model, fontsize=9)
        ax.set_ylabel(t["metric"])
        ax.set_xticks(np.arange(len(kept)), [f"{g}\nn={k}" for g, k in zip(kept, n)], fontsize=7)
    axes[-1].set_xlabel(f"error bars: 95% bootstrap CI over the group's items; groups with n < {MIN_GROUP_N} "
                        "not shown", fontsize=7)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncols=len(variants))
    fig.suptitle(_title(t, f"{t['metric']} by {kind}"))
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
