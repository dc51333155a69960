"""karma.generate: greedy parity with transformers' generate, left padding, log-probs, sampling,
per-row stopping at EOS.

Output contract (see karma.generate): `.tokens` long [B, N] with N <= max_new_tokens, `.mask`
[B, N] (1 on real generated tokens including the EOS that stopped the row, 0 after), `.logprobs`
[B, N] = log-prob of each token under the distribution it was sampled from (tempered for
temperature != 1; log_softmax of the raw logits for greedy), 0 where the mask is 0.
"""

from __future__ import annotations

import pytest
import torch

import karma
from karma.tokenizer import left_pad
from hf_fixtures import random_prompts

# Log-probs recomputed by one full forward pass vs. the KV-cached decode: the two differ only by
# float rounding (transformers itself shows ~6e-6 between its cached and full-pass logits here).
LOGPROB_ATOL = 5e-5


def load(ckpt):
    return karma.load_model(str(ckpt.path)).eval()


def real_rows(out) -> list[list[int]]:
    """The real generated tokens of each row (mask == 1)."""
    return [[t for t, m in zip(toks, ms) if m] for toks, ms in zip(out.tokens.tolist(), out.mask.tolist())]


def truncate_at(tokens: list[int], stops) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


def hf_greedy(oracle, ids: torch.Tensor, max_new_tokens: int, eos: int) -> list[list[int]]:
    """transformers' greedy generate on an UNPADDED batch; rows cut after their first EOS."""
    with torch.no_grad():
        seq = oracle.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos,
        )
    return [truncate_at(row, {eos}) for row in seq[:, ids.shape[1]:].tolist()]


def check_structure(out, batch: int, max_new_tokens: int):
    assert out.tokens.dtype == torch.long
    assert out.tokens.ndim == 2 and out.tokens.shape[0] == batch
    assert 1 <= out.tokens.shape[1] <= max_new_tokens
    assert out.mask.shape == out.tokens.shape and out.logprobs.shape == out.tokens.shape
    assert out.logprobs.is_floating_point()
    m = out.mask.long()
    assert set(m.unique().tolist()) <= {0, 1}
    # ones then zeros: once a row stopped it stays stopped
    assert (m[:, 1:] <= m[:, :-1]).all()
    assert (out.logprobs[m == 0] == 0).all()
    assert (out.logprobs[m == 1] <= 1e-6).all()
    # the whole batch stops as soon as every row has stopped
    assert m[:, -1].any()


def recomputed_logprobs(model, ids, mask, out, temperature: float) -> torch.Tensor:
    """log p(token) from ONE forward pass over prompt + generated tokens, 0 where masked."""
    full = torch.cat([ids, out.tokens], dim=1)
    full_mask = torch.cat([mask.long(), out.mask.long()], dim=1)
    with torch.no_grad():
        logits = model(full, full_mask).float()
    p, n = ids.shape[1], out.tokens.shape[1]
    step_logits = logits[:, p - 1: p - 1 + n]
    if temperature not in (0, 0.0):
        step_logits = step_logits / temperature
    lp = step_logits.log_softmax(-1).gather(-1, out.tokens.unsqueeze(-1)).squeeze(-1)
    return lp * out.mask.to(lp.dtype)


# --- parity with transformers -------------------------------------------------------------------


def test_greedy_matches_transformers_single(ckpt):
    model = load(ckpt)
    ids = torch.tensor(random_prompts([7], seed=10))
    out = karma.generate(model, ids, max_new_tokens=12, temperature=0)  # default stop = config eos
    check_structure(out, 1, 12)
    expected = hf_greedy(ckpt.oracle, ids, 12, ckpt.eos_id)
    assert real_rows(out) == expected
    assert out.tokens.shape[1] == len(expected[0])


def test_greedy_matches_transformers_batch(ckpt):
    model = load(ckpt)
    ids = torch.tensor(random_prompts([9, 9, 9], seed=11))
    out = karma.generate(model, ids, torch.ones_like(ids), max_new_tokens=12, temperature=0)
    check_structure(out, 3, 12)
    assert real_rows(out) == hf_greedy(ckpt.oracle, ids, 12, ckpt.eos_id)


# --- left padding and log-probs (our implementation against itself) ------------------------------


