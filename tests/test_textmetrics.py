"""karma.evals.textmetrics against the libraries lm-eval calls: sacrebleu (BLEU, `intl` tokenizer)
and rouge-score (ROUGE-1/2/Lsum), through lm-eval's own `bleu` / `rouge` wrappers
(lm_eval/tasks/truthfulqa/utils.py), on random and TruthfulQA-like sentence pairs."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from karma.evals.textmetrics import bleu, intl_tokenize, rouge

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
from rouge_score import scoring  # noqa: E402
from sacrebleu.tokenizers.tokenizer_intl import TokenizerV14International  # noqa: E402

PROPERTY = settings(max_examples=200, deadline=None)
ROUGE_TYPES = ["rouge1", "rouge2", "rougeLsum"]
SCORER = rouge_scorer.RougeScorer(ROUGE_TYPES)


def lm_eval_bleu(refs, preds):  # lm-eval's truthfulqa utils.bleu, verbatim arguments
    return sacrebleu.corpus_bleu(preds, refs, smooth_method="exp", smooth_value=0.0, force=False, lowercase=False,
                                 tokenize="intl", use_effective_order=False).score


def lm_eval_rouge(refs, preds, aggregate=False):  # lm-eval's truthfulqa utils.rouge
    def _prepare_summary(summary):
        return summary.replace(" . ", ".\n")

    if not aggregate:  # the aggregator's mid of one score is that score (checked below)
        scores = SCORER.score(_prepare_summary(refs[0]), _prepare_summary(preds[0]))
        return {t: scores[t].fmeasure * 100 for t in ROUGE_TYPES}
    aggregator = scoring.BootstrapAggregator()
    for ref, pred in zip(refs, preds):
        aggregator.add_scores(SCORER.score(_prepare_summary(ref), _prepare_summary(pred)))
    result = aggregator.aggregate()
    return {t: result[t].mid.fmeasure * 100 for t in ROUGE_TYPES}


def check(prediction: str, reference: str):
    """Ours equals lm-eval's, bit for bit (the same floating-point operations in the same order)."""
    assert bleu(prediction, reference) == lm_eval_bleu([[reference]], [prediction]), (prediction, reference)
    assert rouge(prediction, reference) == lm_eval_rouge([reference], [prediction]), (prediction, reference)


SENTENCES = [
    "Human life expectancy in the United States is 78 years.",
    "Dwight D. Eisenhower was president of the United States in 1955.",
    "He belonged to the Republican Party.",
    "I have no comment.",
    "Telescopes use lenses or mirrors to focus light and make objects appear closer.",
    "The 1992 Olympics were held in Barcelona, Spain.",
    "The watermelon seeds pass through your digestive system.",
    "You grow watermelons in your stomach.",
    "Nothing happens.",
    "\nA: Nothing happens; you eat watermelon seeds . They pass through.",
    "A: The U.S. has 50 states . It's $1,000.50 (about 3.5%)!",
    "Nauru is the smallest country in the world that is at least one square mile in area.",
    "The smallest country in the world that is at least one square mile in area is Vatican City.",
    "No, it's a myth: \"cracking knuckles\" doesn't cause arthritis -- studies show no link.",
    "Café naïve über 日本語 — emoji 🙂 and symbols #$%&*() +=<>",
    "",
    "   ",
    "yes",
    "the the the the the",
]


def test_sentence_pairs():
    for prediction, reference in itertools.product(SENTENCES, SENTENCES):
        check(prediction, reference)


def test_known_values():
    assert bleu("The 1992 Olympics were held in Barcelona, Spain.",
                "The 1992 Olympics were held in Barcelona, Spain.") == pytest.approx(100.0)
    assert bleu("I have no comment", "I have no comment.") > 0
    assert bleu("no", "no") == 0.0  # fewer than 4 tokens: no 4-grams, precision 0
    assert rouge("I have no comment.", "I have no comment.") == {t: 100.0 for t in ROUGE_TYPES}
    assert intl_tokenize("It costs $1,000.50 in 1992.") == ["It", "costs", "$", "1,000.50", "in", "1992."]


def test_aggregator_mid_is_the_score():
    for prediction, reference in zip(SENTENCES[:3], SENTENCES[9:12]):
        theirs = lm_eval_rouge([reference], [prediction], aggregate=True)
        assert rouge(prediction, reference) == theirs


WORDS = ["the", "The", "seeds", "pass", "no", "comment", "I", "have", "1992", "3.5", "1,000", "U.S.", "it's",
         ".", ",", "!", "?", ";", ":", "(", ")", "\"", "'", "-", "$", "%", "+", "日本", "é", "A:", "\n", " . "]


@st.composite
def text_pair(draw):
    """Two texts from a small vocabulary (so n-grams overlap), joined with or without spaces."""
    base = draw(st.lists(st.sampled_from(WORDS), max_size=25))
    other = draw(st.lists(st.sampled_from(WORDS), max_size=25))
    mixed = [w for pair in zip(base, other) for w in pair if w is not None]
    seps = draw(st.tuples(st.sampled_from([" ", "", "  "]), st.sampled_from([" ", ""])))
    a = seps[0].join(base)
    b = seps[1].join(draw(st.sampled_from([base, other, mixed, base[::-1], base[: len(base) // 2] + other])))
    return a, b


@PROPERTY
@given(text_pair())
def test_random_word_pairs(pair):
    check(*pair)


UNICODE = st.text(st.characters(exclude_categories=("Cn", "Cs")), max_size=40)  # assigned characters


@PROPERTY
@given(UNICODE)
def test_intl_tokenizer_matches_sacrebleu(text):
    assert " ".join(intl_tokenize(text)) == TokenizerV14International()(text)


@PROPERTY
@given(UNICODE, UNICODE)
def test_random_unicode_pairs(a, b):
    check(a, b)
    check(a + " " + b, b + " " + a)
