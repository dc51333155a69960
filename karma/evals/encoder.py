"""BERT / RoBERTa encoders with a sequence-classification head, loaded from Hugging Face checkpoints:
the toxicity classifiers of karma/evals/toxicity.py (unitary/toxic-bert, s-nlp/roberta_toxicity_classifier).

    x = LayerNorm(word[ids] + position[pos] + token_type[0])                    [B, T, H]
    each layer, post-LN (Devlin et al. 2019, BERT; Vaswani et al. 2017):
        x = LayerNorm(x + out(attention(x)))                                    padding masked out
        x = LayerNorm(x + down(gelu(up(x))))                                    exact (erf) GELU
    BERT head (BertForSequenceClassification):     logits = classifier(tanh(pooler(x[:, 0])))
    RoBERTa head (RobertaClassificationHead):      logits = out_proj(tanh(dense(x[:, 0])))   [B, labels]

Positions: BERT counts 0..T-1; RoBERTa (Liu et al. 2019) counts from padding_idx + 1 and gives padding
padding_idx (fairseq's make_positions), so it fits max_position_embeddings - 2 tokens.
Probabilities follow transformers' TextClassificationPipeline: sigmoid per label when config.json's
problem_type is "multi_label_classification" (toxic-bert's six Jigsaw labels) or there is one label,
else softmax over the labels (s-nlp's neutral/toxic).

The tokenizer is the checkpoint's tokenizer.json; repos that ship only the older vocabulary files get the
same tokenizer built from them, as transformers' convert_slow_tokenizer does: vocab.txt -> BERT WordPiece
(BertConverter), vocab.json + merges.txt -> byte-level BPE (RobertaConverter). Texts are encoded with the
special tokens ([CLS] x [SEP] / <s> x </s>), truncated to the positions the model has, and padded on the
right with config.json's pad_token_id (the attention mask, not the id, says what is padding).
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece

from karma.files import read_json
from karma.weights import CheckpointFiles

# what a classifier needs from a hub repo: config, weights, and the tokenizer in either of its forms
HUB_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
             "vocab.json", "merges.txt", "*.safetensors", "model.safetensors.index.json"]
HUB_FILES_PICKLE = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]  # only for repos without safetensors
# checkpoint entries that are not parameters of the classifier: position-id buffers that older
# transformers saved, and the pooler RoBERTa checkpoints may carry but its classification head never uses
IGNORED_KEYS = re.compile(r"(\.position_ids|^roberta\.pooler\..*)$")


@dataclass
class EncoderConfig:
    model_type: str  # "bert" or "roberta": also the checkpoint's key prefix
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    intermediate_size: int
    max_positions: int  # rows of the position table
    type_vocab_size: int
    norm_eps: float
    pad_id: int
    labels: list[str]  # id2label in id order
    multi_label: bool  # sigmoid per label (else softmax)

    @classmethod
    def from_json(cls, path: Path) -> "EncoderConfig":
        c = read_json(path)
        if c.get("model_type") not in ("bert", "roberta"):
            raise ValueError(f"{path}: model_type {c.get('model_type')!r}; the encoder reads 'bert' and 'roberta'")
        for key, want in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
            if c.get(key, want) != want:
                raise ValueError(f"{path}: {key} {c[key]!r} is not supported (only {want!r})")
        id2label = c.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}  # transformers' default: 2 labels
        labels = [id2label[str(i)] for i in range(len(id2label))]
        return cls(c["model_type"], c["vocab_size"], c["hidden_size"], c["num_hidden_layers"],
                   c["num_attention_heads"], c["intermediate_size"], c["max_position_embeddings"],
                   c.get("type_vocab_size", 2), c.get("layer_norm_eps", 1e-12), c.get("pad_token_id", 0), labels,
                   c.get("problem_type") == "multi_label_classification" or len(labels) == 1)

    @property
    def max_tokens(self) -> int:
        """The longest input, special tokens included (RoBERTa's first two positions are taken)."""
        return self.max_positions - (self.pad_id + 1 if self.model_type == "roberta" else 0)


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.roberta, self.pad_id = cfg.model_type == "roberta", cfg.pad_id
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)

    def forward(self, ids, mask):  # ids, mask [B, T] -> [B, T, H]
        if self.roberta:  # real tokens pad_id + 1, pad_id + 2, ...; padding pad_id
            positions = mask.cumsum(-1) * mask + self.pad_id
        else:
            positions = torch.arange(ids.shape[1], device=ids.device)[None]
        return self.norm(self.word(ids) + self.position(positions) + self.token_type.weight[0])


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x, attn_mask):  # x [B, T, H], attn_mask [B, 1, 1, T] bool (True = real key)
        B, T, H = x.shape
        q, k, v = (p(x).view(B, T, self.n_heads, H // self.n_heads).transpose(1, 2)
                   for p in (self.query, self.key, self.value))  # [B, heads, T, hd]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # softmax(q k^T / sqrt(hd)) v
        return self.out(y.transpose(1, 2).reshape(B, T, H))


class Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)

    def forward(self, x, attn_mask):
        x = self.attn_norm(x + self.attn(x, attn_mask))
        return self.mlp_norm(x + self.down(F.gelu(self.up(x))))


