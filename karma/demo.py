"""What the demo's PPO changed, measured on held-out prompts, told in plain language.

    python -m karma.demo runs/demo --world data/sample/world.json

Reads the directory `make demo` fills (data/, rm/, ppo/) and writes into it:
    outcome.json   every number of the summary, and every sampled reply
    heldout-prompts.jsonl   the held-out prompts (for `python -m karma BASE --compare POLICY --prompts`)
    SUMMARY.md     the summary printed at the end, then three held-out prompts answered side by side
    summary.png    three panels: the mean RM score base vs tuned; the planted-feature shares base vs
                   tuned; PPO's mean RM score per rollout on its training prompts (ppo/metrics.jsonl) and,
                   when ppo.py ran with --eval-every, on its held-out prompts (ppo/eval.jsonl)

The summary also retells what PPO logged while it trained, read from its files and nothing assumed
(a missing file or key reads "not recorded"): the held-out evaluation of --eval-every (the mean RM
score of the first and the last evaluation, each +- 1.96 of its recorded standard error, and the KL
to the reference at the end), and the reward-hacking signals of every rollout (karma/ppo/signals.py):
each warning with its rollout, or the extremes of the signals when none was raised.

How it measures, and why:
- Prompts: contexts of data_prep's HELD-OUT threads (heldout-*.jsonl), never PPO's training prompts
  (prompts-reddit.jsonl comes from the train split; a context found there too is left out). One
  prompt per thread first, so prompts are as independent as the data allows. Each is rendered as
  PPO renders its prompts (karma.reward.encode in the reward model's format, cut to PPO's
  --max-prompt-tokens).
- Replies are SAMPLED with the policy's own settings from ppo/config.json (temperature, top-k/p,
  max new tokens, bf16 where PPO sampled in bf16; never greedy), K per prompt; the base model and
  the tuned policy draw with the same seeds, and each reply is scored by the demo's reward model.
- Paired by prompt: the K replies to one prompt are correlated, so the prompt is the unit. With
  m_i the mean over prompt i's replies, d_i = m_i(tuned) - m_i(base); the change is mean(d), its
  standard error SE = sd(d) / sqrt(n), z = mean(d) / SE, and the 95% interval mean(d) +- 1.96 SE.
  When there are more prompts than held-out threads, two prompts of one thread share its post, so
  the thread is the unit instead: the cluster-robust SE over threads (cluster_se).
  |z| < 2 is called noise. A content feature (world.json's regex; karma depends on it in the
  synthetic world) is carried by a reply when its pattern matches; the share of replies carrying
  it gets a Wilson interval, its change the same paired z.
- What changed instead: the same test for every word that 10+ replies carry, planted or not, with a
  Bonferroni threshold for the number of words tested (word_changes): the reward model's score can
  rise through words the planted world does not pay for ("I hope you're doing great"), and this
  line shows them.
"""

import argparse
import collections
import gc
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from karma.cli import add_debug_flag, device_arg, run_main
from karma.data.format import render_prompt
from karma.data.prompts import heldout_prompts, write_prompts
from karma.distributed import Dist, autocast
from karma.files import atomic_write, atomic_write_json, read_json, read_jsonl
from karma.generate import generate
from karma.ppo.rollout import decode_replies, encode_queries, reply_stop_ids
from karma.reward import inspect_reward_model, load_reward_model
from karma.settings import seed_arg
from karma.tokenizer import load_tokenizer
from karma.weights import inspect_model, load_model

Z95 = 1.959964  # two-sided 95% normal quantile
NOISE_Z = 2.0  # |z| below this: the change cannot be told from noise
SIDE_BY_SIDE = 3  # held-out prompts shown with a base and a tuned reply
DPI = 110
# An empty reply is the classic way a PPO policy games a reward model that never saw one in training
# (data_prep drops replies that are too short): the summary reports their share, base vs tuned.
EMPTY_REPLY = {"name": "empty", "pattern": r"\A\s*\Z", "description": "nothing but whitespace"}


# ------------------------------------------------------------------------------------------ inputs

def read_world(path) -> list[dict]:
    """world.json's planted content features: [{"name", "pattern" (a Python regex), "description",
    "effect"}]. Checked whole before any model loads (one error naming the file and the key)."""
    path = Path(path)
    world = read_json(path)
    features = world.get("content_features") if isinstance(world, dict) else None
    if not isinstance(features, list) or not features:
        raise ValueError(f"{path}: expected an object with a non-empty list \"content_features\"")
    for i, f in enumerate(features):
        where = f"{path}: content_features[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(f.get("pattern"), str):
            raise ValueError(f'{where}: needs a string "name" and a string "pattern"; got {f!r:.80}')
        try:
            re.compile(f["pattern"])
        except re.error as e:
            raise ValueError(f"{where}: pattern {f['pattern']!r} is not a Python regex ({e})") from None
    return features


