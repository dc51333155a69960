"""karma/dpo.py against independent float64 computations: every loss type, label smoothing, the
gradients with respect to the policy log-probs, every metric, and the sequence log-probs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from karma.dpo import IGNORE_INDEX, dpo_loss, sequence_logprobs


def logsigmoid(x):
    """log(1 / (1 + e^-x)), stable for large |x| (numpy, float64)."""
    return -np.logaddexp(0.0, -x)


def sigmoid(x):
    return np.exp(logsigmoid(x))


def reference(pc, pr, rc, rr, beta, eps, loss_type):
    """Loss, d loss / d pc, d loss / d pr and the metrics, written out by hand in numpy float64."""
    pc, pr, rc, rr = (np.asarray(x, dtype=np.float64) for x in (pc, pr, rc, rr))
    B = len(pc)
    h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        losses = -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)
        # d/dh of -(1-eps) log s(bh) - eps log s(-bh) = -(1-eps) b s(-bh) + eps b s(bh)
        dh = -(1 - eps) * beta * sigmoid(-beta * h) + eps * beta * sigmoid(beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
        dh = 2 * (h - 1 / (2 * beta))
    chosen_r, rejected_r = beta * (pc - rc), beta * (pr - rr)
    metrics = {"rewards/chosen": chosen_r.mean(), "rewards/rejected": rejected_r.mean(),
               "rewards/accuracies": np.mean([1.0 if a > b else 0.0 for a, b in zip(chosen_r, rejected_r)]),
               "rewards/margins": np.mean(chosen_r - rejected_r),
               "logps/chosen": pc.mean(), "logps/rejected": pr.mean()}
    return losses.mean(), dh / B, -dh / B, metrics


CASES = [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("sigmoid", 0.1, 0.1), ("sigmoid", 2.0, 0.3),
         ("sigmoid", 0.1, 0.5), ("ipo", 0.1, 0.0), ("ipo", 1.0, 0.0)]


@pytest.mark.parametrize("loss_type, beta, eps", CASES)
def test_loss_gradient_and_metrics_match_an_independent_computation(loss_type, beta, eps):
    g = torch.Generator().manual_seed(0)
    B = 9
    pc, pr, rc, rr = (-30 + 10 * torch.randn(B, generator=g, dtype=torch.float64) for _ in range(4))
    pc[0], rc[0], pr[0], rr[0] = -5.0, -5.0, -7.0, -7.0  # h = 0 and a reward tie: not counted as accurate
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    rc.requires_grad_(True)  # the reference must get no gradient even when it asks for one
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps, loss_type=loss_type)
    loss.backward()
    want_loss, want_dpc, want_dpr, want_metrics = reference(pc.detach(), pr.detach(), rc.detach(), rr, beta, eps,
                                                            loss_type)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(want_loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(pc.grad.numpy(), want_dpc, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(pr.grad.numpy(), want_dpr, rtol=1e-10, atol=1e-14)
    assert rc.grad is None
    assert set(metrics) == set(want_metrics)
    for name, value in metrics.items():
        assert not value.requires_grad and value.dim() == 0
        assert value.item() == pytest.approx(want_metrics[name], rel=1e-12, abs=1e-12), name


def test_known_values():
    """h = 0: sigmoid loss log 2 whatever beta and eps; IPO (1 / (2 beta))^2. Large h: DPO -> 0."""
    z = torch.zeros(3)
    for eps in (0.0, 0.2):
        assert dpo_loss(z, z, z, z, beta=0.3, label_smoothing=eps)[0].item() == pytest.approx(math.log(2))
    assert dpo_loss(z, z, z, z, beta=0.25, loss_type="ipo")[0].item() == pytest.approx(4.0)
    big = torch.full((2,), 1000.0)
    loss, m = dpo_loss(big, -big, z[:2], z[:2], beta=0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-30) and torch.isfinite(loss)
    assert m["rewards/accuracies"].item() == 1.0 and m["rewards/margins"].item() == pytest.approx(200.0)
    # cDPO does not push h to infinity: its minimum is at beta h = log((1 - eps) / eps)
    eps, beta = 0.1, 0.2
    best = math.log((1 - eps) / eps) / beta

    def at(h):
        h = torch.tensor([h], dtype=torch.float64, requires_grad=True)
        loss = dpo_loss(h, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta, eps)[0]
        loss.backward()
        return loss.item(), h.grad.item()

    assert abs(at(best)[1]) < 1e-12 and at(best)[0] < min(at(best - 0.1)[0], at(best + 0.1)[0])


def test_bf16_inputs_give_a_float32_loss():
    x = torch.tensor([-3.0, -4.0], dtype=torch.bfloat16)
    loss, metrics = dpo_loss(x, x - 1, x, x)
    assert loss.dtype == torch.float32 and metrics["logps/chosen"].dtype == torch.float32


@pytest.mark.parametrize("kwargs, message", [
    ({"beta": 0.0}, "beta"), ({"label_smoothing": 0.6}, "label_smoothing"),
    ({"label_smoothing": -0.1}, "label_smoothing"), ({"loss_type": "hinge"}, "loss_type"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "IPO"),
])
def test_bad_arguments(kwargs, message):
    z = torch.zeros(2)
    with pytest.raises(ValueError, match=message):
        dpo_loss(z, z, z, z, **kwargs)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"\[B\]"):
        dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[B\]"):
        dpo_loss(*(torch.zeros(2, 2) for _ in range(4)))


# ------------------------------------------------------------------------------ sequence log-probs

def batch(seed=0, B=4, T=9, V=11):
    """Logits, input ids and labels: prompts of various lengths, right- and left-padded rows."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    spans = [(0, 3, 7), (0, 1, 9), (2, 5, 9), (3, 4, 5)]  # (first real token, first response token, end)
    for b, (start, resp, end) in enumerate(spans[:B]):
        labels[b, :resp] = IGNORE_INDEX  # left padding and the prompt
        labels[b, end:] = IGNORE_INDEX  # right padding
    return logits, labels


