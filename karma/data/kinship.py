"""Kinship-aware preference pairs: UltraFeedback responses paired by the behaviour of their models.

    python data_prep.py kinship --ultrafeedback data/UltraFeedback --scores benchmark.csv --out runs/kinship
    python data_prep.py kinship --ultrafeedback uf.jsonl --scores runs/eval/results.json --strategy sup sim \\
        --min-similarity 0.9 --out runs/kinship

The method (Jung, Park & Jung 2025, "ZEBRA: Leveraging Model-Behavioral Knowledge for
Zero-Annotation Preference Dataset Construction", Findings of EMNLP 2025; arXiv 2502.18744, whose
v1 was titled KARMA; code: github.com/Jeesu-Jung/ZEBRA, files binarize.score.py,
binarize.similarity.py and binarize.combined.py). Automatic preference data often pairs a strong
model's answer with a weak one's: the contrast is obvious and teaches little. Here every model is
described by its public benchmark scores, its behaviour vector (karma/data/behaviour.py: the
vectors, their normalisation and missing scores), and the pairs are built from that description
alone, with no per-response judge:

  MB-SUP(i)     = the mean of model i's behaviour vector       (superiority: how good a model is)
  MB-SIM(i, j)  = the cosine of the two models' vectors        (similarity, "kinship")
  preference    Pref(r_i, r_j) = 1  iff  MB-SUP(M_i) > MB-SUP(M_j)

For each prompt x, C(x) = the prompt's models that have a usable completion AND a behaviour vector.
One pair per prompt, by strategy:
  sup      the two highest MB-SUP in C(x): chosen = the top one, rejected = the second
           (the authors' binarize.score.py, "quality first")
  sim      the pair of C(x) with the highest MB-SIM; the member with the higher MB-SUP is chosen
           (binarize.similarity.py, "similarity first")
  sup_sim  chosen = the highest MB-SUP in C(x), rejected = the model of C(x) most MB-SIM-similar to
           it (binarize.combined.py; see "choices" for the score that ranks "best")
Baselines:
  random                   two models of C(x) drawn uniformly (seeded per prompt); the higher
                           MB-SUP is chosen, so only the pairing differs from the strategies above
  ultrafeedback_binarized  HuggingFaceH4/ultrafeedback_binarized (the dataset card): chosen = the
                           completion with the highest `overall_score`, rejected = one of the
                           remaining completions at random. GPT-4's per-response ratings, i.e. the
                           instance-wise RLAIF labels the paper compares against.

Choices where the sources are silent or disagree (each one is a decision of this module):
- "Best" in sup_sim is MB-SUP: binarize.combined.py ranks by a per-row `scores` field of an
  unreleased file (likely per-response ratings); MB-SUP keeps the method free of annotation.
- Ties never depend on the order of rows or completions (the scripts take numpy's first argmax in
  the row's order): MB-SUP ties go to the model name that sorts first; among equally similar pairs
  the first in model-name order wins; overall_score ties likewise by model name. Exact MB-SUP ties
  between chosen and rejected (identical vectors) are kept, as in the scripts, and counted.
- --min-similarity tau: the paper's text keeps pairs with MB-SIM >= 0.1, the authors' README says
  0.9 and the scripts build a 0.9 mask without applying it, so the default is no threshold. When
  given, the pair a strategy picks is dropped (and counted) if its MB-SIM < tau; no other pair is
  tried. It applies to sup, sim, sup_sim and random, not to the binarized baseline.
- random: chosen = the higher MB-SUP (not a coin flip), so random differs from sup/sim only in
  which two models are paired, never in which way round.
- ultrafeedback_binarized: its candidates are the completions with a response and a rating (no
  behaviour vector needed, ultralm-65b included, as H4); the rejected one is drawn uniformly from
  ALL the others, so it may tie the chosen one's score (the card does not drop ties; they are
  counted). H4 also removed the truthful_qa prompts: --exclude-source truthful_qa does that.
  The rating is `overall_score` or, with --rating fine_grained, the mean of the annotation Ratings
  (karma/data/ultrafeedback.py).
- Randomness is seeded per prompt from (seed, strategy, prompt id), so a pair does not change with
  the file order, other rows or --limit.
- Identical instructions: only the first row with that instruction is used, the later ones are
  skipped (duplicate_prompt), so a prompt id (the sha256 of the instruction, H4's prompt_id) is
  unique in an output file and the same prompt has the same id in every strategy's file.

Input. UltraFeedback rows as published (openbmb/UltraFeedback), JSONL or the hub's parquet, read
by karma/data/ultrafeedback.py; a row's prompt is its `instruction`, its source its `source`, else
the file's stem (the per-source files are named so). Scores: a CSV or eval.py's results.json, read
by karma/data/behaviour.py.

Accounting, per strategy: every row read ends as one pair or one skip reason, so
`pairs + sum(skipped) == rows_read`; the first file:line places of each reason are listed.
Row skip reasons: malformed_json, not_an_object, no_instruction, empty_instruction, excluded_source,
duplicate_prompt, no_completions, fewer_than_two_candidates, below_min_similarity.
Completions dropped (counted, per reason): not_an_object, no_model, empty_response, duplicate_model,
and per strategy no_scores / not_in_table (no behaviour vector) or no_rating (binarized).

Output in out_dir (each file written to a temporary and renamed into place only when the whole run
succeeded; stats.json last; pairs files of strategies not in this run are removed):
  pairs-<strategy>.jsonl  {"id", "prompt": [{"role": "user", ...}], "chosen": [{"role":
      "assistant", ...}], "rejected": [...], "chosen_model", "rejected_model", "strategy",
      "similarity" (MB-SIM), "superiority_gap" (MB-SUP chosen - rejected), "score_chosen",
      "score_rejected" (the completions' ratings, null when absent), "source"}; similarity and gap
      are null for a binarized pair whose model has no vector. TRL's conversational preference format.
  stats.json  rows read, per strategy: pairs, skips, distributions (mean, quantiles, histogram) of
      the superiority gap, the similarity and the rating gap, agreement of the pair's order with the
      ratings, chosen/rejected counts per model; the behaviour table; the config.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import orjson

from karma.data.behaviour import Behaviour, read_scores
from karma.data.ultrafeedback import RATINGS, Completion, find_files, read_rows, usable_completions
from karma.files import atomic_write, atomic_write_json
from karma.records import require_pyarrow

STRATEGIES = ("sup", "sim", "sup_sim", "random", "ultrafeedback_binarized")


# ------------------------------------------------------------------------------ strategies

def by_superiority(models, beh: Behaviour) -> list[str]:
    """Models best first: MB-SUP descending, ties by name."""
    return sorted(models, key=lambda m: (-beh.sup[m], m))


def orient(a: str, b: str, beh: Behaviour) -> tuple[str, str]:
    """(chosen, rejected): the higher MB-SUP first; a tie goes to the name that sorts first."""
    return tuple(by_superiority((a, b), beh))


def pick_sup(models: list[str], beh: Behaviour, rng: random.Random) -> tuple[str, str]:
    """SUP: the top two by MB-SUP."""
    ranked = by_superiority(models, beh)
    return ranked[0], ranked[1]


def pick_sim(models: list[str], beh: Behaviour, rng: random.Random) -> tuple[str, str]:
    """SIM: the most similar pair (argmax MB-SIM; ties: the first pair in name order), oriented by MB-SUP."""
    best = max(combinations(sorted(models), 2), key=lambda p: beh.sim(*p))  # max keeps the first maximum
    return orient(*best, beh)


def pick_sup_sim(models: list[str], beh: Behaviour, rng: random.Random) -> tuple[str, str]:
    """SUP+SIM: chosen = top MB-SUP, rejected = the other model most similar to it (ties: by name)."""
    chosen = by_superiority(models, beh)[0]
    rejected = max(sorted(m for m in models if m != chosen), key=lambda m: beh.sim(chosen, m))
    return chosen, rejected


def pick_random(models: list[str], beh: Behaviour, rng: random.Random) -> tuple[str, str]:
    """Random pairing baseline: two distinct models uniformly, oriented by MB-SUP."""
    a, b = rng.sample(sorted(models), 2)
    return orient(a, b, beh)


def pick_binarized(completions: list[Completion], rng: random.Random) -> tuple[Completion, Completion]:
    """H4 ultrafeedback_binarized: chosen = highest rating (ties: by model name), rejected = one
    of the other completions uniformly at random (it may tie the chosen rating)."""
    ranked = sorted(completions, key=lambda c: (-c.rating, c.model))
    return ranked[0], rng.choice(sorted(ranked[1:], key=lambda c: c.model))


PICKERS = {"sup": pick_sup, "sim": pick_sim, "sup_sim": pick_sup_sim, "random": pick_random}


def prompt_rng(seed: int, strategy: str, prompt_id: str) -> random.Random:
    """A generator seeded by (seed, strategy, prompt id) alone: a pair never depends on other rows."""
    digest = hashlib.sha256(f"{seed}\0{strategy}\0{prompt_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_pair(strategy: str, completions: list[Completion], beh: Behaviour, rng: random.Random,
              min_similarity: float | None, drops: Counter):
    """(chosen, rejected) Completions for one prompt, or (None, skip reason); `drops` counts the
    completions that are not candidates for this strategy."""
    if strategy == "ultrafeedback_binarized":
        cands = [c for c in completions if c.rating is not None]
        drops["no_rating"] += len(completions) - len(cands)
        if len(cands) < 2:
            return None, "fewer_than_two_candidates"
        return pick_binarized(cands, rng), None
    cands = {c.model: c for c in completions if c.model in beh.vectors}
    for c in completions:
        if c.model not in beh.vectors:
            drops["no_scores" if c.model in beh.unscored else "not_in_table"] += 1
    if len(cands) < 2:
        return None, "fewer_than_two_candidates"
    chosen, rejected = PICKERS[strategy](list(cands), beh, rng)
    if min_similarity is not None and beh.sim(chosen, rejected) < min_similarity:
        return None, "below_min_similarity"
    return (cands[chosen], cands[rejected]), None


def pair_record(pid: str, instruction: str, source, strategy: str, chosen: Completion, rejected: Completion,
                beh: Behaviour) -> dict:
    both = chosen.model in beh.vectors and rejected.model in beh.vectors
    return {"id": pid, "prompt": [{"role": "user", "content": instruction}],
            "chosen": [{"role": "assistant", "content": chosen.response}],
            "rejected": [{"role": "assistant", "content": rejected.response}],
            "chosen_model": chosen.model, "rejected_model": rejected.model, "strategy": strategy,
            "similarity": beh.sim(chosen.model, rejected.model) if both else None,
            "superiority_gap": beh.sup[chosen.model] - beh.sup[rejected.model] if both else None,
            "score_chosen": chosen.rating, "score_rejected": rejected.rating, "source": source}


# ------------------------------------------------------------------------------ statistics

GAP_EDGES = np.linspace(-1.0, 1.0, 21)  # MB-SUP differences lie in [-1, 1] (vectors are in [0, 1])
SIM_EDGES = np.linspace(0.0, 1.0, 21)  # cosines of non-negative vectors lie in [0, 1]
RATING_EDGES = np.arange(-9.5, 10.0, 1.0)  # overall_score is 1..10, so differences are in [-9, 9]


def distribution(values, edges) -> dict:
    """n, mean, min, p10, p25, median, p75, p90, max and a histogram over fixed `edges` (values
    outside the edges are counted in below/above)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    counts, _ = np.histogram(x, bins=edges)
    return {"n": int(x.size), "mean": float(x.mean()), "min": float(x.min()), "p10": float(q[0]),
            "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "p90": float(q[4]), "max": float(x.max()),
            "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist(),
                          "below": int((x < edges[0]).sum()), "above": int((x > edges[-1]).sum())}}


