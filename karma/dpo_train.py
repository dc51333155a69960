"""DPO training (Rafailov et al. 2023, "Direct Preference Optimization"): a policy learns from
(prompt, chosen, rejected) pairs, with no reward model and no sampling.

    1. reference log-probs: log pi_ref(y|x) of every chosen and rejected reply, computed ONCE
       before the first step with the reference (by default the starting policy itself) and
       cached in <out>/reference_logps.pt, so no second model is held in memory while training;
    2. each optimizer step takes `batch_size` pairs (split across ranks, then into micro-batches of
       `micro_batch_size`), scores both replies with the policy (sums of the reply tokens'
       log-probs; prompt tokens and padding masked; per-token averages for IPO, as TRL does) and
       minimises the DPO loss of karma.dpo (sigmoid, conservative/label-smoothed, or IPO)
       averaged over the pairs;
    3. AdamW, linear warmup + cosine decay, gradient clipping; held-out pairs (a hash split by id)
       are scored every `eval_every` steps with the same metrics.

Prompts are rendered as the reward model and PPO render them ("User: ...\\n\\nAssistant:",
karma.data.format), truncated from the oldest turn to `max_prompt_length` tokens; a reply is its
text after one space, plus EOS, cut to fit `max_length`. Pair order per epoch is a function of
(seed, epoch), so a checkpoint (weights, optimizer, scheduler, step) resumes exactly.

Metrics (metrics.jsonl) carry TRL's names: loss, rewards/chosen, rewards/rejected (beta times the
policy-reference log-ratio), rewards/accuracies, rewards/margins, logps/chosen, logps/rejected.
"""

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from karma.checkpoint import atomic_write, latest_checkpoint, save_training_state
from karma.distributed import Dist, all_reduce_sum, clip_grad_norm, gather_lists, shard
from karma.dpo import IGNORE_INDEX, dpo_loss, sequence_logprobs
from karma.plot import plot_run
from karma.records import Skips, input_files, jsonl_objects
from karma.reward import RewardConfig, encode
from karma.run import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, MetricsLog, RunLock, Throughput, adamw,
                       autocast, check_flags, check_out_dir, checkpoint_due, drop_checkpoints_if_done, export_model,
                       peak_memory_gib, resume, show_progress, warmup_cosine, write_config)
from karma.tokenizer import Tokenizer, left_pad, load_tokenizer
from karma.weights import inspect_model, load_model

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class DPOConfig:
    model: str = "smollm2-135m"
    data: list = None  # preference JSONL files (data_prep.py kinship writes them)
    out_dir: Path = Path("runs/dpo")
    ref_model: str | None = None  # default: the starting policy (--model)
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    max_length: int = 512
    max_prompt_length: int = 256
    batch_size: int = 16
    micro_batch_size: int = 4
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    stop_after_steps: int | None = None
    heldout_percent: float = 5.0
    eval_every: int = 100
    save_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    activation_checkpointing: bool = False
    resume: bool = False

    def check(self) -> None:
        check_flags(self, beta=POSITIVE, label_smoothing=(lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
                    loss_type=(lambda v: v in LOSS_TYPES, f"one of {', '.join(LOSS_TYPES)}"),
                    max_length=AT_LEAST_1, max_prompt_length=AT_LEAST_1, batch_size=AT_LEAST_1,
                    micro_batch_size=AT_LEAST_1, lr=POSITIVE, weight_decay=NON_NEGATIVE,
                    warmup_ratio=(lambda v: 0 <= v < 1, "in [0, 1)"), min_lr_ratio=UNIT_INTERVAL, grad_clip=POSITIVE,
                    epochs=AT_LEAST_1, max_steps=AT_LEAST_1, stop_after_steps=AT_LEAST_1,
                    heldout_percent=(lambda v: 0 <= v < 100, "in [0, 100)"), eval_every=AT_LEAST_1,
                    save_every=AT_LEAST_1, keep_checkpoints=NON_NEGATIVE, log_every=AT_LEAST_1)
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"--max-prompt-length {self.max_prompt_length} must be below --max-length {self.max_length}")
        if self.label_smoothing and self.loss_type == "ipo":
            raise ValueError("--label-smoothing applies to the sigmoid loss, not to IPO")


