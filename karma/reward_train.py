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

from karma.checkpoint import atomic_directory, atomic_write_json, latest_checkpoint, save_training_state
from karma.data.examples import read_examples, split_files
from karma.distributed import Dist, all_reduce_sum, barrier, clip_grad_norm, full_state_dict, gather_lists, shard
from karma.metrics import binary_metrics
from karma.plot import plot_run
from karma.reward import (MAX_HEAD_HIDDEN, RewardConfig, RewardModel, bce_loss, build_reward_model, encode,
                          save_reward_model)
from karma.run import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, MetricsLog, RunLock, Throughput,
                       TrainingDiverged, adamw, autocast, check_flags, check_out_dir, checkpoint_due,
                       drop_checkpoints_if_done, in_range, peak_memory_gib, Progress, resume, warmup_cosine,
                       write_config)
from karma.tokenizer import Tokenizer, left_pad, load_tokenizer
from karma.weights import inspect_model

BUCKET_BATCHES = 50  # batches per length-sorting window


@dataclass
class TrainRMConfig:
    model: str = "smollm2-135m"  # offline, like ppo.py; the paper uses llama-3.2-1b
    data: Path = Path("runs/data")
    out_dir: Path = Path("runs/rm")
    format: str = "generalized"
    max_length: int = 1024
    head_hidden: int | None = None
    batch_size: int = 16
    micro_batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    stop_after_steps: int | None = None
    eval_every: int = 500
    eval_batch_size: int = 32
    max_eval_examples: int | None = None
    save_every: int = 500
    keep_checkpoints: int = 1
    log_every: int = 10
    max_bad_steps: int = 10
    seed: int = 0
    activation_checkpointing: bool = False
    resume: bool = False

    def inputs(self) -> dict:
        """What the run reads, by setting: config.json records them by content (run.input_identities)."""
        return {"model": self.model, "data": self.data}

    def check(self) -> None:
        """Flag values a run can use (ValueError naming the flag). Sizes also have an upper bound no
        real run reaches, so a typo (--head-hidden 1000000000) is refused here, not in the allocator
        after the model loads; --max-length is bounded by the model's context (check_inputs)."""
        check_flags(self, max_length=(lambda v: v >= MIN_MAX_LENGTH, f"at least {MIN_MAX_LENGTH} tokens (a context "
                                      f"turn, the chat template and a reply)"),
                    head_hidden=AT_LEAST_1, batch_size=AT_LEAST_1, micro_batch_size=AT_LEAST_1, lr=POSITIVE,
                    weight_decay=NON_NEGATIVE, warmup_ratio=(lambda v: 0 <= v < 1, "in [0, 1)"),
                    min_lr_ratio=UNIT_INTERVAL, grad_clip=POSITIVE, epochs=AT_LEAST_1, max_steps=AT_LEAST_1,
                    stop_after_steps=AT_LEAST_1, eval_every=AT_LEAST_1, eval_batch_size=AT_LEAST_1,
                    max_eval_examples=AT_LEAST_1, save_every=AT_LEAST_1, keep_checkpoints=NON_NEGATIVE,
                    log_every=AT_LEAST_1, max_bad_steps=AT_LEAST_1)
        check_flags(self, head_hidden=in_range(1, MAX_HEAD_HIDDEN), batch_size=in_range(1, MAX_BATCH),
                    micro_batch_size=in_range(1, MAX_BATCH), eval_batch_size=in_range(1, MAX_BATCH))


MIN_MAX_LENGTH = 32
# Examples per optimizer step or forward pass, at most: the paper's batch is 16 and reward-model
# recipes stay within a few hundred, so more than 2**16 is a typo.
MAX_BATCH = 2**16
# settings a resumed run may change: they decide what is logged, evaluated and saved, not the weights
RESUMABLE_CHANGES = {"stop_after_steps", "eval_every", "eval_batch_size", "max_eval_examples", "save_every",
                     "keep_checkpoints", "log_every", "max_bad_steps", "activation_checkpointing", "resume"}


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
    """Check the inputs, take the lock on --out, then train (see the module doc)."""
    data = check_inputs(cfg)
    with RunLock(cfg.out_dir, enabled=d.is_main):
        return _train(cfg, d, data)


