"""EvalLM's log-likelihoods: the same numbers with or without the shared-prefix cache and the
shared-input pass, for every attention layout (RoPE, ALiBi, multi-query)."""

from __future__ import annotations

import pytest

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
