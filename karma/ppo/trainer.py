"""The PPO loop (Ziegler et al. 2019; Huang et al. 2024): rollout, then several epochs of updates.

Models: the policy (trained), a frozen reference (the initial policy), the critic (trained;
karma/ppo/value.py) and the frozen reward model (karma/reward.py). Per rollout of `rollout_batch`
prompts:
    1. collect (karma/ppo/rollout.py): sample responses, score them with the RM through the one
       format function, per-token rewards -beta*KL + score at the last token, GAE, whitening;
    2. update: `ppo_epochs` passes over shuffled minibatches of `minibatch` sequences (each split
       into micro-batches of `micro_batch`): clipped policy loss, clipped value loss, gradient
       clipping, AdamW, linear LR decay. A minibatch in which any micro-batch has a non-finite loss
       or a mean ratio above `ratio_threshold` is skipped (counted) and never applied;
    3. the KL coefficient is updated once (adaptive, Ziegler: current = mean per-sequence k1 sum,
       n_steps = sequences in the rollout; or fixed).
Everything random is seeded per rollout (generation, minibatch order), so a checkpoint (models,
optimizers, schedulers, KL controller, rollout counter) resumes exactly.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from karma.checkpoint import latest_checkpoint, save_training_state
from karma.data.prompts import read_prompts
from karma.distributed import Dist, all_reduce_max, all_reduce_sum, clip_grad_norm, replicated_copy, shard
from karma.logprobs import entropy_from_logits, logprobs_from_logits
from karma.plot import plot_run
from karma.ppo.core import (AdaptiveKLController, FixedKLController, explained_variance, masked_mean, policy_loss,
                            value_loss)
from karma.ppo.rollout import collect_rollout, reduce_sums
from karma.ppo.value import check_same_tokenizer, train_top_layers_only, value_from_policy, value_from_reward_model
from karma.reward import inspect_reward_model, load_reward_model
from karma.tokenizer import load_tokenizer
from karma.run import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, MetricsLog, RunLock, TrainingDiverged,
                       adamw, autocast, check_flags, check_out_dir, checkpoint_due, drop_checkpoints_if_done,
                       export_model, in_range, peak_memory_gib, Progress, resume, write_config)
from karma.weights import inspect_model, load_model

PROMPT_FILES = {"reddit": "prompts-reddit.jsonl", "ultrachat": "prompts-ultrachat.jsonl"}


@dataclass
class PPOConfig:
    model: str = "smollm2-135m"
    reward_model: Path = Path("runs/rm/best")
    prompts: str = "reddit"  # reddit (karmaToxic) | ultrachat (karmaBenign) | a prompts JSONL file
    data: Path = Path("runs/data")  # where data_prep.py wrote prompts-*.jsonl
    out_dir: Path = Path("runs/ppo")
    value_init: str = "policy"  # policy (its decoder, zero head) | reward (the RM's; needs the same tokenizer)
    value_trainable_layers: int | None = None  # train only the critic's top N blocks (karma/ppo/value.py)
    rollouts: int = 100
    rollout_batch: int = 16
    minibatch: int = 8
    micro_batch: int = 8
    ppo_epochs: int = 4
    lr: float = 1e-6
    value_lr: float = 9e-6
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    clip: float = 0.2
    value_clip: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    kl: str = "adaptive"
    init_kl_coef: float = 0.15
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    kl_estimator: str = "k1"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 64
    max_prompt_tokens: int = 256
    missing_eos_penalty: float | None = None
    ratio_threshold: float = 10.0
    max_approx_kl: float = 1.0
    divergence_patience: int = 2
    samples_per_rollout: int = 4
    save_every: int = 10
    keep_checkpoints: int = 1
    stop_after_rollouts: int | None = None
    seed: int = 0
    activation_checkpointing: bool = False
    resume: bool = False

    def inputs(self) -> dict:
        """What the run reads, by setting: config.json records them by content (run.input_identities).
        Of --data only its prompt set is read: that file stands for --data."""
        prompts = {"data": prompt_file(self)} if self.prompts in PROMPT_FILES else {"prompts": Path(self.prompts)}
        return {"model": self.model, "reward_model": self.reward_model, **prompts}

    def check(self) -> None:
        """Flag values a run can use (ValueError naming the flag). Batch sizes also have an upper
        bound no real run reaches, so a typo (--rollout-batch 100000000) is refused here, not in the
        allocator after three models load; token budgets are bounded by the policy's context
        (check_inputs)."""
        check_flags(self, rollouts=AT_LEAST_1, rollout_batch=AT_LEAST_1, micro_batch=AT_LEAST_1,
                    minibatch=AT_LEAST_1,
                    ppo_epochs=AT_LEAST_1, lr=POSITIVE, value_lr=POSITIVE, min_lr_ratio=UNIT_INTERVAL,
                    grad_clip=POSITIVE, clip=POSITIVE, value_clip=POSITIVE, gamma=UNIT_INTERVAL, lam=UNIT_INTERVAL,
                    init_kl_coef=NON_NEGATIVE, kl_target=POSITIVE, kl_horizon=POSITIVE,
                    temperature=(lambda v: v == 0 or v >= MIN_TEMPERATURE,
                                 f">= 0 (0 = greedy; otherwise at least {MIN_TEMPERATURE})"), top_k=AT_LEAST_1,
                    top_p=(lambda v: 0 < v <= 1, "in (0, 1]"), max_new_tokens=AT_LEAST_1, max_prompt_tokens=AT_LEAST_1,
                    missing_eos_penalty=(lambda v: True, "a finite number"),
                    ratio_threshold=(lambda v: v > 1, "> 1"), max_approx_kl=POSITIVE, divergence_patience=AT_LEAST_1,
                    samples_per_rollout=NON_NEGATIVE, save_every=AT_LEAST_1, keep_checkpoints=NON_NEGATIVE,
                    stop_after_rollouts=AT_LEAST_1, value_trainable_layers=AT_LEAST_1)
        check_flags(self, rollout_batch=in_range(1, MAX_BATCH), minibatch=in_range(1, MAX_BATCH),
                    micro_batch=in_range(1, MAX_BATCH))


# Prompts per rollout (generated as one batch) and sequences per minibatch, at most: PPO recipes
# use tens to about a thousand prompts per rollout, so more than 2**16 is a typo.
MAX_BATCH = 2**16
# Sampling divides the logits by the temperature: below this it is greedy in all but name, and a
# denormal one (1e-40) overflows the logits to inf. 0 asks for greedy decoding.
MIN_TEMPERATURE = 1e-3


# settings a resumed run may change: they decide what is logged and saved, not the weights
RESUMABLE_CHANGES = {"samples_per_rollout", "save_every", "keep_checkpoints", "stop_after_rollouts",
                     "activation_checkpointing", "resume"}
# a minibatch whose value loss exceeds this many times that of a critic predicting 0 (0.5 E[G^2],
# floored at 0.01) is skipped as diverging
VALUE_LOSS_LIMIT = 100.0


def variant(cfg: PPOConfig, rm_format: str) -> str:
    """The paper's name for this run: karmaEroded (conditioned RM), karmaToxic (Reddit prompts),
    karmaBenign (UltraChat prompts)."""
    if rm_format == "conditioned":
        return "karmaEroded"
    return {"reddit": "karmaToxic", "ultrachat": "karmaBenign"}.get(cfg.prompts, "custom")


def prompt_file(cfg: PPOConfig) -> Path:
    """--prompts: data_prep.py's prompt set in --data (reddit, ultrachat), or a JSONL file."""
    return Path(cfg.data) / PROMPT_FILES[cfg.prompts] if cfg.prompts in PROMPT_FILES else Path(cfg.prompts)