class StrategyTally:
    """One strategy's pairs, skips (with locations), per-pair measurements and per-model counts."""

    def __init__(self, max_locations: int):
        self.pairs = 0
        self.skipped, self.drops = Counter(), Counter()
        self.locations = defaultdict(list)
        self.gaps, self.sims, self.rating_gaps = [], [], []
        self.agreement = Counter()
        self.superiority_ties = self.rating_ties = 0
        self.chosen, self.rejected = Counter(), Counter()
        self.max_locations = max_locations

    def skip(self, reason: str, location: str):
        self.skipped[reason] += 1
        if len(self.locations[reason]) < self.max_locations:
            self.locations[reason].append(location)

    def add(self, rec: dict):
        self.pairs += 1
        self.chosen[rec["chosen_model"]] += 1
        self.rejected[rec["rejected_model"]] += 1
        if rec["superiority_gap"] is not None:
            self.gaps.append(rec["superiority_gap"])
            self.sims.append(rec["similarity"])
            self.superiority_ties += rec["superiority_gap"] == 0
        a, b = rec["score_chosen"], rec["score_rejected"]
        if a is None or b is None:
            self.agreement["unknown"] += 1
        else:
            self.rating_gaps.append(a - b)
            self.agreement["agree" if a > b else "tie" if a == b else "disagree"] += 1
            self.rating_ties += a == b

    def to_json(self) -> dict:
        known = sum(self.agreement[k] for k in ("agree", "tie", "disagree"))
        return {"pairs": self.pairs, "skipped": dict(self.skipped.most_common()),
                "skip_locations": dict(self.locations), "completions_dropped": dict(self.drops.most_common()),
                "superiority_gap": distribution(self.gaps, GAP_EDGES),
                "similarity": distribution(self.sims, SIM_EDGES),
                "rating_gap": distribution(self.rating_gaps, RATING_EDGES),
                "rating_agreement": {**{k: self.agreement[k] for k in ("agree", "tie", "disagree", "unknown")},
                                     "agree_rate": self.agreement["agree"] / known if known else None},
                "superiority_ties": int(self.superiority_ties), "rating_ties": int(self.rating_ties),
                "models": {m: {"chosen": self.chosen[m], "rejected": self.rejected[m]}
                           for m in sorted(set(self.chosen) | set(self.rejected))}}


