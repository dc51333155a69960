"""karma.ppo.core against independent float64 computations written out plainly (loops / NumPy)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from karma.logprobs import entropy_from_logits, last_token_index, logprobs_from_logits
from karma.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)

SEEDS = range(4)
PROPERTY = settings(max_examples=50, deadline=None)


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


def ragged_mask(rng, batch, length, layout="right"):
    """bool [batch, length]: each row a contiguous block of 1..length real tokens."""
    mask = np.zeros((batch, length), dtype=bool)
    for b in range(batch):
        n = rng.integers(1, length + 1)
        start = {"right": 0, "left": length - n, "middle": rng.integers(0, length - n + 1)}[layout]
        mask[b, start : start + n] = True
    return mask


def garbage(rng, shape):
    """Values to put in padded slots: huge, infinite and NaN."""
    return rng.choice([1e30, -1e30, np.inf, -np.inf, np.nan, 7.0], size=shape)


def pad_with_garbage(rng, x, mask, extra):
    """x with garbage in its padded slots and `extra` more padded columns; the new mask."""
    x = np.where(mask, x, garbage(rng, x.shape))
    x = np.concatenate([x, garbage(rng, (x.shape[0], extra))], axis=1)
    return x, np.concatenate([mask, np.zeros((mask.shape[0], extra), dtype=bool)], axis=1)


# ----------------------------------------------------------------------------- masked statistics


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_masked_stats_match_numpy(seed, mask_dtype):
    rng = np.random.default_rng(seed)
    x, mask = rng.normal(2.0, 3.0, size=(6, 9)), ragged_mask(rng, 6, 9)
    xt, mt = t64(x), torch.tensor(mask).to(mask_dtype)
    real = x[mask]
    assert masked_mean(xt, mt).item() == pytest.approx(real.mean(), rel=1e-12)
    row_means = [x[b][mask[b]].mean() for b in range(6)]
    np.testing.assert_allclose(masked_mean(xt, mt, dim=1).numpy(), row_means, rtol=1e-12)
    assert masked_var(xt, mt).item() == pytest.approx(real.var(ddof=1), rel=1e-12)
    assert masked_var(xt, mt, unbiased=False).item() == pytest.approx(real.var(ddof=0), rel=1e-12)
    white = (x - real.mean()) / math.sqrt(real.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(masked_whiten(xt, mt).numpy(), np.where(mask, white, 0), rtol=1e-12)
    shifted = np.where(mask, white + real.mean(), 0)
    np.testing.assert_allclose(masked_whiten(xt, mt, shift_mean=False).numpy(), shifted, rtol=1e-12)


def test_masked_stats_with_fewer_than_two_entries_are_zero_not_nan():
    x = torch.tensor([[5.0, float("nan"), 2.0]])
    empty, one = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0]])
    assert masked_mean(x, empty).item() == 0.0
    assert masked_mean(x, empty, dim=1).tolist() == [0.0]
    assert masked_mean(x, one).item() == 5.0
    for mask in (empty, one):
        assert masked_var(x, mask).item() == 0.0
        assert masked_var(x, mask, unbiased=False).item() == 0.0
        assert masked_whiten(x, mask).tolist() == [[0.0, 0.0, 0.0]]
    assert masked_whiten(x, one, shift_mean=False).tolist() == [[5.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------- log-probs, entropy


def log_softmax_np(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("chunk_tokens", [None, 1, 3])
def test_logprobs_and_entropy_match_numpy(seed, chunk_tokens):
    rng = np.random.default_rng(seed)
    full = rng.normal(0, 3, size=(3, 8, 11))
    z = full[:, 1:-1]  # a non-contiguous slice, as logits[:, q-1:-1] is in a trainer
    tokens = rng.integers(0, 11, size=(3, 6))
    ref = np.take_along_axis(log_softmax_np(z), tokens[..., None], -1)[..., 0]
    logp = logprobs_from_logits(t64(full)[:, 1:-1], torch.tensor(tokens), chunk_tokens)
    np.testing.assert_allclose(logp.numpy(), ref, rtol=1e-12)
    p = np.exp(log_softmax_np(z))
    ent = entropy_from_logits(t64(full)[:, 1:-1], chunk_tokens)
    np.testing.assert_allclose(ent.numpy(), -(p * np.log(p)).sum(-1), rtol=1e-12)
    out32 = logprobs_from_logits(t64(z).float(), torch.tensor(tokens), chunk_tokens)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), ref, atol=1e-5)


def test_logprobs_gradcheck_float64():
    rng = np.random.default_rng(0)
    z = t64(rng.normal(size=(2, 5, 7))).requires_grad_()
    tokens = torch.tensor(rng.integers(0, 7, size=(2, 5)))
    assert torch.autograd.gradcheck(lambda z: logprobs_from_logits(z, tokens, chunk_tokens=2), (z,))


def test_logprobs_bf16_match_float64_and_keep_no_float32_copy_for_backward():
    rng = np.random.default_rng(0)
    B, T, V = 2, 8, 1000
    exact = rng.normal(0, 4, size=(B, T, V))
    logits = torch.tensor(exact, dtype=torch.bfloat16).requires_grad_()
    tokens = rng.integers(0, V, size=(B, T))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        logp = logprobs_from_logits(logits, torch.tensor(tokens), chunk_tokens=3)
    assert logp.dtype == torch.float32
    assert not any(t.dtype != torch.bfloat16 and t.numel() >= B * T * V for t in saved)

    rounded = logits.detach().double().numpy()  # what the bf16 logits actually hold
    ref = np.take_along_axis(log_softmax_np(rounded), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(logp.detach().numpy(), ref, atol=1e-4)  # computed in fp32
    ref_unrounded = np.take_along_axis(log_softmax_np(exact), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(logp.detach().numpy(), ref_unrounded, atol=0.1)  # bf16 inputs

    g = rng.normal(size=(B, T))
    logp.backward(torch.tensor(g, dtype=torch.float32))
    onehot = np.eye(V)[tokens]
    grad_ref = g[..., None] * (onehot - np.exp(log_softmax_np(rounded)))
    assert logits.grad.dtype == torch.bfloat16
    np.testing.assert_allclose(logits.grad.double().numpy(), grad_ref, atol=2e-2, rtol=1e-2)


def test_entropy_of_uniform_and_bf16():
    assert entropy_from_logits(torch.zeros(2, 3, 50, dtype=torch.bfloat16)).sub(math.log(50)).abs().max() < 1e-6


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_formulas():
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(-3, 1, size=(4, 5)), rng.normal(-3, 1, size=(4, 5))
    r = logp - ref
    expected = {"k1": r, "k2": r**2 / 2, "k3": np.exp(-r) - 1 + r, "abs": np.abs(r)}
    for kind, want in expected.items():
        np.testing.assert_allclose(kl_estimate(t64(logp), t64(ref), kind).numpy(), want, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="unknown KL estimator 'kl'"):
        kl_estimate(t64(logp), t64(ref), "kl")


@pytest.mark.parametrize("seed", SEEDS)
def test_k1_k3_converge_to_exact_kl_of_categoricals(seed):
    gen = torch.Generator().manual_seed(seed)
    pi = torch.softmax(torch.randn(6, generator=gen, dtype=torch.float64), 0)
    ref = torch.softmax(torch.randn(6, generator=gen, dtype=torch.float64), 0)
    exact = (pi * (pi / ref).log()).sum().item()
    n = 200_000
    a = torch.multinomial(pi, n, replacement=True, generator=gen)
    logp, ref_logp = pi.log()[a], ref.log()[a]
    for kind in ("k1", "k3"):
        per_value = kl_estimate(pi.log(), ref.log(), kind)  # the estimator at each outcome
        std = ((pi * per_value**2).sum() - exact**2).sqrt().item()
        assert kl_estimate(logp, ref_logp, kind).mean().item() == pytest.approx(exact, abs=5 * std / math.sqrt(n))


@PROPERTY
@given(
    st.lists(st.floats(-60, 0, width=32), min_size=1, max_size=20),
    st.lists(st.floats(-60, 0, width=32), min_size=1, max_size=20),
)
def test_k3_is_never_negative(logp, ref_logp):
    n = min(len(logp), len(ref_logp))
    for dtype in (torch.float32, torch.float64):
        k3 = kl_estimate(torch.tensor(logp[:n], dtype=dtype), torch.tensor(ref_logp[:n], dtype=dtype), "k3")
        assert (k3 >= 0).all()


# ----------------------------------------------------------------------------- token rewards


def token_rewards_ref(scores, logp, ref_logp, mask, kl_coef, ended, penalty):
    B, T = mask.shape
    rewards = np.zeros((B, T))
    for b in range(B):
        real = [t for t in range(T) if mask[b, t]]
        for t in real:
            rewards[b, t] = -kl_coef * (logp[b, t] - ref_logp[b, t])
        rewards[b, real[-1]] += scores[b] - (penalty if penalty is not None and not ended[b] else 0.0)
    return rewards


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("layout", ["right", "left", "middle"])
@pytest.mark.parametrize("penalty", [None, 2.5])
def test_token_rewards_match_loop(seed, layout, penalty):
    rng = np.random.default_rng(seed)
    B, T = 7, 10
    mask = ragged_mask(rng, B, T, layout)
    logp, ref = rng.normal(-2, 1, size=(B, T)), rng.normal(-2, 1, size=(B, T))
    scores, ended = rng.normal(size=B), rng.random(B) < 0.5
    out = token_rewards(
        t64(scores), t64(np.where(mask, logp, np.nan)), t64(ref), torch.tensor(mask), 0.1,
        ended_with_eos=torch.tensor(ended), missing_eos_penalty=penalty,
    )
    want = token_rewards_ref(scores, logp, ref, mask, 0.1, ended, penalty)
    np.testing.assert_allclose(out.rewards.numpy(), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out.kl.numpy(), np.where(mask, logp - ref, 0), rtol=1e-12)
    last = [max(np.flatnonzero(mask[b])) for b in range(B)]
    assert last_token_index(torch.tensor(mask)).tolist() == last


def test_token_rewards_score_lands_on_eos_or_last_token_never_on_padding():
    EOS, PAD = 2, 2  # pad == eos: the classic way to mask out the EOS by mistake
    response = torch.tensor([[5, 6, EOS, PAD, PAD], [5, 6, 7, 8, 9], [5, EOS, PAD, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    zeros, scores = torch.zeros(3, 5), torch.tensor([10.0, 20.0, 30.0])
    ended = response.gather(1, last_token_index(mask)[:, None]).squeeze(1) == EOS
    rewards = token_rewards(scores, zeros, zeros, mask, 0.1, ended_with_eos=ended, missing_eos_penalty=1.0).rewards
    want = torch.zeros(3, 5)
    want[0, 2], want[1, 4], want[2, 1] = 10.0, 19.0, 30.0
    assert torch.equal(rewards, want)
    left = torch.flip(mask, [1])  # the same rows left padded: the score goes to column 4
    rewards = token_rewards(scores, zeros, zeros, left, 0.1).rewards
    assert rewards[:, 4].tolist() == [10.0, 20.0, 30.0] and (rewards[:, :4] == 0).all()


def test_token_rewards_reject_bad_arguments():
    z, s = torch.zeros(2, 3), torch.zeros(2)
    with pytest.raises(ValueError, match=r"rows \[1\] have no response tokens"):
        token_rewards(s, z, z, torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="needs ended_with_eos"):
        token_rewards(s, z, z, torch.ones(2, 3), 0.1, missing_eos_penalty=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        ended = torch.ones(2, dtype=torch.bool)
        token_rewards(s, z, z, torch.ones(2, 3), 0.1, ended_with_eos=ended, missing_eos_penalty=-1.0)


# ----------------------------------------------------------------------------- GAE


def gae_ref(rewards, values, gamma, lam):
    """One sequence of real tokens, textbook loop."""
    n = len(rewards)
    adv, running = np.zeros(n), 0.0
    for t in reversed(range(n)):
        next_value = values[t + 1] if t + 1 < n else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        adv[t] = running
    return adv, adv + values


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 6),
    length=st.integers(1, 12),
    gamma=st.floats(0.5, 1.0),
    lam=st.floats(0.0, 1.0),
    layout=st.sampled_from(["right", "left"]),
)
def test_gae_matches_per_sequence_loop(seed, batch, length, gamma, lam, layout):
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, batch, length, layout)
    rewards, values = rng.normal(size=(batch, length)), rng.normal(size=(batch, length))
    padded_r, padded_v = t64(np.where(mask, rewards, np.nan)), t64(np.where(mask, values, np.inf))
    adv, ret = gae(padded_r, padded_v, torch.tensor(mask), gamma, lam)
    for b in range(batch):
        want_adv, want_ret = gae_ref(rewards[b][mask[b]], values[b][mask[b]], gamma, lam)
        np.testing.assert_allclose(adv[b][mask[b]].numpy(), want_adv, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ret[b][mask[b]].numpy(), want_ret, rtol=1e-10, atol=1e-12)
    assert (adv[~torch.tensor(mask)] == 0).all() and (ret[~torch.tensor(mask)] == 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_special_cases(seed):
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, 5, 9)
    rewards, values = rng.normal(size=(5, 9)) * mask, rng.normal(size=(5, 9)) * mask
    _, ret = gae(t64(rewards), t64(values), torch.tensor(mask), gamma=1.0, lam=1.0)
    reward_to_go = np.flip(np.cumsum(np.flip(rewards, 1), 1), 1)
    np.testing.assert_allclose(ret.numpy(), reward_to_go * mask, rtol=1e-10, atol=1e-12)
    adv, _ = gae(t64(rewards), t64(values), torch.tensor(mask), gamma=0.9, lam=0.0)
    next_values = np.concatenate([values[:, 1:], np.zeros((5, 1))], 1)  # 0 past the end (masked)
    np.testing.assert_allclose(adv.numpy(), (rewards + 0.9 * next_values - values) * mask, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- losses


def policy_loss_ref(logp, old, adv, mask, clip):
    ratio = np.exp(logp - old)[mask]
    a = adv[mask]
    losses = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - clip, 1 + clip))
    clip_frac = np.mean(-a * np.clip(ratio, 1 - clip, 1 + clip) > -a * ratio)
    return losses.mean(), clip_frac, 0.5 * np.mean((logp - old)[mask] ** 2), ratio.mean()


def value_loss_ref(values, old, returns, mask, clip):
    v, o, g = values[mask], old[mask], returns[mask]
    unclipped, clipped = (v - g) ** 2, (np.clip(v, o - clip, o + clip) - g) ** 2
    return 0.5 * np.maximum(unclipped, clipped).mean(), np.mean(clipped > unclipped)


@pytest.mark.parametrize("seed", SEEDS)
def test_losses_match_numpy(seed):
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, 6, 8)
    logp, old = rng.normal(-2, 1, (6, 8)), rng.normal(-2, 1, (6, 8))
    old = np.where(rng.random((6, 8)) < 0.5, logp + rng.normal(0, 0.2, (6, 8)), old)  # both branches
    adv = rng.normal(size=(6, 8))
    loss, stats = policy_loss(t64(logp), t64(old), t64(adv), torch.tensor(mask), 0.2)
    want = policy_loss_ref(logp, old, adv, mask, 0.2)
    got = (loss.item(), stats["clip_frac"].item(), stats["approx_kl"].item(), stats["ratio_mean"].item())
    np.testing.assert_allclose(got, want, rtol=1e-12)

    values, old_values, returns = (rng.normal(size=(6, 8)) for _ in range(3))
    loss, stats = value_loss(t64(values), t64(old_values), t64(returns), torch.tensor(mask), 0.2)
    want = value_loss_ref(values, old_values, returns, mask, 0.2)
    np.testing.assert_allclose((loss.item(), stats["clip_frac"].item()), want, rtol=1e-12)

    ev = explained_variance(t64(values), t64(returns), torch.tensor(mask)).item()
    assert ev == pytest.approx(1 - np.var((returns - values)[mask]) / np.var(returns[mask]), rel=1e-12)


@PROPERTY
@given(
    log_ratio=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=16),
    signs=st.lists(st.booleans(), min_size=16, max_size=16),
)
def test_policy_gradient_is_zero_exactly_where_the_active_clip_binds(log_ratio, signs):
    clip = 0.2
    n = len(log_ratio)
    ratio = np.exp(log_ratio)
    near_edge = np.minimum(np.abs(ratio - (1 - clip)), np.abs(ratio - (1 + clip))) < 1e-6
    adv = np.where(signs[:n], 1.0, -1.0)
    old = torch.zeros(1, n, dtype=torch.float64)
    logp = t64([log_ratio]).requires_grad_()
    policy_loss(logp, old, t64([adv]), torch.ones(1, n), clip)[0].backward()
    clipped_active = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
    grad = logp.grad[0].numpy()
    assert (grad[clipped_active & ~near_edge] == 0).all()
    assert (grad[~clipped_active & ~near_edge] != 0).all()


def test_policy_loss_is_finite_for_exploding_log_ratios_and_garbage_padding():
    logp = torch.tensor([[500.0, -500.0, float("nan")]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 3), torch.tensor([[-1.0, 1.0, 5.0]]), torch.tensor([[1, 1, 0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert stats["ratio_mean"].item() == pytest.approx((math.exp(20) + math.exp(-20)) / 2, rel=1e-6)


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1))
def test_value_loss_takes_the_clipped_branch_exactly_when_larger(seed):
    rng = np.random.default_rng(seed)
    values, old, returns = rng.normal(size=(3, 12))
    clip = 0.2
    unclipped, clipped = (values - returns) ** 2, (np.clip(values, old - clip, old + clip) - returns) ** 2
    v = t64([values]).requires_grad_()
    for t in range(12):
        one = torch.zeros(1, 12)
        one[0, t] = 1
        loss, _ = value_loss(v, t64([old]), t64([returns]), one, clip)
        assert loss.item() == pytest.approx(0.5 * max(unclipped[t], clipped[t]), rel=1e-12, abs=1e-300)
        (grad,) = torch.autograd.grad(loss, v)
        assert (grad[0, t] == 0) == (clipped[t] > unclipped[t])  # clipped & larger: V is off the clip range


def test_explained_variance_edge_cases():
    g = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(g, g, mask).item() == 1.0
    assert explained_variance(torch.full_like(g, 2.0), g, mask).item() == 0.0
    assert math.isnan(explained_variance(g, torch.ones_like(g), mask).item())  # Var(G) = 0
    assert math.isnan(explained_variance(g, g, torch.tensor([[1, 0, 0, 0]])).item())  # one token


# ----------------------------------------------------------------------------- masking invariance


@pytest.mark.parametrize("seed", SEEDS)
def test_padding_changes_nothing_and_batch_equals_trimmed_sequences(seed):
    rng = np.random.default_rng(seed)
    B, T, V = 5, 7, 13
    mask = ragged_mask(rng, B, T)
    logp, ref, old, adv, values, old_values, returns = (rng.normal(-1, 1, (B, T)) for _ in range(7))
    scores = rng.normal(size=B)

    def everything(mask, logp, ref, old, adv, values, old_values, returns):
        m = torch.tensor(mask)
        rw = token_rewards(t64(scores), t64(logp), t64(ref), m, 0.05, "k3")
        a, g = gae(rw.rewards, t64(values), m, 1.0, 0.95)
        return {
            "mean": masked_mean(t64(logp), m), "var": masked_var(t64(logp), m),
            "white": masked_whiten(t64(adv), m)[m], "rewards": rw.rewards[m], "kl": rw.kl[m],
            "adv": a[m], "ret": g[m],
            "pg": policy_loss(t64(logp), t64(old), t64(adv), m)[0],
            "vf": value_loss(t64(values), t64(old_values), t64(returns), m)[0],
            "ev": explained_variance(t64(values), t64(returns), m),
        }

    base = everything(mask, logp, ref, old, adv, values, old_values, returns)
    padded = [pad_with_garbage(rng, x, mask, 3) for x in (logp, ref, old, adv, values, old_values, returns)]
    again = everything(padded[0][1], *(x for x, _ in padded))
    for key in base:
        torch.testing.assert_close(again[key], base[key], rtol=1e-12, atol=1e-15, msg=key)  # sums may reorder
    assert all(torch.isfinite(v).all() for v in again.values())

    # gradients: finite, and zero in padded slots, whatever garbage sits there
    m = torch.tensor(padded[0][1])
    x, old_x, a, v, old_v, g = (t64(padded[i][0]).requires_grad_() for i in (0, 2, 3, 4, 5, 6))
    total = masked_mean(x, m) + masked_var(x, m) + masked_whiten(a, m).sum()
    total = total + policy_loss(x, old_x, a, m)[0] + value_loss(v, old_v, g, m)[0]
    for leaf in (x, old_x, a, v, old_v, g):
        (grad,) = torch.autograd.grad(total, leaf, retain_graph=True)
        assert torch.isfinite(grad).all() and (grad[~m] == 0).all()

    # per-sequence functions, trimmed rows one at a time
    rw = token_rewards(t64(scores), t64(logp), t64(ref), torch.tensor(mask), 0.05, "k3")
    a, _ = gae(rw.rewards, t64(values), torch.tensor(mask), 1.0, 0.95)
    logits = rng.normal(size=(B, T, V))
    tokens = torch.tensor(rng.integers(0, V, (B, T)))
    lp = logprobs_from_logits(t64(logits), tokens)
    for b in range(B):
        n = mask[b].sum()
        one = torch.ones(1, n, dtype=torch.bool)
        row = slice(b, b + 1)
        rw1 = token_rewards(t64(scores[row]), t64(logp[row, :n]), t64(ref[row, :n]), one, 0.05, "k3")
        torch.testing.assert_close(rw1.rewards[0], rw.rewards[b, :n], rtol=0, atol=0)
        torch.testing.assert_close(gae(rw1.rewards, t64(values[row, :n]), one, 1.0, 0.95)[0][0], a[b, :n])
        lp1 = logprobs_from_logits(t64(logits[row, :n]), tokens[row, :n])
        torch.testing.assert_close(lp1[0], lp[b, :n])
    # batch statistics equal those of all real tokens laid out as one unpadded row
    flat = torch.ones(1, mask.sum(), dtype=torch.bool)
    pg = policy_loss(t64([logp[mask]]), t64([old[mask]]), t64([adv[mask]]), flat)[0]
    torch.testing.assert_close(pg, base["pg"])
    torch.testing.assert_close(masked_whiten(t64([adv[mask]]), flat)[0], base["white"])


# ----------------------------------------------------------------------------- KL controllers


@PROPERTY
@given(
    init=st.floats(1e-3, 1.0),
    target=st.floats(0.1, 20.0),
    horizon=st.integers(100, 20_000),
    current=st.floats(0.0, 100.0),
    n_steps=st.integers(1, 512),
)
def test_adaptive_kl_update_follows_ziegler(init, target, horizon, current, n_steps):
    ctl = AdaptiveKLController(init, target, horizon)
    new = ctl.update(current, n_steps)
    error = np.clip(current / target - 1, -0.2, 0.2)
    assert new == ctl.kl_coef == init * (1 + error * n_steps / horizon)
    if current > target:
        assert new > init
    elif current < target:
        assert new < init
    else:
        assert new == init
    assert abs(new / init - 1) <= 0.2 * n_steps / horizon + 1e-15  # slack: rounding of 1 + x


def test_kl_controllers_checkpoint_exactly():
    a = AdaptiveKLController(0.15, 6.0, 10_000)
    for kl in (9.0, 3.0, 6.5):
        a.update(kl, 64)
    b = AdaptiveKLController(1.0, 1.0, 1)
    b.load_state_dict(a.state_dict())
    assert [a.update(kl, 64) for kl in (1.0, 30.0)] == [b.update(kl, 64) for kl in (1.0, 30.0)]
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 64) == fixed.kl_coef == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(fixed.state_dict())
    assert restored.kl_coef == 0.05
    with pytest.raises(ValueError, match="must be > 0"):
        AdaptiveKLController(0.1, 0.0, 10_000)
