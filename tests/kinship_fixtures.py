"""SYNTHETIC UltraFeedback-shaped rows for the kinship tests and for measuring pair statistics.

Nothing here comes from UltraFeedback: instructions and responses are made-up strings. Only the
row layout imitates openbmb/UltraFeedback (its dataset card): {"source", "instruction", "models",
"correct_answers", "incorrect_answers", "completions": [{"model", "principle",
"custom_system_prompt", "response", "annotations": {"instruction_following": {"Rating",
"Rationale"}, "honesty": {...}, "truthfulness": {"Type", "Rationale", "Rating", "Rationale For
Rating"}, "helpfulness": {...}}, "critique", "overall_score", "fine-grained_score"}]}, Ratings
being the strings "1".."5" or "N/A".

    python tests/kinship_fixtures.py OUT_DIR --prompts 2000 --seed 0
writes OUT_DIR/ultrafeedback.jsonl (4 completions per prompt from models drawn uniformly from the
17 of the ZEBRA authors' benchmark table, as UltraFeedback samples 4 of its 17 models) and
OUT_DIR/benchmark.csv (that table), ready for `python data_prep.py kinship`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZEBRA_BENCHMARK = HERE / "data" / "kinship" / "zebra_benchmark.csv"
SOURCES = ("evol_instruct", "false_qa", "flan", "sharegpt", "truthful_qa", "ultrachat")
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")


def completion(model: str, response: str | None = None, overall_score=None, ratings=None, **extra) -> dict:
    """One completion; `ratings` = {aspect: "1".."5" or "N/A"} (default: none, i.e. no annotations)."""
    annotations = {}
    for aspect, r in (ratings or {}).items():
        annotations[aspect] = ({"Rating": r, "Rationale": "..."} if aspect in ("instruction_following", "honesty")
                               else {"Type": ["0"], "Rationale": "...", "Rating": r, "Rationale For Rating": "..."})
    numeric = [int(r) for r in (ratings or {}).values() if r != "N/A"]
    c = {"model": model, "principle": "helpfulness", "custom_system_prompt": "", "annotations": annotations,
         "critique": "...", "response": f"answer by {model}" if response is None else response,
         "overall_score": overall_score, "fine-grained_score": sum(numeric) / len(numeric) if numeric else None}
    c.update(extra)
    return c


def row(instruction: str, completions: list, source: str = "evol_instruct", models: list | None = None) -> dict:
    """One UltraFeedback row; `models` defaults to the completions' models in their order."""
    return {"source": source, "instruction": instruction,
            "models": [c.get("model") for c in completions if isinstance(c, dict)] if models is None else models,
            "correct_answers": [], "incorrect_answers": [], "completions": completions}


def write_jsonl(path: Path, rows, raw_lines=()) -> Path:
    """Rows as JSONL, then any `raw_lines` (strings written as they are, e.g. broken JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


def write_parquet(path: Path, rows) -> Path:
    """Rows as parquet (needs pyarrow), nested like the hub's conversion."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path)
    return Path(path)


def write_scores_csv(path: Path, table: dict[str, dict[str, object]], benchmarks: list[str]) -> Path:
    """{model: {benchmark: value}} as a scores CSV; a value missing from the dict is written blank."""
    lines = ["model," + ",".join(benchmarks)]
    lines += [m + "," + ",".join("" if scores.get(b) is None else str(scores[b]) for b in benchmarks)
              for m, scores in table.items()]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def zebra_mb_sup() -> dict[str, float]:
    """MB-SUP of the 16 scored models of the ZEBRA table, computed here independently of
    karma.data.behaviour: % dropped, min-max per column, mean per model (no model has partial gaps)."""
    lines = ZEBRA_BENCHMARK.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    scored = [r for r in rows if all(x for x in r[1:])]
    cols = list(zip(*[[float(x.rstrip("%")) for x in r[1:]] for r in scored]))
    norm = [[(x - min(c)) / (max(c) - min(c)) for x in c] for c in cols]
    return {r[0]: sum(col[i] for col in norm) / len(norm) for i, r in enumerate(scored)}


def synthetic_ultrafeedback(n_prompts: int, seed: int = 0, per_prompt: int = 4) -> list[dict]:
    """n_prompts rows, each with `per_prompt` distinct models drawn uniformly from the 17 models of
    the ZEBRA table (ultralm-65b included). Ratings are SYNTHETIC but follow MB-SUP, like GPT-4's
    ratings broadly follow model strength: overall_score = clip(round(3 + 6 * MB-SUP + N(0, 1.5)),
    1, 10); aspect Ratings = clip(round(1 + 4 * MB-SUP + N(0, 0.8)), 1, 5), "N/A" 5% of the time
    for honesty and truthfulness. ultralm-65b (no scores) gets MB-SUP 0.4 for this purpose."""
    rng = random.Random(seed)
    sup = zebra_mb_sup()
    models = [line.split(",")[0] for line in ZEBRA_BENCHMARK.read_text().splitlines()[1:]]
    out = []
    for i in range(n_prompts):
        picked = rng.sample(models, per_prompt)
        comps = []
        for m in picked:
            s = sup.get(m, 0.4)
            ratings = {a: ("N/A" if a in ("honesty", "truthfulness") and rng.random() < 0.05
                           else str(min(5, max(1, round(1 + 4 * s + rng.gauss(0, 0.8)))))) for a in ASPECTS}
            score = float(min(10, max(1, round(3 + 6 * s + rng.gauss(0, 1.5)))))
            comps.append(completion(m, f"synthetic answer {i} by {m}", score, ratings))
        out.append(row(f"synthetic instruction {i}: explain item {rng.randrange(10**9)}", comps,
                       source=rng.choice(SOURCES)))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--prompts", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "ultrafeedback.jsonl", synthetic_ultrafeedback(args.prompts, args.seed))
    shutil.copyfile(ZEBRA_BENCHMARK, args.out / "benchmark.csv")
    print(f"wrote {args.prompts} SYNTHETIC rows to {args.out / 'ultrafeedback.jsonl'} and {args.out / 'benchmark.csv'}")