def load_prompt_set(cfg: PPOConfig, rm_format: str) -> list[dict]:
    """The prompt set, every prompt checked for rendering in the reward model's format (its roles,
    and the conditioned format's meta) before any model loads."""
    path = prompt_file(cfg)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prompt set (data_prep.py writes prompts-reddit.jsonl, and "
                                f"prompts-ultrachat.jsonl with --ultrachat)")
    prompts = read_prompts(path, fmt=rm_format)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompt_batch(n_prompts: int, batch: int, rollout: int, seed: int) -> list[int]:
    """Prompt indices of rollout `rollout`: a seeded permutation per pass over the prompt set."""
    ks = range(rollout * batch, (rollout + 1) * batch)
    perms = {e: np.random.default_rng([seed, e]).permutation(n_prompts) for e in {k // n_prompts for k in ks}}
    return [int(perms[k // n_prompts][k % n_prompts]) for k in ks]


def check_inputs(cfg: PPOConfig, d: Dist, reward=None) -> list[dict]:
    """Everything that can be checked before a model is loaded: flags, the reward model directory
    (its config, backbone and head headers, tokenizer), the prompt set in the reward model's format,
    the policy checkpoint and its context length, the critic's tokenizer rule, and a resumed run's
    settings. `reward`: train's custom reward, if any. Returns the prompts."""
    cfg.check()
    if cfg.rollout_batch % d.world_size or cfg.minibatch % d.world_size:
        raise ValueError(f"--rollout-batch {cfg.rollout_batch} and --minibatch {cfg.minibatch} must be multiples "
                         f"of the {d.world_size} processes")
    if reward is not None and cfg.value_init == "reward":
        raise ValueError("--value-init reward needs a reward model with a backbone; use --value-init policy")
    rm_format = reward.cfg.format if reward is not None else inspect_reward_model(cfg.reward_model).format
    prompts = load_prompt_set(cfg, rm_format)
    policy_cfg, policy_tok = inspect_model(cfg.model), load_tokenizer(cfg.model)
    if cfg.max_prompt_tokens + cfg.max_new_tokens > policy_cfg.max_position_embeddings:
        raise ValueError(f"--max-prompt-tokens {cfg.max_prompt_tokens} + --max-new-tokens {cfg.max_new_tokens}: more "
                         f"than {cfg.model}'s max_position_embeddings ({policy_cfg.max_position_embeddings})")
    if cfg.value_init == "reward":
        check_same_tokenizer(load_tokenizer(cfg.reward_model), policy_tok)
    critic_layers = (inspect_model(cfg.reward_model) if cfg.value_init == "reward" else policy_cfg).n_layers
    if cfg.value_trainable_layers is not None and cfg.value_trainable_layers > critic_layers:
        raise ValueError(f"--value-trainable-layers {cfg.value_trainable_layers}: more than the critic's "
                         f"{critic_layers} blocks")
    check_out_dir(cfg.out_dir, cfg, RESUMABLE_CHANGES)
    return prompts


def train(cfg: PPOConfig, d: Dist, reward=None) -> dict:
    """Run PPO. `reward`: any object with .score(contexts, responses, metas) -> probabilities and
    .cfg.format, used instead of loading cfg.reward_model (tests use rewards with a known optimum;
    such a reward has no backbone, so it needs value_init="policy")."""
    prompts = check_inputs(cfg, d, reward)
    with RunLock(cfg.out_dir, enabled=d.is_main):
        return _train(cfg, d, reward, prompts)


def _train(cfg: PPOConfig, d: Dist, reward, prompts: list[dict]) -> dict:
    """The loop: rollout -> update -> KL coefficient -> log -> checkpoint (see the module doc)."""
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    m = Models.load(cfg, d, reward)
    run_variant = variant(cfg, m.reward.cfg.format)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, variant=run_variant, reward_format=m.reward.cfg.format, n_prompts=len(prompts),
                     world_size=d.world_size, sharded=d.enabled)
    opt = Optimization(cfg, m)

    # divergent_streak: consecutive rollouts whose update diverged (see ppo_update / _diverged)
    state = {"rollout": 0, "divergent_streak": 0}
    resumed = resume(out, opt.trained, "rollout", ["metrics.jsonl", "samples.jsonl"], d) if cfg.resume else None
    if resumed:
        state.update(resumed)
        opt.load_state_dict(state)
    # a fresh run does not append to an earlier run's logs
    metrics_log = MetricsLog(out / "metrics.jsonl", append=resumed is not None, enabled=d.is_main)
    samples_log = MetricsLog(out / "samples.jsonl", append=resumed is not None, enabled=d.is_main)
    progress = Progress(cfg.rollouts, "ppo", "rollout", initial=state["rollout"], enabled=d.is_main)
    try:
        while state["rollout"] < cfg.rollouts:
            r = state["rollout"]
            batch_prompts = [prompts[i] for i in prompt_batch(len(prompts), cfg.rollout_batch, r, cfg.seed)]
            record, samples = ppo_iteration(m, opt, batch_prompts, cfg, r, run_variant, d)
            diverged = record["diverged"]
            state["divergent_streak"] = state["divergent_streak"] + 1 if diverged else 0
            state["rollout"] = r + 1
            metrics_log.write(record)
            for sample in samples[:cfg.samples_per_rollout]:
                samples_log.write({"rollout": r + 1, **sample})
            progress.update(1, score=record["score"], kl=record["kl_seq"])
            if d.is_main:
                progress.write(progress_line(record))
            if state["divergent_streak"] >= cfg.divergence_patience:
                raise TrainingDiverged(
                    f"rollouts {r + 2 - state['divergent_streak']}-{r + 1} diverged ({diverged}); these rollouts "
                    f"were not checkpointed: the last checkpoint, from before them, is "
                    f"{latest_checkpoint(out / 'checkpoints') or 'none (the run diverged before its first save)'}. "
                    f"Start again with a lower --lr / --value-lr; metrics in {out / 'metrics.jsonl'}")
            stopping = cfg.stop_after_rollouts is not None and state["rollout"] >= cfg.stop_after_rollouts
            if checkpoint_due(state["rollout"], cfg.rollouts, cfg.save_every, stopping, cfg.keep_checkpoints) \
                    and not diverged:
                save_training_state(out / "checkpoints" / f"rollout-{state['rollout']:06d}", opt.trained,
                                    {**state, **opt.state_dict()}, d, keep=max(1, cfg.keep_checkpoints))
            if stopping:
                break
    finally:  # also on errors: an open bar would share its line with the error message
        progress.close()
    if state["rollout"] >= cfg.rollouts:
        for optimizer in (opt.policy_opt, opt.value_opt):  # AdamW state, twice the trained weights: freed,
            optimizer.state.clear()  # its memory holds the export's copies instead of raising the peak
        export_model(m.policy, m.tokenizer, out / "policy", d)
        drop_checkpoints_if_done(out, cfg.keep_checkpoints, d.is_main)
    metrics_log.close()
    samples_log.close()
    if d.is_main:
        plot_run(out)  # curves.png: score, KL and beta, entropy, losses, clipping, lengths
    return state


class Models:
    """The policy (trained), the frozen reference and reward model, the critic (trained), the
    policy's tokenizer, and the sampling replica of the policy (see distributed.replicated_copy)."""

    def __init__(self, policy, ref, reward, value, tokenizer, frozen_dtype):
        self.policy, self.ref, self.reward, self.value, self.tokenizer = policy, ref, reward, value, tokenizer
        self.frozen_dtype = frozen_dtype  # bf16 on GPU, fp32 on CPU
        self.generator = None

    @classmethod
    def load(cls, cfg: PPOConfig, d: Dist, reward=None) -> "Models":
        frozen_dtype = torch.bfloat16 if d.device.type == "cuda" else torch.float32
        policy = load_model(cfg.model, dtype=torch.float32, device=d.device)
        tokenizer = load_tokenizer(cfg.model)
        ref = load_model(cfg.model, dtype=frozen_dtype, device=d.device).requires_grad_(False)
        if reward is None:
            reward = load_reward_model(cfg.reward_model, dtype=frozen_dtype, device=d.device).requires_grad_(False)
        value = (value_from_reward_model(reward, tokenizer) if cfg.value_init == "reward"
                 else value_from_policy(policy)).float()
        train_top_layers_only(value, cfg.value_trainable_layers)
        policy.activation_checkpointing = value.backbone.activation_checkpointing = cfg.activation_checkpointing
        shard(policy, policy.blocks, d)  # FSDP2 under torchrun; the frozen reference and RM stay replicated
        shard(value, value.backbone.blocks, d)
        return cls(policy, ref, reward, value, tokenizer, frozen_dtype)


class Optimization:
    """AdamW for the policy and the critic with linear LR decay over all minibatch updates, and the
    KL controller: everything a checkpoint must restore besides the weights."""

    def __init__(self, cfg: PPOConfig, m: Models):
        self.updates_per_rollout = cfg.ppo_epochs * math.ceil(cfg.rollout_batch / cfg.minibatch)
        total_updates = cfg.rollouts * self.updates_per_rollout
        decay = lambda step: 1.0 - (1.0 - cfg.min_lr_ratio) * min(1.0, step / max(1, total_updates))  # linear
        self.policy_opt = adamw(m.policy, cfg.lr, 0.0)
        self.value_opt = adamw(m.value, cfg.value_lr, 0.0)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (self.policy_opt, self.value_opt)]
        self.kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl == "adaptive"
                       else FixedKLController(cfg.init_kl_coef))
        self.trained = {"policy": (m.policy, self.policy_opt), "value": (m.value, self.value_opt)}

    def state_dict(self) -> dict:
        return {"schedulers": [s.state_dict() for s in self.schedulers], "kl_controller": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint's trainer state (the keys are removed from it)."""
        for sched, sd in zip(self.schedulers, state.pop("schedulers")):
            sched.load_state_dict(sd)
        self.kl_ctl.load_state_dict(state.pop("kl_controller"))


def ppo_iteration(m: Models, opt: Optimization, batch_prompts: list[dict], cfg: PPOConfig, r: int, run_variant: str,
                  d: Dist) -> tuple[dict, list[dict]]:
    """Rollout `r` (0-based): collect, update, adapt the KL coefficient. Returns its metrics record
    and its samples."""
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
    beta = opt.kl_ctl.value
    m.policy.eval()
    start = time.perf_counter()
    m.generator = replicated_copy(m.policy, d, m.generator, dtype=m.frozen_dtype)
    gather_s = time.perf_counter() - start
    with autocast(d):
        buffer, stats, samples = collect_rollout(m.policy, m.ref, m.value, m.reward, m.tokenizer,
                                                 batch_prompts[d.rank::d.world_size], cfg, beta,
                                                 seed=cfg.seed * 1_000_003 + r * d.world_size + d.rank,
                                                 d=d, generator_model=m.generator)
    stats["gather_s"] = gather_s
    stats["explained_variance"] = explained_variance(buffer.values, buffer.returns, buffer.response_mask).item()
    start = time.perf_counter()
    m.policy.train()
    m.value.train()
    if stats["score"] is not None:  # no finite score at all: nothing to learn from this rollout
        with autocast(d):
            stats.update(ppo_update(m.policy, m.value, opt.policy_opt, opt.value_opt, opt.schedulers, buffer, cfg,
                                    seed=cfg.seed * 7919 + r, d=d))
        opt.kl_ctl.update(stats["kl_seq"], n_steps=cfg.rollout_batch)
    else:
        stats.update(updates=0, skipped_minibatches=0, trained_tokens=0, lr=opt.schedulers[0].get_last_lr()[0])
        for sched in opt.schedulers:  # as if every minibatch were skipped, so the schedule lines up
            for _ in range(opt.updates_per_rollout):
                sched.step()
    stats["update_s"] = time.perf_counter() - start
    record = {"rollout": r + 1, "kl_coef": beta, "kl_coef_next": opt.kl_ctl.value, "variant": run_variant, **stats,
              "diverged": _diverged(stats, opt.updates_per_rollout, cfg),
              "generate_tok_s": stats["generated_tokens"] / max(stats["generate_s"], 1e-9),
              "train_tok_s": stats["trained_tokens"] / max(stats["update_s"], 1e-9),
              "peak_mem_gib": peak_memory_gib(d.device)}
    return record, samples


def _diverged(stats: dict, updates_per_rollout: int, cfg: PPOConfig) -> str:
    """Why this rollout counts as diverged ("" if it does not): no finite reward-model score, or at
    least half of its minibatches skipped for a non-finite loss, a mean ratio above
    --ratio-threshold, an approx KL above --max-approx-kl or an exploding value loss."""
    if stats["score"] is None:
        return f"no finite reward-model score among {stats['dropped_nonfinite_scores']} responses"
    if stats["skipped_minibatches"] and stats["skipped_minibatches"] >= 0.5 * updates_per_rollout:
        reasons = ", ".join(f"{k} {v}" for k, v in stats["skip_reasons"].items())
        return f"{stats['skipped_minibatches']} of {updates_per_rollout} minibatches skipped: {reasons}"
    return ""


def progress_line(record: dict) -> str:
    """One line per rollout for the console."""
    fmt = lambda key, spec: "-" if record.get(key) is None else format(record[key], spec)
    return (f"rollout {record['rollout']:4d}  score {fmt('score', '.4f')}  kl {fmt('kl_seq', '7.3f')}  "
            f"beta {record['kl_coef']:.6g}  entropy {fmt('entropy', '.3f')}  len {record['response_len']:5.1f}  "
            f"eos {record['ended_eos']:.2f}  gen {record['generate_s']:.1f}s score {record['score_s']:.1f}s "
            f"fwd {record['forward_s']:.1f}s update {record['update_s']:.1f}s"
            + (f"  DIVERGED: {record['diverged']}" if record["diverged"] else "")
            + (f"  ({record['dropped_nonfinite_scores']} non-finite scores dropped)"
               if record["dropped_nonfinite_scores"] else ""))


def ppo_update(policy, value, policy_opt, value_opt, schedulers, buffer, cfg: PPOConfig, seed: int, d: Dist) -> dict:
    """`ppo_epochs` passes of minibatch updates over one rollout; returns averaged diagnostics
    (losses, clip fractions, approx KL, entropy, and the gradient norms before clipping).

    Each minibatch (minibatch / world sequences on every rank) is split into micro-batches; a
    micro-batch's token-mean losses are weighted by its share of the minibatch's tokens over ALL
    ranks (FSDP sums gradients over ranks), so one step follows the token mean of the whole
    minibatch whatever the process count. Whether to skip a minibatch is agreed by all ranks
    before any backward, so FSDP's collectives stay paired. A minibatch is skipped
    (counted by reason, never applied) when a micro-batch has a non-finite loss, a mean ratio
    above --ratio-threshold, an approx KL above --max-approx-kl, or a value loss above
    VALUE_LOSS_LIMIT times that of a critic predicting 0; one without scored tokens is passed over.

    The host waits on the device only where it must decide: once per minibatch for its token count
    and once per micro-batch for the skip test and the loss weight, both before the backward. The
    diagnostics stay on the device, summed token-weighted, and are read once at the end."""
    device = buffer.response.device
    names = ("policy_loss", "value_loss", "clip_frac", "approx_kl", "value_clip_frac", "entropy")
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)  # over applied minibatches
    n_updates, trained_tokens = 0, torch.zeros((), dtype=torch.float64, device=device)
    grad_norms = torch.zeros(2, dtype=torch.float64, device=device)  # policy, critic: before clipping; global already
    skip_reasons = {"nonfinite": 0, "ratio": 0, "approx_kl": 0, "value_loss": 0}
    Q = buffer.query.shape[1]
    for mb in buffer.minibatches(cfg.minibatch // d.world_size, cfg.ppo_epochs, seed):
        mb_tokens = all_reduce_sum(mb.response_mask.sum().double(), d).item()
        mb_sums, skip = None, None  # this rank's token-weighted diagnostics of the minibatch [len(names)]
        for start in range(0, len(mb), cfg.micro_batch) if mb_tokens else ():
            micro = mb.select(torch.arange(start, min(start + cfg.micro_batch, len(mb))))
            ids = torch.cat([micro.query, micro.response], 1)
            mask = torch.cat([micro.query_mask, micro.response_mask], 1)
            logits = policy.logits(policy(ids, mask, output="hidden")[:, Q - 1:-1])
            if cfg.temperature not in (0, 1):
                logits = logits / cfg.temperature
            logp = logprobs_from_logits(logits, micro.response)
            pg_loss, pg_stats = policy_loss(logp, micro.logprobs, micro.advantages, micro.response_mask, cfg.clip)
            values = value(ids, mask)[:, Q - 1:-1]
            vf_loss, vf_stats = value_loss(values, micro.values, micro.returns, micro.response_mask, cfg.value_clip)
            trivial_vf_loss = 0.5 * masked_mean(micro.returns ** 2, micro.response_mask).clamp_min(0.01)
            bad = torch.stack([~(torch.isfinite(pg_loss) & torch.isfinite(vf_loss)),  # in skip_reasons' order
                               pg_stats["ratio_mean"] > cfg.ratio_threshold, pg_stats["approx_kl"] > cfg.max_approx_kl,
                               vf_loss > VALUE_LOSS_LIMIT * trivial_vf_loss]).float()
            bad = all_reduce_max(bad, d)  # all ranks agree
            if bad.any():
                skip = list(skip_reasons)[int(bad.nonzero()[0])]
                break
            weight = micro.response_mask.sum().item() / mb_tokens  # its share of the global token mean
            ((pg_loss + vf_loss) * weight).backward()  # separate models: each loss reaches its own parameters
            with torch.no_grad():
                entropy = masked_mean(entropy_from_logits(logits.detach()), micro.response_mask)
                stats = torch.stack([pg_loss, vf_loss, pg_stats["clip_frac"], pg_stats["approx_kl"],
                                     vf_stats["clip_frac"], entropy]).double() * weight
            mb_sums = stats if mb_sums is None else mb_sums + stats
            trained_tokens += mask.sum()  # prompt + response tokens through forward/backward
        if skip:
            skip_reasons[skip] += 1
        elif mb_sums is not None:
            grad_norms += torch.stack([clip_grad_norm(policy.parameters(), cfg.grad_clip),
                                       clip_grad_norm(value.parameters(), cfg.grad_clip)]).double()
            policy_opt.step()
            value_opt.step()
            n_updates += 1
            sums += mb_sums
        policy_opt.zero_grad(set_to_none=True)
        value_opt.zero_grad(set_to_none=True)
        for sched in schedulers:  # the schedule counts minibatches, applied or not, so resume lines up
            sched.step()
    # diagnostics: token-weighted over every rank's micro-batches, averaged over applied minibatches
    totals = reduce_sums(d, device, {**dict(zip(names, sums)), "trained_tokens": trained_tokens})
    out = {k: totals[k] / n_updates for k in names} if n_updates else {}
    if n_updates:
        out["policy_grad_norm"], out["value_grad_norm"] = (grad_norms / n_updates).tolist()
    return {**out, "updates": n_updates, "skipped_minibatches": sum(skip_reasons.values()),
            "skip_reasons": {k: v for k, v in skip_reasons.items() if v}, "trained_tokens": int(totals["trained_tokens"]),
            "lr": schedulers[0].get_last_lr()[0]}


