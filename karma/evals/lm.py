"""The two scoring primitives every benchmark uses, through karma's decoder: the log-likelihood of a
continuation given a context, and greedy or sampled generation.

Log-likelihood follows lm-evaluation-harness (Gao et al., EleutherAI; `LM.loglikelihood`,
`_encode_pair` and `HFLM.tok_encode`, `_loglikelihood_tokens` in lm_eval 0.4.13), so scores are
comparable with its tables:
  - trailing whitespace of the context moves to the front of the continuation;
  - context tokens = encode(context); continuation tokens = encode(context + continuation) minus that
    prefix (the token boundary is the whole string's, not two separate encodings);
  - encode() starts with BOS exactly when the tokenizer's default encoding does (tokenizer.json's
    post-processor, e.g. Llama 3's <|begin_of_text|>; not Pythia, Falcon or SmolLM2), and not twice
    when the text already starts with it: lm-eval's `add_bos_token=None` since 0.4.9.2. Before
    that lm-eval added no special tokens (`add_bos_token=False`): `EvalLM(add_bos=False)`;
  - an empty context becomes the BOS token (EOS when the tokenizer has none), unless the
    continuation already starts with it;
  - the score is the SUM of the continuation tokens' log-probabilities, and `is_greedy` says whether
    every continuation token is the argmax; inputs longer than the model's context keep their last
    max_positions + 1 tokens (the left is cut).
Requests are batched longest first (lm-eval's order), with left padding (karma's decoder puts a
token's position after the real tokens before it, so padding does not change a score); requests
whose model input is the same (a multiple-choice context with one-token answers) share one pass.
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from karma.generate import generate
from karma.model import KVCache, Transformer
from karma.run import show_progress
from karma.tokenizer import Tokenizer, left_pad


@dataclass
class Loglikelihood:
    logprob: float  # sum of log p(continuation token | everything before it), nats
    is_greedy: bool  # every continuation token was the model's argmax
    n_tokens: int  # continuation tokens scored


MIN_SHARED_PREFIX = 16  # tokens; below this a shared prefix is not worth a separate pass


def shared_prefix_length(inputs: list[tuple], limits: list[int]) -> int:
    """Length of the longest token prefix common to all `inputs`, at most each input's limit (the
    prefix must end before the first position that predicts a continuation token)."""
    common = os.path.commonprefix(inputs)  # works on any sequences, here tuples of token ids
    return min([len(common), *limits])


class PrefixCache:
    """The keys and values of a shared prefix (one row), copied into a fresh cache per batch."""

    def __init__(self, model: Transformer, prefix: tuple[int, ...]):
        device = model.embed.weight.device
        self.config, self.length = model.config, len(prefix)
        self.cache = KVCache(model.config, 1, len(prefix), model.embed.weight.dtype, device)
        model(torch.tensor([prefix], device=device), cache=self.cache, output="hidden")

    def expand(self, batch: int, extra: int) -> KVCache:
        """A cache of `batch` rows holding the prefix, with room for `extra` more tokens."""
        P = self.length
        out = KVCache(self.config, batch, P + extra, self.cache.k.dtype, self.cache.k.device)
        out.k[:, :, :, :P] = self.cache.k  # [layers, 1, kv_heads, P, head_dim] broadcast over the batch
        out.v[:, :, :, :P] = self.cache.v
        out.mask[:, :P] = True
        out.length.fill_(P)
        return out


def tokenizer_adds_bos(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's default encoding starts with BOS (tokenizer.json's post-processor), as
    Hugging Face's `tokenizer.encode(text)` applies it; transformers 5 ignores tokenizer_config.json's
    add_bos_token when tokenizer.json exists, so the post-processor alone decides here too."""
    if tokenizer.bos_id is None:
        return False
    plain = tokenizer.encode("a", add_special_tokens=False)
    default = tokenizer.encode("a")
    return default[:1] == [tokenizer.bos_id] and default[1:1 + len(plain)] == plain