def demo_inputs(demo_dir, reward_model=None, check_reward_model: bool = True) -> dict:
    """The demo's runs, checked before any model loads: ppo/config.json (PPO's models and sampling
    settings), the exported policy, the base model, and the reward model (--reward-model, else
    the one PPO used) unless the caller brings its own reward."""
    ppo_dir = Path(demo_dir) / "ppo"
    cfg = read_json(ppo_dir / "config.json")
    for key in ("model", "reward_model", "data", "temperature", "max_new_tokens", "max_prompt_tokens"):
        if key not in cfg:
            raise KeyError(f"{ppo_dir / 'config.json'}: no key {key!r} (not a ppo.py run)")
    if not (ppo_dir / "policy").is_dir():
        raise FileNotFoundError(f"{ppo_dir / 'policy'}: no exported policy (did ppo.py finish its rollouts?)")
    rm = Path(reward_model or cfg["reward_model"])
    if check_reward_model:
        inspect_reward_model(rm)
    inspect_model(cfg["model"])
    inspect_model(ppo_dir / "policy")
    return {"ppo": cfg, "base": cfg["model"], "tuned": str(ppo_dir / "policy"), "reward_model": str(rm),
            "data": Path(cfg["data"])}


# ------------------------------------------------------------------------------------------ sampling

@torch.no_grad()
def sample_replies(model_name: str, prompts: list[dict], k: int, settings: dict, prompt_format: str, seed: int,
                   device=None, batch: int = 48, label: str = "") -> list[list[str]]:
    """K sampled replies per prompt -> [n][k] texts. Prompts are rendered and cut as PPO renders
    them (rollout.encode_queries, as collect_rollout); batch b draws with seed + b, so two models asked the same
    prompts draw with the same seeds. On a CPU a decode step costs about one read of the weights
    whatever the batch, so large batches are cheap; a line per batch on stderr shows progress in a log."""
    model = load_model(model_name, dtype=torch.float32, device=device).eval()
    tok = load_tokenizer(model_name)
    dev = model.embed.weight.device
    rows = [p for p in prompts for _ in range(k)]  # prompt-major: row i*k + j is prompt i's j-th reply
    texts, start = [], time.perf_counter()
    for b, lo in enumerate(range(0, len(rows), batch)):
        chunk = rows[lo:lo + batch]
        query, mask = encode_queries(tok, chunk, prompt_format, settings["max_prompt_tokens"])
        out = generate(model, query.to(dev), mask.to(dev), max_new_tokens=settings["max_new_tokens"],
                       temperature=settings["temperature"], top_k=settings.get("top_k"), top_p=settings.get("top_p"),
                       stop_ids=reply_stop_ids(tok, settings.get("stop_at_sentence_end", False)), pad_id=tok.pad_id,
                       seed=seed + b)
        texts += decode_replies(tok, out.tokens, out.mask)
        print(f"[{label or model_name}: {len(texts)}/{len(rows)} replies sampled, "
              f"{time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    del model
    gc.collect()
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))]


def score_replies(reward, prompts: list[dict], replies: list[list[str]]) -> np.ndarray:
    """The reward model's P(rewarding) of every reply -> [n, k]."""
    k = len(replies[0])
    contexts = [p["messages"] for p in prompts for _ in range(k)]
    metas = [p.get("meta") for p in prompts for _ in range(k)]
    flat = [r for rs in replies for r in rs]
    return reward.score(contexts, flat, metas).float().cpu().numpy().reshape(len(prompts), k)


# ------------------------------------------------------------------------------------------ statistics

def paired_change(base, tuned, clusters=None) -> dict:
    """Base vs tuned on the same n prompts, K replies each: arrays [n, k] (or [n]) of per-reply
    values. Per-prompt means carry the comparison (see the module doc). `clusters`: one label per
    prompt (its thread) when several prompts come from one thread; their differences may then be
    correlated, and the standard errors are the cluster-robust ones (cluster_se). z is 0 when every
    difference is 0 (identical replies), None with fewer than 2 clusters (no SE)."""
    b, t = np.asarray(base, float), np.asarray(tuned, float)
    b, t = b.reshape(len(b), -1).mean(1), t.reshape(len(t), -1).mean(1)  # [n] per-prompt means
    d, n = t - b, len(b)
    groups = list(range(n)) if clusters is None else list(clusters)
    se = cluster_se(d, groups)
    diff = float(d.mean())
    z = None if se is None else (diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff)))

    def mean_ci(x):
        se_x = cluster_se(x, groups)
        half = Z95 * se_x if se_x is not None else math.nan
        return [float(x.mean() - half), float(x.mean() + half)]

    return {"n": n, "clusters": len(set(groups)), "base": float(b.mean()), "tuned": float(t.mean()),
            "base_ci": mean_ci(b), "tuned_ci": mean_ci(t),
            "diff": diff, "se": se, "z": z, "ci": None if se is None else [diff - Z95 * se, diff + Z95 * se]}


