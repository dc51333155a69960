"""The PPO loop (Ziegler et al. 2019; Huang et al. 2024): rollout, then several epochs of updates.

Models: the policy (trained), a frozen reference (the initial policy), the critic (trained;
karma/ppo/value.py) and the frozen reward model (karma/reward.py). Per rollout of `rollout_batch`
prompts:
    1. collect (karma/ppo/rollout.py): sample responses, score them with the RM through the one
       format function, per-token rewards -kl_coef*KL + score at the last token, GAE, whitening;
    2. update: `ppo_epochs` passes over shuffled minibatches of `minibatch` sequences (each split
       into micro-batches of `micro_batch`): clipped policy loss, clipped value loss, gradient
       clipping, AdamW, linear LR decay. A minibatch in which any micro-batch has a non-finite loss
       or a mean ratio above `ratio_threshold` is skipped (counted) and never applied;
    3. the KL coefficient is updated once (adaptive, Ziegler: current = mean per-sequence k1 sum,
       n_steps = sequences in the rollout; or fixed).
Everything random is seeded per rollout (generation, minibatch order), so a checkpoint (models,
optimizers, schedulers, KL controller, rollout counter) resumes exactly.

Watching it: every rollout's record carries reward-hacking signals of its replies (diversity, exact
repeats, score-length correlation, the best and worst replies: karma/ppo/signals.py) and a warning
line when they cross their thresholds; --eval-every N samples the policy on held-out prompts with a
fixed seed every N rollouts (eval.jsonl), without changing what training computes.
"""

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from karma.data.format import render_prompt
from karma.data.prompts import heldout_prompts, prompt_problem, read_prompts, write_prompts
from karma.distributed import (CPU_BF16_HELP, Dist, all_reduce_sum, autocast, clip_grad_norm, reduce_max, reduce_sums,
                               replicated_copy, shard)
from karma.errors import TrainingDiverged
from karma.logprobs import entropy_from_logits, logprobs_from_logits
from karma.optim import adamw, linear_decay
from karma.ppo.core import (AdaptiveKLController, FixedKLController, ScoreNorm, explained_variance, masked_mean,
                            policy_loss, value_loss)
from karma.ppo.rollout import RolloutBuffer, collect_rollout, evaluate_policy, response_logits
from karma.ppo.value import check_same_tokenizer, value_from_policy, value_from_reward_model
from karma.reward import inspect_reward_model, load_reward_model
from karma.tokenizer import load_tokenizer
from karma.run import KEEP_CHECKPOINTS_HELP, Run, check_out_dir, peak_memory_gib
from karma.track import REPORT_TO_HELP, TRACKER_INSTALLED, TRACKERS
from karma.settings import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, SEED, UNIT_INTERVAL, check_settings, in_range,
                            seed_arg, setting)
from karma.weights import inspect_model, load_model

PROMPT_FILES = {"reddit": "prompts-reddit.jsonl", "ultrachat": "prompts-ultrachat.jsonl"}


# Prompts per rollout (generated as one batch) and sequences per minibatch, at most: PPO recipes
# use tens to about a thousand prompts per rollout, so more than 2**16 is a typo.
MAX_BATCH = 2**16
# Sampling divides the logits by the temperature: below this it is greedy in all but name, and a
# denormal one (1e-40) overflows the logits to inf. 0 asks for greedy decoding.
MIN_TEMPERATURE = 1e-3
TEMPERATURE = (lambda v: v == 0 or v >= MIN_TEMPERATURE, f">= 0 (0 = greedy; otherwise at least {MIN_TEMPERATURE})")


