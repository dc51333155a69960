"""Tokenizer: a checkpoint's tokenizer.json through the `tokenizers` library, plus its special ids.

BOS handling is the checkpoint's own: tokenizer.json's post-processor prepends BOS for Llama 3
(<|begin_of_text|> 128000) and adds nothing for Falcon and Pythia, whose <|endoftext|> is both BOS
and EOS. Special ids come from tokenizer_config.json (or special_tokens_map.json), then config.json;
extra stop ids (e.g. Llama 3 Instruct's <|eot_id|>) from generation_config.json. Without a pad
token, EOS pads: the attention mask, not the id, says what is padding.
"""

import functools
import os
import re
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer

from karma.config import TOKEN_IDS, check_field
from karma.files import atomic_write, read_json
from karma.weights import resolve

# A token that ends a sentence: punctuation only, its last mark . ! or ?, closing quotes or brackets and
# whitespace allowed after it (".", "?", "!\"", ".)", "..."). Byte-level BPE vocabularies keep punctuation
# apart from letters and digits, so the "." of "3.5", "e.g." or "Mr." is such a token too and ends a reply
# early: the same approximation as Ziegler et al. 2019's truncation at the first period token. So do code
# and URL pieces such as "#!" or "/?"; fullwidth marks (。！？) and a lone "…" do not end a reply.
SENTENCE_END = re.compile(r"""\A[^\w]*[.!?]["'\u201d\u2019)\]]*\s*\Z""")


class Tokenizer:
    def __init__(self, directory: str | os.PathLike):
        self.directory = directory = Path(directory)  # where the tokenizer files are (copied on export)
        path = directory / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{directory}: no tokenizer.json (KARMA reads the fast-tokenizer "
                                    f"file that Hugging Face checkpoints ship)")
        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on bad files
            raise ValueError(f"{path}: not a readable tokenizer file ({e})") from None
        meta = {}
        for name in ("config.json", "generation_config.json", "special_tokens_map.json", "tokenizer_config.json"):
            if (directory / name).exists():
                meta[name] = read_json(directory / name)
                if not isinstance(meta[name], dict):
                    raise ValueError(f"{directory / name}: expected a JSON object, got "
                                     f"{type(meta[name]).__name__} {meta[name]!r:.40}")

        def ids(name, key) -> list[int]:
            """The token id(s) under `key` of the file `name`, checked: [] when absent."""
            value = meta.get(name, {}).get(key)
            if value is None:
                return []
            value = check_field(str(directory / name), key, value, TOKEN_IDS)
            return value if isinstance(value, list) else [value]

        def token_id(field):
            """Id of a special token named in tokenizer_config / special_tokens_map, else config.json."""
            for name in ("tokenizer_config.json", "special_tokens_map.json"):
                token = meta.get(name, {}).get(field)
                token = token.get("content") if isinstance(token, dict) else token
                if isinstance(token, str) and self.tok.token_to_id(token) is not None:
                    return self.tok.token_to_id(token)
            return next(iter(ids("config.json", f"{field}_id")), None)

        self.bos_id: int | None = token_id("bos_token")
        eos = token_id("eos_token")
        if eos is None:
            eos = next((self.tok.token_to_id(t) for t in ("<|endoftext|>", "<|end_of_text|>", "</s>")
                        if self.tok.token_to_id(t) is not None), None)
        if eos is None:
            raise ValueError(f"{directory}: no EOS token in tokenizer_config.json, special_tokens_map.json "
                             f"or config.json")
        self.eos_id: int = eos
        self.stop_ids: list[int] = sorted({eos, *ids("generation_config.json", "eos_token_id")})
        pad = token_id("pad_token")
        self.pad_id: int = eos if pad is None else pad
        self.vocab_size: int = self.tok.get_vocab_size()

    @functools.cached_property
    def token_texts(self) -> list[str]:
        """Every token's own text, by id (special tokens as written, e.g. "<|im_end|>")."""
        return self.tok.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=False)

    @functools.cached_property
    def sentence_end_ids(self) -> list[int]:
        """Ids of the tokens that end a sentence (SENTENCE_END on the token's own text)."""
        return [i for i, t in enumerate(self.token_texts) if SENTENCE_END.match(t)]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True):
        """-> input_ids, attention_mask: LongTensors [B, T], LEFT-padded with pad_id."""
        encodings = self.tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return left_pad([e.ids for e in encodings], self.pad_id)


def left_pad(sequences: list[list[int]], pad_id: int):
    """Token lists -> (input_ids, attention_mask) [B, max_len], padding on the left so every row's
    last real token sits in the last column (what batched generation needs)."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids, mask


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def copy_tokenizer_files(tokenizer: Tokenizer, directory) -> None:
    """Copy the tokenizer's files next to an exported model, so the directory loads on its own."""
    source, directory = tokenizer.directory, Path(directory)
    for name in TOKENIZER_FILES:
        if (source / name).exists() and source.resolve() != directory.resolve():
            atomic_write(directory / name, lambda p, name=name: shutil.copyfile(source / name, p))


def load_tokenizer(name_or_path) -> Tokenizer:
    """A checkpoint directory, hub id or alias (see karma.weights.ALIASES) -> Tokenizer."""
    return Tokenizer(resolve(name_or_path))