def cluster_se(x: np.ndarray, groups: list) -> float | None:
    """Standard error of mean(x) when the x_i come in G clusters that may be correlated within:
    SE^2 = G / (G - 1) * sum_g (sum_{i in g} (x_i - mean x))^2 / n^2, the cluster-robust variance of
    a mean (Liang & Zeger 1986) with the small-sample factor G / (G - 1) (Cameron & Miller 2015,
    "A Practitioner's Guide to Cluster-Robust Inference"). With one x per cluster it is
    sd(x) / sqrt(n) exactly; a value repeated within its cluster adds no precision. None when G < 2, or
    when the x vary yet every cluster's deviations sum to exactly 0 (the estimate is then degenerate)."""
    if len(groups) != len(x):
        raise ValueError(f"{len(groups)} cluster labels for {len(x)} values")
    sums: dict = collections.defaultdict(float)
    for g, r in zip(groups, np.asarray(x, float) - np.mean(x)):
        sums[g] += r
    n_groups = len(sums)
    if n_groups < 2 or (not any(sums.values()) and np.ptp(x) > 0):
        return None
    return float(math.sqrt(n_groups / (n_groups - 1) * sum(s * s for s in sums.values())) / len(x))


def wilson(successes: int, n: int, z: float = Z95) -> list[float]:
    """Wilson score interval of a proportion (Wilson 1927): sensible at 0 and 1, unlike p +- z SE."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def share_change(name: str, base: np.ndarray, tuned: np.ndarray, clusters=None) -> dict:
    """The share of replies carrying something, base vs tuned, from 0/1 arrays [n, k]: Wilson
    intervals per model (over replies) and the paired change over prompts (paired_change)."""
    change = paired_change(base, tuned, clusters)
    change.update(name=name, base_ci=wilson(int(base.sum()), base.size), tuned_ci=wilson(int(tuned.sum()), tuned.size),
                  base_count=int(base.sum()), tuned_count=int(tuned.sum()), replies=int(base.size))
    return change


def feature_change(feature: dict, base_replies, tuned_replies, clusters=None) -> dict:
    """The share of replies carrying one feature (its regex matches), base vs tuned (share_change)."""
    pattern = re.compile(feature["pattern"])
    carries = lambda replies: np.array([[bool(pattern.search(r)) for r in rs] for rs in replies], float)
    change = share_change(feature["name"], carries(base_replies), carries(tuned_replies), clusters)
    change.update(pattern=feature["pattern"], description=feature.get("description", ""),
                  effect=feature.get("effect"))
    return change


# a word: letters (any script), apostrophes only inside ("you're", "it’s" read as "it's"); digits split words
WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
MIN_WORD_REPLIES = 10  # a word is tested when at least this many replies, base and tuned together, carry it


def words_of(reply: str) -> set[str]:
    return {w.replace("\u2019", "'") for w in WORD.findall(reply.lower())}


def word_changes(base_replies, tuned_replies, top: int = 3, alpha: float = 0.05, clusters=None) -> dict:
    """Which words PPO made more or less common, planted or not: for every word (words_of) that at
    least MIN_WORD_REPLIES replies of both models together carry, its share of replies base vs tuned,
    paired over prompts (share_change). Many words are tested at once, so a change counts only beyond
    the Bonferroni threshold for m words, |z| > the t quantile 1 - alpha / (2m) with G - 1 degrees of
    freedom, G the prompts or their clusters (z is the paired t statistic; the normal quantile lets
    about 3x as many false changes through at n = 24). Choosing words by their pooled count, blind to
    which model wrote a reply, leaves the test about as it was (Bourgon et al. 2010, independent
    filtering; approximately, for a t statistic on 0/1 data). -> {"tested": m, "threshold",
    "rose"/"fell": the `top` largest changes beyond it, "n_rose"/"n_fell": how many there were}"""
    sets = {label: [[words_of(r) for r in rs] for rs in replies]
            for label, replies in (("base", base_replies), ("tuned", tuned_replies))}
    carried = collections.Counter(w for rows in sets.values() for row in rows for ws in row for w in ws)
    words = sorted(w for w, c in carried.items() if c >= MIN_WORD_REPLIES)
    n_groups = len(set(range(len(base_replies)) if clusters is None else clusters))
    found = {"tested": len(words), "threshold": None, "rose": [], "fell": [], "n_rose": 0, "n_fell": 0}
    if not words or n_groups < 2:
        return found
    carries = lambda rows, w: np.array([[w in ws for ws in row] for row in rows], float)
    changes = [share_change(w, carries(sets["base"], w), carries(sets["tuned"], w), clusters) for w in words]
    threshold = float(scipy.stats.t.ppf(1 - alpha / (2 * len(words)), df=n_groups - 1))
    beyond = sorted((c for c in changes if c["z"] is not None and abs(c["z"]) > threshold), key=lambda c: -c["z"])
    rose, fell = [c for c in beyond if c["z"] > 0], [c for c in beyond[::-1] if c["z"] < 0]
    return {**found, "threshold": threshold, "rose": rose[:top], "fell": fell[:top], "n_rose": len(rose),
            "n_fell": len(fell)}


def verdict(change: dict) -> str:
    """'rose' / 'fell' when |z| >= 2, else 'noise' (identical replies included: z = 0)."""
    z = change["z"]
    if z is None:
        return "unknown (one prompt or thread: no standard error)"
    if abs(z) < NOISE_Z:
        return "noise"
    return "rose" if z > 0 else "fell"


# ------------------------------------------------------------------------------------------ the measurement

def measure(demo_dir, n_prompts: int = 24, k: int = 4, seed: int = 0, world=None, reward=None,
            reward_model=None, device=None) -> dict:
    """Sample base and tuned replies to held-out prompts, score them, compare (module doc).
    `world`: world.json's features (read_world) or None; `reward`: an object with .cfg.format and
    .score(contexts, replies, metas) used instead of loading the demo's reward model (tests)."""
    custom_reward = reward is not None
    inputs = demo_inputs(demo_dir, reward_model, check_reward_model=not custom_reward)
    prompt_format = reward.cfg.format if reward is not None else inspect_reward_model(inputs["reward_model"]).format
    prompts = heldout_prompts(inputs["data"], n_prompts)
    threads = [p["thread_id"] for p in prompts]
    settings = inputs["ppo"]
    # PPO's precision (karma.distributed.autocast): bf16 on a GPU, and on a CPU when ppo.py ran with --cpu-bf16
    # (sampling then about 2x faster here: bench/cpu_bf16.py --sample)
    d = Dist(0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    with autocast(d, settings.get("cpu_bf16", False)):
        bf16 = torch.is_autocast_enabled(d.device.type)
        replies = {label: sample_replies(inputs[label], prompts, k, settings, prompt_format, seed, device, label=label)
                   for label in ("base", "tuned")}
        if reward is None:
            reward = load_reward_model(inputs["reward_model"], dtype=torch.float32, device=device).requires_grad_(False)
        print(f"[scoring {2 * len(prompts) * k} replies with the reward model]", file=sys.stderr, flush=True)
        scores = {label: score_replies(reward, prompts, rs) for label, rs in replies.items()}
    return {"prompts": [{**p, "text": render_prompt(p["messages"])} for p in prompts],
            "samples_per_prompt": k, "seed": seed, "base": inputs["base"], "tuned": inputs["tuned"],
            "reward_model": "(a custom reward)" if custom_reward else inputs["reward_model"],
            "sampling": {key: settings.get(key) for key in ("temperature", "top_k", "top_p", "max_new_tokens",
                                                            "max_prompt_tokens", "stop_at_sentence_end")}
                        | {"bf16": bf16},
            "score": paired_change(scores["base"], scores["tuned"], threads),
            "features": [feature_change(f, replies["base"], replies["tuned"], threads) for f in world or []],
            "empty": feature_change(EMPTY_REPLY, replies["base"], replies["tuned"], threads),
            "words": word_changes(replies["base"], replies["tuned"], clusters=threads),
            "length": paired_change(*([[len(r) for r in rs] for rs in replies[label]] for label in ("base", "tuned")),
                                    threads),
            "replies": {label: [[{"text": r, "score": float(s)} for r, s in zip(rs, ss)]
                                for rs, ss in zip(replies[label], scores[label])] for label in replies}}


# ------------------------------------------------------------------------------------------ the summary

def _signed(x: float, pct: bool, spec: str = ".4f") -> str:
    return f"{x * 100:+.1f} points" if pct else f"{x:+{spec}}"


def describe_change(what: str, c: dict, pct: bool = False, spec: str = ".4f") -> str:
    """One sentence: the values base -> tuned, the change with its interval and z, and the verdict.
    pct: c holds shares, written as percentages and points; else values are written with `spec`."""
    fmt = (lambda v: f"{v * 100:.1f}%") if pct else (lambda v: f"{v:{spec}}")
    v = verdict(c)
    head = f"{what}: {fmt(c['base'])} (base) -> {fmt(c['tuned'])} (tuned)"
    if c["se"] == 0 and c["diff"] == 0:
        return f"{head}; z = 0: NOISE, no change at all (base and tuned gave the same values)."
    if c["se"] is None:
        return f"{head}; {v}."
    z = "inf" if math.isinf(c["z"]) else f"{c['z']:.1f}"
    interval = f"95% interval {_signed(c['ci'][0], pct, spec)} to {_signed(c['ci'][1], pct, spec)}"
    if v == "noise":
        return (f"{head}; change {_signed(c['diff'], pct, spec)} ({interval}, z = {z}): NOISE, |z| < {NOISE_Z:g}, "
                f"no evidence of a change.")
    return f"{head}; {v} by {_signed(abs(c['diff']), pct, spec).lstrip('+')} ({interval}, z = {z})."


def words_line(words: dict) -> str:
    """One sentence: the words whose share of replies rose or fell beyond the threshold (word_changes)."""
    if not words["tested"]:
        return f"Words: none carried by {MIN_WORD_REPLIES} or more replies, nothing to test."
    if words["threshold"] is None:
        return "Words: one prompt or thread, so no standard error: nothing tested."
    head = (f"Words whose share of replies changed ({words['tested']} word(s) carried by {MIN_WORD_REPLIES}+ replies "
            f"tested; with that many tests a change counts beyond |z| > {words['threshold']:.2f}, Bonferroni)")
    z = lambda c: "inf" if math.isinf(c["z"]) else f"{c['z']:.1f}"
    parts = []
    for kind in ("rose", "fell"):
        shown, count = words[kind], words[f"n_{kind}"]
        if shown:
            which = f"{count} word(s), the largest {len(shown)}" if count > len(shown) else f"{count} word(s)"
            parts.append(f"{kind} {which}: " + ", ".join(
                f"'{c['name']}' {c['base'] * 100:.1f}% -> {c['tuned'] * 100:.1f}% (z = {z(c)})" for c in shown))
    return f"{head}: " + ("; ".join(parts) if parts else "none, so no single word's change can be told from noise") + "."


def _read_optional(path: Path):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def rm_auc(rm_dir: Path) -> str:
    """The reward model's held-out AUC from train_rm's eval.json, with the Hanley & McNeil (1982)
    95% interval from its n and label rate (eval.json stores no interval)."""
    ev = _read_optional(rm_dir / "eval.json")
    if not ev or not isinstance(ev.get("roc_auc"), (int, float)):
        return "held-out AUC not recorded"
    auc, n = ev["roc_auc"], ev.get("n")
    if not n or not isinstance(ev.get("label_rate"), (int, float)):
        return f"held-out AUC {auc:.3f}"
    pos = round(n * ev["label_rate"])
    neg = n - pos
    if pos < 1 or neg < 1:
        return f"held-out AUC {auc:.3f} (n = {n})"
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + (pos - 1) * (q1 - auc * auc) + (neg - 1) * (q2 - auc * auc)) / (pos * neg))
    return f"held-out AUC {auc:.3f} (95% interval {auc - Z95 * se:.3f}-{min(1.0, auc + Z95 * se):.3f}, n = {n})"