@dataclass
class PPOConfig:
    """ppo.py's settings: default, help and valid range of each (karma.settings derives the flags,
    --config and the checks). Batch sizes also have an upper bound no real run reaches, so a typo
    (--rollout-batch 100000000) is refused here, not in the allocator after three models load; token
    budgets are bounded by the policy's context (check_inputs)."""
    model: str = setting("smollm2-135m", "policy: alias, hub id or local dir")
    reward_model: Path = setting(Path("runs/rm/best"), "reward-model dir from train_rm.py (best/ or final/)")
    prompts: str = setting("reddit", "reddit (karmaToxic; the shipped sample has it), ultrachat (karmaBenign), "
                                     "or a prompts JSONL file")
    data: Path = setting(Path("runs/data"), "data_prep.py output dir holding prompts-*.jsonl")
    out_dir: Path = setting(Path("runs/ppo"), "output dir", flag="--out")
    value_init: str = setting("policy", "critic from the policy's decoder with a zero head, or from the reward "
                                        "model's backbone and head as TRL/OpenRLHF do (only when the RM and the "
                                        "policy share a tokenizer)", choices=("policy", "reward"))
    value_trainable_layers: int | None = setting(
        None, "train only the critic's top N blocks, final norm and head; its embedding and lower blocks stay "
              "frozen, without gradients or AdamW state (a departure, as trlX's num_layers_unfrozen: "
              "SmolLM2-135M's critic with N 8 needs 1.3 GB less memory)", AT_LEAST_1,
        metavar="N", unset="all, as KARMA and TRL")
    rollouts: int = setting(100, "number of rollouts (generate + update cycles); --resume with more extends a run",
                            AT_LEAST_1, budget=True)
    rollout_batch: int = setting(16, "prompts per rollout", AT_LEAST_1, in_range(1, MAX_BATCH))
    minibatch: int = setting(8, "sequences per optimizer step", AT_LEAST_1, in_range(1, MAX_BATCH))
    micro_batch: int = setting(8, "sequences per forward/backward (accumulation)", AT_LEAST_1, in_range(1, MAX_BATCH))
    ppo_epochs: int = setting(4, "passes over each rollout", AT_LEAST_1)
    lr: float = setting(1e-6, "policy learning rate", POSITIVE)
    value_lr: float = setting(9e-6, "critic learning rate", POSITIVE)
    min_lr_ratio: float = setting(0.0, "linear decay to this x lr at the end", UNIT_INTERVAL)
    grad_clip: float = setting(1.0, "max global gradient norm", POSITIVE)
    clip: float = setting(0.2, "policy ratio clip epsilon", POSITIVE)
    value_clip: float = setting(0.2, "value clip range around the old values", POSITIVE)
    gamma: float = setting(1.0, "GAE discount", UNIT_INTERVAL)
    lam: float = setting(0.95, "GAE lambda", UNIT_INTERVAL)
    whiten_advantages: bool = setting(True, "whiten the advantages of each rollout (mean 0, standard deviation 1)")
    normalize_scores: bool = setting(
        False, "rescale the reward model's score to mean 0, standard deviation 1 over the first rollout's replies "
               "(the initial policy's) before it enters the reward, as Ziegler et al. 2019 do; the KL coefficient "
               "is then in units of the score's spread (the logged score stays the raw one)", before_added=False)
    kl: str = setting("adaptive", "KL coefficient control (Ziegler adaptive or fixed)", choices=("adaptive", "fixed"))
    init_kl_coef: float = setting(0.15, "initial (or fixed) KL coefficient", NON_NEGATIVE)
    kl_target: float = setting(6.0, "adaptive target: mean per-sequence SUM of k1 KL, in nats (as Ziegler et al.)",
                               POSITIVE)
    kl_horizon: float = setting(10000.0, "adaptive horizon in sequences", POSITIVE)
    kl_estimator: str = setting("k1", "per-token KL in the reward", choices=("k1", "k2", "k3", "abs"))
    temperature: float = setting(1.0, "sampling temperature (log-probs use it too)", TEMPERATURE)
    top_k: int | None = setting(None, "sample from the k most likely tokens only", AT_LEAST_1)
    top_p: float | None = setting(None, "nucleus sampling: the smallest set of tokens holding this probability",
                                  (lambda v: 0 < v <= 1, "in (0, 1]"))
    max_new_tokens: int = setting(64, "response budget in tokens", AT_LEAST_1)
    max_prompt_tokens: int = setting(256, "prompt budget; longer contexts lose their oldest turns first", AT_LEAST_1)
    missing_eos_penalty: float | None = setting(None, "subtracted from the score of responses without EOS (or, "
                                                      "with --stop-at-sentence-end, without a sentence end)")
    stop_at_sentence_end: bool = setting(
        False, "end each reply at its first sentence end (a punctuation token ending in . ! or ?, kept in the reply) "
               "as well as at EOS, so that the reward model reads whole sentences instead of a reply cut off by the "
               "token budget; Ziegler et al. 2019 likewise truncate samples at a period (lm-human-preferences "
               "truncate_token)", before_added=False)
    min_reply_chars: int = setting(0, "a reply shorter than this many characters (whitespace stripped) scores 0, the "
                                   "lowest probability, instead of the reward model's guess: data_prep.py drops "
                                   "such replies (--min-chars, 10), so the reward model never saw one, and an empty "
                                   "reply is how a policy games it; 0 turns this off", NON_NEGATIVE)
    ratio_threshold: float = setting(10.0, "skip (and count) a minibatch whose mean ratio exceeds this",
                                     (lambda v: v > 1, "> 1"))
    max_approx_kl: float = setting(1.0, "skip (and count) a minibatch whose approx KL to the rollout policy "
                                        "exceeds this, in nats per token (the clip range 0.2 corresponds to about "
                                        "0.016)", POSITIVE)
    divergence_patience: int = setting(2, "stop after this many consecutive diverged rollouts: half or more of "
                                          "their minibatches skipped, or no finite reward; diverged rollouts are "
                                          "never checkpointed", AT_LEAST_1)
    samples_per_rollout: int = setting(4, "(prompt, response, score) rows logged", NON_NEGATIVE)
    eval_every: int = setting(0, "evaluate the policy on held-out prompts every N rollouts, before the first and "
                                 "after the last, into eval.jsonl (0: never); training is the same either way",
                              NON_NEGATIVE, metavar="N")
    eval_prompts: int = setting(32, "held-out prompts per evaluation, one sampled reply each: contexts of "
                                    "data_prep.py's held-out split in --data (heldout-*.jsonl), one per thread "
                                    "first, never a training prompt; the same prompts every time", AT_LEAST_1)
    eval_seed: int = setting(0, "sampling seed of every evaluation, apart from --seed (runs with different --seed "
                                "are evaluated on the same draws)", SEED, type=seed_arg)
    save_every: int = setting(10, "checkpoint interval in rollouts", AT_LEAST_1)
    keep_checkpoints: int = setting(1, KEEP_CHECKPOINTS_HELP, NON_NEGATIVE)
    stop_after_rollouts: int | None = setting(None, "checkpoint and exit after this rollout; --resume continues",
                                              AT_LEAST_1)
    seed: int = setting(0, "generation and minibatch order", SEED, type=seed_arg)
    activation_checkpointing: bool = setting(False, "recompute block activations in backward (saves memory)")
    cpu_bf16: bool = setting(False, CPU_BF16_HELP)
    report_to: str = setting("none", REPORT_TO_HELP, TRACKER_INSTALLED, choices=TRACKERS)
    resume: bool = setting(False, "continue from the latest checkpoint in --out, with the same settings (a changed "
                                  "setting other than logging, evaluation and checkpointing is refused; more "
                                  "--rollouts extend the run)")

    def inputs(self) -> dict:
        """What the run reads, by setting: config.json records them by content (run.input_identities).
        Of --data only its prompt set is read for training: that file stands for --data (--eval-every
        also reads its held-out split, which decides no weight)."""
        prompts = {"data": prompt_file(self)} if self.prompts in PROMPT_FILES else {"prompts": Path(self.prompts)}
        return {"model": self.model, "reward_model": self.reward_model, **prompts}

    def check(self) -> None:
        """Every value in its range (ValueError naming the flag)."""
        check_settings(self)
        if self.normalize_scores and self.rollout_batch < 2:
            raise ValueError(f"--normalize-scores fits the score's spread on the first rollout: it needs "
                             f"--rollout-batch >= 2, got {self.rollout_batch}")


