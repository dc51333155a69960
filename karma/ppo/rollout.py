"""One PPO rollout: collecting it (generate, score, reward, advantage, and the reward-hacking
signals of its replies) and the buffer that serves its shuffled minibatches to the PPO epochs; and
the held-out evaluation (--eval-every), which samples and scores the same way (sample_and_score)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from karma.distributed import Dist, all_reduce_sum, gather_lists, reduce_max, reduce_sums
from karma.generate import generate
from karma.logprobs import logprobs_from_logits
from karma.ppo.core import ScoreNorm, gae, masked_whiten, token_rewards
from karma.ppo.signals import extremes, hacking_warning, rollout_signals
from karma.reward import RewardConfig, encode
from karma.tokenizer import left_pad


@dataclass
class RolloutBuffer:
    """The tensors of one rollout of B sequences; Q = query length, T = response length.

    Per-query fields are [B, Q]; per-token fields are [B, T] aligned with `response` (right
    padded, mask 1 up to and including EOS). All fields are indexed together along dim 0.
    """

    query: Tensor  # [B, Q] prompt token ids (left padded, as generation takes them)
    query_mask: Tensor  # [B, Q] 1 on prompt tokens
    response: Tensor  # [B, T] sampled token ids
    response_mask: Tensor  # [B, T] 1 on response tokens up to and including EOS (all 0 on a dropped row)
    logprobs: Tensor  # [B, T] log pi_old(response_t) at sampling time
    ref_logprobs: Tensor  # [B, T] log pi_ref(response_t)
    values: Tensor  # [B, T] V_old(t)
    rewards: Tensor  # [B, T] per-token rewards (core.token_rewards)
    advantages: Tensor  # [B, T] (core.gae, usually whitened)
    returns: Tensor  # [B, T] (core.gae)

    def __post_init__(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, x in fields.items():
            if not isinstance(x, Tensor) or x.dim() < 2:
                raise TypeError(f"RolloutBuffer.{name} must be a tensor [batch, length], got {x!r:.80}")
        batch = self.query.shape[0]
        for name, x in fields.items():
            if x.shape[0] != batch:
                raise ValueError(f"RolloutBuffer.{name} has batch size {x.shape[0]}, but query has {batch}")
            like = "query" if name == "query_mask" else "response"
            want = tuple(fields[like].shape)
            if name != "query" and tuple(x.shape) != want:
                raise ValueError(f"RolloutBuffer.{name} has shape {tuple(x.shape)}, but {like} has {want}")

    def __len__(self) -> int:
        return self.query.shape[0]

    def select(self, index: Tensor) -> RolloutBuffer:
        """The rows `index` (1-D long) of every field, as a new RolloutBuffer."""
        fields = (getattr(self, f.name) for f in dataclasses.fields(self))
        return RolloutBuffer(*(x[index.to(x.device)] for x in fields))

    def minibatches(self, batch_size: int, epochs: int, seed: int) -> Iterator[RolloutBuffer]:
        """`epochs` passes over the rollout, each a fresh permutation cut into minibatches.

        Every row appears exactly once per epoch; the last minibatch of an epoch is smaller when
        batch_size does not divide len(self). The order depends only on `seed` (a private
        torch.Generator; the global RNG is left alone).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(self), generator=generator)
            for start in range(0, len(self), batch_size):
                yield self.select(order[start : start + batch_size])


# ------------------------------------------------------------------------------ collecting rollouts

def response_logits(model, input_ids: Tensor, attention_mask: Tensor, query_len: int, temperature: float) -> Tensor:
    """The logits that predict the response part of [query | response] [B, Q+R] -> [B, R, V],
    divided by the sampling temperature (as generation did)."""
    hidden = model(input_ids, attention_mask, output="hidden")[:, query_len - 1:-1]  # predicts tokens Q..Q+R-1
    logits = model.logits(hidden)
    return logits / temperature if temperature not in (0, 1) else logits


