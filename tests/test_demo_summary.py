"""The demo's outcome report (karma/demo.py) on tiny checkpoints, with planted truths: a tuned model
that always writes a feature the reward pays for is detected as a rise far outside the noise;
identical models give z = 0 and the word NOISE; held-out prompts never include training prompts;
the Makefile's demo ends with the report and its compare step asks only for prompts that exist."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import karma
from karma.cli import run_main
from karma.demo import (EMPTY_REPLY, Z95, cluster_se, feature_change, main, measure, paired_change, read_world, verdict,
                        wilson, word_changes, words_line, words_of, write_report)
from karma.data.prompts import heldout_prompts
from karma.reward import RewardConfig, build_reward_model, save_reward_model
from karma.tokenizer import copy_tokenizer_files

ROOT = Path(__file__).resolve().parents[1]
FEATURE = {"name": "aaaa", "pattern": "a{4,}", "description": "four or more a's in a row", "effect": "+karma"}


class FeatureReward:
    """Pays 0.9 for a reply carrying the feature, 0.1 otherwise, plus a little length-driven spread
    (so per-prompt means differ and the standard error is not 0)."""

    cfg = SimpleNamespace(format="generalized")

    def score(self, contexts, responses, metas=None):
        return torch.tensor([(0.9 if "aaaa" in r else 0.1) + 0.01 * (len(r) % 7) for r in responses])


def planted_model(base: Path, out: Path) -> Path:
    """A copy of `base` that writes 'a' at every step: every token embeds to one vector and the
    blocks add nothing, so the final hidden state h is the same everywhere; the LM head then gives
    only 'a' a logit (20 |h|), the rest 0."""
    model = karma.load_model(str(base))
    tok = karma.load_tokenizer(str(base))
    a = tok.encode("a", add_special_tokens=False)[0]
    with torch.no_grad():
        model.embed.weight.copy_(model.embed.weight[a].expand_as(model.embed.weight))
        for block in model.blocks:
            block.attn.out.weight.zero_()
            block.mlp.down.weight.zero_()
        h = model.norm(model.embed.weight[a])
        model.lm_head.weight.zero_()
        model.lm_head.weight[a] = 20 * h / h.norm()
    karma.save_model(model, out)
    copy_tokenizer_files(tok, out)
    return out


def write_demo(root: Path, base: Path, policy: Path, reward_model: Path, n_threads: int = 8) -> Path:
    """A demo directory as `make demo` leaves it: data/ (held-out threads, one training prompt),
    rm/eval.json, ppo/ (config.json, metrics.jsonl, policy/)."""
    data, ppo = root / "data", root / "ppo"
    data.mkdir(parents=True)
    examples = []
    for t in range(n_threads):
        for c in range(2):  # two replies to the same post: one context per thread
            examples.append({"id": f"t1_{t}{c}", "split": "heldout", "thread_id": f"t3_{t}", "parent_id": f"t3_{t}",
                             "messages": [{"role": "user", "content": f"Post {t}: what do you think?"}],
                             "response": "a reply", "label": c, "meta": {"subreddit": "test",
                                                                        "created_utc": 1420070400 + t}})
    (data / "heldout-00000.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    train_prompt = {"id": "reddit-t3_0", "source": "reddit", "messages": examples[0]["messages"], "meta": None}
    (data / "prompts-reddit.jsonl").write_text(json.dumps(train_prompt) + "\n")  # post 0 is also a training prompt
    (data / "stats.json").write_text(json.dumps({"splits": {"train": {"examples": 10, "threads": 5},
                                                            "heldout": {"examples": 16, "threads": n_threads}}}))
    (root / "rm").mkdir()
    (root / "rm" / "eval.json").write_text(json.dumps({"roc_auc": 0.8, "n": 96, "label_rate": 0.5}))
    (root / "rm" / "config.json").write_text(json.dumps({"model": "tiny", "max_steps": 12}))
    ppo.mkdir()
    shutil.copytree(policy, ppo / "policy")
    (ppo / "config.json").write_text(json.dumps({
        "model": str(base), "reward_model": str(reward_model), "data": str(data), "temperature": 1.0, "top_k": None,
        "top_p": None, "max_new_tokens": 8, "max_prompt_tokens": 48, "rollouts": 3, "rollout_batch": 4,
        "n_prompts": 1, "lr": 1e-5}))
    (ppo / "metrics.jsonl").write_text("".join(json.dumps({"rollout": r, "score": 0.4 + 0.02 * r, "score_std": 0.1})
                                               + "\n" for r in (1, 2, 3)))
    return root


@pytest.fixture(scope="module")
def tiny(checkpoint_factory, tmp_path_factory):
    """(base, planted policy, a saved tiny reward model) directories."""
    base = checkpoint_factory("llama_untied").path
    planted = planted_model(base, tmp_path_factory.mktemp("planted"))
    rm = build_reward_model(str(base), RewardConfig(max_length=64))
    rm_dir = save_reward_model(rm, tmp_path_factory.mktemp("rm") / "best")
    return base, planted, rm_dir


def test_a_planted_feature_is_detected_as_a_rise_outside_the_noise(tiny, tmp_path):
    base, planted, rm_dir = tiny
    demo = write_demo(tmp_path / "demo", base, planted, rm_dir)
    outcome = measure(demo, n_prompts=8, k=3, world=[FEATURE], reward=FeatureReward())
    assert len(outcome["prompts"]) == 7  # post 0 is a training prompt: left out
    assert "Post 0:" not in " ".join(p["text"] for p in outcome["prompts"])
    assert all(r["text"].startswith("aaaa") for rs in outcome["replies"]["tuned"] for r in rs)
    s, f = outcome["score"], outcome["features"][0]
    assert s["diff"] > 0.7 and s["z"] > 10 and verdict(s) == "rose", s
    assert f["tuned"] == 1.0 and f["base"] < 0.2 and f["tuned_ci"][0] > f["base_ci"][1] and verdict(f) == "rose"
    tuned_lengths = [len(r["text"]) for rs in outcome["replies"]["tuned"] for r in rs]
    assert outcome["length"]["tuned"] == pytest.approx(np.mean(tuned_lengths)) and outcome["empty"]["tuned"] == 0
    text = write_report(outcome, demo)
    assert "Reward-model score" in text and "rose by" in text and "Share of replies with 'aaaa'" in text
    assert "Reply length in characters: " in text and "Share of empty replies (a reward model never saw one): " in text
    assert "held-out AUC 0.800 (95% interval" in text and str(demo / "summary.png") in text
    assert "- Words whose share of replies changed (1 word(s) carried by 10+ replies tested" in text
    assert "rose 1 word(s): 'aaaaaaaa' 0.0% -> 100.0% (z = inf)" in text  # the tuned replies' planted word
    md = (demo / "SUMMARY.md").read_text()
    assert md.count("### held-out prompt") == 3 and "| base (RM" in md and "aaaa" in md
    assert (demo / "summary.png").stat().st_size > 10_000
    assert json.loads((demo / "outcome.json").read_text())["score"]["n"] == 7


def test_second_contexts_of_a_thread_make_the_thread_the_unit_and_bf16_follows_ppo(tiny, tmp_path):
    base, planted, rm_dir = tiny
    demo = write_demo(tmp_path / "demo", base, planted, rm_dir)
    heldout = demo / "data" / "heldout-00000.jsonl"
    rows = [json.loads(line) for line in heldout.read_text().splitlines()]
    for r in rows[1::2]:  # each thread's second reply answers a deeper context: a second prompt of that thread
        r["messages"] = r["messages"] + [{"role": "assistant", "content": f"A first answer in {r['thread_id']}."},
                                         {"role": "user", "content": "And then?"}]
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = json.loads((demo / "ppo" / "config.json").read_text())
    (demo / "ppo" / "config.json").write_text(json.dumps({**config, "cpu_bf16": True}))
    outcome = measure(demo, n_prompts=20, k=2, world=[FEATURE], reward=FeatureReward(), device="cpu")
    threads = [p["thread_id"] for p in outcome["prompts"]]
    assert len(threads) == 15 and len(set(threads)) == 8  # post 0's first context is a training prompt
    s = outcome["score"]
    assert (s["n"], s["clusters"]) == (15, 8) and outcome["sampling"]["bf16"] is True
    per_prompt = lambda label: np.array([np.mean([r["score"] for r in rs]) for rs in outcome["replies"][label]])
    assert s["se"] == pytest.approx(cluster_se(per_prompt("tuned") - per_prompt("base"), threads))
    assert outcome["features"][0]["clusters"] == 8
    assert "On 15 held-out prompts from 8 threads (never trained on; standard errors over threads)" in \
        write_report(outcome, demo)


def test_identical_models_read_as_noise_through_the_cli(tiny, tmp_path, capsys):
    base, _, rm_dir = tiny
    demo = write_demo(tmp_path / "demo", base, base, rm_dir)  # the "tuned" policy is the base model
    world = tmp_path / "world.json"
    world.write_text(json.dumps({"content_features": [FEATURE]}))
    main([str(demo), "--world", str(world), "--prompts", "6", "--samples", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    outcome = json.loads((demo / "outcome.json").read_text())
    assert outcome["score"]["diff"] == 0 and outcome["score"]["z"] == 0
    assert outcome["replies"]["base"] == outcome["replies"]["tuned"]  # same model, same seeds
    assert "NOISE" in out and "No measurable change: the RM score" in out
    assert out.rstrip().endswith(f"Numbers and every reply: {demo / 'outcome.json'}")  # the summary comes last
    assert out.count("### held-out prompt") == 3


def test_bad_inputs_are_one_line_errors_before_any_model_loads(tmp_path, capsys):
    world = tmp_path / "world.json"
    world.write_text(json.dumps({"content_features": [{"name": "x", "pattern": "(unclosed"}]}))
    assert run_main(main, [str(tmp_path), "--world", str(world)], prog="karma.demo") == 2
    err = capsys.readouterr().err
    assert f"{world}: content_features[0]: pattern '(unclosed' is not a Python regex" in err
    assert len(err.splitlines()) == 1
    assert run_main(main, [str(tmp_path / "nowhere")], prog="karma.demo") == 2
    assert "ppo/config.json: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--prompts", "1"])
    assert "--prompts 1: need at least 2" in capsys.readouterr().err


def test_paired_change_recovers_a_known_shift():
    rng = np.random.default_rng(0)
    prompt_effect = rng.normal(0, 1, size=(400, 1))  # big between-prompt spread, shared by both models
    base = prompt_effect + rng.normal(0, 0.1, size=(400, 4))
    tuned = base + 0.05 + rng.normal(0, 0.1, size=(400, 4))
    c = paired_change(base, tuned)
    # per prompt, d_i = 0.05 + mean of 4 N(0, 0.1): SE = 0.05 / sqrt(400) = 0.0025, z about 20
    assert c["ci"][0] < 0.05 < c["ci"][1] and 0.0022 < c["se"] < 0.0028 and 15 < c["z"] < 25
    same = paired_change(base, base)
    assert same["diff"] == 0 and same["z"] == 0 and verdict(same) == "noise"
    assert verdict(paired_change(base, base + rng.normal(0, 0.1, size=(400, 4)))) == "noise"


def test_cluster_se_is_the_sandwich_estimator_and_counts_a_repeated_prompt_once():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    groups = rng.integers(0, 9, size=30)
    # independently: the sandwich (X'X)^-1 (sum_g X_g' u_g u_g' X_g) (X'X)^-1 of least squares on a constant,
    # times G / (G - 1)
    X, u = np.ones((30, 1)), x - x.mean()
    meat = sum(np.outer(X[groups == g].T @ u[groups == g], X[groups == g].T @ u[groups == g]) for g in set(groups))
    bread = np.linalg.inv(X.T @ X)
    G = len(set(groups))
    assert cluster_se(x, list(groups)) == pytest.approx(math.sqrt(G / (G - 1) * (bread @ meat @ bread)[0, 0]))
    assert cluster_se(x, list(range(30))) == pytest.approx(x.std(ddof=1) / math.sqrt(30))  # one per cluster
    twice = np.repeat(x, 2)  # every prompt asked twice within its own thread: no new information
    assert cluster_se(twice, list(np.repeat(np.arange(30), 2))) == pytest.approx(x.std(ddof=1) / math.sqrt(30))
    assert paired_change(np.zeros(60), twice, np.repeat(np.arange(30), 2))["clusters"] == 30
    assert cluster_se(x, [0] * 30) is None
    with pytest.raises(ValueError, match="29 cluster labels for 30 values"):
        cluster_se(x, list(range(29)))
    constant = paired_change(np.zeros(4), np.ones(4))  # every difference 1: SE 0, intervals of width 0
    assert constant["se"] == 0 and constant["tuned_ci"] == [1.0, 1.0] and constant["z"] == math.inf
    cancelling = paired_change(np.zeros(4), np.array([0.0, 2.0, 0.0, 2.0]), [0, 0, 1, 1])  # each thread sums to 0
    assert cancelling["se"] is None and cancelling["z"] is None


def test_clustered_intervals_cover_where_per_prompt_ones_do_not():
    """Planted: 12 threads x 4 prompts, the change shared within a thread (sd 1) beyond the prompt's own
    (sd 0.3), true change 0. The per-prompt SE treats 48 prompts as independent; the clustered one does not."""
    rng = np.random.default_rng(2)
    threads = list(np.repeat(np.arange(12), 4))
    covered = {"per prompt": 0, "clustered": 0}
    for _ in range(1000):
        d = np.repeat(rng.normal(0, 1, 12), 4) + rng.normal(0, 0.3, 48)
        covered["per prompt"] += abs(paired_change(np.zeros(48), d)["z"]) < Z95
        covered["clustered"] += abs(paired_change(np.zeros(48), d, threads)["z"]) < Z95
    assert covered["per prompt"] < 700 and covered["clustered"] > 900, covered


def test_empty_replies_are_counted_whitespace_included():
    c = feature_change(EMPTY_REPLY, [["", "a reply"], ["no", "yes"]], [["", " \n"], ["", "."]])
    assert (c["base_count"], c["tuned_count"], c["replies"]) == (1, 3, 4)
    assert c["diff"] == pytest.approx(0.5)  # per-prompt shares: (1 - 0.5) and (0.5 - 0) over two prompts


WORDS = [a + b for a in "bcdfg" for b in ("ale", "ive", "oot", "urn", "ump", "ish", "ent", "ay")]  # 40 words


def replies(rng, n: int = 24, k: int = 8, add: str | None = None, drop: str | None = None) -> list[list[str]]:
    """n prompts x k replies of 6 words drawn from WORDS; `add` put into 70% of them, `drop` removed."""
    def reply():
        words = [w for w in rng.choice(WORDS, 6) if w != drop]
        return " ".join(words + ([add] if add and rng.random() < 0.7 else []))
    return [[reply() for _ in range(k)] for _ in range(n)]


def test_word_changes_finds_the_planted_words_and_no_others():
    rng = np.random.default_rng(0)
    base = replies(rng)
    tuned = replies(rng, add="hope", drop=WORDS[0])  # each word is in about 14% of the base replies
    words = word_changes(base, tuned)
    # the t quantile for 41 tests at 23 degrees of freedom is 3.69 (the normal one would be 3.23)
    assert words["tested"] == 41 and 3.6 < words["threshold"] < 3.8
    assert [c["name"] for c in words["rose"]] == ["hope"] and [c["name"] for c in words["fell"]] == [WORDS[0]]
    assert (words["n_rose"], words["n_fell"]) == (1, 1)
    assert words["rose"][0]["base"] == 0 and 0.6 < words["rose"][0]["tuned"] < 0.8
    line = words_line(words)
    assert "41 word(s)" in line and "rose 1 word(s): 'hope' 0.0% -> " in line and f"fell 1 word(s): '{WORDS[0]}' " in line
    # no change planted: the family of 41 tests says "changed" in 3 of 100 draws (9 of 100 with the normal
    # quantile); here, in at most 3 of 20 (this catches a missing Bonferroni correction)
    false_alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(seed + 1)
        null = word_changes(replies(rng), replies(rng))
        false_alarms += bool(null["rose"] or null["fell"])
    assert false_alarms <= 3, false_alarms
    assert "none, so no single word's change" in words_line(word_changes(base, base))


def test_words_are_letters_with_inner_apostrophes_in_any_script():
    assert words_of("Tom\u00e1s, I'm hopeful: it\u2019s 3x better; 'hope' HOPE-less") == {
        "tom\u00e1s", "i'm", "hopeful", "it's", "x", "better", "hope", "less"}
    # "hope" is carried by the replies that have the word, not by those with "hopeful"
    base = [["hopeful words here"] * 4 for _ in range(6)]
    tuned = [["we hope so", "hope!", "It\u2019s hope", "(hope)"] for _ in range(6)]
    words = word_changes(base, tuned)
    assert [c["name"] for c in words["rose"]] == ["hope"] and words["rose"][0]["base"] == 0
    assert {c["name"] for c in words["fell"]} == {"hopeful", "words", "here"}
    assert words["n_fell"] == 3 and "fell 3 word(s): " in words_line(words)
    assert "nothing tested" in words_line(word_changes([["hopeful"] * 12], [["hope"] * 12]))  # one prompt: no SE
    assert "nothing to test" in words_line(word_changes([["a b"]] * 3, [["c d"]] * 3))


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Table I: 0/10 -> 0-0.2775, 5/10 -> 0.2366-0.7634
    assert np.allclose(wilson(0, 10), [0.0, 0.2775], atol=1e-4)
    assert np.allclose(wilson(5, 10), [0.2366, 0.7634], atol=1e-4)
    assert not any(map(math.isnan, wilson(10, 10)))


def test_heldout_prompts_take_one_context_per_thread_first(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"t1_{i}", "thread_id": f"t3_{i // 3}", "parent_id": f"t1_p{i}",
             "messages": [{"role": "user", "content": f"post {i // 3}"}, {"role": "user", "content": f"c{i}"}]}
            for i in range(9)]  # 3 threads, 3 contexts each
    (data / "heldout-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p["thread_id"] for p in heldout_prompts(data, 4)] == ["t3_0", "t3_1", "t3_2", "t3_0"]
    with pytest.raises(FileNotFoundError, match="no heldout-"):
        heldout_prompts(tmp_path, 4)


def test_read_world_needs_named_features(tmp_path):
    path = tmp_path / "world.json"
    path.write_text(json.dumps({"content_features": [{"pattern": "x"}]}))
    with pytest.raises(ValueError, match=r'content_features\[0\]: needs a string "name"'):
        read_world(path)


def test_make_demo_ends_with_the_report_and_compares_existing_prompts(tmp_path):
    """`make -n` prints the demo's commands without running them (recursive makes do run, printing theirs)."""
    world = tmp_path / "world.json"
    world.write_text("{}")

    def commands(*targets):
        out = subprocess.run(["make", "-n", "--no-print-directory", *targets, f"DEMO={tmp_path}/d",
                              f"DEMO_WORLD={world}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        lines = out.replace("\\\n", " ").splitlines()  # a command continued over several lines is one
        return [line for line in lines if "python" in line and "pip" not in line]

    demo = commands("demo")
    assert "karma.demo" in demo[-1] and f"--world {world}" in demo[-1]  # the report is the last step
    assert not any("--compare" in c for c in demo)  # the report shows sampled replies side by side instead
    compare = [c for c in commands("compare") if "--compare" in c]
    assert len(compare) == 1 and "prompts-reddit.jsonl" not in compare[0]  # it holds --max-prompts prompts: 1
    assert f"--prompts {tmp_path}/d/heldout-prompts.jsonl --n 3" in compare[0]