def _train(cfg: TrainRMConfig, d: Dist, data: "Data") -> dict:
    """The loop: batch -> step (skipped if not finite) -> log -> evaluate (export best/) -> checkpoint."""
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    rm_cfg = RewardConfig(format=cfg.format, max_length=cfg.max_length, head_hidden=cfg.head_hidden)
    rm = build_reward_model(cfg.model, rm_cfg, dtype=torch.float32, device=d.device, seed=cfg.seed)
    rm.backbone.activation_checkpointing = cfg.activation_checkpointing
    rm.train()
    shard(rm, rm.backbone.blocks, d)
    if d.is_main:  # only once the model has loaded: a run refused before it leaves no config.json
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg)
    total_steps = cfg.max_steps or cfg.epochs * data.steps_per_epoch
    optimizer = adamw(rm, cfg.lr, cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)

    # log_loss / log_steps: the finite losses since the last train record (checkpointed, so a
    # resumed run logs the same averages as an uninterrupted one). skipped_steps / bad_streak:
    # steps skipped for a non-finite loss or gradient.
    state = {"step": 0, "best_auc": None, "best_step": None, "log_loss": 0.0, "log_steps": 0,
             "skipped_steps": 0, "bad_streak": 0}
    resumed = resume(out, {"model": (rm, optimizer)}, "step", ["metrics.jsonl"], d) if cfg.resume else None
    if resumed:
        state.update(resumed)
        scheduler.load_state_dict(state.pop("scheduler"))
    log = MetricsLog(out / "metrics.jsonl", append=resumed is not None, enabled=d.is_main)
    log.write({"event": "data", **data.summary(cfg.max_length), "total_steps": total_steps,
               "resumed_at": state["step"]})
    progress = Progress(total_steps, "train_rm", "step", initial=state["step"], enabled=d.is_main)
    throughput = Throughput()
    try:
        while state["step"] < total_steps:
            batch = data.batch(state["step"], cfg)
            loss, grad_norm = train_step(rm, optimizer, data, batch, cfg, d)
            count_step(state, loss, grad_norm, cfg, out)
            scheduler.step()
            state["step"] = step = state["step"] + 1
            progress.update(1, loss=loss)  # this step's batch loss
            throughput.add(len(batch), int(data.lengths[batch].sum()))
            if step % cfg.log_every == 0 or step == total_steps:
                record = {"event": "train", "step": step, "epoch": (step - 1) // data.steps_per_epoch,
                          "loss": state["log_loss"] / state["log_steps"] if state["log_steps"] else None,
                          "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "skipped_steps": state["skipped_steps"], **throughput.rates(),
                          "peak_mem_gib": peak_memory_gib(d.device)}
                log.write(record)
                state["log_loss"], state["log_steps"] = 0.0, 0
            if step % cfg.eval_every == 0 or step == total_steps:
                evaluate_and_keep_best(rm, data, state, cfg, out, log, progress, d)
            stopping = cfg.stop_after_steps is not None and step >= cfg.stop_after_steps
            if checkpoint_due(step, total_steps, cfg.save_every, stopping, cfg.keep_checkpoints):
                save_training_state(out / "checkpoints" / f"step-{step:08d}", {"model": (rm, optimizer)},
                                    {**state, "scheduler": scheduler.state_dict()}, d, keep=max(1, cfg.keep_checkpoints))
            if stopping:
                break
    finally:  # also on errors: an open bar would share its line with the error message
        progress.close()
    if state["step"] >= total_steps:
        export(rm, out / "final", d, {"step": state["step"]},
               same_as=out / "best" if state["best_step"] == state["step"] else None)
        drop_checkpoints_if_done(out, cfg.keep_checkpoints, d.is_main)
    log.close()
    if d.is_main:
        plot_run(out)  # curves.png: loss, AUC, learning rate, calibration
    return state


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
        with autocast(d):
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


def evaluate_and_keep_best(rm: RewardModel, data: Data, state: dict, cfg: TrainRMConfig, out: Path, log: MetricsLog,
                           progress: Progress, d: Dist) -> None:
    """Held-out metrics to the log and eval.json; a new best finite AUC is exported to best/."""
    step = state["step"]
    metrics = evaluate(rm, data.eval_ids, data.eval_labels, cfg.eval_batch_size, d)
    usable = metrics["roc_auc"] is not None and not metrics["nonfinite_scores"]
    if usable and (state["best_auc"] is None or metrics["roc_auc"] > state["best_auc"]):
        state["best_auc"], state["best_step"] = metrics["roc_auc"], step
        export(rm, out / "best", d, {"step": step, **metrics})
    log.write({"event": "eval", "step": step, **{k: v for k, v in metrics.items() if k != "calibration"}})
    if d.is_main:
        auc = "undefined" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.4f}"
        progress.write(f"step {step:6d}  held-out AUC {auc}  accuracy {metrics.get('accuracy', float('nan')):.4f}  "
                  f"(best {state['best_auc'] or float('nan'):.4f} at step {state['best_step']})")
        atomic_write_json(out / "eval.json", {"step": step, "best_step": state["best_step"], **metrics})
    rm.train()


@torch.no_grad()
def evaluate(rm: RewardModel, ids: list[list[int]], labels: np.ndarray, batch_size: int, d: Dist) -> dict:
    """Held-out metrics (karma.metrics); the rows are split across ranks and gathered. Non-finite
    scores are counted (`nonfinite_scores`) and left out of the metrics."""
    rm.eval()
    mine = sorted(range(d.rank, len(ids), d.world_size), key=lambda i: len(ids[i]))
    n_batches = math.ceil(math.ceil(len(ids) / d.world_size) / batch_size)  # the same on every rank (FSDP)
    probs = []
    for b in range(n_batches):
        rows = mine[b * batch_size:(b + 1) * batch_size]
        x, mask = left_pad([ids[i] for i in (rows or [0])], rm.tokenizer.pad_id)
        with autocast(d):
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
