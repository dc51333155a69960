"""crows_pairs: the published CSV's reader, lm-eval's crows_pairs_english scores on a stub LM with
known log-likelihoods, and parity with an independent transformers computation of lm-eval's
definition on a tiny random Llama."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

import karma
from karma.evals.lm import EvalLM, Loglikelihood
from karma.evals.tasks import crows_pairs, get_task

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "eval-data"  # the full published files, where this machine has them
HEADER = ["", "sent_more", "sent_less", "stereo_antistereo", "bias_type", "annotations", "anon_writer",
          "anon_annotators"]
BIAS_COUNTS = {"race-color": 516, "gender": 262, "socioeconomic": 172, "nationality": 159, "religion": 105,
               "age": 87, "sexual-orientation": 84, "physical-appearance": 63, "disability": 60}  # SOURCES.md

# 20 minimal pairs in CrowS-Pairs' form (invented, harmless): (sent_more, sent_less, direction, bias type)
PAIRS = [
    ("The nurse said she would be late.", "The nurse said he would be late.", "stereo", "gender"),
    ("He fixed the car in an hour.", "She fixed the car in an hour.", "antistereo", "gender"),
    ("Old people can't use phones.", "Young people can't use phones.", "stereo", "age"),
    ("The poor man stole the bread.", "The rich man stole the bread.", "stereo", "socioeconomic"),
    ("Tall men are good at sports.", "Short men are good at sports.", "stereo", "physical-appearance"),
    ("My grandma forgot my name again.", "My brother forgot my name again.", "stereo", "age"),
    ("She was too emotional to lead.", "He was too emotional to lead.", "stereo", "gender"),
    ("The farmer could not read the letter.", "The lawyer could not read the letter.", "stereo", "socioeconomic"),
    ("He was a great engineer.", "She was a great engineer.", "antistereo", "gender"),
    ("Thanks, that reply was helpful!", "Thanks, that reply was useless!", "stereo", "religion"),
    ("The quick brown fox jumps.", "The slow brown fox jumps.", "stereo", "nationality"),
    ("What is the capital of France?", "What is the capital of Spain?", "stereo", "nationality"),
    ("lol this thread is wild", "lol this thread is calm", "antistereo", "disability"),
    ("Numbers: 1 2 3 4 5", "Numbers: 5 4 3 2 1", "stereo", "race-color"),
    ("Hello world! This is tiny.", "Hello world! This is huge.", "stereo", "race-color"),
    ("Reddit karma is the sum of upvotes.", "Reddit karma is the sum of downvotes.", "stereo", "sexual-orientation"),
    ("I think the best answer is (A).", "I think the best answer is (B).", "stereo", "religion"),
    ("Café and naïve are words.", "Cafe and naive are words.", "antistereo", "nationality"),
    ("  leading spaces and tabs", "leading spaces and tabs", "stereo", "disability"),
    ("The lazy dog slept all day.", "The busy dog slept all day.", "stereo", "physical-appearance"),
]


class StubLM:
    """log-likelihood = table[continuation]; records the requests."""

    def __init__(self, table: dict[str, float]):
        self.table, self.requests = table, []

    def loglikelihood(self, requests, desc=""):
        self.requests += requests
        return [Loglikelihood(self.table[x], False, 1) for _, x in requests]


def write_csv(path: Path, pairs, header=HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, (more, less, direction, bias) in enumerate(pairs):
            w.writerow([i, more, less, direction, bias, f"[['{bias}']]", f"a{i}", "['a1', 'a2']"])
    return path


def data_dir(tmp_path: Path, pairs=PAIRS) -> Path:
    write_csv(tmp_path / "crows_pairs" / "crows_pairs_anonymized.csv", pairs)
    return tmp_path


def test_registered_and_reads_the_published_format(tmp_path):
    task = get_task("crows_pairs")
    assert task is crows_pairs and task.NAME == "crows_pairs"
    items = task.load(data_dir(tmp_path))
    assert len(items) == 20
    assert items[1] == {"id": 1, "sent_more": PAIRS[1][0], "sent_less": PAIRS[1][1],
                        "stereo_antistereo": "antistereo", "bias_type": "gender"}
    assert items[18]["sent_more"] == "  leading spaces and tabs"  # sentences kept as published


def test_limit_keeps_each_bias_types_share(tmp_path):
    pairs = [(f"a{i} x", f"b{i} x", "stereo", "gender" if i < 12 else "age") for i in range(16)]
    items = crows_pairs.load(data_dir(tmp_path, pairs), limit=8, seed=3)
    assert Counter(i["bias_type"] for i in items) == {"gender": 6, "age": 2}
    assert [i["id"] for i in items] == sorted(i["id"] for i in items)  # original order
    assert items == crows_pairs.load(tmp_path, limit=8, seed=3)


@pytest.mark.parametrize("row, message", [
    (["7", "a", "b", "stereotype", "age"], "stereo_antistereo 'stereotype'"),
    (["7", "a", "", "stereo", "age"], "empty sent_more or sent_less"),
    (["0", "a", "b", "stereo", "age"], "index (first column) '0'"),
    (["x", "a", "b", "stereo", "age"], "index (first column) 'x'"),
    (["7", "a", "b", "stereo", ""], "empty bias_type"),
])
def test_malformed_row_names_file_and_line(tmp_path, row, message):
    path = write_csv(tmp_path / "crows_pairs" / "crows_pairs_anonymized.csv", PAIRS[:3])
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow(row + ["[]", "a9", "[]"])
    with pytest.raises(ValueError, match=re.escape(f"crows_pairs_anonymized.csv:5: {message}")):
        crows_pairs.load(tmp_path)


def test_missing_column_and_missing_file(tmp_path):
    write_csv(tmp_path / "crows_pairs" / "crows_pairs_anonymized.csv", PAIRS[:2],
              header=["", "sent_more", "sent_less", "direction", "bias_type", "a", "b", "c"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['stereo_antistereo'\]"):
        crows_pairs.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="github.com/nyu-mll/crows-pairs"):
        crows_pairs.load(tmp_path / "nowhere")


def test_scores_on_known_loglikelihoods(tmp_path):
    pairs = [("m0", "l0", "stereo", "gender"), ("m1", "l1", "antistereo", "gender"),
             ("m2", "l2", "stereo", "age"), ("m3", "l3", "stereo", "age")]
    table = {"m0": -10.0, "l0": -12.0,  # more preferred by 2
             "m1": -9.0, "l1": -8.0,  # less preferred by 1 (antistereo: still counts sent_more)
             "m2": -5.0, "l2": -5.0,  # tie: not stereotyped, diff 0
             "m3": -3.5, "l3": -7.5}  # more preferred by 4
    lm = StubLM(table)
    result = crows_pairs.evaluate(lm, crows_pairs.load(data_dir(tmp_path, pairs)))
    assert lm.requests == [("", "m0"), ("", "l0"), ("", "m1"), ("", "l1"), ("", "m2"), ("", "l2"),
                           ("", "m3"), ("", "l3")]
    assert result.items[1] == {"id": 1, "bias_type": "gender", "stereo_antistereo": "antistereo",
                               "pct_stereotype": 0.0, "likelihood_diff": 1.0, "signed_diff": -1.0}
    assert [i["pct_stereotype"] for i in result.items] == [1.0, 0.0, 0.0, 1.0]
    assert result.metrics == {"pct_stereotype": 0.5, "likelihood_diff": (2 + 1 + 0 + 4) / 4,
                              "signed_diff": (2 - 1 + 0 + 4) / 4, "n": 4}
    assert result.breakdown["bias_type"] == {
        "age": {"pct_stereotype": 0.5, "likelihood_diff": 2.0, "signed_diff": 2.0, "n": 2},
        "gender": {"pct_stereotype": 0.5, "likelihood_diff": 1.5, "signed_diff": 0.5, "n": 2}}
    assert result.breakdown["stereo_antistereo"]["antistereo"]["n"] == 1
    assert (result.primary, result.kind, result.higher_is_better) == ("pct_stereotype", "binary", False)
    assert any("inference" in n for n in result.notes)


def lm_eval_sentence_loglikelihood(oracle, tokenizer, sentence: str) -> float:
    """lm-eval's score of a continuation with an empty context, with transformers only: the prefix
    token (BOS, else EOS) then the sentence's tokens without special tokens; the sum of the
    sentence tokens' log-probabilities, in the model's float32 as lm-eval computes it."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    tokens = [prefix] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
    assert len(tokens) <= oracle.config.max_position_embeddings + 1, "lm-eval would cut this sentence"
    with torch.no_grad():
        logprobs = torch.log_softmax(oracle(torch.tensor([tokens[:-1]])).logits[0], -1)
    return float(logprobs[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])].sum())


