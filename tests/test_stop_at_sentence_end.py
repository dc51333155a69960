"""ppo.py --stop-at-sentence-end: a reply ends at its first sentence-ending punctuation token, kept in
the reply, as it ends at EOS (Ziegler et al. 2019 truncate samples at a period); the demo's held-out
report samples the same way. Checked against the same draws without the flag: with one seed, a
stopped reply is the unstopped reply cut just after its first sentence end."""

from __future__ import annotations

import json
import unicodedata

import pytest
import torch

from hf_fixtures import TOKENIZER_STYLES, make_tokenizer
from karma.demo import sample_replies
from karma.ppo.rollout import reply_stop_ids, sample_and_score
from karma.ppo.trainer import PPOConfig
from karma.tokenizer import SENTENCE_END, Tokenizer, load_tokenizer
from karma.weights import load_model
from test_ppo_trainer import LetterReward, setup  # noqa: F401 (setup: the module's fixture)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: conftest.one_thread

CLOSERS = "\"')]\u201d\u2019"


@pytest.mark.parametrize("text,ends", [
    (".", True), ("?", True), ("!", True), ('."', True), (".)", True), ("?\u201d", True), (" .\n", True),
    ("...", True), (").", True), ("!!", True),
    ("a.", False), ("3.", False), ("._", False), (". )", False), (",", False), ("\u2026", False), ("", False),
    (" ", False), ("<|im_end|>", False)])
def test_the_sentence_end_rule_on_token_texts(text, ends):
    assert bool(SENTENCE_END.match(text)) == ends == ends_a_sentence(text)


def ends_a_sentence(text: str) -> bool:
    """The rule, written out by characters: after trailing whitespace and closing quotes or brackets,
    the last mark is . ! or ?, and the token has no letter or digit."""
    if not text.strip() or any(unicodedata.category(c)[0] in "LN" or c == "_" for c in text):
        return False
    return text.rstrip().rstrip(CLOSERS)[-1:] in (".", "!", "?")


@pytest.mark.parametrize("style", TOKENIZER_STYLES)
def test_sentence_end_ids_are_the_punctuation_tokens_that_end_a_sentence(style, tmp_path):
    make_tokenizer(style, tmp_path)
    tok = Tokenizer(tmp_path)
    texts = {i: tok.decode([i]) for i in range(tok.vocab_size)}
    expected = sorted(i for i, t in texts.items() if ends_a_sentence(t))
    assert tok.sentence_end_ids == expected
    for mark in (".", "!", "?"):  # the plain marks are single byte-level tokens in every vocabulary
        assert tok.tok.token_to_id(mark) in tok.sentence_end_ids
    for other in ("a", ",", "7"):
        assert tok.tok.token_to_id(other) not in tok.sentence_end_ids
    assert not set(tok.sentence_end_ids) & {tok.eos_id, tok.pad_id, tok.bos_id}
    assert reply_stop_ids(tok, False) == tok.stop_ids
    assert reply_stop_ids(tok, True) == tok.stop_ids + tok.sentence_end_ids


def cut_after_first_sentence_end(tokens: list[int], ends: set[int]) -> list[int]:
    return next((tokens[:i + 1] for i, t in enumerate(tokens) if t in ends), tokens)


def test_a_reply_stops_at_its_first_sentence_end(setup):
    policy_dir, prompts_file = setup
    policy = load_model(policy_dir)
    ref = load_model(policy_dir).requires_grad_(False)
    tok = load_tokenizer(policy_dir)
    prompts = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    ends = set(tok.sentence_end_ids)
    runs = {flag: sample_and_score(policy, ref, LetterReward(), tok, prompts,
                                   PPOConfig(max_new_tokens=24, max_prompt_tokens=64, stop_at_sentence_end=flag),
                                   seed=5)
            for flag in (False, True)}
    free, stopped = runs[False], runs[True]
    cut_early = 0
    for b in range(len(prompts)):
        whole = free.response[b][free.response_mask[b].bool()].tolist()
        reply = stopped.response[b][stopped.response_mask[b].bool()].tolist()
        assert reply == cut_after_first_sentence_end(whole, ends), b  # the same draws, cut
        assert not ends & set(reply[:-1])  # no sentence end before the last token
        ended_here = bool(reply) and (reply[-1] in ends or reply[-1] in tok.stop_ids)
        assert bool(stopped.ended[b]) == ended_here, b
        assert stopped.texts[b] == tok.decode(reply)
        cut_early += len(reply) < len(whole)
    assert cut_early >= 1, cut_early  # the flag changed some replies (random tiny weights: 3 of 32 here)
    # the reward model scored the cut replies, and the policy's log-probs cover exactly their tokens
    assert stopped.logprobs.shape == stopped.response_mask.shape
    assert bool((stopped.logprobs[stopped.response_mask == 0] == 0).all())


def test_the_demo_report_samples_as_ppo_did(setup):
    """karma.demo.sample_replies reads stop_at_sentence_end from ppo/config.json's settings."""
    policy_dir, prompts_file = setup
    prompts = [json.loads(line) for line in prompts_file.read_text().splitlines()][:8]
    settings = {"temperature": 1.0, "max_new_tokens": 24, "max_prompt_tokens": 64}
    free = sample_replies(policy_dir, prompts, 3, settings, "generalized", seed=2)
    stopped = sample_replies(policy_dir, prompts, 3, {**settings, "stop_at_sentence_end": True}, "generalized", seed=2)
    shorter = 0
    for whole_k, cut_k in zip(free, stopped):
        for whole, cut in zip(whole_k, cut_k):
            assert whole.startswith(cut)  # the same draws (the seed per batch), cut
            if len(cut) < len(whole):
                shorter += 1
                assert cut.rstrip().rstrip(CLOSERS)[-1:] in (".", "!", "?"), cut
    assert shorter >= 1