def test_left_padded_batch_generates_like_each_row_alone(ckpt):
    model = load(ckpt)
    prompts = random_prompts([9, 3, 6, 1], seed=12)
    ids, mask = left_pad(prompts, pad_id=ckpt.eos_id)
    out = karma.generate(model, ids, mask, max_new_tokens=10, temperature=0)
    check_structure(out, 4, 10)
    for i, p in enumerate(prompts):
        alone = karma.generate(model, torch.tensor([p]), max_new_tokens=10, temperature=0)
        assert real_rows(out)[i] == real_rows(alone)[0], f"row {i}"
        n = len(real_rows(alone)[0])
        assert torch.allclose(out.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-4)


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_logprobs_equal_full_forward(ckpt, temperature):
    model = load(ckpt)
    ids, mask = left_pad(random_prompts([8, 5, 2], seed=13), pad_id=0)
    kwargs = {} if temperature == 0 else {"seed": 3}
    out = karma.generate(model, ids, mask, max_new_tokens=10, temperature=temperature, **kwargs)
    check_structure(out, 3, 10)
    expected = recomputed_logprobs(model, ids, mask, out, temperature)
    assert (out.logprobs.float() - expected).abs().max() <= LOGPROB_ATOL


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_sampled_logprobs_are_under_the_tempered_distribution(ckpt, temperature):
    model = load(ckpt)
    ids, mask = left_pad(random_prompts([8, 5, 2], seed=14), pad_id=0)
    out = karma.generate(model, ids, mask, max_new_tokens=10, temperature=temperature, seed=7)
    check_structure(out, 3, 10)
    expected = recomputed_logprobs(model, ids, mask, out, temperature)
    assert (out.logprobs.float() - expected).abs().max() <= LOGPROB_ATOL
    # and NOT under the untempered one (the test can tell the two apart)
    untempered = recomputed_logprobs(model, ids, mask, out, 1.0)
    assert (out.logprobs.float() - untempered).abs().max() > 1e-2


def test_greedy_logprobs_are_raw_log_softmax(checkpoint_factory):
    """For greedy, each token is the argmax and its log-prob is log_softmax(raw logits)."""
    ckpt = checkpoint_factory("llama_tied")
    model = load(ckpt)
    ids = torch.tensor(random_prompts([6], seed=15))
    out = karma.generate(model, ids, max_new_tokens=8, temperature=0)
    full = torch.cat([ids, out.tokens], dim=1)
    with torch.no_grad():
        logits = model(full)[0, ids.shape[1] - 1: -1]
    n = int(out.mask.sum())
    assert out.tokens[0, :n].tolist() == logits[:n].argmax(-1).tolist()
    assert torch.allclose(out.logprobs[0, :n], logits[:n].log_softmax(-1).max(-1).values, atol=LOGPROB_ATOL)


# --- sampling --------------------------------------------------------------------------------------


SAMPLING_LAYOUTS = ["llama_tied", "falcon_rw", "neox"]


@pytest.mark.parametrize("layout", SAMPLING_LAYOUTS)
def test_same_seed_same_output(layout, checkpoint_factory):
    model = load(checkpoint_factory(layout))
    ids, mask = left_pad(random_prompts([6, 4], seed=16), pad_id=0)

    def run(seed):
        return karma.generate(model, ids, mask, max_new_tokens=10, temperature=1.0, seed=seed)

    torch.manual_seed(111)
    a = run(1234)
    torch.manual_seed(222)  # the global RNG state must not matter when a seed is given
    b = run(1234)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.logprobs, b.logprobs)
    outs = {tuple(map(tuple, run(s).tokens.tolist())) for s in range(4)}
    assert len(outs) > 1, "different seeds never changed the samples"


@pytest.mark.parametrize("layout", SAMPLING_LAYOUTS)
def test_top_k_1_and_tiny_top_p_equal_greedy(layout, checkpoint_factory):
    model = load(checkpoint_factory(layout))
    ids, mask = left_pad(random_prompts([7, 3], seed=17), pad_id=0)
    greedy = karma.generate(model, ids, mask, max_new_tokens=10, temperature=0)
    top1 = karma.generate(model, ids, mask, max_new_tokens=10, temperature=1.0, top_k=1, seed=5)
    nucleus = karma.generate(model, ids, mask, max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=5)
    assert real_rows(top1) == real_rows(greedy)
    assert real_rows(nucleus) == real_rows(greedy)


def _step_logits(model, ids, mask, out):
    full = torch.cat([ids, out.tokens], dim=1)
    full_mask = torch.cat([mask.long(), out.mask.long()], dim=1)
    with torch.no_grad():
        logits = model(full, full_mask).float()
    p = ids.shape[1]
    return logits[:, p - 1: p - 1 + out.tokens.shape[1]]


def test_top_k_samples_stay_in_top_k(checkpoint_factory):
    model = load(checkpoint_factory("llama_tied"))
    ids = torch.tensor(random_prompts([5], seed=18) * 16)
    out = karma.generate(model, ids, torch.ones_like(ids), max_new_tokens=6, temperature=2.0, top_k=3, seed=9)
    logits = _step_logits(model, ids, torch.ones_like(ids), out)
    third = logits.topk(3, dim=-1).values[..., -1]
    chosen = logits.gather(-1, out.tokens.unsqueeze(-1)).squeeze(-1)
    real = out.mask.bool()
    assert (chosen[real] >= third[real] - 1e-5).all()
    assert len(set(out.tokens[:, 0].tolist())) > 1  # it really sampled