def response_logprobs(model, input_ids: Tensor, attention_mask: Tensor, query_len: int, temperature: float) -> Tensor:
    """log pi(response_t | query, response_<t) of the response part of [query | response] [B, Q+R]
    -> [B, R] float32 (response_logits)."""
    logits = response_logits(model, input_ids, attention_mask, query_len, temperature)
    return logprobs_from_logits(logits, input_ids[:, query_len:])


def rollout_stats(total: dict) -> dict:
    """The rollout's means from sums over all ranks: per scored sequence (score, its std, KL),
    per generated sequence (length, EOS share, share scored 0 as too short) and per scored token (KL, value, return)."""
    n_seq, n_scored, n_tok = total["sequences"], total["scored"], max(total["scored_tokens"], 1.0)
    score = total["score"] / n_scored if n_scored else None
    return {"score": score,
            "score_std": max(total["score_sq"] / n_scored - score ** 2, 0.0) ** 0.5 if n_scored else None,
            "dropped_nonfinite_scores": int(n_seq - n_scored),
            "kl_seq": total["kl_seq"] / n_scored if n_scored else None, "kl_token": total["kl_token"] / n_tok,
            "response_len": total["generated_tokens"] / n_seq, "ended_eos": total["ended_eos"] / n_seq,
            "short_replies": total["short"] / n_seq,
            "value_mean": total["value"] / n_tok, "return_mean": total["return"] / n_tok,
            "generated_tokens": int(total["generated_tokens"])}