# settings a resumed run may change: they decide what is logged, evaluated and saved, not the weights
RESUMABLE_CHANGES = {"samples_per_rollout", "save_every", "keep_checkpoints", "stop_after_rollouts",
                     "activation_checkpointing", "resume", "eval_every", "eval_prompts", "eval_seed", "report_to"}


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


def load_eval_prompts(cfg: PPOConfig, train_prompts: list[dict], rm_format: str, d: Dist) -> list[dict]:
    """--eval-prompts held-out prompts for --eval-every: karma.data.prompts.heldout_prompts (contexts of the
    held-out split in --data, one per thread first, none that is in prompts-reddit.jsonl), leaving out
    any that is also in the training prompt set (a --prompts file), checked for the reward model's
    format; as many as asked or as there are, rounded down to a multiple of the processes (each
    evaluates as many). Fewer than asked is said on stderr, with the reason."""
    train = {render_prompt(p["messages"]) for p in train_prompts}
    held = [p for p in heldout_prompts(cfg.data, len(train) + cfg.eval_prompts)  # overlap: at most len(train)
            if render_prompt(p["messages"]) not in train][:cfg.eval_prompts]
    for p in held:
        if problem := prompt_problem(p, rm_format):
            raise ValueError(f"{cfg.data}: held-out prompt {p['id']}: {problem}")
    n = len(held) - len(held) % d.world_size
    if not n:
        raise ValueError(f"{cfg.data}: {len(held)} held-out prompt(s) that are not training prompts, fewer than the "
                         f"{d.world_size} processes: --eval-every needs at least one per process")
    if n < cfg.eval_prompts and d.is_main:
        why = ([f"the held-out split of {cfg.data} has {len(held)} that are not training prompts"]
               if len(held) < cfg.eval_prompts else []) + (
              [f"a multiple of the {d.world_size} processes"] if n < len(held) else [])
        print(f"--eval-prompts {cfg.eval_prompts}: evaluating on {n} held-out prompts ({'; '.join(why)})",
              file=sys.stderr)
    return held[:n]


