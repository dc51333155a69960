"""The reward-shortcut report on REAL trained tiny reward models with a planted rule.

Two conditioned RMs are trained by karma.reward_train.train (train_rm.py's loop) from the tests'
tiny Llama on synthetic examples from one generator (bench/shortcuts_planted.py): one labelled
only by the header's subreddit, one only by a word in the reply; each sees both signals. The
report must find the rule each learned, and nothing else: flips near the 0.5 of a re-drawn score
where the rule's input changes, ~0 (within the thread-bootstrap interval) elsewhere.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from shortcuts_planted import planted_reports  # noqa: E402

HEADER_PROBES = ("swap_subreddit", "swap_both", "no_header")  # each changes the subreddit
REPLY_PROBES = ("sibling", "other_thread")


@pytest.fixture(scope="module")
def reports(checkpoint_factory, tmp_path_factory):
    base = checkpoint_factory("llama_tied").path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend (10x slower on a busy 2-core machine)
    try:
        return planted_reports(base, tmp_path_factory.mktemp("planted"), steps=150, threads=80, seed=0,
                               n_resamples=100)
    finally:
        torch.set_num_threads(threads)


def _probes(report):
    (entry,) = report["rms"].values()
    return entry, {**entry["metadata"], **entry["content"]}


@pytest.mark.slow
def test_header_only_rm_reads_the_subreddit_and_not_the_reply(reports):
    entry, probes = _probes(reports["header"])
    assert entry["metrics"]["roc_auc"] > 0.95
    for probe in HEADER_PROBES:  # its ranking is lost: flips near or past the re-drawn 0.5, AUC to chance
        r = probes[probe]
        assert r["flip_share"] > 0.35 and r["ci"]["flip_share"][0] > 0.25, (probe, r)
        assert r["auc"] < 0.7 and r["ci"]["auc_change"][1] < -0.2, (probe, r)
    for probe in ("swap_time", *REPLY_PROBES):  # what it ignores: ~0, not the old count's 0.24
        r = probes[probe]
        assert r["flip_share"] < 0.02 and r["ci"]["flip_share"][1] < 0.05, (probe, r)
        assert r["mean_abs_change"] < 0.02, (probe, r)


@pytest.mark.slow
def test_reply_only_rm_reads_the_word_and_not_the_header(reports):
    entry, probes = _probes(reports["reply"])
    assert entry["metrics"]["roc_auc"] > 0.9
    for probe in REPLY_PROBES:
        r = probes[probe]
        assert r["flip_share"] > 0.35 and r["ci"]["flip_share"][0] > 0.25, (probe, r)
        assert r["ci"]["auc_change"][1] < -0.2, (probe, r)
    header_rm = _probes(reports["header"])[1]
    for probe in (*HEADER_PROBES, "swap_time"):
        r = probes[probe]
        assert r["flip_share"] < 0.1 and r["ci"]["flip_share"][1] < 0.15, (probe, r)
        assert r["flip_share"] < header_rm[probe]["flip_share"] / 4 or probe == "swap_time", (probe, r)