# ------------------------------------------------------------------------------ the pipeline

@dataclass
class KinshipConfig:
    ultrafeedback: list  # UltraFeedback files or directories
    scores: Path  # benchmark CSV or eval.py results.json
    out_dir: Path
    strategies: tuple = STRATEGIES
    min_similarity: float | None = None
    seed: int = 0
    limit: int | None = None  # at most this many rows read (unusable ones included)
    rating: str = "overall_score"
    exclude_sources: tuple = ()
    lower_is_better: tuple = ()
    max_locations: int = 20

    def to_json(self) -> dict:
        """The config as stats.json records it: paths as strings."""
        return {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "ultrafeedback" else v)
                for k, v in asdict(self).items()}


def check_strategies(cfg: KinshipConfig) -> list[str]:
    """The run's strategies, each once, in the order given; an unknown strategy or rating is a ValueError."""
    strategies = list(dict.fromkeys(cfg.strategies))
    for s in strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; expected one of {STRATEGIES}")
    if cfg.rating not in RATINGS:
        raise ValueError(f"unknown rating {cfg.rating!r}; expected one of {RATINGS}")
    return strategies


def read_files(files: list[Path], limit: int | None = None):
    """Yield (path, location, row or None, skip reason or None) over `files` in order, at most
    `limit` rows in all; a file is closed as soon as it is done or the limit is reached."""
    n = 0
    for path in files:
        rows = read_rows(path)
        for loc, row, reason in rows:
            if limit is not None and n >= limit:
                break
            n += 1
            yield path, loc, row, reason
        rows.close()  # closes the file now, even when the limit stopped early
        if limit is not None and n >= limit:
            return


