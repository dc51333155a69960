"""The KARMA reward model: a decoder with an MLP head on the final hidden state of the last real token.

    h = decoder(tokens)[last real token]                 [B, hidden]  (left or right padding)
    logit = W2 gelu(W1 h + b1) + b2                       [B]          (hidden -> head_hidden -> 1)
    p(rewarding) = sigmoid(logit);  loss = BCE(logit, label)

The probability is PPO's reward. Inputs are examples rendered by karma.data.format.render (the one
format function) and tokenized by `encode`, which keeps the candidate reply whole by dropping the
oldest context turns first when the text exceeds max_length tokens; `score` goes through the same
two functions, so PPO-time inputs equal training inputs.

A saved reward model is a directory that other tools can read:
    config.json, model*.safetensors    the backbone in Hugging Face layout (loads as a causal LM)
    reward_head.safetensors            the head
    reward_config.json                 {"format", "max_length", "head_hidden", "base_model"}
    tokenizer.json, tokenizer_config.json, ...   copied from the base checkpoint
"""

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from karma.config import POSITIVE_INT, STRING, check_field
from karma.data.format import FORMATS, header, render, render_prompt
from karma.files import atomic_directory, atomic_write, atomic_write_json, read_json, recover_directory
from karma.logprobs import last_token_index
from karma.model import Transformer
from karma.tokenizer import Tokenizer, copy_tokenizer_files, left_pad, load_tokenizer
from karma.weights import inspect_model, load_model, write_hf_checkpoint

# The widest MLP head accepted (--head-hidden, reward_config.json): 4x the widest decoder in use
# (Llama 3.1 405B, hidden size 16384). Wider is a typo, and would fail in the allocator.
MAX_HEAD_HIDDEN = 2**16


@dataclass
class RewardConfig:
    format: str = "generalized"  # generalized (KARMA) | conditioned (karmaEroded)
    max_length: int = 1024  # tokens per example, context truncated from the oldest turn
    head_hidden: int | None = None  # width of the head's hidden layer (default: the backbone's)
    base_model: str = ""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")


class RewardModel(nn.Module):
    def __init__(self, backbone: Transformer, cfg: RewardConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.backbone, self.cfg, self.tokenizer = backbone, cfg, tokenizer
        hidden = backbone.config.hidden_size
        w = backbone.embed.weight
        self.head = mlp_head(hidden, cfg.head_hidden or hidden).to(w.device, w.dtype)
        freeze_unused_lm_head(backbone)

    def forward(self, input_ids, attention_mask) -> torch.Tensor:
        """[B, T] ids and mask (any padding side) -> logits [B] (pre-sigmoid)."""
        hidden = self.backbone(input_ids, attention_mask, output="hidden")  # [B, T, H]
        last = last_token_index(attention_mask)  # [B]
        # a fresh tensor, not a squeeze view: FSDP2 warns on view outputs (an in-place op on one
        # would skip its pre-backward all-gather)
        return self.head(hidden[torch.arange(len(last), device=last.device), last])[:, 0].clone()

    @torch.no_grad()
    def score(self, contexts: list[list[dict]], responses: list[str], metas=None, batch_size: int = 16):
        """P(rewarding) of each (context messages, response) pair, float32 [N] on the model's device."""
        metas = metas if metas is not None else [None] * len(contexts)
        if not len(contexts) == len(responses) == len(metas):
            raise ValueError(f"{len(contexts)} contexts, {len(responses)} responses, {len(metas)} metas")
        device = self.backbone.embed.weight.device
        seqs = [encode(self.tokenizer, c, r, m, self.cfg) for c, r, m in zip(contexts, responses, metas)]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths batch together
        probs = torch.empty(len(seqs), dtype=torch.float32, device=device)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = left_pad([seqs[i] for i in rows], self.tokenizer.pad_id)
            probs[rows] = torch.sigmoid(self(ids.to(device), mask.to(device)).float())
        return probs


def mlp_head(hidden: int, width: int) -> nn.Sequential:
    """hidden -> width -> 1; its state dict keys (0.weight, 0.bias, 2.weight, 2.bias) are
    reward_head.safetensors' tensor names."""
    return nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, 1))


def encode(tokenizer: Tokenizer, messages: list[dict], response: str | None, meta: dict | None,
           cfg: RewardConfig) -> list[int]:
    """Token ids of render(messages, response) (or of render_prompt(messages) when response is
    None: a PPO or DPO prompt) with at most cfg.max_length tokens, in cfg.format: while too long, drop the
    oldest context turn; if the last turn alone still does not fit, keep the start (BOS, and the
    conditioned format's subreddit/time header) and as much of the end as fits."""
    def text(msgs, fmt):
        return render_prompt(msgs, meta, fmt) if response is None else render(msgs, response, meta, fmt)

    for first in range(len(messages)):
        ids = tokenizer.encode(text(messages[first:], cfg.format))
        if len(ids) <= cfg.max_length:
            return ids
    head = tokenizer.encode(header(meta) if cfg.format == "conditioned" else "")  # [BOS] or [] + header
    body = tokenizer.encode(text(messages[-1:], "generalized"), add_special_tokens=False)  # no header
    room = cfg.max_length - len(head)
    if room <= 0:
        raise ValueError(f"max_length {cfg.max_length} leaves no room after the {len(head)}-token header")
    return head + body[len(body) - room:]


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy on logits, in float32."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction=reduction)