def prompt_batch(n_prompts: int, batch: int, rollout: int, seed: int) -> list[int]:
    """Prompt indices of rollout `rollout`: a seeded permutation per pass over the prompt set."""
    ks = range(rollout * batch, (rollout + 1) * batch)
    perms = {e: np.random.default_rng([seed, e]).permutation(n_prompts) for e in {k // n_prompts for k in ks}}
    return [int(perms[k // n_prompts][k % n_prompts]) for k in ks]


def check_inputs(cfg: PPOConfig, d: Dist, reward=None) -> tuple[list[dict], list[dict]]:
    """Everything that can be checked before a model is loaded: flags, the reward model directory
    (its config, backbone and head headers, tokenizer), the prompt set in the reward model's format,
    the policy checkpoint and its context length, the critic's tokenizer rule, and a resumed run's
    settings. `reward`: train's custom reward, if any. Returns the prompts and the held-out prompts
    of --eval-every (none without it)."""
    cfg.check()
    if cfg.rollout_batch % d.world_size or cfg.minibatch % d.world_size:
        raise ValueError(f"--rollout-batch {cfg.rollout_batch} and --minibatch {cfg.minibatch} must be multiples "
                         f"of the {d.world_size} processes")
    if reward is not None and cfg.value_init == "reward":
        raise ValueError("--value-init reward needs a reward model with a backbone; use --value-init policy")
    rm_format = reward.cfg.format if reward is not None else inspect_reward_model(cfg.reward_model).format
    prompts = load_prompt_set(cfg, rm_format)
    eval_prompts = load_eval_prompts(cfg, prompts, rm_format, d) if cfg.eval_every else []
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
    return prompts, eval_prompts


def train(cfg: PPOConfig, d: Dist, reward=None) -> dict:
    """Run PPO in --out (karma.run.Run): per rollout, ppo_iteration (collect -> update -> KL
    coefficient), then log and checkpoint; policy/ at the end. `reward`: any object with
    .score(contexts, responses, metas) -> probabilities and .cfg.format, used instead of loading
    cfg.reward_model (tests use rewards with a known optimum; such a reward has no backbone, so it
    needs value_init="policy")."""
    prompts, eval_prompts = check_inputs(cfg, d, reward)
    # eval.jsonl also when a resumed run no longer evaluates: its records past the checkpoint are cut
    evals = ("eval.jsonl",) if cfg.eval_every or (Path(cfg.out_dir) / "eval.jsonl").exists() else ()
    with Run(cfg, d, counter="rollout", stop_after=cfg.stop_after_rollouts,
             logs=("metrics.jsonl", "samples.jsonl", *evals)) as run:
        torch.manual_seed(cfg.seed)
        m = Models.load(cfg, d, reward)
        run_variant = variant(cfg, m.reward.cfg.format)
        run.write_config(variant=run_variant, reward_format=m.reward.cfg.format, n_prompts=len(prompts),
                         world_size=d.world_size, sharded=d.enabled)
        opt = Optimization(cfg, m)
        state = {"rollout": 0, "divergent_streak": 0}  # divergent_streak: consecutive rollouts that diverged
        if run.resume(opt.trained, state):
            opt.load_state_dict(state)
        if eval_prompts and d.is_main:
            write_prompts(eval_prompts, run.out / "eval-prompts.jsonl")
        with run.progress(cfg.rollouts, "ppo", "rollout", initial=state["rollout"]) as progress:
            if eval_prompts and state["rollout"] == 0:  # the initial policy: where the curves start
                evaluate(m, eval_prompts, cfg, 0, run, progress, d)
            while state["rollout"] < cfg.rollouts:
                r = state["rollout"]
                batch = [prompts[i] for i in prompt_batch(len(prompts), cfg.rollout_batch, r, cfg.seed)]
                record, samples = ppo_iteration(m, opt, batch, cfg, r, run_variant, d)
                state["divergent_streak"] = state["divergent_streak"] + 1 if record["diverged"] else 0
                state["rollout"] = r + 1
                run.log(record)
                for sample in samples[:cfg.samples_per_rollout]:
                    run.log({"rollout": r + 1, **sample}, "samples.jsonl")
                progress.update(1, score=record["score"], kl=record["kl_seq"])
                progress.write(progress_line(record))
                if eval_prompts and ((r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rollouts):
                    evaluate(m, eval_prompts, cfg, r + 1, run, progress, d)
                if state["divergent_streak"] >= cfg.divergence_patience:
                    raise TrainingDiverged(
                        f"rollouts {r + 2 - state['divergent_streak']}-{r + 1} diverged ({record['diverged']}); "
                        f"these rollouts were not checkpointed: the last checkpoint, from before them, is "
                        f"{run.latest_checkpoint() or 'none (the run diverged before its first save)'}. "
                        f"Start again with a lower --lr / --value-lr; metrics in {run.out / 'metrics.jsonl'}")
                # a diverged rollout is not checkpointed: a resumed run starts before it
                if run.after_step(r + 1, cfg.rollouts, {**state, **opt.state_dict()}, save=not record["diverged"]):
                    break
        if state["rollout"] >= cfg.rollouts:
            opt.free()
            run.export_policy(m.policy, m.tokenizer)
            run.finish()
    return state


class Models:
    """The policy (trained), the frozen reference and reward model, the critic (trained), the
    policy's tokenizer, and the sampling replica of the policy (see distributed.replicated_copy)."""

    def __init__(self, policy, ref, reward, value, tokenizer, sample_dtype):
        self.policy, self.ref, self.reward, self.value, self.tokenizer = policy, ref, reward, value, tokenizer
        self.sample_dtype = sample_dtype  # the sampling replica's: bf16 on GPU; on CPU fp32, the policy itself
        self.generator = None

    @classmethod
    def load(cls, cfg: PPOConfig, d: Dist, reward=None) -> "Models":
        # the frozen reference and reward model in bf16 on GPU, and on CPU with --cpu-bf16 (autocast casts
        # their matrices to bf16 anyway; fp32 copies would only cost 2 x 0.54 GB for SmolLM2-135M)
        frozen_dtype = torch.bfloat16 if d.device.type == "cuda" or cfg.cpu_bf16 else torch.float32
        sample_dtype = torch.bfloat16 if d.device.type == "cuda" else torch.float32  # CPU: the policy itself
        policy = load_model(cfg.model, dtype=torch.float32, device=d.device)
        tokenizer = load_tokenizer(cfg.model)
        ref = load_model(cfg.model, dtype=frozen_dtype, device=d.device).requires_grad_(False)
        if reward is None:
            reward = load_reward_model(cfg.reward_model, dtype=frozen_dtype, device=d.device).requires_grad_(False)
        value = (value_from_reward_model(reward, tokenizer) if cfg.value_init == "reward"
                 else value_from_policy(policy)).float()
        value.backbone.train_top_blocks_only(cfg.value_trainable_layers)
        policy.activation_checkpointing = value.backbone.activation_checkpointing = cfg.activation_checkpointing
        shard(policy, policy.blocks, d)  # FSDP2 under torchrun; the frozen reference and RM stay replicated
        shard(value, value.backbone.blocks, d)
        return cls(policy, ref, reward, value, tokenizer, sample_dtype)


class Optimization:
    """AdamW for the policy and the critic with linear LR decay over all minibatch updates, the KL
    controller and the score's scale (--normalize-scores): everything a checkpoint must restore
    besides the weights."""

    def __init__(self, cfg: PPOConfig, m: Models):
        self.updates_per_rollout = cfg.ppo_epochs * math.ceil(cfg.rollout_batch / cfg.minibatch)
        total_updates = cfg.rollouts * self.updates_per_rollout
        self.policy_opt = adamw(m.policy, cfg.lr, 0.0)
        self.value_opt = adamw(m.value, cfg.value_lr, 0.0)
        self.schedulers = [linear_decay(o, total_updates, cfg.min_lr_ratio) for o in (self.policy_opt, self.value_opt)]
        self.kl_controller = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
                              if cfg.kl == "adaptive" else FixedKLController(cfg.init_kl_coef))
        self.score_norm = ScoreNorm() if cfg.normalize_scores else None  # fitted by the first rollout
        self.trained = {"policy": (m.policy, self.policy_opt), "value": (m.value, self.value_opt)}

    def step(self, grad_clip: float) -> dict[str, torch.Tensor]:
        """Clip each model's gradient norm to `grad_clip`, then apply both; returns the norms before
        clipping (global under FSDP)."""
        norms = {f"{name}_grad_norm": clip_grad_norm(model.parameters(), grad_clip)
                 for name, (model, _) in self.trained.items()}
        self.policy_opt.step()
        self.value_opt.step()
        return norms

    def next_minibatch(self) -> None:
        """Drop the gradients and advance the LR schedules. The schedules count minibatches, applied
        or skipped, so a resumed run's learning rate lines up with an uninterrupted one's."""
        self.policy_opt.zero_grad(set_to_none=True)
        self.value_opt.zero_grad(set_to_none=True)
        for sched in self.schedulers:
            sched.step()

    def skip_rollout(self) -> None:
        """A rollout without updates advances the schedules as if every minibatch were skipped."""
        for sched in self.schedulers:
            for _ in range(self.updates_per_rollout):
                sched.step()

    def free(self) -> None:
        """The AdamW state (twice the trained weights) freed before the final export: its memory
        holds the export's copies instead of raising the peak."""
        self.policy_opt.state.clear()
        self.value_opt.state.clear()

    def state_dict(self) -> dict:
        return {"schedulers": [s.state_dict() for s in self.schedulers],
                "kl_controller": self.kl_controller.state_dict(),
                **({"score_norm": self.score_norm.state_dict()} if self.score_norm else {})}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint's trainer state (the keys are removed from it)."""
        for sched, sd in zip(self.schedulers, state.pop("schedulers")):
            sched.load_state_dict(sd)
        self.kl_controller.load_state_dict(state.pop("kl_controller"))
        if self.score_norm:
            self.score_norm.load_state_dict(state.pop("score_norm"))


def ppo_iteration(m: Models, opt: Optimization, batch_prompts: list[dict], cfg: PPOConfig, r: int, run_variant: str,
                  d: Dist) -> tuple[dict, list[dict]]:
    """Rollout `r` (0-based): collect it, update the policy and the critic on it (ppo_update), adapt
    the KL coefficient. Returns its metrics record and its samples."""
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
    kl_coef = opt.kl_controller.kl_coef
    buffer, stats, samples = rollout(m, batch_prompts, cfg, kl_coef, r, d, opt.score_norm)
    start = time.perf_counter()
    m.policy.train()
    m.value.train()
    if stats["score"] is not None:  # no finite score at all: nothing to learn from this rollout
        with autocast(d, cfg.cpu_bf16):
            stats.update(ppo_update(m, opt, buffer, cfg, seed=cfg.seed * 7919 + r, d=d))
        opt.kl_controller.update(stats["kl_seq"], n_steps=cfg.rollout_batch)
    else:
        stats.update(updates=0, skipped_minibatches=0, trained_tokens=0, lr=opt.schedulers[0].get_last_lr()[0])
        opt.skip_rollout()
    stats["update_s"] = time.perf_counter() - start
    record = {"rollout": r + 1, "kl_coef": kl_coef, "kl_coef_next": opt.kl_controller.kl_coef, "variant": run_variant,
              **stats, "diverged": _diverged(stats, opt.updates_per_rollout, cfg),
              "generate_tok_s": stats["generated_tokens"] / max(stats["generate_s"], 1e-9),
              "train_tok_s": stats["trained_tokens"] / max(stats["update_s"], 1e-9),
              "peak_mem_gib": peak_memory_gib(d.device)}
    if opt.score_norm:  # the rescaling every rollout's reward used
        record.update(score_norm_mean=opt.score_norm.mean, score_norm_std=opt.score_norm.std)
    return record, samples


def rollout(m: Models, batch_prompts: list[dict], cfg: PPOConfig, kl_coef: float, r: int,
            d: Dist, score_norm: ScoreNorm | None = None) -> tuple[RolloutBuffer, dict, list[dict]]:
    """Rollout `r` of this rank's share of the prompts (karma/ppo/rollout.py: sample, score, rewards
    with `kl_coef` and the score rescaled by `score_norm`, advantages), sampled by a plain replica
    of the policy's current weights. Returns (buffer, stats over all ranks, samples)."""
    m.policy.eval()
    start = time.perf_counter()
    m.generator = replicated_copy(m.policy, d, m.generator, dtype=m.sample_dtype)
    gather_s = time.perf_counter() - start
    with autocast(d, cfg.cpu_bf16):
        buffer, stats, samples = collect_rollout(m.policy, m.ref, m.value, m.reward, m.tokenizer,
                                                 batch_prompts[d.rank::d.world_size], cfg, kl_coef,
                                                 seed=cfg.seed * 1_000_003 + r * d.world_size + d.rank,
                                                 d=d, generator_model=m.generator, score_norm=score_norm)
    stats["gather_s"] = gather_s
    stats["explained_variance"] = explained_variance(buffer.values, buffer.returns, buffer.response_mask).item()
    return buffer, stats, samples


def evaluate(m: Models, prompts: list[dict], cfg: PPOConfig, rollouts_done: int, run: Run, progress, d: Dist) -> None:
    """--eval-every: the policy after `rollouts_done` rollouts on the held-out prompts (this rank's
    share; karma/ppo/rollout.py evaluate_policy, with --eval-seed), logged to eval.jsonl and printed.
    Training does not notice: sampling uses its own seeded generator, and the sampling replica it
    refreshes is refreshed at every rollout's start anyway."""
    m.policy.eval()
    m.generator = replicated_copy(m.policy, d, m.generator, dtype=m.sample_dtype)
    with autocast(d, cfg.cpu_bf16):
        stats = evaluate_policy(m.policy, m.ref, m.reward, m.tokenizer, prompts[d.rank::d.world_size], cfg,
                                cfg.eval_seed, d, generator_model=m.generator)
    record = {"rollout": rollouts_done, **stats}
    run.log(record, "eval.jsonl")
    progress.write(eval_line(record))


def eval_line(record: dict) -> str:
    """One line per held-out evaluation for the console."""
    fmt = lambda key, spec: "-" if record.get(key) is None else format(record[key], spec)
    return (f"eval after rollout {record['rollout']}: held-out score {fmt('score', '.4f')} +- "
            f"{fmt('score_se', '.4f')} (SE, {record['prompts']} prompts)  kl {fmt('kl_seq', '.3f')}  "
            f"len {record['response_len']:.1f}  distinct-2 {fmt('distinct_2', '.3f')}  {record['eval_s']:.1f}s")


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
            f"kl_coef {record['kl_coef']:.6g}  entropy {fmt('entropy', '.3f')}  len {record['response_len']:5.1f}  "
            f"eos {record['ended_eos']:.2f}  distinct-2 {fmt('distinct_2', '.2f')}  "
            f"repeats {fmt('repeat_share', '.2f')}  r(score,len) {fmt('score_length_corr', '+.2f')}  "
            f"gen {record['generate_s']:.1f}s score {record['score_s']:.1f}s fwd {record['forward_s']:.1f}s "
            f"update {record['update_s']:.1f}s"
            + (f"  DIVERGED: {record['diverged']}" if record["diverged"] else "")
            + (f"  ({record['dropped_nonfinite_scores']} non-finite scores dropped)"
               if record["dropped_nonfinite_scores"] else "")
            + (f"  short {record['short_replies']:.2f}" if record.get("short_replies") else "")
            + (f"\nWARNING rollout {record['rollout']}: reward hacking? {record['hacking_warning']}"
               if record.get("hacking_warning") else ""))


# ------------------------------------------------------------------------------------------ update

# a micro-batch's diagnostics (Losses.diagnostics), averaged over the rollout's applied minibatches
DIAGNOSTICS = ("policy_loss", "value_loss", "clip_frac", "approx_kl", "value_clip_frac", "entropy")
# why a minibatch is skipped (skip_reason), in the order they are tested
SKIP_REASONS = ("nonfinite", "ratio", "approx_kl", "value_loss")
# a minibatch whose value loss exceeds this many times that of a critic predicting 0 (0.5 E[G^2],
# floored at 0.01) is skipped as diverging
VALUE_LOSS_LIMIT = 100.0


def ppo_update(m: Models, opt: Optimization, buffer: RolloutBuffer, cfg: PPOConfig, seed: int, d: Dist) -> dict:
    """`ppo_epochs` passes of minibatch updates over one rollout; returns the diagnostics averaged
    over the applied minibatches (DIAGNOSTICS, and the gradient norms before clipping), and counts.

    Each minibatch (minibatch / world sequences on every rank) is split into micro-batches; a
    micro-batch's token-mean losses are weighted by its share of the minibatch's tokens over ALL
    ranks (FSDP sums gradients over ranks), so one step follows the token mean of the whole
    minibatch whatever the process count. A minibatch with a reason to skip it (skip_reason, agreed
    by all ranks before any backward, so FSDP's collectives stay paired) is counted and never
    applied; one without scored tokens is passed over.

    The host waits on the device only where it must decide: once per minibatch for its token count
    and once per micro-batch for the skip test and the loss weight, both before the backward. The
    diagnostics stay on the device, summed token-weighted, and are read once at the end."""
    device = buffer.response.device
    zero = lambda: torch.zeros((), dtype=torch.float64, device=device)
    sums = {k: zero() for k in (*DIAGNOSTICS, "policy_grad_norm", "value_grad_norm")}  # over applied minibatches
    trained_tokens, n_updates, skips = zero(), 0, dict.fromkeys(SKIP_REASONS, 0)
    for mb in buffer.minibatches(cfg.minibatch // d.world_size, cfg.ppo_epochs, seed):
        mb_tokens = all_reduce_sum(mb.response_mask.sum().double(), d).item()  # scored, on ALL ranks
        mb_sums, skip = None, None  # this rank's token-weighted diagnostics of the minibatch
        for start in range(0, len(mb), cfg.micro_batch) if mb_tokens else ():
            micro = mb.select(torch.arange(start, min(start + cfg.micro_batch, len(mb))))
            losses = ppo_losses(m.policy, m.value, micro, cfg)
            skip = skip_reason(losses, micro, cfg, d)
            if skip:
                break
            weight = micro.response_mask.sum().item() / mb_tokens  # its share of the global token mean
            ((losses.policy + losses.value) * weight).backward()  # separate models: each loss reaches its own
            weighted = {k: v.double() * weight for k, v in losses.diagnostics.items()}
            mb_sums = weighted if mb_sums is None else {k: mb_sums[k] + v for k, v in weighted.items()}
            trained_tokens += micro.query_mask.sum() + micro.response_mask.sum()  # through forward/backward
        if skip:
            skips[skip] += 1
        elif mb_sums is not None:
            norms = {k: v.double() for k, v in opt.step(cfg.grad_clip).items()}
            sums = {k: sums[k] + v for k, v in {**mb_sums, **norms}.items()}
            n_updates += 1
        opt.next_minibatch()
    # summed over every rank's micro-batches (the norms are global already), averaged over the updates
    totals = reduce_sums(d, device, {**{k: sums[k] for k in DIAGNOSTICS}, "trained_tokens": trained_tokens})
    means = {k: totals[k] / n_updates for k in DIAGNOSTICS} if n_updates else {}
    if n_updates:
        means.update({k: (sums[k] / n_updates).item() for k in ("policy_grad_norm", "value_grad_norm")})
    return {**means, "updates": n_updates, "skipped_minibatches": sum(skips.values()),
            "skip_reasons": {k: v for k, v in skips.items() if v}, "trained_tokens": int(totals["trained_tokens"]),
            "lr": opt.schedulers[0].get_last_lr()[0]}


@dataclass
class Losses:
    """A micro-batch's two losses (token means, differentiable) and what is logged of it."""
    policy: torch.Tensor  # the clipped surrogate (core.policy_loss)
    value: torch.Tensor  # the clipped value loss (core.value_loss)
    ratio_mean: torch.Tensor  # mean pi / pi_old over its tokens (skip_reason's; not logged)
    diagnostics: dict[str, torch.Tensor]  # DIAGNOSTICS, detached 0-dim tensors


def ppo_losses(policy, value, micro: RolloutBuffer, cfg: PPOConfig) -> Losses:
    """The policy's and the critic's clipped losses on a micro-batch of the rollout, by name."""
    Q = micro.query.shape[1]
    ids = torch.cat([micro.query, micro.response], 1)  # [b, Q + T]
    mask = torch.cat([micro.query_mask, micro.response_mask], 1)
    logits = response_logits(policy, ids, mask, Q, cfg.temperature)  # [b, T, V]
    logp = logprobs_from_logits(logits, micro.response)  # [b, T] log pi(response_t)
    pg_loss, pg_stats = policy_loss(logp, micro.logprobs, micro.advantages, micro.response_mask, cfg.clip)
    values = value(ids, mask)[:, Q - 1:-1]  # [b, T] V before each response token
    vf_loss, vf_stats = value_loss(values, micro.values, micro.returns, micro.response_mask, cfg.value_clip)
    with torch.no_grad():
        entropy = masked_mean(entropy_from_logits(logits.detach()), micro.response_mask)
    return Losses(pg_loss, vf_loss, pg_stats["ratio_mean"], {
        "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(), "clip_frac": pg_stats["clip_frac"],
        "approx_kl": pg_stats["approx_kl"], "value_clip_frac": vf_stats["clip_frac"], "entropy": entropy})


def skip_reason(losses: Losses, micro: RolloutBuffer, cfg: PPOConfig, d: Dist) -> str | None:
    """Why the minibatch of this micro-batch must not be applied, or None: a non-finite loss, a mean
    ratio above --ratio-threshold, an approx KL above --max-approx-kl, or a value loss above
    VALUE_LOSS_LIMIT times that of a critic predicting 0. Each rank tests its own micro-batch; a
    test failed on any rank fails on all (one all-reduce), the first of SKIP_REASONS giving the reason."""
    zero_critic_loss = 0.5 * masked_mean(micro.returns ** 2, micro.response_mask).clamp_min(0.01)
    failed = reduce_max(d, micro.response.device, {
        "nonfinite": ~(torch.isfinite(losses.policy) & torch.isfinite(losses.value)),
        "ratio": losses.ratio_mean > cfg.ratio_threshold,
        "approx_kl": losses.diagnostics["approx_kl"] > cfg.max_approx_kl,
        "value_loss": losses.value > VALUE_LOSS_LIMIT * zero_critic_loss})
    return next((reason for reason in SKIP_REASONS if failed[reason]), None)