def check_row(row: dict, path: Path, exclude: set, seen: set) -> tuple[str | None, str, str | None]:
    """(prompt id, source, skip reason or None) of a parsed row. The id is the sha256 of the
    instruction (H4's prompt_id); the source is the row's, else the file's stem. Reasons, checked
    in this order: no_instruction, empty_instruction, excluded_source, duplicate_prompt, no_completions."""
    instruction = row.get("instruction")
    source = row["source"] if isinstance(row.get("source"), str) else path.stem
    if not isinstance(instruction, str):
        return None, source, "no_instruction"
    pid = hashlib.sha256(instruction.encode("utf-8")).hexdigest()
    reason = ("empty_instruction" if not instruction.strip() else "excluded_source" if source in exclude
              else "duplicate_prompt" if pid in seen else None if isinstance(row.get("completions"), list)
              else "no_completions")
    return pid, source, reason


class PairingRun:
    """One pass over the rows: every strategy's tally, and the counts that all strategies share."""

    def __init__(self, cfg: KinshipConfig, beh: Behaviour, strategies: list[str]):
        self.cfg, self.beh = cfg, beh
        self.tallies = {s: StrategyTally(cfg.max_locations) for s in strategies}
        self.exclude = set(cfg.exclude_sources)
        self.seen_prompts: set[str] = set()
        self.rows_read = 0
        self.drops = Counter()  # completions unusable for every strategy, by reason
        self.without_vector = Counter()  # model -> its completions, for models without a behaviour vector
        self.not_listed = 0  # completions whose model is missing from the row's `models` field

    def pair_files(self, files: list[Path], tmps: list[Path]):
        """Pair the rows of `files` (at most cfg.limit of them); strategy i writes its pairs to tmps[i]."""
        outs = {s: open(tmp, "wb") for s, tmp in zip(self.tallies, tmps)}
        try:
            for path, loc, row, reason in read_files(files, self.cfg.limit):
                self.pair_row(path, loc, row, reason, outs)
        finally:
            for f in outs.values():
                f.close()

    def pair_row(self, path: Path, loc: str, row: dict | None, reason: str | None, outs: dict):
        """One row: each strategy's pair written to outs[strategy], or the reason it has none counted."""
        self.rows_read += 1
        if reason is None:
            pid, source, reason = check_row(row, path, self.exclude, self.seen_prompts)
        if reason is not None:
            for t in self.tallies.values():
                t.skip(reason, loc)
            return
        self.seen_prompts.add(pid)
        completions = usable_completions(row, self.cfg.rating, self.drops)
        self.count_models(row, completions)
        for s, t in self.tallies.items():
            pair, reason = make_pair(s, completions, self.beh, prompt_rng(self.cfg.seed, s, pid),
                                     self.cfg.min_similarity, t.drops)
            if pair is None:
                t.skip(reason, loc)
                continue
            rec = pair_record(pid, row["instruction"], source, s, *pair, self.beh)
            outs[s].write(orjson.dumps(rec) + b"\n")
            t.add(rec)

    def count_models(self, row: dict, completions: list[Completion]):
        """Count the completions whose model has no behaviour vector or is not in the row's `models`."""
        listed = row.get("models")
        if isinstance(listed, list):
            self.not_listed += sum(c.model not in listed for c in completions)
        for c in completions:
            if c.model not in self.beh.vectors:
                self.without_vector[c.model] += 1

    def to_json(self) -> dict:
        """Each strategy's tally (with the shared completion drops added) and the per-model counts."""
        per = {s: t.to_json() for s, t in self.tallies.items()}
        for s, t in per.items():
            t["completions_dropped"] = dict((self.drops + Counter(t["completions_dropped"])).most_common())
            accounted = t["pairs"] + sum(t["skipped"].values())  # every row read: one pair or one skip
            assert accounted == self.rows_read, (s, t["pairs"], t["skipped"], self.rows_read)
        return {"strategies": per, "completions_without_vector": dict(self.without_vector.most_common()),
                "completions_not_in_models_field": self.not_listed}


