"""Sentence BLEU and ROUGE exactly as lm-evaluation-harness scores TruthfulQA generations
(lm_eval/tasks/truthfulqa/utils.py: `bleu` and `rouge`, "t5 style"), without sacrebleu or rouge-score.

BLEU = sacrebleu.corpus_bleu([prediction], [[reference]], smooth_method="exp", smooth_value=0.0,
       force=False, lowercase=False, tokenize="intl", use_effective_order=False).score
  (Papineni et al. 2002, as sacrebleu 2.x computes it): both strings right-stripped, then split
  into tokens by mteval-v14's international tokenisation; n-gram orders 1-4, matches clipped by
  the reference's counts;
      BLEU = 100 * BP * exp(mean_n log p_n),   BP = min(1, exp(1 - ref_len / hyp_len)),
  p_n = matches_n / hyp_ngrams_n, and an order with no match gets p_n = 1 / (2^k * hyp_ngrams_n)
  for the k-th such order ("exp" smoothing, mteval-v13a's NIST smoothing). BLEU is 0 when no
  n-gram matches at all, or when the prediction has fewer than 4 tokens (an order with no n-gram
  has precision 0).

ROUGE = rouge_score.RougeScorer(["rouge1", "rouge2", "rougeLsum"]).score(reference, prediction),
  each type's F-measure x 100 (Lin 2004, as Google's rouge-score 0.1.2 computes it: no stemming),
  after lm-eval's `_prepare_summary`, which replaces " . " with ".\n" in both strings. Tokens:
  lowercase, every run of characters other than [a-z0-9] becomes a space, split on spaces.
  rouge1/rouge2: clipped n-gram overlap; P = overlap / prediction n-grams, R = overlap /
  reference n-grams (each at least 1), F = 2PR / (P + R). rougeLsum: summary-level LCS over
  sentences split at newlines (empty lines dropped): hits = the union LCS of each reference
  sentence with every prediction sentence, each token counted at most as often as it occurs in
  both texts; P = hits / prediction tokens, R = hits / reference tokens. (lm-eval averages
  the one score through rouge-score's BootstrapAggregator, whose mid value is that score.)
"""

import math
import re
import unicodedata
from collections import Counter

MAX_ORDER = 4  # BLEU's n-gram orders 1..4


# ---------------------------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------------------------

def _category(c: str) -> str:
    """The Unicode major class of a character: "P" punctuation, "S" symbol, "N" number, ...
    (Python's unicodedata; characters newer than its Unicode version count as unassigned)."""
    return unicodedata.category(c)[0]


def _sub_pairs(text: str, match, template: str) -> str:
    """re.sub of a two-character pattern: scan left to right, replace each non-overlapping pair
    (a, b) with match(a, b) true by template.format(a, b)."""
    out, i = [], 0
    while i < len(text):
        if i + 1 < len(text) and match(text[i], text[i + 1]):
            out.append(template.format(text[i], text[i + 1]))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def intl_tokenize(line: str) -> list[str]:
    """mteval-v14.pl's international tokenisation (sacrebleu's `intl` tokenizer), three passes:
        s/(\\P{N})(\\p{P})/$1 $2 /g    punctuation after a non-digit
        s/(\\p{P})(\\P{N})/ $1 $2/g    punctuation before a non-digit
        s/(\\p{S})/ $1 /g             every symbol
    so "1,000.5" stays one token and "years." splits into "years" ".", but "1992." does not."""
    line = _sub_pairs(line, lambda a, b: _category(a) != "N" and _category(b) == "P", "{} {} ")
    line = _sub_pairs(line, lambda a, b: _category(a) == "P" and _category(b) != "N", " {} {}")
    line = "".join(f" {c} " if _category(c) == "S" else c for c in line)
    return line.split()


def _ngrams(tokens: list, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(prediction: str, reference: str) -> float:
    """BLEU (0-100) of one prediction against one reference, as lm-eval's truthfulqa `bleu`."""
    hyp, ref = intl_tokenize(prediction.rstrip()), intl_tokenize(reference.rstrip())
    matches, totals = [], []
    for n in range(1, MAX_ORDER + 1):
        hyp_ngrams, ref_ngrams = _ngrams(hyp, n), _ngrams(ref, n)
        matches.append(sum(min(count, ref_ngrams[g]) for g, count in hyp_ngrams.items()))
        totals.append(sum(hyp_ngrams.values()))
    if not any(matches) or not all(totals):
        return 0.0
    bp = math.exp(1 - len(ref) / len(hyp)) if len(hyp) < len(ref) else 1.0
    precisions, smooth = [], 1.0
    for match, total in zip(matches, totals):
        if match == 0:
            smooth *= 2
            precisions.append(100. / (smooth * total))
        else:
            precisions.append(100. * match / total)
    return bp * math.exp(sum(math.log(p) for p in precisions) / MAX_ORDER)


# ---------------------------------------------------------------------------------------------
# ROUGE
# ---------------------------------------------------------------------------------------------

def _rouge_tokens(text: str) -> list[str]:
    """rouge-score's DefaultTokenizer without a stemmer."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _rouge_n(target: list[str], prediction: list[str], n: int) -> float:
    target_ngrams, prediction_ngrams = _ngrams(target, n), _ngrams(prediction, n)
    overlap = sum(min(count, prediction_ngrams[g]) for g, count in target_ngrams.items())
    precision = overlap / max(sum(prediction_ngrams.values()), 1)
    recall = overlap / max(sum(target_ngrams.values()), 1)
    return _fmeasure(precision, recall)


def _lcs_indices(ref: list[str], can: list[str]) -> list[int]:
    """Indices into `ref` of one longest common subsequence (rouge-score's table and backtrack)."""
    table = [[0] * (len(can) + 1) for _ in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(can) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if ref[i - 1] == can[j - 1] else max(table[i - 1][j],
                                                                                     table[i][j - 1])
    i, j, indices = len(ref), len(can), []
    while i > 0 and j > 0:
        if ref[i - 1] == can[j - 1]:
            indices.insert(0, i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return indices


def _rouge_lsum(target: str, prediction: str) -> float:
    """Summary-level LCS F-measure over newline-separated sentences."""
    ref_sents = [_rouge_tokens(s) for s in target.split("\n") if s]
    can_sents = [_rouge_tokens(s) for s in prediction.split("\n") if s]
    m, n = sum(map(len, ref_sents)), sum(map(len, can_sents))
    if not m or not n:
        return 0.0
    ref_counts = Counter(t for s in ref_sents for t in s)
    can_counts = Counter(t for s in can_sents for t in s)
    hits = 0
    for r in ref_sents:
        union = sorted(set().union(*(_lcs_indices(r, c) for c in can_sents)))
        for t in (r[i] for i in union):
            if can_counts[t] > 0 and ref_counts[t] > 0:  # each token counted at most as often as it occurs
                hits += 1
                can_counts[t] -= 1
                ref_counts[t] -= 1
    return _fmeasure(hits / n, hits / m)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """{"rouge1", "rouge2", "rougeLsum"}: F-measures x 100, as lm-eval's truthfulqa `rouge`."""
    target, prediction = reference.replace(" . ", ".\n"), prediction.replace(" . ", ".\n")  # _prepare_summary
    target_tokens, prediction_tokens = _rouge_tokens(target), _rouge_tokens(prediction)
    return {"rouge1": _rouge_n(target_tokens, prediction_tokens, 1) * 100,
            "rouge2": _rouge_n(target_tokens, prediction_tokens, 2) * 100,
            "rougeLsum": _rouge_lsum(target, prediction) * 100}
