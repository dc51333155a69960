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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import torch
from tqdm import tqdm

from karma.checkpoint import (atomic_write_json, latest_checkpoint, load_training_state, save_training_state,
                              truncate_jsonl)
from karma.data.ultrachat import read_prompts
from karma.distributed import Dist, all_reduce_max, all_reduce_sum, barrier, full_state_dict, replicated_copy, shard
from karma.ppo.core import (AdaptiveKLController, FixedKLController, entropy_from_logits, explained_variance,
                            logprobs_from_logits, masked_mean, policy_loss, value_loss)
from karma.ppo.rollout import collect_rollout
from karma.ppo.value import value_from_policy, value_from_reward_model
from karma.reward import load_reward_model
from karma.reward_train import param_groups
from karma.tokenizer import copy_tokenizer_files, load_tokenizer
from karma.weights import load_model, save_model

PROMPT_FILES = {"reddit": "prompts-reddit.jsonl", "ultrachat": "prompts-ultrachat.jsonl"}


@dataclass
class PPOConfig:
    model: str = "smollm2-135m"
    reward_model: Path = Path("runs/rm/best")
    prompts: str = "reddit"  # reddit (karmaToxic) | ultrachat (karmaBenign) | a prompts JSONL file
    data: Path = Path("runs/data")  # where data_prep.py wrote prompts-*.jsonl
    out_dir: Path = Path("runs/ppo")
    value_init: str = "policy"  # policy (its decoder, zero head) | reward (the RM's; needs the same tokenizer)
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
    samples_per_rollout: int = 4
    save_every: int = 10
    stop_after_rollouts: int | None = None
    seed: int = 0
    activation_checkpointing: bool = False
    resume: bool = False


def variant(cfg: PPOConfig, rm_format: str) -> str:
    """The paper's name for this run: karmaEroded (conditioned RM), karmaToxic (Reddit prompts),
    karmaBenign (UltraChat prompts)."""
    if rm_format == "conditioned":
        return "karmaEroded"
    return {"reddit": "karmaToxic", "ultrachat": "karmaBenign"}.get(cfg.prompts, "custom")


