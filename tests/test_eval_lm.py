"""EvalLM's log-likelihoods: the same numbers with or without the shared-prefix cache and the
shared-input pass, for every attention layout (RoPE, ALiBi, multi-query); BOS as lm-eval 0.4.13 adds it
(the tokenizer's default), or never with add_bos=False, in scoring and in generation."""

from __future__ import annotations

import pytest
from test_eval_mmlu import hf_loglikelihoods

import karma
from karma.evals import lm as lm_module
from karma.evals.lm import EvalLM, shared_prefix_length

PRIMER = "Q: What is the capital of France?\nA: Paris is the capital of France.\n\nQ: Who wrote it?\nA: I have no comment."
REQUESTS = [(PRIMER + f"\n\nQ: question number {i}?\nA:", answer)
            for i in range(5) for answer in (" Yes, it is.", " No", " Maybe so, said the fox.")]
REQUESTS += [("Unrelated context", " with a reply"), ("", "an empty context")]


@pytest.mark.parametrize("layout", ["llama_tied", "falcon_rw", "falcon_7b", "neox"])
def test_prefix_cache_and_shared_inputs_change_no_score(layout, checkpoint_factory, monkeypatch):
    path = checkpoint_factory(layout).path
    lm = EvalLM(karma.load_model(path), karma.load_tokenizer(path), batch_size=4, progress=False)
    primed = lm.loglikelihood(REQUESTS[:15])  # all share the primer: the prefix cache is used
    mixed = lm.loglikelihood(REQUESTS)  # no common prefix: plain batches
    one_by_one = [lm.loglikelihood([r])[0] for r in REQUESTS]
    monkeypatch.setattr(lm_module, "MIN_SHARED_PREFIX", 10**9)
    uncached = lm.loglikelihood(REQUESTS[:15])
    for got in (primed, mixed[:15], uncached):
        for a, b in zip(got, one_by_one):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and a.n_tokens == b.n_tokens
    assert [r.is_greedy for r in primed] == [r.is_greedy for r in uncached]


def test_shared_prefix_stops_before_the_first_scored_position():
    assert shared_prefix_length([(1, 2, 3, 4), (1, 2, 3, 5), (1, 2, 9)], [4, 4, 3]) == 2
    assert shared_prefix_length([(1, 2, 3, 4), (1, 2, 3, 4)], [2, 3]) == 2
    assert shared_prefix_length([(7,), (8,)], [1, 1]) == 0


# ---------------------------------------------------------------------------------------------
# BOS: the tokenizer's default, as lm-evaluation-harness >= 0.4.9.2 (checked against 0.4.13)
# ---------------------------------------------------------------------------------------------

BOS_REQUESTS = [("Hello world! Is this", " a tiny corpus?"), ("The quick brown fox ", "jumps over"),
                ("", "The lazy dog."), ("<|begin_of_text|>Numbers: 1 2", " 3 4"), ("lol", " this thread is wild")]


@pytest.mark.parametrize("layout, adds_bos", [("llama_tied", True), ("neox", False), ("falcon_7b", False)])
def test_bos_follows_the_tokenizer_as_lm_eval_does(layout, adds_bos, checkpoint_factory):
    ckpt = checkpoint_factory(layout)
    model, tok = karma.load_model(ckpt.path), karma.load_tokenizer(ckpt.path)
    default, old = EvalLM(model, tok, progress=False), EvalLM(model, tok, progress=False, add_bos=False)
    assert default.add_bos is adds_bos and old.add_bos is False
    for lm, add_bos_token in ((default, None), (old, False)):
        ours = [r.logprob for r in lm.loglikelihood(BOS_REQUESTS)]
        assert ours == pytest.approx(hf_loglikelihoods(ckpt, BOS_REQUESTS, add_bos_token), abs=1e-4)
    if adds_bos:  # the two conventions differ where a context is not empty
        ours, theirs = (lm.loglikelihood(BOS_REQUESTS[:3]) for lm in (default, old))
        assert [abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(ours, theirs)] == [True, True, False]


@pytest.mark.parametrize("add_bos", [None, False])
def test_generation_prompts_get_bos_as_lm_eval_does(add_bos, checkpoint_factory, monkeypatch):
    """lm-eval's generate_until (tok_batch_encode): the tokenizer's default special tokens, or none."""
    from transformers import AutoTokenizer

    ckpt = checkpoint_factory("llama_tied")
    lm = EvalLM(karma.load_model(ckpt.path), karma.load_tokenizer(ckpt.path), progress=False, add_bos=add_bos)
    seen = []
    real = lm_module.generate
    monkeypatch.setattr(lm_module, "generate", lambda model, ids, mask, **kw: seen.append(
        [row[m.bool()].tolist() for row, m in zip(ids, mask)]) or real(model, ids, mask, **kw))
    prompts = ["Hello world!", "The quick brown fox jumps"]
    lm.generate(prompts, max_new_tokens=2)
    hf = AutoTokenizer.from_pretrained(str(ckpt.path))
    expected = [hf.encode(p, **({} if add_bos is None else {"add_special_tokens": False})) for p in prompts]
    assert sorted(seen[0]) == sorted(expected)
