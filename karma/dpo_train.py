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
    3. AdamW, optional linear warmup, linear (TRL's default) or cosine decay, gradient clipping;
       held-out pairs (a hash split by id) are scored every `eval_every` steps with the same metrics.

Prompts are rendered as the reward model and PPO render them ("User: ...\\n\\nAssistant:",
karma.data.format), truncated from the oldest turn to `max_prompt_length` tokens; a reply is its
text after one space, plus EOS, cut to fit `max_length`. Pair order per epoch is a function of
(seed, epoch), so a checkpoint (weights, optimizer, scheduler, step) resumes exactly.

The reference cache records what it was computed from (the reference model's name and files, sums
or per-token means, the lengths, the tokenized pairs); a cache that does not match is recomputed,
with a message, or, where the reference is gone (a resumed run whose policy was the reference),
refused. The reference pass scores each pair in the micro-batch that training (epoch 0) or
evaluation puts it in: float32 log-probs depend slightly on a batch's padding, and only the same
batches make a policy equal to its reference score margins of exactly 0 (so step 1 shows accuracy
0, not float noise counted as won pairs).

A step whose loss or gradient is not finite is skipped, never applied; `max_bad_steps` of them in a
row stop the run with TrainingDiverged (naming the step and the last checkpoint), as train_rm.py
does. A starting policy or reference with a NaN/inf weight is refused, and non-finite weights are
never exported.

Metrics (metrics.jsonl) carry TRL's names: loss, rewards/chosen, rewards/rejected (beta times the
policy-reference log-ratio), rewards/accuracies (the share of pairs with rewards/chosen strictly
above rewards/rejected, as TRL), rewards/margins, logps/chosen, logps/rejected.
"""

import hashlib
import math
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import torch

from karma.distributed import (CPU_BF16_HELP, Dist, all_reduce_sum, autocast, clip_grad_norm, gather_lists, reduce_sums,
                               shard)
from karma.dpo import IGNORE_INDEX, dpo_loss, sequence_logprobs
from karma.errors import TrainingDiverged
from karma.files import atomic_write
from karma.optim import adamw, warmup_cosine, warmup_linear
from karma.records import Skips, input_files, jsonl_objects
from karma.reward import RewardConfig, encode
from karma.run import (KEEP_CHECKPOINTS_HELP, MAX_BAD_STEPS_HELP, Progress, Run, Throughput, check_out_dir,
                       input_identity, peak_memory_gib)
from karma.settings import (AT_LEAST_1, HALF_OPEN_UNIT, NON_NEGATIVE, POSITIVE, SEED, UNIT_INTERVAL, check_settings,
                            seed_arg, setting)
from karma.tokenizer import Tokenizer, left_pad, load_tokenizer
from karma.track import REPORT_TO_HELP, TRACKER_INSTALLED, TRACKERS
from karma.weights import inspect_model, load_model, resolve

LOSS_TYPES = ("sigmoid", "ipo")
STEPS = (lambda v: 1 <= v <= 10**12, "in [1, 10**12]")  # a step count must fit the logs' 64-bit integers
LR_SCHEDULERS = ("linear", "cosine")
REFERENCE_FILE = "reference_logps.pt"


@dataclass
class DPOConfig:
    """dpo.py's settings: default, help and valid range of each (karma.settings derives the flags,
    --config and the checks). Defaults: TRL 0.28's DPOConfig where it has one (beta, lr, schedule,
    warmup, AdamW, clipping, lengths, logging); dpo.py's module doc lists every difference."""
    model: str = setting("smollm2-135m", "starting policy: alias, hub id or local dir")
    data: list[Path] | None = setting(None, "preference JSONL files or directories of them: {prompt, chosen, "
                                            "rejected} per line, as strings or chat messages (data_prep.py kinship "
                                            "writes them)", required=True)
    out_dir: Path = setting(Path("runs/dpo"), "output dir", flag="--out")
    ref_model: str | None = setting(None, "reference model", unset="the starting policy")
    beta: float = setting(0.1, "KL strength of DPO/IPO (TRL's default)", POSITIVE)
    loss_type: str = setting("sigmoid", "sigmoid = DPO (Rafailov et al. 2023); ipo = IPO (Azar et al. 2023)",
                             choices=LOSS_TYPES)
    label_smoothing: float = setting(0.0, "conservative DPO: the assumed share of flipped labels",
                                     (lambda v: 0 <= v < 0.5, "in [0, 0.5)"))
    max_length: int = setting(1024, "prompt + reply tokens; longer replies lose their end (TRL's default)",
                              AT_LEAST_1)
    max_prompt_length: int = setting(512, "prompt tokens; longer prompts lose their oldest turns first (TRL's "
                                          "default)", AT_LEAST_1)
    batch_size: int = setting(16, "pairs per optimizer step over all processes (TRL: 8 per device)", AT_LEAST_1)
    micro_batch_size: int = setting(4, "pairs per forward/backward on one process", AT_LEAST_1)
    lr: float = setting(1e-6, "peak learning rate (TRL's default)", POSITIVE)
    weight_decay: float = setting(0.0, "AdamW decay on matrices (TRL's default)", NON_NEGATIVE)
    # runs started before these two settings existed had AdamW beta2 0.95 and a cosine schedule
    # (before_added: run.check_resumable compares an older run's config.json with those)
    adam_beta2: float = setting(0.999, "AdamW's second-moment decay; beta1 is 0.9 (TRL's default)", HALF_OPEN_UNIT,
                                before_added=0.95)
    lr_scheduler: str = setting("linear", "decay after the warmup (TRL's default)", choices=LR_SCHEDULERS,
                                before_added="cosine")
    warmup_ratio: float = setting(0.0, "linear warmup share of the steps (TRL's default)", HALF_OPEN_UNIT)
    min_lr_ratio: float = setting(0.0, "the schedule decays to this x peak (TRL's default)", UNIT_INTERVAL)
    grad_clip: float = setting(1.0, "max global gradient norm (TRL's default)", POSITIVE)
    epochs: int = setting(1, "passes over the train pairs (TRL: 3); --resume with more extends a run",
                          (lambda v: 1 <= v <= 10**6, "in [1, 10**6]"), budget=True)
    max_steps: int | None = setting(None, "optimizer steps in the run (overrides --epochs); --resume with more extends "
                                          "a run", STEPS, unset="--epochs decides", budget=True)
    stop_after_steps: int | None = setting(None, "checkpoint and exit after this step (e.g. a job time limit); "
                                                 "continue with --resume", STEPS)
    heldout_percent: float = setting(5.0, "share of pairs held out for evaluation, split by a hash of the id",
                                     (lambda v: 0 <= v < 100, "in [0, 100)"))
    eval_every: int = setting(100, "held-out evaluation interval in steps", AT_LEAST_1)
    save_every: int = setting(100, "checkpoint interval in steps", AT_LEAST_1)
    keep_checkpoints: int = setting(1, KEEP_CHECKPOINTS_HELP, NON_NEGATIVE)
    log_every: int = setting(10, "metrics.jsonl interval in steps", AT_LEAST_1)
    max_bad_steps: int = setting(10, MAX_BAD_STEPS_HELP, AT_LEAST_1)
    seed: int = setting(0, "pair order (TRL: 42)", SEED, type=seed_arg)
    activation_checkpointing: bool = setting(False, "recompute block activations in backward")
    cpu_bf16: bool = setting(False, CPU_BF16_HELP)
    report_to: str = setting("none", REPORT_TO_HELP, TRACKER_INSTALLED, choices=TRACKERS)
    resume: bool = setting(False, "continue from the latest checkpoint in --out with the same settings (more "
                                  "--max-steps or --epochs extend the run)")

    def inputs(self) -> dict:
        """What the run reads, by setting: config.json records them by content (run.input_identities)."""
        return {"model": self.model, "ref_model": self.ref_model, "data": self.data}

    def check(self) -> None:
        """Every value in its range, and the two rules between settings (ValueError naming the flags)."""
        check_settings(self)
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"--max-prompt-length {self.max_prompt_length} must be below --max-length "
                             f"{self.max_length}")
        if self.label_smoothing and self.loss_type == "ipo":
            raise ValueError("--label-smoothing applies to the sigmoid loss, not to IPO")


