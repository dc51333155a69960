"""Reward-model training: BCE on the rewarding label, AdamW, warmup + cosine decay, exact resume.

One optimizer step consumes `batch_size` examples (the global batch, 16 in the paper), split
across ranks and, within a rank, into micro-batches of `micro_batch_size` (gradient accumulation).
Each micro-batch adds sum(BCE) / batch_size to the loss before backward and FSDP sums gradients
over ranks (karma.distributed), so every step follows the mean BCE over the global batch,
whatever the number of processes or micro-batches.

Batches are length-bucketed: each epoch's seeded permutation is cut into windows of 50 batches,
each window sorted by length and cut into batches, and the batch order shuffled; padding waste
stays small while batches remain random. The order is a function of (seed, epoch), so the data
position of a checkpoint is just the step number.

Checkpoints (every `save_every` steps, at `stop_after_steps` and at the end; karma.checkpoint):
model and optimizer through torch.distributed.checkpoint (sharded under FSDP), plus the step,
scheduler, best metric and RNG state, written to a temporary directory and renamed, so a run
killed at any moment resumes from the last complete checkpoint and ends with the same weights as
an uninterrupted run.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from karma.checkpoint import latest_checkpoint
from karma.data.examples import read_examples, split_files
from karma.distributed import (CPU_BF16_HELP, Dist, all_reduce_sum, autocast, barrier, clip_grad_norm, full_state_dict,
                               gather_lists, shard)
from karma.errors import TrainingDiverged
from karma.files import atomic_directory, atomic_write_json
from karma.metrics import binary_metrics
from karma.optim import adamw, warmup_cosine
from karma.reward import (MAX_HEAD_HIDDEN, RewardConfig, RewardModel, bce_loss, build_reward_model, encode,
                          save_reward_model)
from karma.run import (KEEP_CHECKPOINTS_HELP, MAX_BAD_STEPS_HELP, Progress, Run, Throughput, check_out_dir,
                       peak_memory_gib)
from karma.settings import (AT_LEAST_1, HALF_OPEN_UNIT, NON_NEGATIVE, POSITIVE, SEED, UNIT_INTERVAL, check_settings,
                            in_range, seed_arg, setting)
from karma.tokenizer import Tokenizer, left_pad, load_tokenizer
from karma.track import REPORT_TO_HELP, TRACKER_INSTALLED, TRACKERS
from karma.weights import inspect_model

BUCKET_BATCHES = 50  # batches per length-sorting window


# Tokens per example, at least: a context turn, the chat template and a reply.
MIN_MAX_LENGTH = 32
# Examples per optimizer step or forward pass, at most: the paper's batch is 16 and reward-model
# recipes stay within a few hundred, so more than 2**16 is a typo.
MAX_BATCH = 2**16


@dataclass
class TrainRMConfig:
    """train_rm.py's settings: default, help and valid range of each (karma.settings derives the flags,
    --config and the checks). Sizes also have an upper bound no real run reaches, so a typo
    (--head-hidden 1000000000) is refused here, not in the allocator after the model loads;
    --max-length is bounded by the model's context (check_inputs)."""
    model: str = setting("smollm2-135m", "base decoder: alias, hub id or local dir (offline, like ppo.py; the "
                                         "paper's is llama-3.2-1b, a hub download)")
    data: Path = setting(Path("runs/data"), "data_prep.py output dir with train-*/heldout-*.jsonl")
    out_dir: Path = setting(Path("runs/rm"), "output dir", flag="--out")
    format: str = setting("generalized", "input format: generalized = KARMA, conditioned = karmaEroded (subreddit "
                                         "+ time)", choices=("generalized", "conditioned"))
    max_length: int = setting(1024, "tokens per example; longer contexts lose their oldest turns first",
                              (lambda v: v >= MIN_MAX_LENGTH, f"at least {MIN_MAX_LENGTH} tokens (a context turn, "
                                                               f"the chat template and a reply)"))
    head_hidden: int | None = setting(None, "width of the MLP head", AT_LEAST_1, in_range(1, MAX_HEAD_HIDDEN),
                                      unset="the model's hidden size")
    trainable_layers: int | None = setting(
        None, "train only the top N blocks, final norm and head; the embedding and lower blocks keep their "
              "pretrained weights, without gradients or AdamW state (a departure from KARMA, which trains the "
              "whole model; trlX's num_layers_unfrozen)", AT_LEAST_1, metavar="N", unset="all, as KARMA")
    batch_size: int = setting(16, "examples per optimizer step over all processes (the paper's)", AT_LEAST_1,
                              in_range(1, MAX_BATCH))
    micro_batch_size: int = setting(16, "examples per forward/backward on one process; smaller = gradient "
                                        "accumulation", AT_LEAST_1, in_range(1, MAX_BATCH))
    lr: float = setting(1e-5, "peak learning rate (the paper omits it; 1e-5 is the usual choice for full "
                              "fine-tuning of ~1B reward models with AdamW at batch 16, as in TRL/OpenRLHF recipes)",
                        POSITIVE)
    weight_decay: float = setting(0.01, "AdamW decay on matrices", NON_NEGATIVE)
    warmup_ratio: float = setting(0.03, "linear warmup share of the steps", HALF_OPEN_UNIT)
    min_lr_ratio: float = setting(0.1, "cosine decays to this x peak", UNIT_INTERVAL)
    grad_clip: float = setting(1.0, "max global gradient norm", POSITIVE)
    epochs: int = setting(1, "passes over the train split; --resume with more extends a run", AT_LEAST_1, budget=True)
    max_steps: int | None = setting(None, "optimizer steps in the run (overrides --epochs); --resume with more extends "
                                          "a run", AT_LEAST_1, unset="--epochs decides", budget=True)
    stop_after_steps: int | None = setting(None, "checkpoint and exit after this step (e.g. a job time limit); "
                                                 "continue with --resume", AT_LEAST_1)
    eval_every: int = setting(500, "held-out evaluation interval in steps", AT_LEAST_1)
    eval_batch_size: int = setting(32, "examples per forward pass in evaluation", AT_LEAST_1, in_range(1, MAX_BATCH))
    max_eval_examples: int | None = setting(None, "cap on held-out examples per evaluation", AT_LEAST_1,
                                            unset="all")
    save_every: int = setting(500, "checkpoint interval in steps", AT_LEAST_1)
    keep_checkpoints: int = setting(1, KEEP_CHECKPOINTS_HELP, NON_NEGATIVE)
    log_every: int = setting(10, "metrics.jsonl interval in steps", AT_LEAST_1)
    max_bad_steps: int = setting(10, MAX_BAD_STEPS_HELP, AT_LEAST_1)
    seed: int = setting(0, "data order and head initialisation", SEED, type=seed_arg)
    activation_checkpointing: bool = setting(False, "recompute block activations in backward")
    cpu_bf16: bool = setting(False, CPU_BF16_HELP)
    report_to: str = setting("none", REPORT_TO_HELP, TRACKER_INSTALLED, choices=TRACKERS)
    resume: bool = setting(False, "continue from the latest checkpoint in --out, with the same settings (a changed "
                                  "setting other than logging, evaluation and checkpoint intervals is refused; more "
                                  "--max-steps or --epochs extend the run)")

    def inputs(self) -> dict:
        """What the run reads, by setting: config.json records them by content (run.input_identities)."""
        return {"model": self.model, "data": self.data}

    def check(self) -> None:
        """Every value in its range (ValueError naming the flag)."""
        check_settings(self)