def pairs_path(out_dir: Path, strategy: str) -> Path:
    """Where a strategy's pairs are written: out_dir/pairs-<strategy>.jsonl."""
    return out_dir / f"pairs-{strategy}.jsonl"


def remove_stale_pairs(out_dir: Path, strategies: list[str]):
    """Delete the pairs files of strategies not in this run: they do not belong to its stats.json."""
    for s in STRATEGIES:
        if s not in strategies and pairs_path(out_dir, s).exists():
            pairs_path(out_dir, s).unlink()


def _write_all(paths: list[Path], produce, tmps=()):
    """Call produce(tmp paths) once; then move every temporary onto its path. atomic_write for
    several files at once: each is renamed into place only after `produce` has returned."""
    if not paths:
        return produce(list(tmps))
    result = []
    atomic_write(paths[0], lambda tmp: result.append(_write_all(paths[1:], produce, (*tmps, tmp))))
    return result[0]


def build_pairs(cfg: KinshipConfig, beh: Behaviour | None = None) -> dict:
    """Read the rows, write pairs-<strategy>.jsonl per strategy and stats.json; returns the stats."""
    start = time.perf_counter()
    strategies = check_strategies(cfg)
    beh = beh if beh is not None else read_scores(cfg.scores, cfg.lower_is_better)
    files = find_files(cfg.ultrafeedback)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {s: pairs_path(out_dir, s) for s in strategies}
    run = PairingRun(cfg, beh, strategies)
    _write_all(list(outputs.values()), lambda tmps: run.pair_files(files, tmps))
    remove_stale_pairs(out_dir, strategies)
    stats = {"rows_read": run.rows_read, "files": [str(p) for p in files],
             "outputs": {s: p.name for s, p in outputs.items()}, **run.to_json(),
             "behaviour": beh.to_json(), "seconds": round(time.perf_counter() - start, 3), "config": cfg.to_json()}
    atomic_write_json(out_dir / "stats.json", stats)
    return stats