def read_log(path: Path) -> list[dict]:
    """The records of one of ppo.py's JSONL logs; [] when it does not exist (eval.jsonl of a run
    without --eval-every)."""
    return [r for _, r in read_jsonl(path)] if path.exists() else []


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _with_interval(value, se, spec: str, unit: str = "") -> str:
    """'value unit (95% interval lo to hi)' from a recorded standard error: value +- 1.96 SE."""
    if not _number(value):
        return "not recorded"
    if not _number(se):
        return f"{value:{spec}}{unit} (no standard error recorded: no interval)"
    return f"{value:{spec}}{unit} (95% interval {value - Z95 * se:{spec}} to {value + Z95 * se:{spec}})"


def heldout_eval_line(evals: list[dict], path: Path) -> str:
    """PPO's own held-out evaluation (--eval-every, ppo/eval.jsonl; karma/ppo/rollout.py
    evaluate_policy: one reply per prompt, the same prompts and seed every time): the mean RM score
    of the first and the last evaluation and the KL to the reference (k1 summed over a reply) at the end."""
    if not evals:
        return f"Held-out evaluation during PPO: not recorded (no {path}: ppo.py ran without --eval-every)."
    first, last = evals[0], evals[-1]
    score = lambda r: f"{_with_interval(r.get('score'), r.get('score_se'), '.4f')} after rollout {r.get('rollout')}"
    kl = _with_interval(last.get("kl_seq"), last.get("kl_seq_se"), ".3f", " nats per reply")
    return (f"Held-out evaluation during PPO ({len(evals)} evaluation(s) on {last.get('prompts', '?')} held-out "
            f"prompts, same prompts and seed each time, {path}): mean RM score {score(first)} -> {score(last)}; "
            f"KL to the reference at the end {kl}.")


