"""The math of RLHF PPO as pure functions on tensors.

Shapes: B = batch (sequences), T = response length, V = vocabulary. Per-token tensors are [B, T]
with responses right-padded (the response starts at column 0); `mask` is [B, T], bool or 0/1 float,
1 on real response tokens up to and including EOS, 0 on padding. Whatever sits in a padded slot
(garbage, inf, NaN) never reaches a result or a gradient: every function that takes a mask
selects the real entries with `torch.where` before doing arithmetic on them.

Sources:
  [Z19]  Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (and its code,
         openai/lm-human-preferences).
  [S17]  Schulman et al. 2017, "Proximal Policy Optimization Algorithms".
  [S16]  Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
         Estimation".
  [H24]  Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO" (and TRL's PPO).
  [KL]   J. Schulman, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from karma.logprobs import last_token_index

KLKind = Literal["k1", "k2", "k3", "abs"]

WHITEN_EPS = 1e-8
MAX_LOG_RATIO = 20.0  # log-ratios are clamped to +-20 before exp [H24]


# ----------------------------------------------------------------------------- masked statistics


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """mean(x) over the entries where mask is 1, over all dims or along `dim`.

    sum_i m_i x_i / sum_i m_i. An empty selection (no 1 in the mask, or in a row when `dim` is
    given) has mean 0, not NaN.
    """
    m = mask.bool()
    return torch.where(m, x, 0.0).sum(dim) / m.sum(dim).clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the entries of x where mask is 1 (a 0-dim tensor).

    sum_i m_i (x_i - mean)^2 / (n - 1) with Bessel's correction (`unbiased`, as TRL), else / n.
    With fewer than 2 entries there is no spread to measure: the result is 0, never NaN.
    """
    m = mask.bool()
    n = m.sum()
    sq = torch.where(m, x - masked_mean(x, m), 0.0) ** 2
    return sq.sum() / (n - 1 if unbiased else n).clamp_min(1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True,
                  sum_all: Callable[[Tensor], Tensor] = lambda t: t) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries [H24, Z19]; 0 at padding.

    `shift_mean=False` adds the mean back (scale only; used for rewards). var is unbiased, as
    `masked_var`, so a mask with fewer than 2 entries whitens to 0 (or to x with shift_mean=False).
    `sum_all` sums a tensor over every process's entries (distributed.all_reduce_sum), so that
    the mean and variance are those of all ranks' tokens; by default, of this tensor's only.
    """
    m = mask.bool()
    x = torch.where(m, x, 0.0)
    total, n = sum_all(torch.stack([x.sum(), m.sum().to(x.dtype)]))
    mean = total / n.clamp_min(1)
    var = sum_all((torch.where(m, x - mean, 0.0) ** 2).sum()) / (n - 1).clamp_min(1)
    white = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        white = white + mean
    return torch.where(m, white, 0.0)


# ----------------------------------------------------------------------------- KL and rewards


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(pi || ref) from the log-ratio r = log pi(a) - log ref(a), a ~ pi [KL].

      k1  = r                      unbiased, high variance, can be negative per token
      k2  = r^2 / 2                biased (second order in r), low variance, >= 0
      k3  = (exp(-r) - 1) + r      unbiased, low variance, >= 0 (clamped at 0 against rounding)
      abs = |r|                    TRL's "abs" penalty; not an estimator of KL, >= 0
    Elementwise; any shape.
    """
    r = logp - ref_logp
    if kind == "k1":
        return r
    if kind == "k2":
        return 0.5 * r**2
    if kind == "k3":
        return (torch.expm1(-r) + r).clamp_min(0.0)
    if kind == "abs":
        return r.abs()
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of 'k1', 'k2', 'k3', 'abs'")


class TokenRewards(NamedTuple):
    rewards: Tensor  # [B, T]  -kl_coef * kl_t, plus the (penalised) score at the last real token
    kl: Tensor  # [B, T]  the per-token KL estimate used, 0 at padding (for logging)