def encode_queries(tok, prompts: list[dict], fmt: str, max_prompt_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as the policy reads them: rendered in the reward model's format (karma.reward.encode
    with response=None), cut to max_prompt_tokens, left-padded -> (ids [B, T], mask [B, T])."""
    cut = RewardConfig(format=fmt, max_length=max_prompt_tokens)
    return left_pad([encode(tok, p["messages"], None, p.get("meta"), cut) for p in prompts], tok.pad_id)


def reply_stop_ids(tok, stop_at_sentence_end: bool) -> list[int]:
    """The tokens that end a reply: EOS (and the checkpoint's other stop ids), plus every sentence-ending
    punctuation token (Tokenizer.sentence_end_ids) when replies stop at their first sentence end."""
    return tok.stop_ids + tok.sentence_end_ids if stop_at_sentence_end else tok.stop_ids


def decode_replies(tok, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Generated replies [B, N] (mask: real tokens) as text."""
    return [tok.decode(r[m.bool()].tolist()) for r, m in zip(tokens, mask)]


@dataclass
class Sampled:
    """Replies sampled for a batch of prompts, scored, with both models' log-probs: what a rollout
    and an evaluation share (sample_and_score). Q = query length, T = response length."""

    query: Tensor  # [B, Q] prompt token ids (left padded)
    query_mask: Tensor  # [B, Q]
    response: Tensor  # [B, T] sampled token ids
    response_mask: Tensor  # [B, T] 1 up to and including EOS
    ended: Tensor  # [B] bool: the reply ended with a stop token
    texts: list[str]  # the B replies as text
    scores: Tensor  # [B] float32 reward-model scores (non-finite ones included), 0 for a too-short reply
    short: Tensor  # [B] bool: shorter than cfg.min_reply_chars, scored 0
    logprobs: Tensor  # [B, T] log pi(response_t) of the policy (temperature applied)
    ref_logprobs: Tensor  # [B, T] log pi_ref(response_t)
    seconds: dict  # generate_s, score_s, logprob_s


@torch.no_grad()
def sample_and_score(policy, ref, reward, policy_tok, prompts: list[dict], cfg, seed: int,
                     generator_model=None) -> Sampled:
    """Sample one reply per prompt, decode it, score it with the reward model through its training
    format, and take the policy's and the reference's log-probs of it.

    prompts: [{"id", "messages", "meta"}]; each is rendered for the policy with the reward model's
    format (karma.reward.encode with response=None), sampled with the private generator `seed`,
    decoded, and scored by reward.score(messages, response_text, meta). generator_model: a plain
    replica of a sharded policy for sampling (distributed.replicated_copy); the policy's log-probs
    are then recomputed by the policy itself (a forward pass every rank takes part in under FSDP).
    """
    device = policy.embed.weight.device
    query, query_mask = (t.to(device) for t in encode_queries(policy_tok, prompts, reward.cfg.format,
                                                              cfg.max_prompt_tokens))
    start = time.perf_counter()
    out = generate(generator_model or policy, query, query_mask, max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                   stop_ids=reply_stop_ids(policy_tok, cfg.stop_at_sentence_end), pad_id=policy_tok.pad_id, seed=seed)
    gen_s = time.perf_counter() - start
    response, response_mask = out.tokens, out.mask
    if response.shape[1] == 0:
        raise RuntimeError("the policy generated no tokens (max_new_tokens 0?)")
    texts = decode_replies(policy_tok, response, response_mask)

    start = time.perf_counter()
    scores = reward.score([p["messages"] for p in prompts], texts, [p.get("meta") for p in prompts]).float().to(device)
    # a reply shorter than any the reward model was trained on gets the lowest score, not its guess
    short = torch.tensor([len(t.strip()) < cfg.min_reply_chars for t in texts], device=device)
    scores = torch.where(short, 0.0, scores)
    score_s = time.perf_counter() - start

    start = time.perf_counter()
    full = torch.cat([query, response], 1)
    full_mask = torch.cat([query_mask, response_mask], 1)
    Q = query.shape[1]
    # log pi_old: generation computed it while sampling, with the same function of the logits; a
    # forward pass recomputes it only when a replica sampled (bf16 on GPU, gathered under FSDP)
    if generator_model is None or generator_model is policy:
        logprobs = out.logprobs
    else:
        logprobs = response_logprobs(policy, full, full_mask, Q, cfg.temperature)
    ref_logprobs = response_logprobs(ref, full, full_mask, Q, cfg.temperature)
    return Sampled(query, query_mask, response, response_mask, out.ended, texts, scores, short, logprobs, ref_logprobs,
                   {"generate_s": gen_s, "score_s": score_s, "logprob_s": time.perf_counter() - start})


@torch.no_grad()
def collect_rollout(policy, ref, value, reward, policy_tok, prompts: list[dict], cfg, kl_coef: float, seed: int,
                    d: Dist | None = None, generator_model=None, score_norm: ScoreNorm | None = None):
    """One rollout of this rank's prompts: generate and score (sample_and_score), reward, advantage,
    and the reward-hacking signals of every rank's replies (karma/ppo/signals.py).
    Returns (buffer, stats over all ranks, samples of this rank).

    score_norm (--normalize-scores): the score enters the reward rescaled (core.ScoreNorm), fitted
    here on the reward model's scores of the first rollout it sees unfitted; stats keep the raw score.

    stats holds the signals and the EXTREMES best- and worst-scored replies of all ranks
    ("top_replies", "bottom_replies"); every rank computes the same ones.
    """
    d = d or Dist(0, 1, policy.embed.weight.device)
    device = policy.embed.weight.device
    s = sample_and_score(policy, ref, reward, policy_tok, prompts, cfg, seed, generator_model)
    query, query_mask, response, response_mask, scores = s.query, s.query_mask, s.response, s.response_mask, s.scores
    logprobs, ref_logprobs = s.logprobs, s.ref_logprobs
    # a non-finite score (a reward model fault on some text) drops its row: masked out of the rewards,
    # the whitening statistics and every loss, counted, instead of poisoning the whole rollout
    scored = torch.isfinite(scores)
    train_mask = response_mask * scored[:, None]  # [B, T]: the tokens PPO learns from
    reward_scores = torch.where(scored, scores, 0.0)  # [B]
    if score_norm is not None:
        if not score_norm.fitted:  # the first rollout: the initial policy's replies, every rank's
            rm_scored = scored & ~s.short  # a short reply's 0 is the rule's, not the reward model's
            fit = reduce_sums(d, device, {"n": rm_scored.sum(), "sum": torch.where(rm_scored, scores, 0.0).sum(),
                                          "sq": torch.where(rm_scored, scores.double() ** 2, 0.0).sum()})
            ends = reduce_max(d, device, {"hi": torch.where(rm_scored, scores, -math.inf).max(),
                                          "minus_lo": torch.where(rm_scored, -scores, -math.inf).max()})
            score_norm.fit(fit["n"], fit["sum"], fit["sq"], spread=ends["hi"] + ends["minus_lo"])
        reward_scores = torch.where(scored, score_norm(scores), 0.0)

    start = time.perf_counter()
    full = torch.cat([query, response], 1)
    full_mask = torch.cat([query_mask, response_mask], 1)
    Q = query.shape[1]
    values = value(full, full_mask)[:, Q - 1:-1]  # V before each response token
    penalty = cfg.missing_eos_penalty
    rewards, kl = token_rewards(reward_scores, logprobs, ref_logprobs, response_mask, kl_coef,
                                kind=cfg.kl_estimator, ended_with_eos=s.ended if penalty is not None else None,
                                missing_eos_penalty=penalty)
    rewards = rewards * train_mask  # a dropped row earns nothing
    advantages, returns = gae(rewards, values, train_mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:  # mean and variance over every rank's tokens
        advantages = masked_whiten(advantages, train_mask, sum_all=partial(all_reduce_sum, d=d))
    forward_s = s.seconds["logprob_s"] + time.perf_counter() - start

    m = train_mask.bool()
    kl_seq = torch.where(m, logprobs - ref_logprobs, 0.0).sum(1)  # k1 per sequence: what the KL controller reads
    total = reduce_sums(d, device, {  # over all ranks' sequences and tokens
        "sequences": len(scores), "scored": scored.sum(), "score": torch.where(scored, scores, 0.0).sum(),
        "score_sq": torch.where(scored, scores ** 2, 0.0).sum(), "kl_seq": kl_seq.sum(),
        "kl_token": torch.where(m, kl, 0.0).sum(), "scored_tokens": m.sum(), "generated_tokens": response_mask.sum(),
        "ended_eos": s.ended.sum(), "short": s.short.sum(), "value": torch.where(m, values, 0.0).sum(),
        "return": torch.where(m, returns, 0.0).sum()})
    samples = [{"prompt_id": p.get("id"), "prompt": p["messages"][-1]["content"][-500:], "response": t,
                "score": score, "tokens": n, "short": short}
               for p, t, score, n, short in zip(prompts, s.texts, scores.tolist(), response_mask.sum(1).tolist(),
                                                s.short.tolist())]
    stats = {**rollout_stats(total), "generate_s": s.seconds["generate_s"], "score_s": s.seconds["score_s"],
             "forward_s": forward_s, **reply_signals(samples, d)}
    buffer = RolloutBuffer(query, query_mask, response, train_mask, logprobs, ref_logprobs, values, rewards,
                           advantages, returns)
    return buffer, stats, samples


def rm_scores(replies: list[dict]) -> list[float]:
    """The scores the reward model gave, NaN for a too-short reply (--min-reply-chars scored it 0 by
    rule): the length correlation asks whether the RM's scores follow length, and the rule's zeros
    for short replies would make it say so by construction."""
    return [math.nan if x["short"] else x["score"] for x in replies]


def reply_signals(samples: list[dict], d: Dist) -> dict:
    """The reward-hacking signals of every rank's replies (signals.rollout_signals), the warning they
    raise ("hacking_warning", "" if none), and the best- and worst-scored replies ({"score", "tokens",
    "prompt_id", "response"}). One all-gather of the replies."""
    every = gather_lists([{k: x[k] for k in ("score", "tokens", "prompt_id", "response", "short")} for x in samples], d)
    found = rollout_signals([x["response"] for x in every], rm_scores(every), [x["tokens"] for x in every])
    every = [{k: v for k, v in x.items() if k != "short"} for x in every]
    ends = extremes(every)
    return {**found, "hacking_warning": hacking_warning(found), "top_replies": ends["top"],
            "bottom_replies": ends["bottom"]}


# ------------------------------------------------------------------------------ held-out evaluation

@torch.no_grad()
def evaluate_policy(policy, ref, reward, policy_tok, prompts: list[dict], cfg, seed: int, d: Dist | None = None,
                    generator_model=None) -> dict:
    """The policy on this rank's share of the held-out prompts, one sampled reply each, in chunks of a
    rollout's per-rank batch (so it fits where a rollout does): sample_and_score, chunk c with the
    private seed `seed` * 1_000_003 + c * world + rank, so every evaluation of a run draws the same
    random numbers. Every rank must hold the same number of prompts (the chunks' forward passes of a
    sharded policy pair up). Returns the means over all ranks' replies:
        score        mean reward-model score of the scored replies, score_se its standard error
                     sd / sqrt(n) (one reply per prompt: the replies are independent draws)
        kl_seq       per sequence, sum over the reply's tokens of log pi - log pi_ref (k1), as the
                     rollout's kl_seq, with its standard error kl_seq_se
        response_len generated tokens per reply (EOS included), ended_eos the share ending at a stop
                     token (EOS, or a sentence end under cfg.stop_at_sentence_end),
                     short_replies the share scored 0 as shorter than cfg.min_reply_chars
    and the diversity of the replies (signals.rollout_signals)."""
    d = d or Dist(0, 1, policy.embed.weight.device)
    device = policy.embed.weight.device
    chunk = max(1, cfg.rollout_batch // d.world_size)
    start = time.perf_counter()
    sums, replies = None, []
    for c, lo in enumerate(range(0, len(prompts), chunk)):
        batch = prompts[lo:lo + chunk]
        s = sample_and_score(policy, ref, reward, policy_tok, batch, cfg, seed * 1_000_003 + c * d.world_size + d.rank,
                             generator_model)
        scored = torch.isfinite(s.scores)
        m = s.response_mask.bool() & scored[:, None]
        kl_seq = torch.where(m, s.logprobs - s.ref_logprobs, 0.0).sum(1)[scored]  # [n scored]
        score = s.scores[scored].double()
        part = {"sequences": len(batch), "scored": scored.sum(), "score": score.sum(), "score_sq": (score ** 2).sum(),
                "kl_seq": kl_seq.sum(), "kl_seq_sq": (kl_seq.double() ** 2).sum(),
                "generated_tokens": s.response_mask.sum(), "ended_eos": s.ended.sum(), "short": s.short.sum()}
        part = {k: torch.as_tensor(v, device=device).double() for k, v in part.items()}
        sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
        replies += [{"response": t, "score": x, "tokens": n, "short": short}
                    for t, x, n, short in zip(s.texts, s.scores.tolist(), s.response_mask.sum(1).tolist(),
                                              s.short.tolist())]
    total = reduce_sums(d, device, sums)
    every = gather_lists(replies, d)
    n, n_seq = total["scored"], total["sequences"]
    mean = lambda key: total[key] / n if n else None
    se = lambda key: (max(total[f"{key}_sq"] - n * mean(key) ** 2, 0.0) / (n - 1) / n) ** 0.5 if n > 1 else None
    found = rollout_signals([r["response"] for r in every], rm_scores(every), [r["tokens"] for r in every])
    return {"prompts": int(n_seq), "score": mean("score"), "score_se": se("score"), "kl_seq": mean("kl_seq"),
            "kl_seq_se": se("kl_seq"), "response_len": total["generated_tokens"] / n_seq,
            "ended_eos": total["ended_eos"] / n_seq, "short_replies": total["short"] / n_seq,
            "dropped_nonfinite_scores": int(n_seq - n),
            **{k: found[k] for k in ("distinct_1", "distinct_2", "repeat_share", "score_length_corr")},
            "eval_s": time.perf_counter() - start}