# settings a resumed run may change: they decide what is logged, evaluated and saved, not the weights
RESUMABLE_CHANGES = {"stop_after_steps", "eval_every", "save_every", "keep_checkpoints", "log_every",
                     "max_bad_steps", "activation_checkpointing", "resume", "report_to"}


def train(cfg: DPOConfig, d: Dist) -> dict:
    """Check the inputs, then train in --out (karma.run.Run): pairs -> policy log-probs -> DPO loss
    -> step -> log -> evaluate -> checkpoint; policy/ at the end (see the module doc)."""
    files = check_inputs(cfg)
    with Run(cfg, d, counter="step", stop_after=cfg.stop_after_steps) as run:
        run.write_config()
        torch.manual_seed(cfg.seed)
        tokenizer, data, policy = load_data_and_policy(cfg, files, run)
        steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        optimizer = adamw(policy, cfg.lr, cfg.weight_decay, betas=(0.9, cfg.adam_beta2))  # TRL's beta2: 0.999
        scheduler = lr_schedule(optimizer, total_steps, cfg)
        # log_sums / log_pairs: metric sums over the applied steps' pairs since the last train record;
        # skipped_steps / bad_streak: steps skipped for a non-finite loss or gradient (all checkpointed)
        state = {"step": 0, "log_sums": {}, "log_pairs": 0, "skipped_steps": 0, "bad_streak": 0}
        if run.resume({"policy": (policy, optimizer)}, state):
            scheduler.load_state_dict(state.pop("scheduler"))
        run.log({"event": "data", **data.report, "train_pairs": len(data.train), "heldout_pairs": len(data.heldout),
                 "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "resumed_at": state["step"]})
        with run.progress(total_steps, "dpo", initial=state["step"]) as progress:
            throughput = Throughput("pairs")
            while state["step"] < total_steps:
                epoch, index = divmod(state["step"], steps_per_epoch)
                order = epoch_order(len(data.train), cfg.seed, epoch)
                batch = order[index * cfg.batch_size:(index + 1) * cfg.batch_size]
                sums, grad_norm, applied = train_step(policy, optimizer, data, batch, cfg, d)
                scheduler.step()
                state["step"] = step = state["step"] + 1
                count_step(state, sums if applied else None, len(batch))
                progress.update(1, loss=sums["loss"] / len(batch) if applied else None)
                throughput.add(len(batch), int(sum(data.train[i].tokens for i in batch)))
                if step % cfg.log_every == 0 or step == total_steps or state["bad_streak"] >= cfg.max_bad_steps:
                    run.log(train_record(state, epoch, scheduler.get_last_lr()[0], grad_norm, throughput, d))
                if state["bad_streak"] >= cfg.max_bad_steps:
                    raise TrainingDiverged(
                        f"{state['bad_streak']} consecutive steps had a non-finite loss or gradient and were skipped "
                        f"(never applied): the data or the weights hold NaN/inf, or --lr {cfg.lr:g} is too high. "
                        f"Stopped at step {step}, nothing exported; last checkpoint: "
                        f"{run.latest_checkpoint() or 'none (the run stopped before its first save)'}")
                if data.heldout and (step % cfg.eval_every == 0 or step == total_steps):
                    evaluate_and_log(policy, data, cfg, step, run, progress)
                if run.after_step(step, total_steps, {**state, "scheduler": scheduler.state_dict()}):
                    break
        if state["step"] >= total_steps:
            refuse_nonfinite_export(policy, state["step"], run)
            optimizer.state.clear()  # AdamW state, 2x the weights: the export's copies reuse its memory
            run.export_policy(policy, tokenizer)
            run.finish()
    return state


def check_inputs(cfg: DPOConfig) -> list[Path]:
    """What can be checked before anything loads: flags, the preference files, --max-length against
    the models' context, --out. Returns the files."""
    cfg.check()
    files = preference_files(cfg.data)
    for flag, name in (("--model", cfg.model), ("--ref-model", cfg.ref_model)):
        positions = inspect_model(name).max_position_embeddings if name else cfg.max_length
        if cfg.max_length > positions:
            raise ValueError(f"--max-length {cfg.max_length}: more than {flag} {name}'s max_position_embeddings "
                             f"({positions})")
    check_out_dir(cfg.out_dir, cfg, RESUMABLE_CHANGES)
    return files


def load_data_and_policy(cfg: DPOConfig, files: list[Path], run: Run) -> tuple[Tokenizer, "Pairs", torch.nn.Module]:
    """The tokenizer, the tokenized pairs with their reference log-probs (cached in --out, or
    computed now), and the policy to train (sharded under torchrun)."""
    tokenizer = load_tokenizer(cfg.model)
    data = Pairs.load(files, tokenizer, cfg)
    trained = cfg.resume and run.latest_checkpoint() is not None  # the policy is no longer the start
    identity = reference_identity(cfg, data)
    data.reference = cached_reference(run.out / REFERENCE_FILE, identity, len(data), trained, cfg, run.d.is_main)
    policy = load_model(cfg.model, dtype=torch.float32, device=run.d.device)
    refuse_nonfinite_weights(policy, cfg.model)
    policy.activation_checkpointing = cfg.activation_checkpointing
    shard(policy, policy.blocks, run.d)
    if data.reference is None:
        data.reference = reference_pass(policy, data, cfg, identity, run.out, run.d)
    return tokenizer, data, policy


def lr_schedule(optimizer, total_steps: int, cfg: DPOConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """--lr-scheduler: linear (TRL's default) or cosine decay after a linear warmup (karma.optim)."""
    schedule = warmup_cosine if cfg.lr_scheduler == "cosine" else warmup_linear
    return schedule(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)


def count_step(state: dict, sums: dict | None, n_pairs: int) -> None:
    """Book-keeping of one step: the metric sums of an applied step (None: skipped, non-finite)."""
    if sums is None:
        state["skipped_steps"] += 1
        state["bad_streak"] += 1
        return
    state["bad_streak"] = 0
    for k, v in sums.items():
        state["log_sums"][k] = state["log_sums"].get(k, 0.0) + v
    state["log_pairs"] += n_pairs


def train_record(state: dict, epoch: int, lr: float, grad_norm: float, throughput: Throughput, d: Dist) -> dict:
    """The train record: metric means over the applied steps' pairs since the last record (then
    reset; loss None when every step since was skipped), skipped steps so far, rates, memory."""
    means = {k: v / state["log_pairs"] for k, v in state["log_sums"].items()} or {"loss": None}
    state["log_sums"], state["log_pairs"] = {}, 0
    return {"event": "train", "step": state["step"], "epoch": epoch, **means, "lr": lr, "grad_norm": grad_norm,
            "skipped_steps": state["skipped_steps"], **throughput.rates(), "peak_mem_gib": peak_memory_gib(d.device)}


def evaluate_and_log(policy, data: "Pairs", cfg: DPOConfig, step: int, run: Run, progress: Progress) -> None:
    """Held-out metrics to the log and one printed line."""
    metrics = evaluate(policy, data, cfg, run.d)
    run.log({"event": "eval", "step": step, **metrics})
    progress.write(f"step {step:6d}  held-out loss {metrics['loss']:.4f}  "
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

    def __len__(self) -> int:
        return len(self.train) + len(self.heldout)

    @property
    def fingerprint(self) -> str:
        """The pairs as the reference scores them (ids and token ids, in order: train, then held out)."""
        h = hashlib.sha256()
        for split in ("train", "heldout"):
            for p in getattr(self, split):
                h.update(orjson.dumps([split, p.id, p.prompt, p.chosen, p.rejected]))
        return f"{len(self.train)} train + {len(self.heldout)} held-out pairs, sha256 {h.hexdigest()[:16]}"

    @classmethod
    def load(cls, files: list[Path], tokenizer: Tokenizer, cfg: DPOConfig) -> "Pairs":
        skips, pairs = Skips(), {"train": [], "heldout": []}
        start = len(tokenizer.encode(""))  # BOS, for tokenizers that add one
        if cfg.max_prompt_length <= start:
            raise ValueError(f"--max-prompt-length {cfg.max_prompt_length}: no room for a prompt after the "
                             f"tokenizer's {start}-token start")
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
                pair = Pair(pair_id, prompt, reply(chosen), reply(rejected))
                pairs[split_of(pair_id, cfg.heldout_percent)].append(pair)
        read = len(pairs["train"]) + len(pairs["heldout"]) + skips.total()
        if not pairs["train"]:
            names = ", ".join(map(str, files))
            skipped = f"{skips.total()} lines skipped: {dict(skips.counts.most_common())}" if skips.total() \
                else "no line skipped"
            if pairs["heldout"]:
                raise ValueError(f"{names}: all {len(pairs['heldout'])} usable pairs fell in the held-out split "
                                 f"(--heldout-percent {cfg.heldout_percent:g} of a hash of each pair's id; 0 train; "
                                 f"{skipped}), none is left to train on: lower --heldout-percent or add pairs")
            raise ValueError(f"{names}: no usable preference pairs ({read} lines read; {skipped})")
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
    hidden = policy(ids, mask, output="hidden")[:, P - 1:]  # [2n, R + 1, H]: P - 1 predicts the first reply token
    labels = torch.cat([torch.full_like(reply[:, :1], IGNORE_INDEX),
                        torch.where(reply_mask.bool(), reply, IGNORE_INDEX)], 1)  # [2n, R + 1]
    logps = sequence_logprobs(policy.logits(hidden), labels, average=average)  # [2n]
    return logps[:len(pairs)], logps[len(pairs):]


def micro_batches(index, size: int, d: Dist) -> list[tuple[list[int], float]]:
    """This rank's share of `index` (every world_size-th) as (micro-batch of at most `size`, weight 1).
    Every rank gets the same number (FSDP's collectives pair up): a rank short of pairs repeats the
    first one with weight 0. Training, evaluation and the reference pass all batch this way."""
    index = list(index)
    mine = index[d.rank::d.world_size]
    n_micro = math.ceil(math.ceil(len(index) / d.world_size) / size)
    parts = [mine[m * size:(m + 1) * size] for m in range(n_micro)]
    return [(part, 1.0) if part else (index[:1], 0.0) for part in parts]


def nonfinite_weights(model) -> int:
    """How many weights of `model` this process holds (its shards under FSDP) are NaN or inf."""
    local = lambda p: p.to_local() if hasattr(p, "to_local") else p
    return int(sum((~torch.isfinite(local(p.detach()))).sum() for p in model.parameters()))


def refuse_nonfinite_export(policy, step: int, run: Run) -> None:
    """A trained policy with a NaN/inf weight (on any rank) is not exported: TrainingDiverged."""
    bad = int(all_reduce_sum(torch.tensor(nonfinite_weights(policy), device=run.d.device), run.d))
    if bad:
        raise TrainingDiverged(f"step {step}: the trained policy holds {bad} non-finite weights; not exported. "
                               f"Last checkpoint: {run.latest_checkpoint() or 'none'}")


def refuse_nonfinite_weights(model, name: str) -> None:
    """A NaN or inf weight makes every log-prob, loss and gradient NaN: refuse the checkpoint (before sharding)."""
    bad = nonfinite_weights(model)
    if bad:
        raise ValueError(f"{name}: {bad} weights are not finite (NaN/inf); every log-prob, loss and gradient "
                         f"of a DPO run from it would be NaN")


# --------------------------------------------------------------------------------- reference pass

def reference_identity(cfg: DPOConfig, data: "Pairs") -> dict:
    """What the reference log-probs are computed from: any change makes them other numbers. By
    content, not by path (a moved model is the same model; the tokenizer is in the pairs' token
    ids). The batching is not part of it (it moves them by float32 rounding only: a run resumed on
    another number of processes keeps its cache)."""
    return {"reference files": input_identity(resolve(cfg.ref_model or cfg.model)),
            "log-probs (--loss-type)": "per-token mean" if cfg.loss_type == "ipo" else "sum",
            "--max-length": cfg.max_length, "--max-prompt-length": cfg.max_prompt_length,
            "pairs": data.fingerprint}


def cached_reference(path: Path, identity: dict, n_pairs: int, trained: bool, cfg: DPOConfig,
                     is_main: bool) -> torch.Tensor | None:
    """The [N, 2] reference log-probs cached in `path` when they were computed from `identity`;
    else None, to recompute them (with a message). A resumed run whose policy was the reference (no
    --ref-model) has trained away from it and cannot recompute them: there a missing, unreadable or
    mismatched cache is an error naming the file. A resumed run does not compare the reference's
    files (its policy comes from the checkpoint; the cache is its record of where it started), and
    keeps the bare tensor an older dpo.py cached (check_out_dir compared its settings with config.json)."""
    recomputable = not trained or cfg.ref_model is not None
    if not path.exists():
        if not recomputable:
            raise FileNotFoundError(f"{path}: missing, and the policy has trained since the start, so it is no longer "
                                    f"the reference; restore the file or start a new run")
        return None
    try:  # weights_only: tensors and plain containers, never arbitrary pickled objects
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text on this is a page about weights_only
        cached, why = None, "unreadable (not a torch file of tensors and plain containers)"
    except Exception as e:  # torch raises many types for a truncated, corrupt or foreign file
        first_sentence = " ".join(str(e).split()).split(". ")[0][:160]  # the message stays one line
        cached, why = None, f"unreadable ({type(e).__name__}: {first_sentence})"
    else:
        why = cache_mismatch(cached, identity, n_pairs, ignore={"reference files"} if trained else set())
    if not why:
        return cached["logps"]
    if trained and isinstance(cached, torch.Tensor) and cached.shape == (n_pairs, 2):
        if is_main:
            print(f"{path}: {why}; kept as this resumed run's own", file=sys.stderr)
        return cached
    if not recomputable:
        raise ValueError(f"{path}: {why}; the policy has trained since the reference pass, so it can no longer "
                         f"recompute them: restore the file or start a new run")
    if is_main:
        print(f"{path}: {why}; recomputing the reference log-probs", file=sys.stderr)
    return None


def cache_mismatch(cached, identity: dict, n_pairs: int, ignore: set[str]) -> str:
    """Why `cached` (what reference_pass saves) does not fit `identity` ("" when it does)."""
    if isinstance(cached, torch.Tensor):
        return "written by an older dpo.py, without a record of what it was computed from"
    if not (isinstance(cached, dict) and isinstance(cached.get("identity"), dict)
            and isinstance(cached.get("logps"), torch.Tensor) and cached["logps"].shape == (n_pairs, 2)):
        return f"not a cache of [{n_pairs}, 2] reference log-probs"
    was = cached["identity"]
    changed = [k for k in identity if k not in ignore and was.get(k) != identity[k]]
    said = {"pairs": f"the pairs differ: {was.get('pairs')} -> {identity['pairs']}",
            "reference files": "the reference model's files have other content"}
    return ("computed from other settings: " + "; ".join(said.get(k, f"{k}: {was.get(k)!r} -> {identity[k]!r}")
                                                         for k in changed)) if changed else ""


def reference_pass(policy, data: "Pairs", cfg: DPOConfig, identity: dict, out: Path, d: Dist) -> torch.Tensor:
    """Reference log-probs with --ref-model, or the starting policy; cached in <out> with `identity`."""
    model = policy
    if cfg.ref_model:
        model = load_model(cfg.ref_model, dtype=torch.float32, device=d.device)
        refuse_nonfinite_weights(model, cfg.ref_model)
        shard(model, model.blocks, d)
    reference = compute_reference(model, data, cfg, d)
    bad = int((~torch.isfinite(reference)).any(1).sum())
    if bad:
        raise ValueError(f"{cfg.ref_model or cfg.model}: the reference log-probs of {bad} of {len(data)} pairs are "
                         f"not finite (NaN/inf)")
    if d.is_main:
        atomic_write(out / REFERENCE_FILE, lambda p: torch.save({"identity": identity, "logps": reference}, p))
    if d.enabled:  # a forward without backward leaves FSDP's root unsharded; the optimizer needs the shards
        policy.reshard()
    policy.train()
    return reference


@torch.no_grad()
def compute_reference(model, data: "Pairs", cfg: DPOConfig, d: Dist) -> torch.Tensor:
    """[N, 2] log-probs of (chosen, rejected) under `model`, train pairs then held-out ones, each
    scored in the micro-batch that training (epoch 0) or evaluation puts it in. A reply's float32
    log-prob depends on its batch's padding (~1e-5 at 200 tokens): scored in other batches, a policy
    equal to its reference would show nonzero margins and count float noise as won pairs at step 1."""
    model.eval()
    order = epoch_order(len(data.train), cfg.seed, 0)
    jobs = [("train", job) for start in range(0, len(order), cfg.batch_size)
            for job in micro_batches(order[start:start + cfg.batch_size], cfg.micro_batch_size, d)]
    jobs += [("heldout", job) for job in micro_batches(range(len(data.heldout)), cfg.micro_batch_size, d)]
    rows = []
    with Progress(len(jobs), "dpo reference log-probs", "batch", enabled=d.is_main) as progress:
        for split, (index, weight) in jobs:
            with autocast(d, cfg.cpu_bf16):
                chosen, rejected = reply_logps(model, data.rows(split, index), data.pad_id, d.device,
                                               average=cfg.loss_type == "ipo")
            offset = 0 if split == "train" else len(data.train)
            if weight:
                rows += [(offset + int(i), c, r) for i, c, r in zip(index, chosen.tolist(), rejected.tolist())]
            progress.update(1)
    return torch.tensor([[c, r] for _, c, r in sorted(gather_lists(rows, d))], dtype=torch.float32)


# ---------------------------------------------------------------------------------------- training

def train_step(policy, optimizer, data: "Pairs", batch: np.ndarray, cfg: DPOConfig,
               d: Dist) -> tuple[dict, float, bool]:
    """One optimizer step on the mean DPO loss over `batch`; returns (metric sums over its pairs, grad
    norm, applied). A step whose loss or gradient norm is not finite is not applied: clipping would
    spread its NaN into every gradient and AdamW into every weight."""
    micro = micro_batches(batch, cfg.micro_batch_size, d)
    sums = {}
    for m, (index, weight) in enumerate(micro):
        if d.enabled:  # reduce gradients once per step, after the last micro-batch
            policy.set_requires_gradient_sync(m == len(micro) - 1)
        with autocast(d, cfg.cpu_bf16):
            chosen, rejected = reply_logps(policy, data.rows("train", index), data.pad_id, d.device,
                                           average=cfg.loss_type == "ipo")
        ref = data.reference_of("train", index).to(d.device)
        loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta=cfg.beta,
                                 label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type)  # means over the pairs
        (loss * len(index) * weight / len(batch)).backward()  # the mean over the global batch's pairs
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().double() * len(index) * weight
    grad_norm = float(clip_grad_norm(policy.parameters(), cfg.grad_clip))
    totals = reduce_sums(d, d.device, sums)
    applied = math.isfinite(totals["loss"]) and math.isfinite(grad_norm)  # both global: every rank decides alike
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals, grad_norm, applied


@torch.no_grad()
def evaluate(policy, data: "Pairs", cfg: DPOConfig, d: Dist) -> dict:
    """The training metrics, averaged over the held-out pairs."""
    policy.eval()
    sums = {}
    for index, weight in micro_batches(range(len(data.heldout)), cfg.micro_batch_size, d):
        with autocast(d, cfg.cpu_bf16):
            chosen, rejected = reply_logps(policy, data.rows("heldout", index), data.pad_id, d.device,
                                           average=cfg.loss_type == "ipo")
        ref = data.reference_of("heldout", index).to(d.device)
        loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], beta=cfg.beta,
                                 label_smoothing=cfg.label_smoothing, loss_type=cfg.loss_type)
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + v.double() * len(index) * weight
    totals = reduce_sums(d, d.device, sums)
    policy.train()
    return {k: v / len(data.heldout) for k, v in totals.items()}