def token_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kl_coef: float,
    kind: KLKind = "k1",
    ended_with_eos: Tensor | None = None,
    missing_eos_penalty: float | None = None,
) -> TokenRewards:
    """Per-token rewards R_t = -kl_coef * KL_t + [t = last_b] * score_b [Z19, H24].

    scores [B] (reward-model score of each full response); logp, ref_logp, mask [B, T].
    The score lands on each row's LAST real token: the EOS when one was generated, else the final
    generated token; never on padding, whichever side the padding is on.
    Missing EOS (TRL's convention): when `missing_eos_penalty` is given, rows whose
    `ended_with_eos` [B] bool is False get score - missing_eos_penalty; the penalty is a
    non-negative number that is subtracted (a negative one is rejected as a likely sign slip).
    A row without any real token is an error: there is nowhere to put its score.
    """
    m = mask.bool()
    kl = torch.where(m, kl_estimate(logp, ref_logp, kind), 0.0)  # [B, T]
    if missing_eos_penalty is not None:
        if ended_with_eos is None:
            raise ValueError("missing_eos_penalty needs ended_with_eos (bool [B])")
        if missing_eos_penalty < 0:
            raise ValueError(f"missing_eos_penalty is subtracted and must be >= 0, got {missing_eos_penalty}")
        scores = scores - missing_eos_penalty * (~ended_with_eos.bool()).to(scores.dtype)
    last = last_token_index(m)  # [B]
    if (last < 0).any():
        rows = torch.nonzero(last < 0).flatten().tolist()
        raise ValueError(f"rows {rows} have no response tokens in the mask; cannot place their score")
    rewards = (-kl_coef * kl).scatter_add(1, last[:, None], scores[:, None].to(kl.dtype))
    return TokenRewards(rewards, kl)


# ----------------------------------------------------------------------------- advantages


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation [S16] -> (advantages, returns), both [B, T].

      delta_t = R_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   G_t = A_t + V_t
    computed backwards over t. V and A past a row's last real token are 0 (the episode ends
    there); padded positions contribute nothing and get A = G = 0. A padded slot inside a row
    would end the episode there too, so the real tokens of a row must be contiguous.
    Inputs are rollout tensors: call it under torch.no_grad().
    """
    m = mask.bool()
    r = torch.where(m, rewards, 0.0)
    v = torch.where(m, values.to(r.dtype), 0.0)
    adv = torch.zeros_like(r)
    next_value = next_adv = torch.zeros_like(r[:, 0])  # [B]
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = torch.where(m[:, t], delta + gamma * lam * next_adv, 0.0)
        next_value = v[:, t]
        adv[:, t] = next_adv
    return adv, torch.where(m, adv + v, 0.0)


# ----------------------------------------------------------------------------- losses


def policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate [S17]: L = masked_mean(max(-A rho, -A clip(rho, 1-eps, 1+eps))).

    rho = exp(clamp(logp - old_logp, -20, 20)) (the clamp only guards exp against overflow).
    All [B, T]. Returns (loss, stats), stats detached 0-dim tensors:
      clip_frac  fraction of tokens where the clipped term is the larger one (zero gradient there)
      approx_kl  0.5 * masked_mean((logp - old_logp)^2), unclamped [KL k2]
      ratio_mean masked_mean(rho) (a minibatch with ratio_mean > 10 is worth skipping [H24])
    """
    m = mask.bool()
    log_ratio = torch.where(m, logp - old_logp, 0.0)
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    adv = torch.where(m, advantages, 0.0)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).to(unclipped.dtype), m),
        "approx_kl": 0.5 * masked_mean(log_ratio**2, m),
        "ratio_mean": masked_mean(ratio, m),
    }
    return loss, {k: v.detach() for k, v in stats.items()}


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss [Z19, H24]: 0.5 * masked_mean(max((V - G)^2, (V_clip - G)^2)).

    V_clip = clip(V, V_old - c, V_old + c). All [B, T]. Returns (loss, stats) with
    stats["clip_frac"]: fraction of tokens where the clipped term is the larger one (detached).
    """
    m = mask.bool()
    v, old, g = (torch.where(m, x, 0.0) for x in (values, old_values, returns))
    v_clipped = old + (v - old).clamp(-clip, clip)
    unclipped = (v - g) ** 2
    clipped = (v_clipped - g) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), m)
    return loss, {"clip_frac": masked_mean((clipped > unclipped).to(unclipped.dtype), m).detach()}


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(G - V) / Var(G) over the masked tokens (0-dim). 1 is perfect, <= 0 is useless.

    Undefined when Var(G) = 0 (including fewer than 2 tokens): then NaN, as CleanRL, so a
    dashboard shows a gap rather than a made-up number.
    """
    var_g = masked_var(returns, mask, unbiased=False)
    var_res = masked_var(returns - values, mask, unbiased=False)
    return torch.where(var_g > 0, 1.0 - var_res / var_g, torch.nan)