def summary(stats: dict) -> str:
    """A few lines for the terminal: per strategy, pairs, skips and the gap / similarity medians."""
    beh = stats["behaviour"]
    lines = [f"read {stats['rows_read']:,} rows from {len(stats['files'])} file(s); {len(beh['models'])} models with "
             f"behaviour vectors over {len(beh['benchmarks'])} benchmarks"
             + (f"; never paired (no scores): {', '.join(beh['unscored_models'])}" if beh["unscored_models"] else "")]
    for s, t in stats["strategies"].items():
        skips = ", ".join(f"{r} {n:,}" for r, n in t["skipped"].items()) or "none"
        g, m = t["superiority_gap"], t["similarity"]
        med = (f"; MB-SUP gap median {g['median']:.3f}, MB-SIM median {m['median']:.3f}" if g["n"] else "")
        lines.append(f"  {s}: {t['pairs']:,} pairs{med}; skipped: {skips}")
    return "\n".join(lines)


HELP = "\n\n".join(__doc__.split("\n\n")[:2]) + """

Strategies (one pair per prompt over C(x), the prompt's models with a completion and scores):
  sup      chosen = highest MB-SUP (mean normalised benchmark score), rejected = the second
  sim      the pair with the highest MB-SIM (cosine of the score vectors); higher MB-SUP chosen
  sup_sim  chosen = highest MB-SUP, rejected = the model most MB-SIM-similar to it
  random   two models at random (seeded per prompt); higher MB-SUP chosen
  ultrafeedback_binarized  H4's recipe: chosen = top overall_score, rejected = a random other one
Outputs in --out: pairs-<strategy>.jsonl (TRL's conversational prompt/chosen/rejected, plus models,
MB-SIM, MB-SUP gap, ratings) and stats.json (skips by reason, gap and similarity distributions).
Method, sources and every choice where they are silent: the docstrings of karma/data/kinship.py,
karma/data/behaviour.py (the behaviour vectors) and karma/data/ultrafeedback.py (the rows)."""


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `data_prep.py kinship` (data_prep.py's subcommand; main() parses them alone)."""
    p.add_argument("--ultrafeedback", nargs="+", required=True, type=Path, metavar="PATH",
                   help="UltraFeedback JSONL or parquet files (openbmb/UltraFeedback as published), or directories "
                        "holding them; parquet needs pyarrow")
    p.add_argument("--scores", required=True, type=Path,
                   help="benchmark scores: a CSV with a 'model' column and one column per benchmark (higher is "
                        "better; '%%' allowed; blank/N/A = missing), or eval.py's results.json (each task's primary "
                        "metric)")
    p.add_argument("--strategy", nargs="+", default=list(STRATEGIES), choices=STRATEGIES, metavar="NAME",
                   help=f"one output file per strategy: {', '.join(STRATEGIES)} (default: all)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--min-similarity", type=float, default=None, metavar="TAU",
                   help="drop a kinship pair whose MB-SIM (cosine) is below TAU (default: none; the paper's text "
                        "uses 0.1, the authors' README 0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random and binarized draws (default: 0)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many rows (default: all)")
    p.add_argument("--rating", choices=RATINGS, default="overall_score",
                   help="per-completion rating for the binarized baseline and the agreement stats: overall_score "
                        "(default, H4's) or fine_grained (mean of the numeric annotation Ratings)")
    p.add_argument("--exclude-source", nargs="*", default=[], metavar="SOURCE",
                   help="skip rows of these sources (default: none; H4 drops truthful_qa)")
    p.add_argument("--lower-is-better", nargs="*", default=[], metavar="BENCHMARK",
                   help="CSV benchmarks where lower is better; results.json gives the direction itself "
                        "(default: none: higher is better for every CSV column)")
    return p


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The ranges argparse does not check, as flag errors (exit 2) before any file is read."""
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit {args.limit}: must be at least 1")
    if args.min_similarity is not None and not -1.0 <= args.min_similarity <= 1.0:
        p.error(f"--min-similarity {args.min_similarity}: a cosine threshold must be in [-1, 1]")


def main(argv=None) -> dict:
    """The kinship command on its own: parse argv (the flags above), then run it."""
    p = argparse.ArgumentParser(prog="data_prep.py kinship", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_arguments(p).parse_args(argv)
    check_arguments(p, args)
    return command(args)


def command(args: argparse.Namespace) -> dict:
    """Pairs for the parsed flags: inputs checked first, then build_pairs; prints its summary."""
    require_pyarrow(find_files(args.ultrafeedback))  # a bad path fails before anything is written
    beh = read_scores(args.scores, args.lower_is_better)
    cfg = KinshipConfig(ultrafeedback=args.ultrafeedback, scores=args.scores, out_dir=args.out,
                        strategies=tuple(args.strategy), min_similarity=args.min_similarity, seed=args.seed,
                        limit=args.limit, rating=args.rating, exclude_sources=tuple(args.exclude_source),
                        lower_is_better=tuple(args.lower_is_better))
    stats = build_pairs(cfg, beh)
    print(summary(stats))
    print(f"pairs and stats.json in {args.out}")
    return stats