# settings a resumed run may change: they decide what is logged, evaluated and saved, not the weights
RESUMABLE_CHANGES = {"stop_after_steps", "eval_every", "eval_batch_size", "max_eval_examples", "save_every",
                     "keep_checkpoints", "log_every", "max_bad_steps", "activation_checkpointing", "resume",
                     "report_to"}


def check_inputs(cfg: TrainRMConfig) -> "Data":
    """Everything that can be checked before a model is loaded: flags, data files, the base
    checkpoint (config, weight-file headers, tokenizer), --max-length against its context, --out;
    then the examples are read and tokenized (which needs only the tokenizer), so data without
    usable examples is refused before the model loads and before --out holds anything. Returns them."""
    cfg.check()
    split_files(cfg.data, "train")
    split_files(cfg.data, "heldout")
    model_cfg = inspect_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    if cfg.max_length > model_cfg.max_position_embeddings:
        raise ValueError(f"--max-length {cfg.max_length}: more than {cfg.model}'s max_position_embeddings "
                         f"({model_cfg.max_position_embeddings})")
    if cfg.trainable_layers is not None and cfg.trainable_layers > model_cfg.n_layers:
        raise ValueError(f"--trainable-layers {cfg.trainable_layers}: more than {cfg.model}'s {model_cfg.n_layers} "
                         f"blocks")
    check_out_dir(cfg.out_dir, cfg, RESUMABLE_CHANGES)
    return Data.load(cfg, tokenizer)