# ----------------------------------------------------------------------------- KL coefficient


class AdaptiveKLController:
    """Adaptive KL coefficient of [Z19] (lm-human-preferences `AdaptiveKLController`; beta there):

      e = clip(current / target - 1, -0.2, 0.2),    kl_coef <- kl_coef * (1 + e * n_steps / horizon)

    KARMA's convention, that of [Z19]: `current` is the mean over the rollout's sequences of each
    sequence's SUM over response tokens of the k1 KL (nats per sequence, target 6), and `n_steps`
    is the number of sequences (episodes) in that rollout, with horizon 10000 episodes and init
    0.15. (TRL-style trainers feed a per-token mean with targets near 0.1 instead; the controller
    just takes the numbers.)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target} and {horizon}")
        self.kl_coef, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current: float, n_steps: int) -> float:
        error = min(max(float(current) / self.target - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * n_steps / self.horizon
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        # "value": the coefficient's key in checkpoints, kept so that earlier runs resume
        return {"value": self.kl_coef, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef, self.target, self.horizon = (float(state[k]) for k in ("value", "target", "horizon"))


class FixedKLController:
    """A constant KL coefficient with the AdaptiveKLController interface; update() changes nothing."""

    def __init__(self, kl_coef: float):
        self.kl_coef = float(kl_coef)

    def update(self, current: float, n_steps: int) -> float:
        return self.kl_coef

    def state_dict(self) -> dict[str, float]:
        return {"value": self.kl_coef}  # the checkpoint key, as AdaptiveKLController's

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.kl_coef = float(state["value"])


# ----------------------------------------------------------------------------- score scale


class ScoreNorm:
    """The reward model's score rescaled to mean 0 and standard deviation 1 on the initial policy's
    replies [Z19 §2.2; lm-human-preferences train_reward.py `normalize_after`: "normalize the
    rewards on the ref policy to mean 0, var 1 (so the KL coefficient always has the same
    meaning)"]:

        score' = (score - mean_0) / std_0,    mean_0, std_0 over the first rollout's scores (population std)

    fitted once, from the first rollout (the initial policy's samples, every rank's), then fixed. Why
    it helps: the critic starts at V = 0, which is then the mean return, and a probability score
    with a spread of 0.1 no longer makes a KL coefficient mean 10 times less than written.
    `fit` takes sums over the replies, so that every rank passes the same all-reduced numbers."""

    def __init__(self):
        self.mean: float | None = None
        self.std: float | None = None

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, n: float, total: float, total_sq: float, spread: float) -> None:
        """From n scores' sum, sum of squares and spread (max - min). A spread of 0 is tested as such:
        rounding in the sums leaves a small variance even where every score is the same."""
        if n < 2:
            raise ValueError(f"--normalize-scores needs at least 2 scored replies in the first rollout, got {n:g} "
                             f"(raise --rollout-batch, or lower --min-reply-chars if the replies were too short)")
        mean = total / n
        std = max(total_sq / n - mean ** 2, 0.0) ** 0.5
        if not (spread > 1e-6 and std > 0):
            raise ValueError(f"--normalize-scores: the reward model gave all {n:g} replies of the first rollout the "
                             f"same score ({mean:.6g}); a constant score cannot be rescaled, and teaches nothing")
        self.mean, self.std = mean, std

    def __call__(self, scores: Tensor) -> Tensor:
        return (scores - self.mean) / self.std

    def state_dict(self) -> dict[str, float | None]:
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.mean, self.std = state["mean"], state["std"]