# settings a resumed run may change: they decide what is logged, evaluated and saved, not the weights
RESUMABLE_CHANGES = {"stop_after_steps", "eval_every", "save_every", "keep_checkpoints", "log_every",
                     "activation_checkpointing", "resume"}


def train(cfg: DPOConfig, d: Dist) -> dict:
    """Check the inputs, take the lock on --out, then train (see the module doc)."""
    cfg.check()
    files = preference_files(cfg.data)
    model_cfg = inspect_model(cfg.model)
    if cfg.max_length > model_cfg.max_position_embeddings:
        raise ValueError(f"--max-length {cfg.max_length}: more than {cfg.model}'s max_position_embeddings "
                         f"({model_cfg.max_position_embeddings})")
    if cfg.ref_model:
        inspect_model(cfg.ref_model)
    check_out_dir(cfg.out_dir, cfg, RESUMABLE_CHANGES)
    with RunLock(cfg.out_dir, enabled=d.is_main):
        return _train(cfg, d, files)


def _train(cfg: DPOConfig, d: Dist, files: list[Path]) -> dict:
    """The loop: pairs -> policy log-probs -> DPO loss -> step -> log -> evaluate -> checkpoint."""
    out = Path(cfg.out_dir)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    data = Pairs.load(files, tokenizer, cfg)
    policy = load_model(cfg.model, dtype=torch.float32, device=d.device)
    policy.activation_checkpointing = cfg.activation_checkpointing
    shard(policy, policy.blocks, d)
    data.reference = reference_logps(policy, data, cfg, out, d)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    optimizer = adamw(policy, cfg.lr, cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)

    state = {"step": 0, "log_sums": {}, "log_pairs": 0}  # metric sums since the last train record
    resumed = resume(out, {"policy": (policy, optimizer)}, "step", ["metrics.jsonl"], d) if cfg.resume else None
    if resumed:
        state.update(resumed)
        scheduler.load_state_dict(state.pop("scheduler"))
    log = MetricsLog(out / "metrics.jsonl", append=resumed is not None, enabled=d.is_main)
    log.write({"event": "data", **data.report, "train_pairs": len(data.train), "heldout_pairs": len(data.heldout),
               "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "resumed_at": state["step"]})
    bar = tqdm(total=total_steps, initial=state["step"], desc="dpo", unit="step", disable=not show_progress(d.is_main))
    throughput = Throughput("pairs")
    try:
        while state["step"] < total_steps:
            epoch, index = divmod(state["step"], steps_per_epoch)
            batch = epoch_order(len(data.train), cfg.seed, epoch)[index * cfg.batch_size:(index + 1) * cfg.batch_size]
            sums, grad_norm = train_step(policy, optimizer, data, batch, cfg, d)
            scheduler.step()
            state["step"] = step = state["step"] + 1
            bar.update(1)
            for k, v in sums.items():
                state["log_sums"][k] = state["log_sums"].get(k, 0.0) + v
            state["log_pairs"] += len(batch)
            throughput.add(len(batch), int(sum(data.train[i].tokens for i in batch)))
            if step % cfg.log_every == 0 or step == total_steps:
                record = train_record(state, epoch, scheduler.get_last_lr()[0], grad_norm, throughput, d)
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
            if data.heldout and (step % cfg.eval_every == 0 or step == total_steps):
                evaluate_and_log(policy, data, cfg, step, log, bar, d)
            stopping = cfg.stop_after_steps is not None and step >= cfg.stop_after_steps
            if checkpoint_due(step, total_steps, cfg.save_every, stopping, cfg.keep_checkpoints):
                save_training_state(out / "checkpoints" / f"step-{step:08d}", {"policy": (policy, optimizer)},
                                    {**state, "scheduler": scheduler.state_dict()}, d, keep=max(1, cfg.keep_checkpoints))
            if stopping:
                break
    finally:  # also on errors: an open bar would share its line with the error message
        bar.close()
    if state["step"] >= total_steps:
        export_model(policy, tokenizer, out / "policy", d)
        drop_checkpoints_if_done(out, cfg.keep_checkpoints, d.is_main)
    log.close()
    if d.is_main:
        plot_run(out)
    return state


def train_record(state: dict, epoch: int, lr: float, grad_norm: float, throughput: Throughput, d: Dist) -> dict:
    """The train record: metric means over the pairs since the last record (then reset), rates, memory."""
    means = {k: v / state["log_pairs"] for k, v in state["log_sums"].items()}
    state["log_sums"], state["log_pairs"] = {}, 0
    return {"event": "train", "step": state["step"], "epoch": epoch, **means, "lr": lr, "grad_norm": grad_norm,
            **throughput.rates(), "peak_mem_gib": peak_memory_gib(d.device)}


def evaluate_and_log(policy, data: "Pairs", cfg: DPOConfig, step: int, log: MetricsLog, bar, d: Dist) -> None:
    """Held-out metrics to the log and one printed line."""
    metrics = evaluate(policy, data, cfg, d)
    log.write({"event": "eval", "step": step, **metrics})
    if d.is_main:
        bar.write(f"step {step:6d}  held-out loss {metrics['loss']:.4f}  "
                  f"accuracy {metrics['rewards/accuracies']:.3f}  margin {metrics['rewards/margins']:+.4f}")


# ----------------------------------------------------------------------------------------- data

@dataclass
class Pair:
    id: str
    prompt: list[int]  # token ids of the rendered prompt (ends with "Assistant:")
    chosen: list[int]  # reply token ids, EOS last
    rejected: list[int]

    @property
    def tokens(self) -> int:
        return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected)


class Pairs:
    """Tokenized preference pairs, split train / held-out by a hash of the pair's id, and the
    reference log-probs of every reply ([N, 2]: chosen, rejected; train pairs first)."""

    def __init__(self, train: list[Pair], heldout: list[Pair], report: dict, pad_id: int):
        self.train, self.heldout, self.report, self.pad_id = train, heldout, report, pad_id
        self.reference: torch.Tensor | None = None

    @classmethod
    def load(cls, files: list[Path], tokenizer: Tokenizer, cfg: DPOConfig) -> "Pairs":
        skips, pairs = Skips(), {"train": [], "heldout": []}
        prompt_cfg = RewardConfig(format="generalized", max_length=cfg.max_prompt_length)
        for path in files:
            for where, row in jsonl_objects(path, skips):
                parsed = parse_pair(row)
                if isinstance(parsed, str):
                    skips.add(parsed, where)
                    continue
                pair_id, messages, chosen, rejected = parsed
                prompt = encode(tokenizer, messages, None, None, prompt_cfg)
                room = cfg.max_length - len(prompt)
                reply = lambda text: (tokenizer.encode(" " + text.strip(), add_special_tokens=False)
                                      + [tokenizer.eos_id])[:room]
                pairs[split_of(pair_id, cfg.heldout_percent)].append(Pair(pair_id, prompt, reply(chosen), reply(rejected)))
        read = len(pairs["train"]) + len(pairs["heldout"]) + skips.total()
        if not pairs["train"]:
            raise ValueError(f"{', '.join(map(str, files))}: no usable preference pairs "
                             f"({read} lines read; skipped: {dict(skips.counts)})")
        return cls(pairs["train"], pairs["heldout"], {"read": read, **skips.report()}, tokenizer.pad_id)

    def rows(self, split: str, index) -> list[Pair]:
        source = self.train if split == "train" else self.heldout
        return [source[i] for i in index]

    def reference_of(self, split: str, index) -> torch.Tensor:
        offset = 0 if split == "train" else len(self.train)
        return self.reference[torch.as_tensor(index, dtype=torch.long) + offset]  # [n, 2]


def parse_pair(row: dict):
    """(id, prompt messages, chosen text, rejected text), or the reason the row is unusable.
    Accepted layouts: prompt as a string or a list of messages; chosen/rejected as a string, a
    list holding the assistant reply, or a whole conversation ending with it (the prompt is then
    the conversation before it, as in HuggingFaceH4/ultrafeedback_binarized)."""
    def reply(value):
        if isinstance(value, str):
            return value, None
        if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant" \
                and isinstance(value[-1].get("content"), str):
            return value[-1]["content"], value[:-1]
        return None, None

    chosen, chosen_context = reply(row.get("chosen"))
    rejected, _ = reply(row.get("rejected"))
    if chosen is None or rejected is None:
        return "bad_value:chosen" if chosen is None else "bad_value:rejected"
    prompt = row.get("prompt", chosen_context)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
            for m in prompt)):
        return "bad_value:prompt"
    if not chosen.strip() or not rejected.strip():
        return "empty_reply"
    if chosen.strip() == rejected.strip():
        return "identical_replies"
    pair_id = row.get("id") or hashlib.sha256(repr((prompt, chosen, rejected)).encode()).hexdigest()[:16]
    return str(pair_id), prompt, chosen, rejected