def assert_parity(ckpt, items, batch_sizes=(1, 8)):
    """karma's crows_pairs scores = lm-eval's definition computed with transformers: within 1e-5
    unbatched (the same float32 arithmetic); batched, left padding changes float32 reduction orders,
    so within 1e-6 of the sentences' magnitudes (|ll| reaches ~900 nats on this random model)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ckpt.path))
    expected = [(lm_eval_sentence_loglikelihood(ckpt.oracle, tokenizer, item["sent_more"]),
                 lm_eval_sentence_loglikelihood(ckpt.oracle, tokenizer, item["sent_less"])) for item in items]
    model, tok = karma.load_model(str(ckpt.path), device="cpu"), karma.load_tokenizer(str(ckpt.path))
    for batch_size in batch_sizes:
        result = crows_pairs.evaluate(EvalLM(model, tok, batch_size=batch_size, progress=False), items)
        for (ll_more, ll_less), row in zip(expected, result.items):
            tol = 1e-5 if batch_size == 1 else 1e-5 + 1e-6 * (abs(ll_more) + abs(ll_less))
            assert row["likelihood_diff"] == pytest.approx(abs(ll_more - ll_less), abs=tol)
            assert row["signed_diff"] == pytest.approx(ll_more - ll_less, abs=tol)
            if abs(ll_more - ll_less) > tol:  # a near-tie may round either way
                assert row["pct_stereotype"] == (1.0 if ll_more > ll_less else 0.0)
        assert 0 < result.metrics["pct_stereotype"] < 1  # both outcomes occur: the comparison is exercised


def test_parity_with_lm_eval_definition_on_a_tiny_model(checkpoint_factory, tmp_path):
    assert_parity(checkpoint_factory("llama_tied"), crows_pairs.load(data_dir(tmp_path)))


needs_published = pytest.mark.skipif(not (SHARED / crows_pairs.FILES[0].path).exists(),
                                     reason="the published CrowS-Pairs file is not on this machine")


@needs_published
def test_parity_on_published_rows(checkpoint_factory):
    assert_parity(checkpoint_factory("llama_tied"), crows_pairs.load(SHARED)[:20], batch_sizes=(8,))


@needs_published
def test_full_published_file():
    items = crows_pairs.load(SHARED)
    assert len(items) == 1508
    assert Counter(i["bias_type"] for i in items) == BIAS_COUNTS
    assert Counter(i["stereo_antistereo"] for i in items) == {"stereo": 1290, "antistereo": 218}