# ----------------------------------------------------------------------------------------- data

def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Length-bucketed batches of example indices for one epoch; a function of (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ------------------------------------------------------------------------------------------ train

def train(cfg: TrainRMConfig, d: Dist) -> dict:
    """Check the inputs, then train in --out (karma.run.Run): batch -> step (skipped if not finite)
    -> log -> evaluate (a new best AUC is exported to best/) -> checkpoint; final/ at the end."""
    data = check_inputs(cfg)
    with Run(cfg, d, counter="step", stop_after=cfg.stop_after_steps) as run:
        torch.manual_seed(cfg.seed)
        rm = new_reward_model(cfg, d)
        run.write_config()  # only once the model has loaded: a run refused before it leaves no config.json
        total_steps = cfg.max_steps or cfg.epochs * data.steps_per_epoch
        optimizer = adamw(rm, cfg.lr, cfg.weight_decay)
        scheduler = warmup_cosine(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
        # log_loss / log_steps: the finite losses since the last train record (checkpointed, so a
        # resumed run logs the same averages as an uninterrupted one). skipped_steps / bad_streak:
        # steps skipped for a non-finite loss or gradient.
        state = {"step": 0, "best_auc": None, "best_step": None, "log_loss": 0.0, "log_steps": 0,
                 "skipped_steps": 0, "bad_streak": 0}
        if run.resume({"model": (rm, optimizer)}, state):
            scheduler.load_state_dict(state.pop("scheduler"))
        run.log({"event": "data", **data.summary(cfg.max_length), "total_steps": total_steps,
                 "resumed_at": state["step"]})
        with run.progress(total_steps, "train_rm", initial=state["step"]) as progress:
            throughput = Throughput()
            while state["step"] < total_steps:
                batch = data.batch(state["step"], cfg)
                loss, grad_norm = train_step(rm, optimizer, data, batch, cfg, d)
                count_step(state, loss, grad_norm, cfg, run.out)
                scheduler.step()
                state["step"] = step = state["step"] + 1
                progress.update(1, loss=loss)  # this step's batch loss
                throughput.add(len(batch), int(data.lengths[batch].sum()))
                if step % cfg.log_every == 0 or step == total_steps:
                    run.log(train_record(state, data, scheduler.get_last_lr()[0], grad_norm, throughput, d))
                if step % cfg.eval_every == 0 or step == total_steps:
                    evaluate_and_keep_best(rm, data, state, cfg, run, progress)
                if run.after_step(step, total_steps, {**state, "scheduler": scheduler.state_dict()}):
                    break
        if state["step"] >= total_steps:
            export(rm, run.out / "final", d, {"step": state["step"]},
                   same_as=run.out / "best" if state["best_step"] == state["step"] else None)
            run.finish()
    return state


def new_reward_model(cfg: TrainRMConfig, d: Dist) -> RewardModel:
    """The base decoder with a fresh head (seeded), fp32 master weights, sharded under torchrun."""
    rm_cfg = RewardConfig(format=cfg.format, max_length=cfg.max_length, head_hidden=cfg.head_hidden)
    rm = build_reward_model(cfg.model, rm_cfg, dtype=torch.float32, device=d.device, seed=cfg.seed)
    rm.backbone.activation_checkpointing = cfg.activation_checkpointing
    rm.backbone.train_top_blocks_only(cfg.trainable_layers)
    rm.train()
    return shard(rm, rm.backbone.blocks, d)


class Data:
    """The tokenized train and held-out examples, and the batch order of every epoch."""

    def __init__(self, train_ids, train_labels, eval_ids, eval_labels, reports, batch_size):
        self.train_ids, self.train_labels = train_ids, train_labels  # list of token lists, [N] float32
        self.eval_ids, self.eval_labels = eval_ids, eval_labels
        self.reports = reports  # per split: read / used / skipped by reason (read_examples)
        self.lengths = np.array([len(s) for s in train_ids])  # [N]
        self.steps_per_epoch = math.ceil(len(train_ids) / batch_size)
        self._epoch, self._batches = None, None

    @classmethod
    def load(cls, cfg: TrainRMConfig, tokenizer: Tokenizer) -> "Data":
        """Read and tokenize (in cfg.format, cut to cfg.max_length) the train and held-out splits."""
        needs_meta = cfg.format == "conditioned"
        rm_cfg = RewardConfig(format=cfg.format, max_length=cfg.max_length)  # what encode reads
        train, train_report = read_examples(split_files(cfg.data, "train"), needs_meta)
        held_out, eval_report = read_examples(split_files(cfg.data, "heldout"), needs_meta)
        held_out = held_out[:cfg.max_eval_examples] if cfg.max_eval_examples else held_out
        if not train or not held_out:
            raise ValueError(f"{cfg.data}: no usable train or held-out examples ({train_report}, {eval_report})")
        tokenize = lambda examples: [encode(tokenizer, e["messages"], e["response"], e.get("meta"), rm_cfg)
                                     for e in examples]
        return cls(tokenize(train), np.array([e["label"] for e in train], dtype=np.float32),
                   tokenize(held_out), np.array([e["label"] for e in held_out]),
                   {"train": train_report, "heldout": eval_report}, cfg.batch_size)

    def batch(self, step: int, cfg: TrainRMConfig) -> np.ndarray:
        """The example indices of optimizer step `step` (a function of seed and step: exact resume)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, cfg.batch_size, cfg.seed, epoch)
        return self._batches[index]

    def summary(self, max_length: int) -> dict:
        return {**self.reports, "train_tokens_mean": float(self.lengths.mean()),
                "at_max_length": int((self.lengths >= max_length).sum()),  # filled the budget: mostly truncated
                "steps_per_epoch": self.steps_per_epoch}


def train_step(rm: RewardModel, optimizer, data: Data, batch: np.ndarray, cfg: TrainRMConfig, d: Dist):
    """One optimizer step on the mean BCE of `batch` (split across ranks, then into micro-batches);
    applied only when the loss and the gradient norm are finite. Returns (batch loss, grad norm)."""
    mine = batch[d.rank::d.world_size]
    # every rank runs the same number of micro-batches (FSDP's collectives must pair up); a rank
    # short of rows repeats one with weight 0
    n_micro = math.ceil(math.ceil(len(batch) / d.world_size) / cfg.micro_batch_size)
    loss_sum = torch.zeros((), device=d.device)
    for micro in range(n_micro):
        rows = mine[micro * cfg.micro_batch_size:(micro + 1) * cfg.micro_batch_size]
        weight = 1 / len(batch) if len(rows) else 0.0  # the mean over the global batch
        rows = rows if len(rows) else batch[:1]
        ids, mask = left_pad([data.train_ids[i] for i in rows], rm.tokenizer.pad_id)  # [b, T]
        labels = torch.from_numpy(data.train_labels[rows]).to(d.device)  # [b]
        if d.enabled:  # reduce gradients once per step, after the last micro-batch
            rm.set_requires_gradient_sync(micro == n_micro - 1)
        with autocast(d, cfg.cpu_bf16):
            logits = rm(ids.to(d.device), mask.to(d.device))  # [b]
        loss = bce_loss(logits, labels, reduction="sum")
        (loss * weight).backward()
        loss_sum += loss.detach() * (weight > 0)
    grad_norm = float(clip_grad_norm(rm.parameters(), cfg.grad_clip))
    batch_loss = all_reduce_sum(loss_sum, d).item() / len(batch)  # both global: every rank decides alike
    if math.isfinite(batch_loss) and math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return batch_loss, grad_norm


def train_record(state: dict, data: Data, lr: float, grad_norm: float, throughput: Throughput, d: Dist) -> dict:
    """The train record: the mean finite loss since the last record (then reset; None when every
    step since was skipped), skipped steps so far, rates, memory."""
    step = state["step"]
    loss = state["log_loss"] / state["log_steps"] if state["log_steps"] else None
    state["log_loss"], state["log_steps"] = 0.0, 0
    return {"event": "train", "step": step, "epoch": (step - 1) // data.steps_per_epoch, "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "skipped_steps": state["skipped_steps"], **throughput.rates(),
            "peak_mem_gib": peak_memory_gib(d.device)}


def count_step(state: dict, loss: float, grad_norm: float, cfg: TrainRMConfig, out: Path) -> None:
    """Book-keeping of applied and skipped (non-finite) steps; --max-bad-steps in a row stop the run."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        state["bad_streak"] = 0
        state["log_loss"] += loss
        state["log_steps"] += 1
        return
    state["skipped_steps"] += 1
    state["bad_streak"] += 1
    if state["bad_streak"] >= cfg.max_bad_steps:
        raise TrainingDiverged(
            f"{state['bad_streak']} consecutive steps (to step {state['step'] + 1}) had a non-finite loss or gradient "
            f"and were skipped: the weights or the data hold NaN/inf, or --lr {cfg.lr:g} is too high. The weights "
            f"were never updated with them; last checkpoint: {latest_checkpoint(out / 'checkpoints')}")


def evaluate_and_keep_best(rm: RewardModel, data: Data, state: dict, cfg: TrainRMConfig, run: Run,
                           progress: Progress) -> None:
    """Held-out metrics to the log and eval.json; a new best finite AUC is exported to best/."""
    step = state["step"]
    metrics = evaluate(rm, data.eval_ids, data.eval_labels, cfg.eval_batch_size, run.d, cfg.cpu_bf16)
    usable = metrics["roc_auc"] is not None and not metrics["nonfinite_scores"]
    if usable and (state["best_auc"] is None or metrics["roc_auc"] > state["best_auc"]):
        state["best_auc"], state["best_step"] = metrics["roc_auc"], step
        export(rm, run.out / "best", run.d, {"step": step, **metrics})
    run.log({"event": "eval", "step": step, **{k: v for k, v in metrics.items() if k != "calibration"}})
    auc = "undefined" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.4f}"
    progress.write(f"step {step:6d}  held-out AUC {auc}  accuracy {metrics.get('accuracy', float('nan')):.4f}  "
                   f"(best {state['best_auc'] or float('nan'):.4f} at step {state['best_step']})")
    if run.d.is_main:
        atomic_write_json(run.out / "eval.json", {"step": step, "best_step": state["best_step"], **metrics})
    rm.train()


@torch.no_grad()
def evaluate(rm: RewardModel, ids: list[list[int]], labels: np.ndarray, batch_size: int, d: Dist,
             cpu_bf16: bool = False) -> dict:
    """Held-out metrics (karma.metrics); the rows are split across ranks and gathered. Non-finite
    scores are counted (`nonfinite_scores`) and left out of the metrics."""
    rm.eval()
    mine = sorted(range(d.rank, len(ids), d.world_size), key=lambda i: len(ids[i]))
    n_batches = math.ceil(math.ceil(len(ids) / d.world_size) / batch_size)  # the same on every rank (FSDP)
    probs = []
    for b in range(n_batches):
        rows = mine[b * batch_size:(b + 1) * batch_size]
        x, mask = left_pad([ids[i] for i in (rows or [0])], rm.tokenizer.pad_id)
        with autocast(d, cpu_bf16):
            p = torch.sigmoid(rm(x.to(d.device), mask.to(d.device)).float())
        probs += list(zip(rows, p.tolist()))  # nothing for a padding batch (rows empty)
    gathered = sorted(gather_lists(probs, d))
    p = np.array([p for _, p in gathered])
    finite = np.isfinite(p)
    if not finite.any():
        return {"n": len(p), "nonfinite_scores": len(p), "roc_auc": None,
                "note": "every held-out score is NaN/inf: the model's weights are not finite"}
    return {**binary_metrics(labels[finite], p[finite]), "nonfinite_scores": int((~finite).sum())}


def export(rm: RewardModel, directory: Path, d: Dist, info: dict, same_as: Path | None = None):
    """Save the reward model to `directory`; when `same_as` holds an export of these very weights
    (final = best at the last step), hard-link its files instead of writing a second copy."""
    if same_as is not None and same_as.is_dir():
        if d.is_main:
            with atomic_directory(directory) as tmp:
                for f in same_as.iterdir():
                    os.link(f, tmp / f.name)
        barrier(d)
        return
    state = full_state_dict(rm, d)
    if d.is_main:
        save_reward_model(rm, directory, state_dict=state, info=info)
    barrier(d)