def _signal(records: list[dict], key: str, pick, spec: str, f=float) -> str:
    """pick (min or max) of f(record[key]) over the rollouts that define it, formatted."""
    if not any(key in r for r in records):
        return "not recorded"
    values = [f(r[key]) for r in records if _number(r.get(key))]
    return format(pick(values), spec) if values else "undefined in every rollout"


def hacking_lines(records: list[dict], path: Path) -> list[str]:
    """The reward-hacking signals of PPO's rollouts (ppo/metrics.jsonl; thresholds in
    karma/ppo/signals.py): every warning with its rollout, else the extremes of the signals."""
    rollouts = [r for r in records if "rollout" in r]
    checked = [r for r in rollouts if "hacking_warning" in r]
    if not checked:
        why = f"no rollout in {path}" if not rollouts else f"{path} has no hacking_warning"
        return [f"Reward-hacking signals: not recorded ({why})."]
    older = len(rollouts) - len(checked)
    unchecked = f" ({older} more rollout(s) logged without the signals)" if older else ""
    warned = [r for r in checked if r["hacking_warning"]]
    if warned:
        return ([f"Reward-hacking WARNING in {len(warned)} of {len(checked)} rollouts{unchecked}; their best and "
                 f"worst replies are top_replies and bottom_replies in {path}:"]
                + [f"  - rollout {r['rollout']}: {r['hacking_warning']}" for r in warned])
    return [f"Reward-hacking signals: no reward-hacking warning in {len(checked)} rollouts{unchecked} "
            f"(distinct-2 min {_signal(checked, 'distinct_2', min, '.3f')}, "
            f"repeat share max {_signal(checked, 'repeat_share', max, '.3f')}, "
            f"|score-length r| max {_signal(checked, 'score_length_corr', max, '.2f', abs)})."]