def build_reward_model(base: str, cfg: RewardConfig, dtype=None, device=None, seed: int = 0) -> RewardModel:
    """A fresh reward model on a pretrained decoder; the head is initialised from `seed`."""
    backbone = load_model(base, dtype=dtype, device=device)
    torch.manual_seed(seed)
    cfg.base_model = cfg.base_model or str(base)
    return RewardModel(backbone, cfg, load_tokenizer(base))


def freeze_unused_lm_head(backbone: Transformer) -> None:
    """Reward and value models read hidden states, never the LM head: an untied head (Pythia,
    Llama-3.1-8B) is frozen, so it gets no gradient and no optimizer state (which exact resume
    would otherwise look for in the checkpoint). A tied head is the embedding: left trainable."""
    if backbone.lm_head is not None:
        backbone.lm_head.requires_grad_(False)


def save_reward_model(rm: RewardModel, directory, state_dict: dict | None = None, info: dict | None = None) -> Path:
    """Write the directory described above, whole (atomic_directory: a killed export leaves the
    previous one intact, never a new backbone beside an old head). `state_dict`: the full
    RewardModel state dict when the model is sharded (FSDP), gathered on the writing rank.
    `info`: written as train_info.json."""
    directory = Path(directory)
    state = rm.state_dict() if state_dict is None else state_dict
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    head = {k.removeprefix("head."): v.detach().contiguous() for k, v in state.items() if k.startswith("head.")}
    with atomic_directory(directory) as tmp:
        write_hf_checkpoint(rm.backbone, tmp, state_dict=backbone)
        atomic_write(tmp / "reward_head.safetensors", lambda p: save_file(head, p, metadata={"format": "pt"}))
        copy_tokenizer_files(rm.tokenizer, tmp)
        atomic_write_json(tmp / "reward_config.json", asdict(rm.cfg))
        if info is not None:
            atomic_write_json(tmp / "train_info.json", info)
    return directory


# what each reward_config.json key must be (check_field rules)
REWARD_CONFIG_RULES = {
    "format": (lambda v: v in FORMATS, f"one of {', '.join(FORMATS)}"),
    "max_length": POSITIVE_INT,
    "head_hidden": (lambda v: v is None or POSITIVE_INT[0](v) and v <= MAX_HEAD_HIDDEN,
                    f"null or an integer in [1, {MAX_HEAD_HIDDEN}]"),
    "base_model": STRING,
}


def read_reward_config(directory) -> RewardConfig:
    """reward_config.json of a saved reward model, checked key by key (one error naming the file,
    the key and what was expected)."""
    recover_directory(directory)
    path = Path(directory) / "reward_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no reward_config.json (not a reward model saved by KARMA's train_rm.py)")
    raw = read_json(path)
    known = {f.name for f in fields(RewardConfig)}
    if not isinstance(raw, dict) or set(raw) - known or "format" not in raw:
        bad = sorted(set(raw) - known) if isinstance(raw, dict) else "not an object"
        raise ValueError(f"{path}: expected the keys {sorted(known)} (format required); unexpected: {bad}")
    for key, value in raw.items():
        check_field(str(path), key, value, REWARD_CONFIG_RULES[key])
    return RewardConfig(**raw)


def inspect_reward_model(directory) -> RewardConfig:
    """Check a saved reward model without loading its weights: reward_config.json, the backbone
    (config.json and weight-file headers), the head's tensor names and shapes against both, and
    the tokenizer. Scripts call this before loading anything large."""
    directory = Path(directory)
    cfg = read_reward_config(directory)
    backbone = inspect_model(directory)
    path = directory / "reward_head.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no reward_head.safetensors (not a complete reward model)")
    try:
        with safe_open(path, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    _check_head(path, shapes, backbone.hidden_size, cfg)
    load_tokenizer(directory)
    return cfg


def _check_head(path: Path, shapes: dict, hidden: int, cfg: RewardConfig) -> None:
    """The head file's {name: shape} must be mlp_head(backbone hidden size, head_hidden)'s."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in mlp_head(hidden, cfg.head_hidden or hidden).state_dict().items()}
    if shapes != want:
        raise ValueError(f"{path}: tensors {shapes} are not the head that reward_config.json (head_hidden "
                         f"{cfg.head_hidden}) and the backbone (hidden size {hidden}) describe: {want}")


def load_reward_model(directory, dtype=None, device=None) -> RewardModel:
    directory = Path(directory)
    cfg = read_reward_config(directory)
    rm = RewardModel(load_model(directory, dtype=dtype, device=device), cfg, load_tokenizer(directory))
    path = directory / "reward_head.safetensors"
    try:
        head = load_file(path, device=str(rm.backbone.embed.weight.device))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (the reward model's head)") from None
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    _check_head(path, {k: tuple(v.shape) for k, v in head.items()}, rm.backbone.config.hidden_size, cfg)
    rm.head.load_state_dict(head)
    return rm.eval()