class EvalLM:
    """A loaded model and its tokenizer, with the two primitives. `batch_size` is in sequences."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, batch_size: int = 16, progress: bool = True,
                 add_bos: bool | None = None):
        """add_bos: None = the tokenizer's default (lm-eval >= 0.4.9.2), False = never (older lm-eval),
        True = always (where the tokenizer has a BOS token)."""
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.progress = progress and show_progress()
        self.max_positions = model.config.max_position_embeddings
        self.device = model.embed.weight.device
        self.prefix_id = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if add_bos is None:
            add_bos = tokenizer_adds_bos(tokenizer)
        self.add_bos = add_bos and tokenizer.bos_id is not None  # BOS before every context
        self._stop_ids: dict[tuple[str, ...], list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """A context's tokens: BOS first when self.add_bos, unless the text already starts with it."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return [self.tokenizer.bos_id, *ids] if self.add_bos and ids[:1] != [self.tokenizer.bos_id] else ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) by lm-eval's rules (module doc)."""
        if context == "":
            cont = self.tokenizer.encode(continuation, add_special_tokens=False)
            return (cont[:1], cont[1:]) if cont[:1] == [self.prefix_id] else ([self.prefix_id], cont)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        n_context = len(self.encode(context))
        return whole[:n_context], whole[n_context:]

    @torch.no_grad()
    def loglikelihood(self, requests: list[tuple[str, str]], desc: str = "loglikelihood") -> list[Loglikelihood]:
        """[(context, continuation)] -> one Loglikelihood per request, in request order."""
        pairs = [self.encode_pair(c, x) for c, x in requests]
        for (context, continuation), (_, cont) in zip(requests, pairs):
            if not cont:
                raise ValueError(f"empty continuation for context {context[-60:]!r} + {continuation!r}")
        # the model reads everything but the last token; keep at most max_positions of it. Requests
        # with the same input (e.g. one context, four one-token answers) share one forward pass.
        inputs = [tuple((ctx + cont)[-(self.max_positions + 1):][:-1]) for ctx, cont in pairs]
        sharing: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            sharing.setdefault(x, []).append(i)
        unique = sorted(sharing, key=len, reverse=True)  # longest first, as lm-eval
        # a token prefix every input starts with (a few-shot primer) is run once; each batch then
        # reads its keys and values from the cache and computes only the rest
        P = shared_prefix_length(unique, [min(len(inputs[i]) - len(pairs[i][1]) for i in sharing[x]) for x in unique])
        prefix = PrefixCache(self.model, unique[0][:P]) if P >= MIN_SHARED_PREFIX else None
        P = P if prefix is not None else 0
        results: list[Loglikelihood | None] = [None] * len(pairs)
        for start in tqdm(range(0, len(unique), self.batch_size), desc=desc, unit="batch", leave=False,
                          disable=not self.progress):
            rows = unique[start:start + self.batch_size]
            ids, mask = left_pad([list(x[P:]) for x in rows], self.tokenizer.pad_id)  # [B, T] after the prefix
            cache = prefix.expand(len(rows), ids.shape[1]) if prefix is not None else None
            hidden = self.model(ids.to(self.device), mask.to(self.device), cache=cache, output="hidden")  # [B, T, H]
            width = max(len(pairs[i][1]) for x in rows for i in sharing[x])
            logits = self.model.logits(hidden[:, -width:]).float()  # [B, width, V]: the last positions only
            logprobs = F.log_softmax(logits, -1)
            greedy = logprobs.argmax(-1)  # [B, width]
            for b, x in enumerate(rows):
                for i in sharing[x]:
                    cont = torch.tensor(pairs[i][1], device=self.device)
                    lp = logprobs[b, width - len(cont):]  # [n, V]: the positions that predict the continuation
                    results[i] = Loglikelihood(float(lp.gather(-1, cont[:, None]).sum()),
                                               bool((greedy[b, width - len(cont):] == cont).all()), len(cont))
        return results

    def stop_string_ids(self, stop: tuple[str, ...]) -> list[int]:
        """Token ids whose text contains a stop string (e.g. a single "\n\n" token): generation ends
        a row there instead of running to max_new_tokens; the text is still cut at the string."""
        if stop not in self._stop_ids:
            texts = self.tokenizer.token_texts
            self._stop_ids[stop] = [i for i, t in enumerate(texts) if any(s in t for s in stop)]
        return self._stop_ids[stop]

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, top_p: float | None = None,
                 stop: list[str] | None = None, seed: int = 0, desc: str = "generate") -> list[str]:
        """Continuations of `prompts` (encoded as loglikelihood's contexts), each cut before the
        first of the `stop` strings; greedy at temperature 0. Batched longest first; the sampling
        seed of a batch is `seed` + its index, so a run is reproducible."""
        budget = self.max_positions - max_new_tokens
        if budget < 1:
            raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                             f"{self.max_positions} positions")
        encoded = [(self.encode(p) or [self.prefix_id])[-budget:] for p in prompts]
        stop_ids = self.tokenizer.stop_ids + self.stop_string_ids(tuple(stop or ()))
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        texts: list[str | None] = [None] * len(prompts)
        for n, start in enumerate(tqdm(range(0, len(order), self.batch_size), desc=desc, unit="batch", leave=False,
                                       disable=not self.progress)):
            rows = order[start:start + self.batch_size]
            ids, mask = left_pad([encoded[i] for i in rows], self.tokenizer.pad_id)
            out = generate(self.model, ids.to(self.device), mask.to(self.device), max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, stop_ids=stop_ids,
                           pad_id=self.tokenizer.pad_id, seed=seed + n)
            for b, i in enumerate(rows):
                text = self.tokenizer.decode(out.tokens[b][out.mask[b].bool()].tolist())
                for s in stop or ():
                    text = text.split(s, 1)[0]
                texts[i] = text
        return texts
