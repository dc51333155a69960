"""Make data/eval-sample from the benchmarks' full published files (see README.md here).

    python data/eval-sample/make_sample.py --source /path/to/full/files --out data/eval-sample

--source holds the published files in the layout below (one folder per benchmark). Rows are chosen
by a seeded shuffle, stratified by subject / bias type / label, and written in their original
format (CSV rows and JSON lines copied verbatim, mc_task.json as a JSON list).
"""

import argparse
import csv
import io
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

SEED = 0


def stratified(rows, key, n, rng):
    """n rows, each group's share kept (at least one per group), chosen by a seeded shuffle."""
    groups = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    chosen = []
    for g in sorted(groups):
        take = max(1, round(n * len(groups[g]) / len(rows)))
        chosen += rng.sample(groups[g], min(take, len(groups[g])))
    return sorted(chosen, key=rows.index)


def csv_subset(src: Path, dst: Path, key, n, rng, per_file=False):
    text = src.read_text(encoding="utf-8-sig")
    lines = list(csv.reader(io.StringIO(text, newline="")))
    header, rows = lines[0], lines[1:]
    picked = rng.sample(rows, min(n, len(rows))) if per_file else stratified(rows, lambda r: r[key], n, rng)
    picked = sorted(picked, key=rows.index)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *picked])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = p.parse_args()
    src, out, rng = args.source, args.out, random.Random(SEED)

    # MMLU: 5 test questions per subject (285), the cais/mmlu CSV export layout
    for f in sorted((src / "mmlu/cais_mmlu_export_haechan/test").glob("*_test.csv")):
        csv_subset(f, out / "mmlu/test" / f.name, None, 5, rng, per_file=True)
    # CrowS-Pairs: 300 pairs stratified by bias type (column 4)
    csv_subset(src / "crows_pairs/crows_pairs_anonymized.csv", out / "crows_pairs/crows_pairs_anonymized.csv", 4, 300, rng)
    # ColBERT humor: 300 dev texts stratified by label; MSAD: 300 test texts stratified by label
    csv_subset(src / "colbert_humor/dev.csv", out / "colbert_humor/dev.csv", 1, 300, rng)
    csv_subset(src / "msad/test_df.csv", out / "msad/test_df.csv", 2, 300, rng)
    # TruthfulQA v0 (the revision lm-eval uses): 200 questions, MC file and the matching CSV rows
    mc = json.loads((src / "truthfulqa/v0/mc_task.json").read_text())
    keep = sorted(rng.sample(range(len(mc)), 200))
    (out / "truthfulqa/v0").mkdir(parents=True, exist_ok=True)
    (out / "truthfulqa/v0/mc_task.json").write_text(json.dumps([mc[i] for i in keep], indent=2, ensure_ascii=False) + "\n")
    text = (src / "truthfulqa/v0/TruthfulQA.csv").read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    questions = {mc[i]["question"] for i in keep}
    with open(out / "truthfulqa/v0/TruthfulQA.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([rows[0], *[r for r in rows[1:] if r[2] in questions]])
    # RealToxicityPrompts (DecodingTrust subsets): 150 challenging toxic + 150 non-toxic prompts, lines verbatim
    for name in ("toxic.jsonl", "nontoxic.jsonl"):
        text = (src / "realtoxicityprompts" / name).read_text(encoding="utf-8")
        lines = [line + "\n" for line in text.removesuffix("\n").split("\n")]  # not splitlines: U+2028 may sit in a string
        picked = sorted(rng.sample(range(len(lines)), 150))
        (out / "realtoxicityprompts").mkdir(parents=True, exist_ok=True)
        (out / "realtoxicityprompts" / name).write_text("".join(lines[i] for i in picked))
    # licenses and data statements travel with the data
    for rel in ("truthfulqa/LICENSE", "colbert_humor/LICENSE", "crows_pairs/README.md"):
        shutil.copyfile(src / rel, out / rel)


if __name__ == "__main__":
    main()