def summary_text(outcome: dict, demo_dir) -> str:
    """The plain-language summary: what was trained, what rose and by how much, what did not
    change and why, where the pictures are."""
    demo_dir = Path(demo_dir)
    ppo = _read_optional(demo_dir / "ppo" / "config.json") or {}
    stats = _read_optional(Path(ppo.get("data", demo_dir / "data")) / "stats.json") or {}
    rm_cfg = _read_optional(demo_dir / "rm" / "config.json") or {}
    splits = stats.get("splits", {})
    lines = ["KARMA demo: what happened", ""]
    if splits:
        tr, ho = splits.get("train", {}), splits.get("heldout", {})
        lines.append(f"- Data: {tr.get('examples', '?')} training and {ho.get('examples', '?')} held-out replies "
                     f"labelled by their karma, from {tr.get('threads', '?')} + {ho.get('threads', '?')} threads "
                     f"(the shipped sample is SYNTHETIC).")
    steps = f"{rm_cfg['max_steps']} steps, " if isinstance(rm_cfg.get("max_steps"), int) else ""
    lines.append(f"- Reward model: {rm_cfg.get('model', '?')} with a score head, {steps}{rm_auc(demo_dir / 'rm')}.")
    if ppo:
        lines.append(f"- PPO: {ppo.get('rollouts', '?')} rollouts of {ppo.get('rollout_batch', '?')} sampled replies "
                     f"on {ppo.get('n_prompts', '?')} training prompt(s), lr {ppo.get('lr', '?')}, up to "
                     f"{ppo.get('max_new_tokens', '?')} new tokens per reply.")
    ppo_dir = demo_dir / "ppo"
    if ppo_dir.is_dir():
        evals, metrics = ppo_dir / "eval.jsonl", ppo_dir / "metrics.jsonl"
        hacking = hacking_lines(read_log(metrics), metrics)  # a headline, then one indented line per warning
        lines += ["- " + heldout_eval_line(read_log(evals), evals), "- " + hacking[0], *hacking[1:]]
    n, k = outcome["score"]["n"], outcome["samples_per_prompt"]
    threads = outcome["score"].get("clusters", n)
    where = (f"{n} held-out prompts from {threads} threads (never trained on; standard errors over threads)"
             if threads < n else f"{n} held-out prompts (never trained on)")
    lines += ["", f"On {where}, {k} sampled replies each, base model vs tuned policy:",
              "- " + describe_change("Reward-model score", outcome["score"])]
    still = []
    for f in outcome["features"]:
        lines.append("- " + describe_change(f"Share of replies with '{f['name']}'", f, pct=True))
        if verdict(f) == "noise":
            still.append(f)
    if not outcome["features"]:
        lines.append("- Planted content features: not measured (no --world file).")
    if "empty" in outcome:  # outcome.json files written before these two were measured lack them
        lines += ["- " + describe_change("Reply length in characters", outcome["length"], spec=".1f"),
                  "- " + describe_change("Share of empty replies (a reward model never saw one)", outcome["empty"],
                                         pct=True)]
    if "words" in outcome:  # written by measure() since 2026-12-07
        lines.append("- " + words_line(outcome["words"]))
    quiet = [c for c in [outcome["score"]] if verdict(c) == "noise"] + still
    if quiet:
        names = ", ".join(["the RM score" if c is outcome["score"] else f"'{c['name']}'" for c in quiet])
        smallest = [(f"{2 * c['se'] * 100:.1f} points" if c is not outcome["score"] else f"{2 * c['se']:.4f}")
                    for c in quiet if c["se"]]
        why = (f"with {n} prompts a change smaller than about 2 standard errors ({', '.join(smallest)}) cannot be "
               f"told from noise; more held-out prompts (--prompts), more replies per prompt (--samples) or a "
               f"longer PPO run would resolve it" if smallest else "the replies did not differ at all")
        lines.append(f"- No measurable change: {names}. Why: {why}.")
    others = (demo_dir / "ppo" / "curves.png", demo_dir / "rm" / "curves.png", demo_dir / "eval" / "charts")
    pictures = [demo_dir / "summary.png"] + [p for p in others if p.exists()]
    lines += ["", "Pictures: " + ", ".join(str(p) for p in pictures),
              f"Numbers and every reply: {demo_dir / 'outcome.json'}"]
    return "\n".join(lines)