class Head(nn.Module):
    """out(tanh(dense(x[:, 0]))): BERT's pooler + classifier, RoBERTa's classification head."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, len(cfg.labels))

    def forward(self, x):  # [B, T, H] -> [B, labels]
        return self.out(torch.tanh(self.dense(x[:, 0])))


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.head = Head(cfg)

    def forward(self, ids, mask):
        """ids, mask [B, T] (right padding, mask 1 on real tokens) -> logits [B, labels]."""
        x = self.embed(ids, mask)
        attn_mask = mask.bool()[:, None, None, :]  # [B, 1, 1, T]: every query sees the real keys only
        for layer in self.layers:
            x = layer(x, attn_mask)
        return self.head(x)

    def probabilities(self, logits):
        return logits.sigmoid() if self.config.multi_label else logits.softmax(-1)


def hf_key(name: str, model_type: str) -> str:
    """Our parameter name -> its key in a Bert/RobertaForSequenceClassification checkpoint,
    e.g. 'layers.3.attn.query.weight' -> 'bert.encoder.layer.3.attention.self.query.weight'."""
    module, param = name.rsplit(".", 1)
    p = model_type + "."
    if m := re.fullmatch(r"layers\.(\d+)\.(.+)", module):
        layer = {"attn.query": "attention.self.query", "attn.key": "attention.self.key",
                 "attn.value": "attention.self.value", "attn.out": "attention.output.dense",
                 "attn_norm": "attention.output.LayerNorm", "up": "intermediate.dense", "down": "output.dense",
                 "mlp_norm": "output.LayerNorm"}[m.group(2)]
        return f"{p}encoder.layer.{m.group(1)}.{layer}.{param}"
    bert = model_type == "bert"
    return {"embed.word": p + "embeddings.word_embeddings", "embed.position": p + "embeddings.position_embeddings",
            "embed.token_type": p + "embeddings.token_type_embeddings", "embed.norm": p + "embeddings.LayerNorm",
            "head.dense": "bert.pooler.dense" if bert else "classifier.dense",
            "head.out": "classifier" if bert else "classifier.out_proj"}[module] + "." + param


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint directory, or a hub id fetched into (or found in) the HF cache
    (karma.weights.resolve's rules, with the tokenizer files encoders ship)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(name_or_path)):
        raise FileNotFoundError(f"{str(name_or_path)!r} is not a classifier directory or a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(str(name_or_path), allow_patterns=HUB_FILES))
        if not any(local.glob("*.safetensors")):
            local = Path(snapshot_download(str(name_or_path), allow_patterns=HUB_FILES_PICKLE))
    except Exception as e:  # offline, gated, missing
        raise FileNotFoundError(
            f"could not get the classifier {str(name_or_path)!r} from the Hugging Face hub or the local HF cache "
            f"({type(e).__name__}: {e}). Without network, fetch it elsewhere (`hf download {name_or_path}`) into "
            f"the HF cache, or pass a local directory.") from e
    return local


def load_encoder(directory: Path, dtype=torch.float32, device=None) -> Encoder:
    """Build the encoder on the meta device and load its weights tensor by tensor, checking for missing,
    unexpected and wrongly shaped keys."""
    cfg = EncoderConfig.from_json(directory / "config.json")
    with torch.device("meta"):
        model = Encoder(cfg)
    files = CheckpointFiles(directory)
    state, used = {}, set()
    for name, meta in model.state_dict().items():
        key = hf_key(name, cfg.model_type)
        if key not in files.where:
            raise KeyError(f"missing weight {key!r} in checkpoint {directory} (a {cfg.model_type} classifier)")
        tensor = files.get(key)
        if tensor.shape != meta.shape:
            raise ValueError(f"shape mismatch for {files.describe(key)}: checkpoint has {tuple(tensor.shape)}, "
                             f"config.json implies {tuple(meta.shape)}")
        state[name] = tensor.to(device=device, dtype=dtype)
        used.add(key)
    unexpected = sorted(k for k in files.where if k not in used and not IGNORED_KEYS.search(k))
    if unexpected:
        raise ValueError(f"unexpected weights in checkpoint {directory} for a {cfg.model_type} sequence "
                         f"classifier: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    model.load_state_dict(state, assign=True)
    return model.eval()


def special_token(meta: dict, field: str, default: str) -> str:
    token = meta.get(field, default)
    return token.get("content", default) if isinstance(token, dict) else token


def load_encoder_tokenizer(directory: Path, max_tokens: int) -> Tokenizer:
    """tokenizer.json, else one built from vocab.txt (BERT) or vocab.json + merges.txt (RoBERTa);
    adding the special tokens and truncating to max_tokens."""
    meta = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # tokenizer_config wins
        meta.update(read_json(directory / name) if (directory / name).exists() else {})
    if (directory / "tokenizer.json").exists():
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    elif (directory / "vocab.txt").exists():
        tok = wordpiece_tokenizer(directory / "vocab.txt", meta)
    elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        tok = byte_level_bpe_tokenizer(directory, meta)
    else:
        raise FileNotFoundError(f"{directory}: no tokenizer.json, vocab.txt or vocab.json + merges.txt")
    tok.no_padding()  # some tokenizer.json files carry padding settings; batches are padded here
    tok.enable_truncation(max_tokens)
    return tok


def wordpiece_tokenizer(vocab_file: Path, meta: dict) -> Tokenizer:
    """BERT's tokenizer from vocab.txt, as transformers' BertConverter builds it (lower-cased unless
    tokenizer_config.json says do_lower_case false, BertTokenizer's default)."""
    names = {f: special_token(meta, f + "_token", d) for f, d in
             (("unk", "[UNK]"), ("sep", "[SEP]"), ("pad", "[PAD]"), ("cls", "[CLS]"), ("mask", "[MASK]"))}
    tok = Tokenizer(WordPiece(WordPiece.read_file(str(vocab_file)), unk_token=names["unk"]))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=meta.get("do_lower_case", True),
                                                handle_chinese_chars=meta.get("tokenize_chinese_chars", True),
                                                strip_accents=meta.get("strip_accents"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(names.values()))
    cls, sep = names["cls"], names["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


def byte_level_bpe_tokenizer(directory: Path, meta: dict) -> Tokenizer:
    """RoBERTa's tokenizer from vocab.json + merges.txt, as transformers' RobertaConverter builds it."""
    names = {f: special_token(meta, f + "_token", d) for f, d in
             (("bos", "<s>"), ("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>"))}
    prefix_space = meta.get("add_prefix_space", False)
    tok = Tokenizer(BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"),
                                  continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([*names.values(), AddedToken(special_token(meta, "mask_token", "<mask>"), lstrip=True,
                                                        special=True)])
    cls, sep = special_token(meta, "cls_token", names["bos"]), special_token(meta, "sep_token", names["eos"])
    tok.post_processor = processors.RobertaProcessing((sep, tok.token_to_id(sep)), (cls, tok.token_to_id(cls)),
                                                      trim_offsets=True, add_prefix_space=prefix_space)
    return tok


def right_pad(sequences: list[list[int]], pad_id: int):
    """Token lists -> (input_ids, attention_mask) [B, max_len], padded on the right."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return ids, mask


class Classifier:
    """A loaded encoder and its tokenizer: texts -> label probabilities."""

    def __init__(self, model: Encoder, tokenizer: Tokenizer, name: str = ""):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.labels = model.config.labels
        self.device = model.embed.word.weight.device

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the special tokens, truncated to the model's positions."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    @torch.no_grad()
    def logits(self, encoded: list[list[int]]) -> torch.Tensor:
        """One batch of encoded texts -> float32 logits [B, labels]."""
        ids, mask = right_pad(encoded, self.model.config.pad_id)
        return self.model(ids.to(self.device), mask.to(self.device)).float()

    def predict(self, texts: list[str], batch_size: int = 32) -> dict[str, list[float]]:
        """{label: [probability per text]}, in text order; batched longest first (little padding)."""
        encoded = self.encode(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        probs = torch.empty(len(texts), len(self.labels))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            probs[rows] = self.model.probabilities(self.logits([encoded[i] for i in rows])).cpu()
        return {label: probs[:, j].tolist() for j, label in enumerate(self.labels)}


def load_classifier(name_or_path, device=None, dtype=torch.float32) -> Classifier:
    """A checkpoint directory or hub id -> Classifier (float32 by default; cuda if available)."""
    directory = resolve(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_encoder(directory, dtype, device)
    return Classifier(model, load_encoder_tokenizer(directory, model.config.max_tokens), str(name_or_path))