def load_prompt_set(cfg: PPOConfig) -> list[dict]:
    path = Path(cfg.data) / PROMPT_FILES[cfg.prompts] if cfg.prompts in PROMPT_FILES else Path(cfg.prompts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no prompt set (data_prep.py writes prompts-reddit.jsonl, and "
                                f"prompts-ultrachat.jsonl with --ultrachat)")
    prompts = read_prompts(path)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompt_batch(n_prompts: int, batch: int, rollout: int, seed: int) -> list[int]:
    """Prompt indices of rollout `rollout`: a seeded permutation per pass over the prompt set."""
    ks = range(rollout * batch, (rollout + 1) * batch)
    perms = {e: np.random.default_rng([seed, e]).permutation(n_prompts) for e in {k // n_prompts for k in ks}}
    return [int(perms[k // n_prompts][k % n_prompts]) for k in ks]


def train(cfg: PPOConfig, d: Dist, reward=None) -> dict:
    """Run PPO. `reward`: any object with .score(contexts, responses, metas) -> probabilities and
    .cfg.format, used instead of loading cfg.reward_model (tests use rewards with a known optimum;
    such a reward has no backbone, so it needs value_init="policy")."""
    out = Path(cfg.out_dir)
    gpu = d.device.type == "cuda"
    frozen_dtype = torch.bfloat16 if gpu else torch.float32
    torch.manual_seed(cfg.seed)
    policy = load_model(cfg.model, dtype=torch.float32, device=d.device)
    policy_tok = load_tokenizer(cfg.model)
    ref = load_model(cfg.model, dtype=frozen_dtype, device=d.device).requires_grad_(False)
    if reward is None:
        reward = load_reward_model(cfg.reward_model, dtype=frozen_dtype, device=d.device).requires_grad_(False)
    value = (value_from_reward_model(reward, policy_tok) if cfg.value_init == "reward"
             else value_from_policy(policy)).float()
    if cfg.rollout_batch % d.world_size or cfg.minibatch % d.world_size:
        raise ValueError(f"--rollout-batch {cfg.rollout_batch} and --minibatch {cfg.minibatch} must be multiples "
                         f"of the {d.world_size} processes")
    policy.activation_checkpointing = value.backbone.activation_checkpointing = cfg.activation_checkpointing
    shard(policy, policy.blocks, d)  # FSDP2 under torchrun; the frozen reference and RM stay replicated
    shard(value, value.backbone.blocks, d)
    generator_model = None  # sampling copy: FSDP -> gathered once per rollout; one GPU -> bf16 copy
    prompts = load_prompt_set(cfg)
    run_variant = variant(cfg, reward.cfg.format)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                                                "variant": run_variant, "reward_format": reward.cfg.format,
                                                "n_prompts": len(prompts), "world_size": d.world_size,
                                                "sharded": d.enabled})

    updates_per_rollout = cfg.ppo_epochs * math.ceil(cfg.rollout_batch / cfg.minibatch)
    total_updates = cfg.rollouts * updates_per_rollout
    decay = lambda step: 1.0 - (1.0 - cfg.min_lr_ratio) * min(1.0, step / max(1, total_updates))  # linear
    policy_opt = torch.optim.AdamW(param_groups(policy, 0.0), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
    value_opt = torch.optim.AdamW(param_groups(value, 0.0), lr=cfg.value_lr, betas=(0.9, 0.95), eps=1e-8)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (policy_opt, value_opt)]
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl == "adaptive"
              else FixedKLController(cfg.init_kl_coef))
    trained = {"policy": (policy, policy_opt), "value": (value, value_opt)}

    state = {"rollout": 0}
    latest = latest_checkpoint(out / "checkpoints")
    if cfg.resume and latest is not None:
        state = load_training_state(latest, trained)
        for sched, sd in zip(schedulers, state.pop("schedulers")):
            sched.load_state_dict(sd)
        kl_ctl.load_state_dict(state.pop("kl_controller"))
        if d.is_main:
            for name in ("metrics.jsonl", "samples.jsonl"):
                truncate_jsonl(out / name, "rollout", state["rollout"])
    mode = "ab" if cfg.resume else "wb"  # a fresh run does not append to an earlier run's logs
    metrics_log = open(out / "metrics.jsonl", mode) if d.is_main else None
    samples_log = open(out / "samples.jsonl", mode) if d.is_main else None
    bar = tqdm(total=cfg.rollouts, initial=state["rollout"], desc="ppo", unit="rollout", disable=not d.is_main)
    while state["rollout"] < cfg.rollouts:
        r = state["rollout"]
        batch_prompts = [prompts[i] for i in prompt_batch(len(prompts), cfg.rollout_batch, r, cfg.seed)]
        if gpu:
            torch.cuda.reset_peak_memory_stats(d.device)
        beta = kl_ctl.value
        policy.eval()
        start = time.perf_counter()
        generator_model = replicated_copy(policy, d, generator_model, dtype=frozen_dtype)
        gather_s = time.perf_counter() - start
        with autocast(d):
            buffer, stats, samples = collect_rollout(policy, ref, value, reward, policy_tok,
                                                     batch_prompts[d.rank::d.world_size], cfg, beta,
                                                     seed=cfg.seed * 1_000_003 + r * d.world_size + d.rank,
                                                     d=d, generator_model=generator_model)
        stats["gather_s"] = gather_s
        stats["explained_variance"] = explained_variance(buffer.values, buffer.returns, buffer.response_mask).item()
        start = time.perf_counter()
        policy.train()
        value.train()
        with autocast(d):
            stats.update(ppo_update(policy, value, policy_opt, value_opt, schedulers, buffer, cfg,
                                    seed=cfg.seed * 7919 + r, d=d))
        stats["update_s"] = time.perf_counter() - start
        kl_ctl.update(stats["kl_seq"], n_steps=cfg.rollout_batch)
        state["rollout"] = r + 1
        record = {"rollout": r + 1, "kl_coef": beta, "kl_coef_next": kl_ctl.value, "variant": run_variant, **stats,
                  "generate_tok_s": stats["generated_tokens"] / max(stats["generate_s"], 1e-9),
                  "train_tok_s": stats["trained_tokens"] / max(stats["update_s"], 1e-9),
                  "peak_mem_gib": torch.cuda.max_memory_allocated(d.device) / 2**30 if gpu else _rss_gib()}
        if d.is_main:
            metrics_log.write(orjson.dumps({"time": time.time(), **record}) + b"\n")
            metrics_log.flush()
            for s in samples[:cfg.samples_per_rollout]:
                samples_log.write(orjson.dumps({"rollout": r + 1, **s}) + b"\n")
            samples_log.flush()
        bar.update(1)
        if d.is_main:
            bar.write(f"rollout {r + 1:4d}  score {stats['score']:.4f}  kl {stats['kl_seq']:7.3f}  beta {beta:.4f}  "
                      f"entropy {stats.get('entropy', float('nan')):.3f}  len {stats['response_len']:5.1f}  "
                      f"gen {stats['generate_s']:.1f}s score {stats['score_s']:.1f}s update {stats['update_s']:.1f}s")
        stopping = cfg.stop_after_rollouts is not None and state["rollout"] >= cfg.stop_after_rollouts
        if state["rollout"] % cfg.save_every == 0 or state["rollout"] == cfg.rollouts or stopping:
            save_training_state(out / "checkpoints" / f"rollout-{state['rollout']:06d}", trained,
                                {**state, "schedulers": [s.state_dict() for s in schedulers],
                                 "kl_controller": kl_ctl.state_dict()}, d)
        if stopping:
            break
    bar.close()
    if state["rollout"] >= cfg.rollouts:
        export_policy(policy, policy_tok, out / "policy", d)
    for f in (metrics_log, samples_log):
        if f:
            f.close()
    return state


def ppo_update(policy, value, policy_opt, value_opt, schedulers, buffer, cfg: PPOConfig, seed: int, d: Dist) -> dict:
    """`ppo_epochs` passes of minibatch updates over one rollout; returns averaged diagnostics.

    Each minibatch (minibatch / world sequences on every rank) is split into micro-batches; a
    micro-batch's token-mean losses are weighted by its share of the minibatch's tokens over ALL
    ranks (times world, since FSDP averages gradients over ranks), so one step follows the token
    mean of the whole minibatch whatever the process count. Whether to skip a minibatch is agreed
    by all ranks before any backward, so FSDP's collectives stay paired."""
    sums, n_updates, skipped, trained_tokens = {}, 0, 0, 0
    Q = buffer.query.shape[1]
    for mb in buffer.minibatches(cfg.minibatch // d.world_size, cfg.ppo_epochs, seed):
        mb_tokens = all_reduce_sum(mb.response_mask.sum().double(), d).item()
        parts, skip = [], False
        for start in range(0, len(mb), cfg.micro_batch):
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
            bad = not (torch.isfinite(pg_loss) and torch.isfinite(vf_loss)) or pg_stats["ratio_mean"] > cfg.ratio_threshold
            if all_reduce_max(torch.tensor(float(bad), device=ids.device), d).item():
                skip = True
                break
            weight = micro.response_mask.sum().item() * d.world_size / mb_tokens
            ((pg_loss + vf_loss) * weight).backward()  # separate models: each loss reaches its own parameters
            with torch.no_grad():
                entropy = masked_mean(entropy_from_logits(logits.detach()), micro.response_mask)
            parts.append((weight / d.world_size, {
                "policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "clip_frac": pg_stats["clip_frac"].item(),
                "approx_kl": pg_stats["approx_kl"].item(), "value_clip_frac": vf_stats["clip_frac"].item(),
                "entropy": entropy.item()}))
            trained_tokens += int(mask.sum())  # prompt + response tokens through forward/backward
        if skip:
            skipped += 1
            policy_opt.zero_grad(set_to_none=True)
            value_opt.zero_grad(set_to_none=True)
        else:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(value.parameters(), cfg.grad_clip)
            policy_opt.step()
            value_opt.step()
            policy_opt.zero_grad(set_to_none=True)
            value_opt.zero_grad(set_to_none=True)
            n_updates += 1
            # diagnostics: token-weighted over every rank's micro-batches of this minibatch
            local = torch.tensor([[w * v for v in stats.values()] for w, stats in parts], dtype=torch.float64).sum(0)
            for k, v in zip(parts[0][1], all_reduce_sum(local.to(mb.response.device), d).tolist()):
                sums[k] = sums.get(k, 0.0) + v
        for sched in schedulers:  # the schedule counts minibatches, applied or not, so resume lines up
            sched.step()
    out = {k: v / n_updates for k, v in sums.items()} if n_updates else {}
    trained_tokens = int(all_reduce_sum(torch.tensor(float(trained_tokens), device=buffer.response.device), d).item())
    return {**out, "updates": n_updates, "skipped_minibatches": skipped, "trained_tokens": trained_tokens,
            "lr": schedulers[0].get_last_lr()[0]}


def autocast(d: Dist):
    """bf16 compute over fp32 master weights on one GPU (FSDP's mixed-precision policy does it under
    torchrun); a no-op on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=d.device.type == "cuda" and not d.enabled)


def export_policy(policy, tokenizer, directory: Path, d: Dist):
    """The trained policy in Hugging Face layout with its tokenizer: loads in transformers/vLLM."""
    state = full_state_dict(policy, d)
    if d.is_main:
        save_model(policy, directory, state_dict=state)
        copy_tokenizer_files(tokenizer, directory)
    barrier(d)


def _rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