def preference_files(paths) -> list[Path]:
    """JSONL files named, or found (*.jsonl) in named directories."""
    if not paths:
        raise ValueError("--data: give preference JSONL files or directories")
    return input_files(paths, (".jsonl",))


def split_of(pair_id: str, heldout_percent: float) -> str:
    """Deterministic split: the first 8 bytes of sha256(id) as a fraction (as data_prep splits threads)."""
    h = int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:8], "big") / 2**64
    return "heldout" if h < heldout_percent / 100 else "train"


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The pairs' order in one epoch: a function of (seed, epoch), so a step number is a data position."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# ----------------------------------------------------------------------------------------- model

def batch_tensors(pairs: list[Pair], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Chosen then rejected replies of `pairs` as one batch of 2n rows: ids and mask [2n, P + R]
    (prompts left-padded to P, replies right-padded to R), replies and their mask [2n, R]."""
    prompts, prompt_mask = left_pad([p.prompt for p in pairs] * 2, pad_id)
    replies = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    width = max(len(r) for r in replies)
    reply = torch.full((len(replies), width), pad_id, dtype=torch.long)
    reply_mask = torch.zeros((len(replies), width), dtype=torch.long)
    for row, r in enumerate(replies):
        reply[row, :len(r)] = torch.tensor(r)
        reply_mask[row, :len(r)] = 1
    ids, mask = torch.cat([prompts, reply], 1), torch.cat([prompt_mask, reply_mask], 1)
    return ids.to(device), mask.to(device), reply.to(device), reply_mask.to(device)


def reply_logps(policy, pairs: list[Pair], pad_id: int, device, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(reply | prompt) over each reply's tokens, summed (or averaged: IPO): (chosen [n], rejected [n]).
    Logits are computed only from the last prompt position on, not over the whole prompt."""
    ids, mask, reply, reply_mask = batch_tensors(pairs, pad_id, device)
    P = ids.shape[1] - reply.shape[1]
    hidden = policy(ids, mask, output="hidden")[:, P - 1:]  # [2n, R + 1, H]: position P - 1 predicts the first reply token
    labels = torch.cat([torch.full_like(reply[:, :1], IGNORE_INDEX),
                        torch.where(reply_mask.bool(), reply, IGNORE_INDEX)], 1)  # [2n, R + 1]
    logps = sequence_logprobs(policy.logits(hidden), labels, average=average)  # [2n]
    return logps[:len(pairs)], logps[len(pairs):]


@torch.no_grad()
def reference_logps(policy, data: Pairs, cfg: DPOConfig, out: Path, d: Dist) -> torch.Tensor:
    """[N, 2] reference log-probs of (chosen, rejected), train pairs then held-out ones: read from
    <out>/reference_logps.pt, or computed now (with --ref-model, or the starting policy) and cached."""
    path = out / "reference_logps.pt"
    n = len(data.train) + len(data.heldout)
    if path.exists():
        cached = torch.load(path, map_location="cpu")
        if cached.shape != (n, 2):
            raise ValueError(f"{path}: holds {tuple(cached.shape)} reference log-probs for {n} pairs; the data "
                             f"changed since it was written (delete it to recompute)")
        return cached
    if cfg.resume and latest_checkpoint(out / "checkpoints") is not None:
        raise FileNotFoundError(f"{path}: missing, and the policy has trained since the start, so it is no longer the "
                                f"reference; restore the file or start a new run")
    model = load_model(cfg.ref_model, dtype=torch.float32, device=d.device) if cfg.ref_model else policy
    if cfg.ref_model:
        shard(model, model.blocks, d)
    model.eval()
    pairs = data.train + data.heldout
    mine = list(range(d.rank, n, d.world_size))
    n_batches = math.ceil(math.ceil(n / d.world_size) / cfg.micro_batch_size)  # the same on every rank (FSDP)
    rows = []
    for b in tqdm(range(n_batches), desc="reference log-probs", disable=not show_progress(d.is_main)):
        index = mine[b * cfg.micro_batch_size:(b + 1) * cfg.micro_batch_size]
        with autocast(d):
            chosen, rejected = reply_logps(model, [pairs[i] for i in (index or [0])], data.pad_id, d.device,
                                           average=cfg.loss_type == "ipo")
        rows += [(i, c, r) for i, c, r in zip(index, chosen.tolist(), rejected.tolist())]
    reference = torch.tensor([[c, r] for _, c, r in sorted(gather_lists(rows, d))], dtype=torch.float32)
    if d.is_main:
        atomic_write(path, lambda p: torch.save(reference, p))
    if d.enabled:  # a forward without backward leaves FSDP's root unsharded; the optimizer needs the shards
        policy.reshard()
    policy.train()
    return reference


def train_step(policy, optimizer, data: Pairs, batch: np.ndarray, cfg: DPOConfig, d: Dist) -> tuple[dict, float]:
    """One optimizer step on the mean DPO loss over `batch`; returns (metric sums over its pairs, grad norm)."""
    mine = batch[d.rank::d.world_size]
    # every rank runs the same number of micro-batches (FSDP's collectives pair up); a rank short of
    # pairs repeats one with weight 0
    n_micro = math.ceil(math.ceil(len(batch) / d.world_size) / cfg.micro_batch_size)
    sums = {}
    for micro in range(n_micro):
        index = mine[micro * cfg.micro_batch_size:(micro + 1) * cfg.micro_batch_size]
        weight = 1.0 if len(index) else 0.0
        index = index if len(index) else batch[:1]
        if d.enabled:  # reduce gradients once per step, after the last micro-batch
            policy.set_requires_gradient_sync(micro == n_micro - 1)
        with autocast(d):
            chosen, rejected = reply_logps(policy, data.rows("train", index), data.pad_id, d.device,
                                           average=cfg.loss_type == "ipo")
        ref = data.reference_of("train", index).to(d.device)
        loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta=cfg.beta,
                                 label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type)  # means over the pairs
        (loss * len(index) * weight / len(batch)).backward()  # the mean over the global batch's pairs
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().double() * len(index) * weight
    grad_norm = float(clip_grad_norm(policy.parameters(), cfg.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    names = list(sums)
    totals = all_reduce_sum(torch.stack([sums[k] for k in names]), d).tolist()
    return dict(zip(names, totals)), grad_norm


@torch.no_grad()
def evaluate(policy, data: Pairs, cfg: DPOConfig, d: Dist) -> dict:
    """The training metrics, averaged over the held-out pairs."""
    policy.eval()
    mine = list(range(d.rank, len(data.heldout), d.world_size))
    n_batches = math.ceil(math.ceil(len(data.heldout) / d.world_size) / cfg.micro_batch_size)
    sums = {}
    for b in range(n_batches):
        index = mine[b * cfg.micro_batch_size:(b + 1) * cfg.micro_batch_size]
        weight = 1.0 if index else 0.0
        index = index or [0]
        with autocast(d):
            chosen, rejected = reply_logps(policy, data.rows("heldout", index), data.pad_id, d.device,
                                           average=cfg.loss_type == "ipo")
        ref = data.reference_of("heldout", index).to(d.device)
        loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta=cfg.beta,
                                 label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type)
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + v.double() * len(index) * weight
    names = list(sums)
    totals = all_reduce_sum(torch.stack([sums[k] for k in names]), d).tolist()
    policy.train()
    return {k: v / len(data.heldout) for k, v in zip(names, totals)}
