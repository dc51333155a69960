"""The reward-shortcut report on REAL trained tiny reward models with a planted rule (CPU, ~1 min).

Two conditioned-format reward models (they see the "[Subreddit: r/X | Posted: ...]" header) are
trained with karma's own training loop (karma.reward_train.train, what train_rm.py runs) from a
tiny random-weight Llama (tests/hf_fixtures.py), on SYNTHETIC examples labelled by a planted rule:

  header   label = 1 iff the header's subreddit is one of GOOD_SUBREDDITS (the reply is noise)
  reply    label = 1 iff the reply contains the word MARKER (the header is noise)

Both data sets come from one generator: every example has a random subreddit (shared by its
thread), a random posting time and a reply of filler words that contains MARKER half of the time,
whatever the label. Only the rule that labels them differs, so each RM sees both signals and must
learn to ignore the one its rule does not use. karma.evals.shortcuts.rm_report on each RM's
held-out split must then read: header RM, large metadata reliance (swap_subreddit, swap_both,
no_header flip shares near the 0.5 of a re-drawn score, AUC -> ~0.5) and ~0 content reliance
(sibling, other_thread); reply RM, the opposite. The intervals resample threads.

    PYTHONPATH=. python bench/shortcuts_planted.py [--steps 300] [--threads 120] [--seed 0] [--out DIR]

Prints one JSON object: per RM, its held-out AUC and, per probe, the flip share with its interval,
the mean |score change| with its interval, and the AUC reference -> counterfactual.
"""

import argparse
import contextlib
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

GOOD_SUBREDDITS = ("cats", "books", "space")
BAD_SUBREDDITS = ("memes", "drama", "rants")
MARKER = "thanks"
FILLER = ("ok", "well", "maybe", "sure", "right", "so", "yes", "fine", "cool", "nice", "hmm", "true")
T0 = 1420070400  # 2015-01-01 00:00 UTC
RULES = ("header", "reply")


def planted_examples(rule: str, n_threads: int, seed: int, split: str) -> list[dict]:
    """Threads of 3-8 replies (data_prep's example schema, siblings included): a random subreddit
    per thread, a random time and a filler reply per example, MARKER in half of the replies; the
    label by `rule` ("header": the subreddit is good; "reply": the reply holds MARKER)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    rng = random.Random(f"{seed}/{split}")
    examples = []
    for t in range(n_threads):
        subreddit = rng.choice(GOOD_SUBREDDITS + BAD_SUBREDDITS)
        topic = f"topic {rng.randint(0, 99)}: what do you think?"
        replies = []
        for r in range(rng.randint(3, 8)):
            words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
            marked = rng.random() < 0.5
            if marked:
                words.insert(rng.randint(0, len(words)), MARKER)
            label = subreddit in GOOD_SUBREDDITS if rule == "header" else marked
            replies.append({"id": f"t1_{split}{t}_{r}", "split": split, "thread_id": f"t3_{split}{t}",
                            "parent_id": f"t3_{split}{t}", "messages": [{"role": "user", "content": topic}],
                            "response": " ".join(words), "label": int(label), "score": 10 * int(label) + r % 3,
                            "meta": {"subreddit": subreddit, "created_utc": T0 + rng.randint(0, 60 * 86400)}})
        for ex in replies:
            ex["siblings"] = [{"id": o["id"], "text": o["response"], "score": o["score"]}
                              for o in replies if o is not ex]
        examples += replies
    return examples


def write_data(directory: Path, rule: str, train_threads: int, heldout_threads: int, seed: int) -> Path:
    """train-00000.jsonl and heldout-00000.jsonl (data_prep.py's layout) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_threads), ("heldout", heldout_threads)):
        with open(directory / f"{split}-00000.jsonl", "w") as f:
            f.writelines(json.dumps(ex) + "\n" for ex in planted_examples(rule, n, seed, split))
    return directory


def train_planted(base, data: Path, out: Path, steps: int, seed: int) -> Path:
    """A conditioned RM trained on `data` by karma.reward_train.train (one CPU process); its best/ dir."""
    import torch

    from karma.distributed import Dist
    from karma.reward_train import TrainRMConfig, train

    cfg = TrainRMConfig(model=str(base), data=data, out_dir=out, format="conditioned", max_length=128,
                        batch_size=16, micro_batch_size=16, lr=3e-3, warmup_ratio=0.1, max_steps=steps,
                        eval_every=steps, save_every=steps, keep_checkpoints=0, log_every=steps, seed=seed)
    shutil.rmtree(out, ignore_errors=True)  # a run refuses an --out holding an earlier run
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines: stdout stays one JSON object
        train(cfg, Dist(0, 1, torch.device("cpu")))
    return out / "best"


def planted_reports(base, work: Path, steps: int, threads: int, seed: int, n_resamples: int) -> dict:
    """Train one RM per rule and run rm_report on its held-out split: {rule: report}."""
    from karma.data.examples import TRAINING_KEYS, read_examples, split_files
    from karma.evals.shortcuts import THREAD_KEYS, rm_report
    from karma.reward import load_reward_model

    reports = {}
    for rule in RULES:
        data = write_data(work / f"data-{rule}", rule, threads, max(20, threads // 3), seed)
        rm_dir = train_planted(base, data, work / f"rm-{rule}", steps, seed)
        examples, _ = read_examples(split_files(data, "heldout"), needs_meta=True, keys=TRAINING_KEYS + THREAD_KEYS)
        reports[rule] = rm_report({rule: load_reward_model(rm_dir)}, examples, seed=seed, n_resamples=n_resamples)
    return reports


def summary(report: dict) -> dict:
    """The numbers that show the planted rule: per probe, flips, |change| and AUC with intervals."""
    (name, e), = report["rms"].items()
    probes = {**e["metadata"], **e["content"]}
    return {"format": e["format"], "held_out_auc": e["metrics"]["roc_auc"], "auc_ci": e["ci"]["roc_auc"],
            "probes": {p: {k: r.get(k) for k in ("n", "flip_share", "flip_random", "mean_abs_change", "auc_reference",
                                                   "auc", "auc_change")} | {"ci": r.get("ci")}
                       for p, r in probes.items()},
            "n_threads": report.get("n_threads"), "min_gap_sd": report.get("min_gap_sd")}


def tiny_base(directory: Path) -> Path:
    """The tests' tiny random-weight Llama checkpoint (tests/hf_fixtures.py), written to `directory`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # test tooling, not library
    from hf_fixtures import make_checkpoint

    make_checkpoint("llama_tied", directory)
    return directory


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per RM (batch 16)")
    p.add_argument("--threads", type=int, default=120, help="training threads per RM (held out: a third)")
    p.add_argument("--n-resamples", type=int, default=1000, help="thread bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="keep the data, RMs and reports here (default: a temp dir)")
    p.add_argument("--torch-threads", type=int, default=1, help="CPU threads (default 1: the model is tiny)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        base = tiny_base(work / "base")
        reports = planted_reports(base, work, args.steps, args.threads, args.seed, args.n_resamples)
        if args.out:
            for rule, report in reports.items():
                (work / f"report-{rule}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                      "rms": {rule: summary(r) for rule, r in reports.items()}}, indent=1))


if __name__ == "__main__":
    main()
