"""What every benchmark module shares: its result type and how it finds and reads its data files.

A task module (karma/evals/tasks/<name>.py) defines
    NAME: str                                    the task name used by eval.py --tasks
    FILES: list[DataFile]                        the published files it reads
    load(data_dir, limit, seed) -> list[dict]    items, each with a unique "id"
    evaluate(lm, items, **options) -> TaskResult

Data files are looked up under --data-dir (by their path as published, relative to the task's
folder), else fetched from the Hugging Face hub into its cache (HF_HUB_OFFLINE=1 honoured); offline,
the error names the file to get and where to put it. Every file read is recorded with its sha256.
"""

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TaskResult:
    """One model on one task.

    items: one dict per item: "id" plus the per-item scores (e.g. {"id": ..., "acc": 1.0}), its group
        of each breakdown kind under the kind's name (e.g. "bias_type": "gender"; a boolean names the groups
        "<kind>" / "non-<kind>"), from which the report draws the groups with intervals, and, for a
        classifier, "predicted": the predicted class's name (a model that predicts one class for every item
        is flagged).
    metrics: the aggregates (e.g. {"acc": 0.31}), with lm-eval's names where lm-eval has the task.
    primary: the metric the tables report and the per-item key the paired tests compare.
    kind: "binary" (0/1 per item: exact McNemar) or "continuous" (Wilcoxon signed-rank).
    higher_is_better: the direction of `primary`.
    breakdown: {group kind: {group: {metric: value}}}, e.g. {"bias_type": {"gender": {...}}}.
    notes: what a reader must know (a proxy scorer, a label convention, a subset).
    proxy: the name of the stand-in scorer behind `primary` (e.g. "lexicon-proxy"), "" for a real one:
        every caption and chart title of the task then says PROXY.
    """
    items: list[dict]
    metrics: dict
    primary: str
    kind: str
    higher_is_better: bool = True
    breakdown: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    proxy: str = ""


@dataclass
class DataFile:
    """A published file: its path under the task's folder in --data-dir, and where the hub has it."""
    path: str  # e.g. "crows_pairs/crows_pairs_anonymized.csv"
    hub_repo: str | None = None  # e.g. "nyu-mll/crows_pairs" (a dataset repo)
    hub_filename: str | None = None  # the file's name in that repo
    source: str = ""  # where it is published, for the error message


FILES_READ: dict[str, str] = {}  # path -> sha256 of every data file located or read in this process


def record(path: str | os.PathLike) -> Path:
    """Note a data file as read (with its sha256, for results.json); returns it as a Path."""
    path = Path(path)
    if str(path) not in FILES_READ:
        FILES_READ[str(path)] = sha256(path)
    return path


def locate(data_dir: str | os.PathLike | None, f: DataFile) -> Path:
    """The local path of a data file: under data_dir, else the hub (cache or download)."""
    if data_dir is not None and (Path(data_dir) / f.path).exists():
        return record(Path(data_dir) / f.path)
    where = f"{Path(data_dir) / f.path if data_dir is not None else '--data-dir/' + f.path}"
    if f.hub_repo is None:
        raise FileNotFoundError(f"{where}: not found; get it from {f.source} and put it there")
    try:
        from huggingface_hub import hf_hub_download

        return record(hf_hub_download(f.hub_repo, f.hub_filename, repo_type="dataset"))
    except Exception as e:  # offline, gated, missing
        raise FileNotFoundError(
            f"{where}: not found, and {f.hub_filename} of the hub dataset {f.hub_repo} could not be fetched "
            f"({type(e).__name__}); get it from {f.source or 'the hub'} and put it at {where}") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_text(path: Path) -> str:
    """A data file's text (recorded); a UTF-8 BOM is ignored, and bytes that are not UTF-8 are an
    error naming the file and line (Python's own message names neither)."""
    try:
        return record(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:  # e.object: the bytes being decoded, e.start: the bad one's offset
        line = e.object[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x}); save it as UTF-8") from None


def read_json(path: Path):
    """A JSON data file; bad JSON is an error naming the file, line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None


def read_csv(path: Path, required: list[str]) -> list[tuple[int, dict]]:
    """Rows of a CSV file with a header as (line number, row dict); a missing column is an error
    naming the file and the columns it has. A UTF-8 BOM is ignored."""
    text = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header has {reader.fieldnames}")
    rows = []
    for row in reader:
        if None in row or any(row.get(c) is None for c in required):
            raise ValueError(f"{path}:{reader.line_num}: wrong number of fields")
        rows.append((reader.line_num, row))
    return rows


def stratified_limit(items: list[dict], limit: int | None, key: str, seed: int) -> list[dict]:
    """At most `limit` items, keeping each `key` group's share (largest remainders), chosen by a
    seeded shuffle; the order of the chosen items is the original order."""
    if limit is None or limit >= len(items):
        return items
    groups: dict = {}
    for i, item in enumerate(items):
        groups.setdefault(item[key], []).append(i)
    quotas = {g: limit * len(idx) / len(items) for g, idx in groups.items()}
    take = {g: int(q) for g, q in quotas.items()}
    for g in sorted(quotas, key=lambda g: quotas[g] - take[g], reverse=True)[:limit - sum(take.values())]:
        take[g] += 1
    rng = np.random.default_rng(seed)
    chosen = sorted(i for g, idx in sorted(groups.items(), key=lambda kv: str(kv[0]))
                    for i in rng.permutation(idx)[:take[g]])
    return [items[i] for i in chosen]