def brute_force(logits, labels, average):
    """sum over t >= 1 with labels[t] != -100 of log softmax(logits[t - 1])[labels[t]], by loops."""
    out = []
    for b in range(logits.shape[0]):
        total, n = 0.0, 0
        for t in range(1, logits.shape[1]):
            y = int(labels[b, t])
            if y == IGNORE_INDEX:
                continue
            z = [float(v) for v in logits[b, t - 1]]
            m = max(z)
            total += z[y] - (m + math.log(sum(math.exp(v - m) for v in z)))
            n += 1
        out.append(total / n if average else total)
    return out


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_match_a_loop(average):
    logits, labels = batch()
    got = sequence_logprobs(logits, labels, average=average)
    assert got.shape == (4,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), brute_force(logits, labels, average), rtol=1e-12)
    # chunked over the sequence gives the same numbers
    torch.testing.assert_close(sequence_logprobs(logits, labels, average=average, chunk_tokens=2), got)


def test_sequence_logprobs_gradient_matches_log_softmax():
    logits, labels = batch(seed=1)
    a = logits.clone().requires_grad_(True)
    sequence_logprobs(a, labels).sum().backward()
    b = logits.clone().requires_grad_(True)
    mask = labels[:, 1:] != IGNORE_INDEX
    lp = torch.log_softmax(b[:, :-1], -1).gather(-1, labels[:, 1:].clamp_min(0)[..., None]).squeeze(-1)
    (lp * mask).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_prompt_and_padding_logits_do_not_matter():
    """Positions whose next token is prompt or padding (and the last position) predict nothing
    that counts: changing their logits changes neither the result nor the gradient elsewhere."""
    logits, labels = batch(seed=2)
    before = sequence_logprobs(logits, labels)
    changed = logits.clone()
    unused = torch.ones(labels.shape, dtype=torch.bool)
    unused[:, :-1] = labels[:, 1:] == IGNORE_INDEX
    changed[unused] = 100 * torch.randn(int(unused.sum()), logits.shape[-1], dtype=torch.float64)
    torch.testing.assert_close(sequence_logprobs(changed, labels), before, rtol=0, atol=0)
    x = changed.clone().requires_grad_(True)
    sequence_logprobs(x, labels).sum().backward()
    assert (x.grad[unused] == 0).all()
    # the logit at the last prompt position does count: it predicts the first response token
    first = (labels[0] != IGNORE_INDEX).nonzero()[0].item()
    moved = logits.clone()
    moved[0, first - 1, labels[0, first]] += 1.0
    assert sequence_logprobs(moved, labels)[0] > before[0]


def test_a_row_without_response_tokens_is_an_error():
    logits, labels = batch()
    labels[2] = IGNORE_INDEX
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        sequence_logprobs(logits, labels)
    with pytest.raises(ValueError, match="labels"):
        sequence_logprobs(logits, labels[:, :-1])


def test_end_to_end_one_gradient_step_raises_the_chosen_margin():
    """From sequence log-probs to the loss: a gradient step on the logits lowers the loss."""
    logits, labels = batch(seed=3)
    ref = sequence_logprobs(logits, labels).detach()
    x = logits.clone().requires_grad_(True)
    logps = sequence_logprobs(x, labels)  # rows 0, 2 chosen; 1, 3 rejected
    loss, _ = dpo_loss(logps[[0, 2]], logps[[1, 3]], ref[[0, 2]], ref[[1, 3]], beta=0.5)
    loss.backward()
    with torch.no_grad():
        y = x - 0.5 * x.grad
        logps2 = sequence_logprobs(y, labels)
        loss2, m = dpo_loss(logps2[[0, 2]], logps2[[1, 3]], ref[[0, 2]], ref[[1, 3]], beta=0.5)
    assert loss.item() == pytest.approx(math.log(2)) and loss2 < loss and m["rewards/margins"] > 0