def test_top_p_samples_stay_in_nucleus(checkpoint_factory):
    model = load(checkpoint_factory("neox"))
    ids = torch.tensor(random_prompts([5], seed=19) * 16)
    top_p = 0.6
    out = karma.generate(model, ids, torch.ones_like(ids), max_new_tokens=6, temperature=1.5, top_p=top_p, seed=9)
    probs = (_step_logits(model, ids, torch.ones_like(ids), out) / 1.5).softmax(-1)
    chosen = probs.gather(-1, out.tokens.unsqueeze(-1))
    mass_before = (probs * (probs > chosen)).sum(-1)  # mass of strictly more likely tokens
    real = out.mask.bool()
    assert (mass_before[real] < top_p + 1e-5).all()


# --- stopping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", SAMPLING_LAYOUTS)
def test_each_row_stops_at_its_own_stop_token(layout, checkpoint_factory):
    ckpt = checkpoint_factory(layout)
    model = load(ckpt)
    eos = ckpt.eos_id
    ids, mask = left_pad(random_prompts([7, 5, 6], seed=20), pad_id=0)
    base = real_rows(karma.generate(model, ids, mask, max_new_tokens=10, temperature=0, stop_ids=[eos]))

    # pick some row's greedy token at a step k >= 2 (first occurrence in that row) as an extra
    # stop id, such that another row runs past step k
    def choose():
        for r0, row in enumerate(base):
            for k in range(2, len(row) - 1):
                stop = row[k]
                if stop in row[:k] or stop == eos:
                    continue
                others = [truncate_at(r, {eos, stop}) for i, r in enumerate(base) if i != r0]
                if any(len(o) > k + 1 for o in others):
                    return r0, k, stop
        pytest.fail(f"fixture gave no usable stop token: {base}")

    r0, k, stop = choose()
    stops = {eos, stop}
    out = karma.generate(model, ids, mask, max_new_tokens=10, temperature=0, stop_ids=stops)
    check_structure(out, 3, 10)
    expected = [truncate_at(r, stops) for r in base]
    assert real_rows(out) == expected
    assert int(out.mask[r0].sum()) == k + 1 and out.tokens[r0, k].item() == stop
    assert (out.mask[r0, k + 1:] == 0).all() and (out.logprobs[r0, k + 1:] == 0).all()
    assert max(int(m.sum()) for i, m in enumerate(out.mask) if i != r0) > k + 1  # others went on
    assert out.tokens.shape[1] == max(len(e) for e in expected)


def test_batch_stops_when_every_row_stopped(checkpoint_factory):
    model = load(checkpoint_factory("falcon_7b"))
    ids = torch.tensor(random_prompts([6], seed=21))
    base = real_rows(karma.generate(model, ids, max_new_tokens=12, temperature=0, stop_ids=[11]))[0]
    k = next(i for i in range(2, len(base)) if base[i] not in base[:i])
    out = karma.generate(model, ids, max_new_tokens=12, temperature=0, stop_ids=(base[k],))
    assert out.tokens.shape[1] == k + 1
    assert out.tokens[0].tolist() == base[: k + 1] and bool(out.mask.all())


def test_runs_to_max_new_tokens_without_stop(checkpoint_factory):
    ckpt = checkpoint_factory("neox_sequential")
    model = load(ckpt)
    ids = torch.tensor(random_prompts([4, 4], seed=22))
    out = karma.generate(model, ids, max_new_tokens=7, temperature=0, stop_ids=[ckpt.eos_id])
    assert not any(ckpt.eos_id in r for r in real_rows(out))
    assert out.tokens.shape == (2, 7) and bool(out.mask.all())


# --- with the tokenizer -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["llama_tied", "falcon_7b", "neox"])
def test_generate_from_tokenizer_batch(layout, checkpoint_factory):
    ckpt = checkpoint_factory(layout)
    model = load(ckpt)
    tok = karma.load_tokenizer(str(ckpt.path))
    texts = ["Hello world!", "What is the capital of France? Paris", "lol"]
    ids, mask = tok.encode_batch(texts)
    out = karma.generate(model, ids, mask, max_new_tokens=8, temperature=0)
    for i, text in enumerate(texts):
        alone = karma.generate(model, torch.tensor([tok.encode(text)]), max_new_tokens=8, temperature=0)
        assert real_rows(out)[i] == real_rows(alone)[0]