def side_by_side(outcome: dict, n: int = SIDE_BY_SIDE, width: int = 300) -> str:
    """The first sampled reply of base and tuned for the first n held-out prompts (Markdown)."""
    parts = []
    for i, p in enumerate(outcome["prompts"][:n]):
        b, t = outcome["replies"]["base"][i][0], outcome["replies"]["tuned"][i][0]
        text = p["text"] if len(p["text"]) <= width else "..." + p["text"][-width:]
        parts.append(f"### held-out prompt {i + 1}: {p['id']}\n\n```\n{text}\n```\n\n"
                     f"| base (RM {b['score']:.3f}) | tuned (RM {t['score']:.3f}) |\n|---|---|\n"
                     f"| {_cell(b['text'])} | {_cell(t['text'])} |\n")
    return "\n".join(parts)


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("\n", "<br>") or "(empty)"


# ------------------------------------------------------------------------------------------ the picture

def summary_figure(outcome: dict, ppo_records: list[dict], rollout_batch: int = 1, eval_records=()) -> Figure:
    """Three panels: mean RM score base vs tuned (95% intervals), feature shares base vs tuned
    (Wilson intervals), and PPO's mean RM score per rollout on its training prompts (ppo_records,
    metrics.jsonl: 95% interval from score_std / sqrt(rollout_batch)) with, when there are
    eval_records (eval.jsonl), the same score on the held-out prompts (95% interval from score_se)."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_score, ax_feat, ax_curve = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 2, 1.6]})
    s = outcome["score"]
    for x, key, color in ((0, "base", "tab:grey"), (1, "tuned", "tab:blue")):
        lo, hi = s[f"{key}_ci"]
        ax_score.bar(x, s[key], color=color, yerr=[[s[key] - lo], [hi - s[key]]] if math.isfinite(lo) else None,
                     capsize=6)
    ax_score.set_xticks([0, 1], ["base", "tuned"])
    z = "-" if s["z"] is None else ("inf" if math.isinf(s["z"]) else f"{s['z']:.1f}")
    ax_score.set_title(f"RM score, {s['n']} held-out prompts\nchange {s['diff']:+.4f}, z = {z} ({verdict(s)})",
                       fontsize=10)
    ax_score.set_ylabel("mean P(rewarding)")
    feats = outcome["features"]
    if feats:
        x = np.arange(len(feats))
        for off, key, color in ((-0.2, "base", "tab:grey"), (0.2, "tuned", "tab:blue")):
            share = np.array([f[key] for f in feats])
            err = np.array([[f[key] - f[f"{key}_ci"][0], f[f"{key}_ci"][1] - f[key]] for f in feats]).T
            ax_feat.bar(x + off, share, 0.4, yerr=err, capsize=4, color=color, label=key)
        ax_feat.set_xticks(x, [f"{f['name']}\n({verdict(f)})" for f in feats], fontsize=8)
        ax_feat.set_ylim(0, 1)
        ax_feat.legend(fontsize=8)
        ax_feat.set_title("share of replies with each planted content feature (95% Wilson intervals)", fontsize=10)
    else:
        ax_feat.text(0.5, 0.5, "no world file: features not measured", ha="center", va="center", color="grey")
        ax_feat.set_axis_off()
    rollouts = [r for r in ppo_records if isinstance(r.get("score"), (int, float))]
    if rollouts:
        x = np.array([r["rollout"] for r in rollouts])
        y = np.array([r["score"] for r in rollouts])
        se = np.array([_recorded(r.get("score_std")) for r in rollouts]) / math.sqrt(rollout_batch)  # nan: a gap
        ax_curve.fill_between(x, y - Z95 * se, y + Z95 * se, color="tab:blue", alpha=0.2)
        ax_curve.plot(x, y, marker=".", color="tab:blue", label="training prompts: mean RM score of the rollout")
    evals = [r for r in eval_records if _number(r.get("score"))]
    if evals:
        x = np.array([r["rollout"] for r in evals])
        y = np.array([r["score"] for r in evals])
        se = np.array([_recorded(r.get("score_se")) for r in evals])
        spread = np.isfinite(se).any()
        if spread:
            ax_curve.fill_between(x, y - Z95 * se, y + Z95 * se, color="tab:orange", alpha=0.2)
        ax_curve.plot(x, y, marker="o", color="tab:orange",
                      label="held-out prompts (eval.jsonl)" if spread else
                      "held-out prompts (eval.jsonl records no spread: no interval)")
    if rollouts or evals:
        ax_curve.legend(fontsize=7, title="bands: 95% intervals", title_fontsize=7)
    ax_curve.set_title("PPO: training prompts vs held-out prompts" if evals else
                       "PPO: training prompts\n(no held-out evaluation recorded: ppo.py --eval-every)", fontsize=10)
    ax_curve.set_ylabel("mean RM score")
    ax_curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_curve.set_xlabel("rollout")
    fig.suptitle("KARMA demo: base model vs PPO policy on held-out prompts", fontsize=12)
    return fig


def _recorded(x) -> float:
    return float(x) if _number(x) else math.nan


def write_report(outcome: dict, demo_dir, out_dir=None) -> str:
    """outcome.json, SUMMARY.md and summary.png into out_dir (default demo_dir); returns the summary."""
    demo_dir = Path(demo_dir)
    out_dir = Path(out_dir or demo_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "outcome.json", outcome)
    text = summary_text(outcome, demo_dir)
    md = (f"# {text.splitlines()[0]}\n\n" + "\n".join(text.splitlines()[2:]) + "\n\n![summary](summary.png)\n\n"
          f"## Three held-out prompts, sampled replies side by side\n\n{side_by_side(outcome)}")
    atomic_write(out_dir / "SUMMARY.md", lambda p: Path(p).write_text(md, encoding="utf-8"))
    ppo = _read_optional(demo_dir / "ppo" / "config.json") or {}
    fig = summary_figure(outcome, read_log(demo_dir / "ppo" / "metrics.jsonl"), ppo.get("rollout_batch") or 1,
                         read_log(demo_dir / "ppo" / "eval.jsonl"))
    atomic_write(out_dir / "summary.png", lambda p: fig.savefig(p, format="png", dpi=DPI))
    return text


# ------------------------------------------------------------------------------------------ CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m karma.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo_dir", type=Path, help="the demo's output directory (holding data/, rm/, ppo/)")
    p.add_argument("--world", type=Path, default=None,
                   help="world.json of the synthetic sample: the planted content features whose share is measured "
                        "(default: none: features not measured)")
    p.add_argument("--prompts", type=int, default=24,
                   help="held-out prompts (default 24): one per thread first, then second contexts of the threads "
                        "(the standard errors are then over threads)")
    p.add_argument("--samples", type=int, default=4, help="sampled replies per prompt and model (default 4)")
    p.add_argument("--reward-model", type=Path, default=None, help="the reward model that scores the replies (default: the one ppo/config.json names)")
    p.add_argument("--seed", type=seed_arg, default=0, help="sampling seed, the same for both models (default: 0)")
    p.add_argument("--device", type=device_arg, default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.prompts < 2:
        p.error(f"--prompts {args.prompts}: need at least 2 (the standard error is over prompts)")
    if args.samples < 1:
        p.error(f"--samples {args.samples}: must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    world = read_world(args.world) if args.world else None  # bad input stops here, before any model loads
    outcome = measure(args.demo_dir, args.prompts, args.samples, args.seed, world, reward_model=args.reward_model,
                      device=args.device)
    write_prompts([{"id": p["id"], "source": "reddit-heldout", "messages": p["messages"], "meta": p["meta"]}
                   for p in outcome["prompts"]], args.demo_dir / "heldout-prompts.jsonl")
    text = write_report(outcome, args.demo_dir)
    print("\n" + side_by_side(outcome) + "\n" + text)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m karma.demo"))
