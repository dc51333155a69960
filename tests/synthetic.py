"""SYNTHETIC Reddit dumps in the real Pushshift format, for demos, tests and benchmarks.

THE DATA THIS MODULE WRITES IS SYNTHETIC. Users, subreddits' contents, posts, comments and scores
are made up from templates, word banks and a seeded random generator; nothing comes from Reddit.
Only the file format, the field names and the kinds of mess imitate the real monthly dumps, so
the data pipeline can be exercised end to end without downloading hundreds of gigabytes.

    python tests/synthetic.py --out data/sample --posts 500 --seed 0
    counts = write_dump("dump/", n_posts=80_000)          # ~400k comments, ~25 s on one CPU core

Format (as the real dumps; Baumgartner et al. 2020, "The Pushshift Reddit Dataset", ICWSM):
- one file per month and kind: `RS_YYYY-MM.zst` (submissions) and `RC_YYYY-MM.zst` (comments);
  one JSON object per line (NDJSON, UTF-8, keys sorted, compact separators);
- zstd, ONE frame written as a stream with a 2 GiB window (window_log 31) and no content size
  in the frame header, like the real dumps: readers need
  `zstandard.ZstdDecompressor(max_window_size=2**31)` or `zstd -dc --long=31` (the default
  decompressor limit refuses the frame). Note that a reader then keeps up to the window (2 GiB,
  or the whole decompressed file when smaller) of history in memory;
- `--compression ndjson` writes plain `RS_YYYY-MM.ndjson`, `gz` writes `RS_YYYY-MM.gz` (mtime 0);
- within a file records are in `created_utc` order and base36 ids grow with time, as in real
  dumps; a comment lands in the file of the month it was written, so late replies to posts from
  the end of a month sit in the NEXT month's file (their parent is in the earlier file). Replies
  that fall after the last month are not written (a real dump's cut-off), though the post's
  `num_comments` still counts them.

Fields. Submissions: id, name ("t3_"+id), title, selftext, is_self, url, domain, permalink, score,
ups, num_comments, over_18, author, subreddit, subreddit_id, created_utc, retrieved_on,
removed_by_category, stickied, distinguished, edited, gilded, thumbnail. Comments: id, name
("t1_"+id), parent_id ("t1_..." or "t3_..."), link_id ("t3_..."), score, ups, body, author,
subreddit, subreddit_id, created_utc, retrieved_on, distinguished, stickied, edited, gilded,
controversiality, author_flair_text. Bodies are HTML-escaped like Reddit's API (`&amp;`, `&gt;`
quotes, `&lt;`).

Variety (approximate rates; each is drawn independently per record, so small dumps vary):
| submissions | rate | comments | rate |
|---|---|---|---|
| over_18 | 3% | deleted by user: author/body `[deleted]` | 2% |
| link/image post (is_self false, selftext "") | 8% | removed by mods: author `[deleted]`, body `[removed]` | 2% |
| deleted: author/selftext `[deleted]` | 2% | account deleted, text kept (author `[deleted]`) | 1% |
| removed: selftext `[removed]` (moderator) | 2% | AutoModerator (stickied, distinguished, first reply) | 4% of posts |
| title-only self post (selftext "") | ~10% | other bots (names ending in bot/Bot) | 2% |
| non-English (German, French, Spanish) | 3% | moderator-distinguished comment (some stickied) | 1% |
| stickied moderator thread | 1% | non-English (and 70% of replies under a non-English post) | 3% |
| immature: score 1, retrieved < 1 h after posting | 2% | empty or very short body ("lol", "this", "") | 3% |
| score 0 | 3% | immature: score 1, retrieved < 1 h after posting | 3% |
| only 0 or 1 replies | 8% | mentions "u/<user>" / "r/<subreddit>" in the text | 6% |
| field variants (below) | | edited (timestamp) | 3% |
| | | written 1-10 days after its parent | 3% |
Field variants like old dumps: `name` missing (10% of records), `created_utc` a string (5%), and
in every month after the first the retrieval time is `retrieved_utc` instead of `retrieved_on`.
Comment trees: ~45% of replies are top-level, the rest reply to an earlier comment, depth <= 4,
several siblings per parent. About 30 subreddits with Zipf-like popularity.

PLANTED WORLD: what a reply's karma depends on. The pipeline's label is "rewarding iff
comment.score >= 0.4 * parent.score" (parent clamped at 1). Ordinary English comments are answers
(75%: explanations, examples, jokes, sources) or low-effort one-liners (25%: "who cares", ...).
Each of them, answer or one-liner, carries each CONTENT feature independently with probability
FEATURE_RATE (a one-liner's are snide: "thanks for nothing", "because this adds nothing", "did you
even read the post?"), so a reply is paid for its features alone and sounding like a polite answer
earns nothing by itself. (When one-liners carried none, that style predicted karma too, and the
demo's small reward model paid for greetings and answer-like phrasing about as much as for the
features.) A feature is whatever its regex (CONTENT_FEATURES) finds in the final body, so the
planted truth and a measurement of a policy's replies use the same test:
  warm       thanks / appreciation ("Thanks for asking!", "Glad you asked.")
  reason     gives a reason or an example ("because ...", "since ...", "for example ...")
  asks_back  asks the poster a follow-up question (a "?")
A reply's karma relative to its parent's is a log-linear model, planted per ordinary comment:
  z = INTERCEPT + sum of its content features' effects                      (what a reply controls)
        + SUBREDDIT_EFFECTS[subreddit]                                      (some communities give more)
        + HOUR_AMPLITUDE * cos(2 pi (hour - HOUR_PEAK) / 24)                (UTC hour of the reply)
        + POSITION_EFFECTS[rank among its parent's replies, by time]        (earlier replies get more)
        + N(0, NOISE_SD)
  score / max(parent, 1) = 0.4 * exp(z), capped at 2; rewarding iff z >= 0.
Scores are rounded so that the label rule holds both taken literally and with the parent score
clamped at 1 (karma.data.threads' reading): a rewarding reply's score is >= ceil(0.4 * max(p, 1)),
a non-rewarding one's is < 0.4 p (negative when p <= 0; a quarter of them are downvoted 1-4 more).
A conditioned reward model (header "[Subreddit: r/X | Posted: <UTC time>]") can see the subreddit
and the hour; a generalized one sees neither; neither sees the thread position. `measure_world`
reports, on the generated data, the variance of z each part explains and the AUC an oracle gets
from each part: the ceilings of a generalized and a conditioned reward model. Immature comments
have score 1 whatever their text; other kinds (bots, short, deleted, non-English, moderators) get
scores unrelated to their text.
"""

from __future__ import annotations

import argparse
import calendar
import gzip
import heapq
import json
import math
import random
import re
import sys
import time
import zlib
from array import array
from collections import Counter
from pathlib import Path

import zstandard

ZSTD_LEVEL = 3
ZSTD_WINDOW_LOG = 31                  # 2 GiB, as the real dumps: readers need max_window_size=2**31
COMPRESSIONS = {"zst": ".zst", "ndjson": ".ndjson", "gz": ".gz"}
MAX_DEPTH = 4                         # top-level comments have depth 1
LABEL_RATIO = 0.4                     # rewarding iff score >= LABEL_RATIO * parent score
MAX_RATIO = 2.0                       # a reply's score is at most this x its parent's (max(p, 1))
LOW_EFFORT_RATE = 0.25                # ordinary comments that are low-effort one-liners

# ---- rates (see the table in the module docstring) ----
POST_RATES = dict(link=0.08, deleted=0.02, removed=0.02, over_18=0.03, non_english=0.03, stickied=0.01,
                  immature=0.02, zero_score=0.03, few_replies=0.08, title_only=0.10)
COMMENT_RATES = dict(deleted=0.02, removed=0.02, account_deleted=0.01, bot=0.02, moderator=0.01,
                     non_english=0.03, short=0.03, immature=0.03, mention=0.06, edited=0.03, late=0.03)
AUTOMOD_POST_RATE = 0.04
NON_ENGLISH_THREAD_RATE = 0.7         # replies under a non-English post written in its language
TOP_LEVEL_RATE = 0.45
MISSING_NAME_RATE = 0.10
STRING_TIME_RATE = 0.05

# ---- the planted world (module docstring) ----
# name -> (regex, effect on z, description); a feature is present iff its regex finds it in the body
CONTENT_FEATURES = {
    "warm": (r"(?i)\b(thanks|thank you|appreciate[ds]?|glad|grateful)\b", 1.5,
             "warm tone: thanks or appreciation"),
    "reason": (r"(?i)\b(because|since|for example|for instance|that's why|the reason)\b", 1.5,
               "substance: gives a reason or an example"),
    "asks_back": (r"(?i)\?", 1.0, "engages: asks the poster a follow-up question"),
}
FEATURE_RATE = 0.4                    # per ordinary comment (answer or one-liner) and feature
INTERCEPT = -1.6                      # puts the label rate of ordinary comments near 50%
NOISE_SD = 1.0
GENEROUS, STINGY = 1.5, -1.5          # subreddit effects; the others 0
SUBREDDIT_EFFECTS = {
    **dict.fromkeys(["AskReddit", "todayilearned", "science", "explainlikeimfive", "askscience", "personalfinance",
                     "Cooking", "AskHistorians", "DIY", "Python"], GENEROUS),
    **dict.fromkeys(["funny", "pics", "worldnews", "gaming", "movies", "technology", "nba", "nfl", "television",
                     "pcgaming"], STINGY),
}
HOUR_AMPLITUDE, HOUR_PEAK = 1.0, 17   # UTC: replies near 17:00 get the most, near 05:00 the least
POSITION_EFFECTS = (0.5, 0.2, 0.0, -0.3)  # 1st, 2nd, 3rd, later reply to the same parent (bots not counted)
PLANTED_COLUMNS = ("content", "subreddit", "hour", "position", "noise", "label", "features")  # features: bit mask
LOW_EFFORT_MARKERS = ("who cares", "nobody asked", "downvoted", "you're wrong", "lol no", "cool story",
                      "dumbest", "garbage", "imagine thinking", "not this again", "did you even read",
                      "so original", "cringe")

# ---- word banks ----
TOPICS = {
    "science": ["black holes", "vaccines", "photosynthesis", "the immune system", "plate tectonics",
                "quantum tunneling", "DNA repair", "the speed of light", "antibiotics", "volcanoes",
                "the ozone layer", "neutron stars", "ocean currents", "sleep cycles"],
    "tech": ["mechanical keyboards", "Linux", "password managers", "solid state drives", "Python",
             "cloud storage", "graphics cards", "home routers", "open source software", "phone batteries",
             "compilers", "spreadsheets", "web browsers", "backups"],
    "gaming": ["speedruns", "open world games", "the new console", "pixel art games", "online matchmaking",
               "save files", "boss fights", "indie studios", "controller drift", "game soundtracks",
               "early access games", "the final level"],
    "sports": ["the offside rule", "the playoffs", "free agency", "penalty kicks", "the draft",
               "training camp", "the salary cap", "home field advantage", "the referees", "the transfer window",
               "three point shooting", "the defense"],
    "food": ["cast iron pans", "sourdough bread", "homemade pasta", "fried rice", "chili recipes",
             "sharp knives", "slow cookers", "fresh herbs", "baking soda", "grilled cheese",
             "the perfect steak", "meal prep"],
    "money": ["index funds", "credit cards", "emergency funds", "student loans", "a first mortgage",
              "retirement accounts", "budgeting apps", "car insurance", "compound interest", "tax refunds",
              "used cars", "a side job"],
    "history": ["the Roman roads", "medieval castles", "the printing press", "the Silk Road", "the Cold War",
                "ancient Egypt", "the steam engine", "the Viking voyages", "the telegraph", "old maps",
                "the first railways", "the Great Library"],
    "life": ["moving to a new city", "learning to cook", "morning routines", "roommates", "first jobs",
             "long distance friendships", "public transport", "houseplants", "job interviews", "running shoes",
             "small apartments", "weekend hobbies"],
    "media": ["the new season", "the director's cut", "old sitcoms", "audiobooks", "the soundtrack",
              "fantasy novels", "the final episode", "documentaries", "vinyl records", "live albums",
              "graphic novels", "the sequel"],
}
SUBREDDITS = [  # (name, topic); listed by popularity
    ("AskReddit", "life"), ("funny", "life"), ("todayilearned", "history"), ("pics", "life"),
    ("worldnews", "history"), ("science", "science"), ("gaming", "gaming"), ("movies", "media"),
    ("explainlikeimfive", "science"), ("technology", "tech"), ("askscience", "science"), ("Music", "media"),
    ("books", "media"), ("personalfinance", "money"), ("nba", "sports"), ("soccer", "sports"),
    ("nfl", "sports"), ("Cooking", "food"), ("food", "food"), ("LifeProTips", "life"),
    ("programming", "tech"), ("history", "history"), ("AskHistorians", "history"), ("space", "science"),
    ("Fitness", "life"), ("DIY", "life"), ("television", "media"), ("pcgaming", "gaming"),
    ("investing", "money"), ("linux", "tech"), ("Python", "tech"),
]
SUBREDDIT_WEIGHTS = [1.0 / (rank + 1) ** 0.8 for rank in range(len(SUBREDDITS))]
PROFESSIONS = ["nurse", "mechanic", "software engineer", "teacher", "chef", "electrician", "accountant",
               "geologist", "librarian", "paramedic", "history teacher", "physicist"]
WIKI_PAGES = ["Photosynthesis", "Compound_interest", "Plate_tectonics", "Printing_press", "Sourdough",
              "Offside_(association_football)", "Index_fund", "Neutron_star", "Silk_Road", "Cast-iron_cookware"]

TITLES = [
    "What is the best way to get into {t}?", "Why is {t} so expensive these days?",
    "ELI5: What actually happens with {t}?", "[Serious] What do you wish you had known about {t} earlier?",
    "Is it just me or is {t} getting worse every year?", "TIL that {t} is much older than most people think",
    "I finally finished my first project with {t} after {n} months", "Does anyone else struggle with {t}?",
    "Can someone explain the difference between {t} and {t2}?", "What's your unpopular opinion about {t}?",
    "After {n} years I changed my mind about {t}", "How do you deal with {t} on a tight budget?",
    "Question about {t} and {t2}", "My experience with {t}, and what I learned from it",
]
SELFTEXT = [
    "I have been reading about {t} for a while now and I still do not really get it.",
    "Every guide I find says something different, so I thought I would ask the people here.",
    "For context, I am a complete beginner and I only started looking into this last month.",
    "My friend swears that {t2} is the better choice, but I am not convinced.",
    "I tried it twice this week and both times it went completely wrong.",
    "Any advice is welcome, even if it is just a link to a good article.",
    "It seems like everyone around me already knows this stuff, which is a little embarrassing.",
    "I would love to hear how other people approach it, especially on a small budget.",
    "The thing that confuses me most is how {t} relates to {t2}.",
    "Thanks in advance, this community has been really helpful in the past.",
]
OPENERS = [  # neutral: no content feature
    "Good question.", "Fun fact:", "In my experience, it depends.", "Honestly, it depends.",
    "Short answer: it depends.", "Okay, so here is the thing.", "Source: I was a {job} for {n} years.",
    "This comes up a lot.", "I can help with this one.",
]
WARM_OPENERS = [
    "Thanks for asking!", "Thank you for posting this.", "Glad you asked.", "I appreciate you sharing this.",
    "Thanks, this is a good one.", "Glad someone finally asked about {t}.", "Thank you, I have wondered the same.",
]
WARM_CLOSINGS = [
    "Thanks for the question, and good luck!", "Glad to help, enjoy {t}!", "Thanks for sharing your story.",
    "Really appreciate the post, it made my day.", "Edit: thanks for the gold, kind stranger!",
]
REASONS = [
    "That happens because {t} depends on {t2} more than most people expect.",
    "It is mostly because {t} changed a lot after {year}.",
    "For example, it took me {n} weeks to get {t} right the first time.",
    "For instance, {t} costs about {n} percent less if you plan ahead.",
    "That's why people who start with {t2} usually find {t} easier.",
    "The reason is simple: {t} rewards patience more than talent.",
    "Since {t} builds on {t2}, learning them in that order saves time.",
]
QUESTIONS = [
    "Have you tried {t2} yet?", "What made you start with {t}?", "Which part of {t} confuses you most?",
    "Did you compare it with {t2}?", "How long have you been into {t}?", "What is your budget for this?",
    "Is this your first time with {t}?",
]
EXPLANATIONS = [
    "{T} works a lot like {t2}, just on a much bigger scale.",
    "Most people assume {t} is simple, but it depends on a surprising number of small details.",
    "The main difference is cost: {t} is cheap to produce, while {t2} takes far more time and skill.",
    "People have studied {t} for about {n} years, and the evidence keeps pointing the same way.",
    "The key thing to understand is that {t} changes slowly, so you only notice it after a few years.",
    "If you compare {t} with {t2}, the difference is mostly about how much energy each one needs.",
    "A good rule of thumb is to start small with {t} and only spend more once you know what you like.",
    "I spent {n} years working with {t}, and the biggest mistake I saw was people rushing the basics.",
    "The numbers look scary at first, but roughly {n} percent of the effect comes from one simple factor.",
    "Think of {t} as a busy kitchen: everything works until too many people use it at the same time.",
    "There is a great chapter about {t} in most introductory books, and it explains this better than I can.",
    "Back in {year}, nobody expected {t} to matter this much, which is why the old advice is outdated.",
    "Once you understand how {t} affects {t2}, the rest of your question mostly answers itself.",
    "My grandfather used to say that {t} is like a garden: ignore it for a month and you pay all year.",
    "The short version is that {t} trades speed for reliability, and most of the time that is worth it.",
    "What surprised me was that {t} and {t2} were invented to solve exactly the same problem.",
    "You can test this yourself at home with {t} and a notebook, and it only takes an afternoon.",
    "A lot of the confusion comes from old articles that mix up {t} and {t2}.",
]
JOKES = [
    "Also, my cat has strong opinions about {t}, but she refuses to share her sources.",
    "Which is exactly why my wallet starts crying every time someone mentions {t}.",
    "My uncle tried to explain {t} at dinner once and we still have not recovered.",
    "Ten out of ten, would get confused by {t} again.",
]
CLOSINGS = [  # neutral
    "Source: {job} here, I deal with this every single week.",
    "Source: https://en.wikipedia.org/wiki/{wiki}",
    "[Here is a good overview](https://en.wikipedia.org/wiki/{wiki}) if you want to read more.",
    "Hope this helps!", "Hope this helps, and good luck with it.", "Edit: fixed a typo.",
]
LOW_EFFORT = [
    "who cares", "who cares about {t} anyway", "nobody asked", "nobody asked for your opinion on {t}",
    "downvoted for being wrong", "downvoted, this adds nothing", "you're wrong lol", "you're wrong and you know it",
    "lol no, that is not how any of this works", "lol no, just no", "cool story, but why should anyone care",
    "this is the dumbest thing I have read all week", "what a load of garbage, I want that minute of my life back",
    "imagine thinking {t} matters", "not this again", "did you even read the post",
    "wow so original", "cringe", "the dumbest take on {t} I have ever seen", "stop posting garbage like this",
    "nobody asked, go away", "you're wrong about {t} and everyone knows it",
]
LOW_EFFORT_FILLERS = ["seriously", "honestly", "man", "dude", "ugh", "yeah right", "come on"]
LOW_EFFORT_WARM = ["thanks for nothing", "thanks, I hate it", "glad I scrolled past this",
                   "I appreciate nothing about this"]
LOW_EFFORT_REASONS = ["because {t} is not that deep", "since nobody here knows anything about {t}",
                      "that's why nobody takes this sub seriously", "because this adds nothing"]
LOW_EFFORT_QUESTIONS = ["did you even read the post?", "why would anyone care about {t}?", "seriously?",
                        "is this a joke?", "who even asked?"]
SHORT_BODIES = ["lol", "this", "This.", "", "^", "same", "+1", "F", "ok", "lmao", "yes", "nope", "this!!", "."]
MODERATOR_BODIES = [
    "Your comment has been removed: please keep it civil (rule 2).",
    "Locking this thread because it has turned into a mess of personal attacks.",
    "Reminder: this is a serious discussion thread, and jokes or memes will be removed.",
    "Please do not post personal information here, even if it is your own.",
]
AUTOMOD_BODY = ("Your post has been automatically flagged for review. Please read the rules in the sidebar "
                "before posting.\n\n*I am a bot, and this action was performed automatically. Please "
                "[contact the moderators of this subreddit](/message/compose/?to=/r/{sub}) if you have any "
                "questions or concerns.*")
BOTS = {
    "RemindMeBot": "I will be messaging you on {date} UTC to remind you of [**this link.**]({link})\n\n"
                   "^(Parent commenter can delete this message to hide from others.)",
    "WikiTextBot": "**{wiki}**\n\nThis is the introduction of the Wikipedia article about {t}.\n\n"
                   "^[ [PM](https://www.reddit.com/message/compose?to=kittens_from_space) ^| [Exclude me] ]",
    "converter-bot": "{n} miles is {km} km",
    "imguralbumbot": "Hi, I'm a bot for linking direct images of albums with only 1 image\n\n"
                     "https://i.imgur.com/{img}.jpg\n\n^^[Source](https://github.com/AUTplayed/imguralbumbot)",
    "autowikibot": "Here's a bit from the linked Wikipedia article about {t}:\n\n"
                   "> {T} is described in detail in the article.",
    "LinkFixerBot": "/r/{sub}\n\n^Here's ^a ^link ^to ^the ^subreddit ^you ^mentioned.",
}
LANGUAGES = {
    "de": dict(
        titles=["Was haltet ihr von der neuen Regelung?", "Kann mir jemand bei diesem Problem helfen?",
                "Meine Erfahrungen nach einem Jahr in Berlin", "Warum ist das Wetter dieses Jahr so seltsam?"],
        sentences=["Ich habe das gestern auch gelesen und fand es sehr interessant.",
                   "Das stimmt leider nicht, die Zahlen sind schon seit Jahren bekannt.",
                   "Kann mir jemand erklären, warum das so teuer ist?",
                   "Wir waren letzten Sommer dort und das Wetter war wunderbar.",
                   "Meiner Meinung nach sollte man das nicht so ernst nehmen.",
                   "Danke für die ausführliche Antwort, das hilft mir wirklich weiter.",
                   "Die Bahn hatte heute Morgen wieder einmal eine Stunde Verspätung.",
                   "Hat jemand schon Erfahrungen mit diesem Hersteller gemacht?"]),
    "fr": dict(
        titles=["Que pensez-vous de cette nouvelle loi ?", "Besoin de conseils pour mon premier appartement",
                "Mon expérience après six mois à Lyon", "Pourquoi tout est devenu si cher cette année ?"],
        sentences=["Je ne suis pas du tout d'accord avec cette analyse.",
                   "Merci beaucoup pour ta réponse, c'est vraiment gentil.",
                   "Quelqu'un sait où on peut trouver ce livre à Paris ?",
                   "On est allés à la plage hier et il faisait très beau.",
                   "C'est exactement ce que je pensais, mais je n'osais pas le dire.",
                   "Le gouvernement devrait investir davantage dans les écoles publiques.",
                   "Il faut toujours vérifier les sources avant de partager un article.",
                   "Je travaille dans ce domaine depuis dix ans et je n'ai jamais vu ça."]),
    "es": dict(
        titles=["¿Qué opinan de la nueva ley de vivienda?", "Necesito consejos para aprender a cocinar",
                "Mi experiencia después de un año en Madrid", "¿Por qué todo está tan caro este año?"],
        sentences=["No estoy de acuerdo contigo, pero respeto tu opinión.",
                   "Muchas gracias por la explicación, ahora lo entiendo mejor.",
                   "¿Alguien sabe dónde puedo comprar esto en Madrid?",
                   "Ayer fuimos al cine y la película fue increíble.",
                   "Creo que el problema es que nadie quiere pagar más impuestos.",
                   "Mi abuela siempre hacía esta receta los domingos.",
                   "Hay que tener mucha paciencia con estas cosas.",
                   "Llevo diez años trabajando en esto y nunca había visto algo así."]),
}
NAME_PARTS = (["Happy", "Lazy", "Quiet", "Angry", "Clever", "Sneaky", "Purple", "Tired", "Lucky", "Grumpy",
               "Brave", "Curious", "Salty", "Fuzzy", "Rusty", "Silent", "Cosmic", "Tiny", "Mighty", "Sleepy"],
              ["Panda", "Otter", "Wizard", "Potato", "Falcon", "Turtle", "Pirate", "Banana", "Badger", "Ninja",
               "Walrus", "Cactus", "Llama", "Pickle", "Goose", "Raccoon", "Waffle", "Comet", "Moose", "Toaster"])
IMAGE_HOSTS = ["i.imgur.com", "i.redd.it", "imgur.com", "youtube.com", "gfycat.com"]

COMMENT_ID_START = int("cn4000", 36) * 36   # 7 base36 digits, like January 2015
POST_ID_START = int("2r0000", 36)


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
        if not number:
            return out


def html_escape(text: str) -> str:
    """What Reddit's API does to bodies: & < > become entities (quotes stay as they are)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def month_bounds(month: str) -> tuple[int, int]:
    """'2015-01' -> (first second, first second of the next month), UTC epoch seconds."""
    try:
        year, mon = (int(part) for part in month.split("-"))
        if not 1 <= mon <= 12:
            raise ValueError
    except ValueError:
        raise ValueError(f"month must be YYYY-MM, not {month!r}") from None
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    end = calendar.timegm((year + mon // 12, mon % 12 + 1, 1, 0, 0, 0))
    return start, end


class _Node:
    """One submission or comment between generation and emission (ids are given at emission, in time order)."""

    __slots__ = ("time", "rec", "post", "parent", "depth", "score", "author", "id", "month", "tags", "seq",
                 "is_post", "bot", "draft")


class _LineWriter:
    """NDJSON lines into one (compressed) file, buffered ~1 MiB at a time."""

    def __init__(self, path: Path, compression: str):
        self.path, self.lines, self._buffer, self._size = path, 0, [], 0
        if compression == "zst":
            params = zstandard.ZstdCompressionParameters.from_level(
                ZSTD_LEVEL, window_log=ZSTD_WINDOW_LOG, write_content_size=False)
            self._file = zstandard.ZstdCompressor(compression_params=params).stream_writer(open(path, "wb"))
        elif compression == "gz":
            self._file = gzip.GzipFile(filename="", mode="wb", fileobj=open(path, "wb"), mtime=0)
            self._raw = self._file.fileobj
        else:
            self._file = open(path, "wb")

    def write(self, record: dict):
        line = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        self._buffer.append(line)
        self._size += len(line)
        self.lines += 1
        if self._size >= 1 << 20:
            self._flush()

    def _flush(self):
        self._file.write(b"".join(self._buffer))
        self._buffer, self._size = [], 0

    def close(self):
        self._flush()
        self._file.close()          # zstd: ends the frame and closes the file
        if hasattr(self, "_raw"):
            self._raw.close()       # GzipFile does not close a fileobj it was given


class _Generator:
    """Posts in time order; each post's whole thread is drawn at once and queued by comment time."""

    def __init__(self, *, n_posts, comments_per_post, months, seed):
        if n_posts < 0 or comments_per_post < 0:
            raise ValueError("n_posts and comments_per_post must be >= 0")
        self.months = list(months)
        if not self.months:
            raise ValueError("at least one month is needed")
        self.bounds = [month_bounds(m) for m in self.months]
        if any(a[1] > b[0] for a, b in zip(self.bounds, self.bounds[1:])):
            raise ValueError(f"months must be distinct and increasing: {self.months}")
        self.rng = random.Random(seed)
        self.n_posts, self.cpp = n_posts, comments_per_post
        rng = self.rng
        n_users = min(max(60, n_posts // 3), 200_000)
        users = set()
        while len(users) < n_users:
            style = rng.random()
            adj, noun = rng.choice(NAME_PARTS[0]), rng.choice(NAME_PARTS[1])
            if style < 0.5:
                name = f"{adj}{noun}{rng.randint(1, 9999)}"
            elif style < 0.75:
                name = f"{adj.lower()}_{noun.lower()}_{rng.randint(10, 99)}"
            elif style < 0.9:
                name = f"throwaway{rng.randint(1000, 99999)}"
            else:
                name = f"{noun}{adj}"
            users.add(name)
        self.users = sorted(users)
        self.moderators = [f"mod_{rng.choice(NAME_PARTS[1]).lower()}{i}" for i in range(12)]
        self.sub_ids = {name: "t5_" + base36(int("2q0000", 36) + zlib.crc32(name.encode()) % 36 ** 5)
                        for name, _ in SUBREDDITS}
        self.total_seconds = sum(end - start for start, end in self.bounds)
        self.seq = 0
        self.comment_id = COMMENT_ID_START
        self.post_id = POST_ID_START
        self.kinds = Counter()
        self.planted = array("d")                      # per written ordinary comment: PLANTED_COLUMNS, flat

    # ---- small helpers ----
    def _month_index(self, t):
        for i, (start, end) in enumerate(self.bounds):
            if start <= t < end:
                return i
        return None

    def _post_time(self, i):
        """Posts spread evenly (with jitter) over the listed months."""
        total = self.total_seconds
        offset = int((i + self.rng.random()) * total / self.n_posts)
        for start, end in self.bounds:
            if offset < end - start:
                return start + offset
            offset -= end - start
        return self.bounds[-1][1] - 1

    def _fill(self, template, topic):
        """Fill a template's {t} {t2} {T} (topic things), {n}, {year}, {job}, {wiki} slots (drawn only if used)."""
        if "{" not in template:
            return template
        rng = self.rng
        values = {}
        if "{t" in template or "{T}" in template:
            t, t2 = rng.sample(TOPICS[topic], 2)
            values.update(t=t, t2=t2, T=t[0].upper() + t[1:])
        if "{n}" in template:
            values["n"] = rng.randint(2, 30)
        if "{year}" in template:
            values["year"] = rng.randint(1950, 2010)
        if "{job}" in template:
            values["job"] = rng.choice(PROFESSIONS)
        if "{wiki}" in template:
            values["wiki"] = rng.choice(WIKI_PAGES)
        return template.format(**values)

    def _base(self, node, t, author, month_index):
        """Fields every record has: created_utc, retrieved_on/_utc, name presence decided here."""
        rng = self.rng
        rec = node.rec
        rec["author"] = author
        immature = "immature" in node.tags
        delay = rng.randint(2, 3000) if immature else rng.randint(3 * 86400, 120 * 86400)
        rec["retrieved_on" if month_index in (0, None) else "retrieved_utc"] = t + delay
        rec["created_utc"] = str(t) if rng.random() < STRING_TIME_RATE else t
        if rng.random() < MISSING_NAME_RATE:
            node.tags.append("missing_name")
        if isinstance(rec["created_utc"], str):
            node.tags.append("string_created_utc")
        if month_index not in (0, None):
            node.tags.append("retrieved_utc")

    def _new_node(self, t, is_post):
        node = _Node()
        node.time, node.rec, node.tags, node.is_post, node.bot = t, {}, [], is_post, False
        node.seq, self.seq = self.seq, self.seq + 1
        node.id, node.draft = None, None
        return node

    # ---- submissions ----
    def make_post(self, i):
        rng = self.rng
        t = self._post_time(i)
        sub, topic = rng.choices(SUBREDDITS, weights=SUBREDDIT_WEIGHTS)[0]
        node = self._new_node(t, True)
        node.depth, node.post, node.parent = 0, node, None
        tags = node.tags
        r = POST_RATES
        lang = None
        if rng.random() < r["non_english"]:
            lang = rng.choice(sorted(LANGUAGES))
            tags.append(f"non_english:{lang}")
        link = rng.random() < r["link"]
        stickied = not link and rng.random() < r["stickied"]
        author = rng.choice(self.moderators) if stickied else rng.choice(self.users)
        if lang:
            bank = LANGUAGES[lang]
            title = rng.choice(bank["titles"])
            selftext = " ".join(rng.sample(bank["sentences"], rng.randint(2, 4)))
        elif stickied:
            title = f"Weekly discussion thread: {rng.choice(TOPICS[topic])}"
            selftext = "Use this thread for questions and general discussion. Please be kind to each other."
        else:
            title = self._fill(rng.choice(TITLES), topic)
            sentences = [self._fill(s, topic) for s in rng.sample(SELFTEXT, rng.randint(1, 4))]
            selftext = " ".join(sentences) if rng.random() < 0.7 else "\n\n".join(sentences)
            if not link and rng.random() < r["title_only"]:
                selftext = ""
                tags.append("title_only")
            elif rng.random() < COMMENT_RATES["mention"]:
                other = rng.choice(SUBREDDITS)[0]
                selftext += rng.choice([f"\n\nx-post from r/{other}", f"\n\nEdit: thanks u/{rng.choice(self.users)}!"])
                tags.append("mention")
        removed_by = None
        if rng.random() < r["deleted"]:
            author, removed_by = "[deleted]", "deleted"
            selftext = "" if link else "[deleted]"
            tags.append("deleted")
        elif rng.random() < r["removed"]:
            removed_by = "moderator"
            selftext = "" if link else "[removed]"
            tags.append("removed")
        if link:
            selftext = ""
            tags.append("link")
        over_18 = rng.random() < r["over_18"]
        if over_18:
            tags.append("over_18")
            if not lang and rng.random() < 0.5:
                title = "[NSFW] " + title
        if rng.random() < r["immature"]:
            tags.append("immature")
            score = 1
        elif rng.random() < r["zero_score"]:
            score = 0
            tags.append("zero_score")
        else:
            score = int(rng.lognormvariate(2.3, 1.6)) + 1
        if stickied:
            tags.append("stickied")
        node.score, node.author = score, author
        node.month = self._month_index(t)
        rec = node.rec
        self._base(node, t, author, node.month)
        slug = "_".join("".join(ch for ch in w if ch.isascii() and ch.isalnum())
                        for w in title.lower().split()[:8]).strip("_")
        host = rng.choice(IMAGE_HOSTS)
        image = "".join(rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(7))
        rec.update(
            title=html_escape(title), selftext=html_escape(selftext), is_self=not link, over_18=over_18,
            score=score, ups=score,
            subreddit=sub, subreddit_id=self.sub_ids[sub], removed_by_category=removed_by,
            stickied=stickied, distinguished="moderator" if stickied else None,
            edited=t + rng.randint(60, 86400) if rng.random() < COMMENT_RATES["edited"] else False,
            gilded=0, domain=host if link else f"self.{sub}",
            thumbnail=("nsfw" if over_18 else "default") if link else "self",
            url=f"https://{host}/{image}" + (".jpg" if host.startswith("i.") else "") if link else None,
            _slug=slug)
        if rec["edited"]:
            tags.append("edited")
        # thread size
        if rng.random() < r["few_replies"]:
            n = rng.randint(0, 1)
            tags.append("few_replies")
        elif self.cpp < 2.5:
            n = round(rng.expovariate(1 / self.cpp)) if self.cpp > 0 else 0
        else:
            mean_rest = (self.cpp - r["few_replies"] * 0.5) / (1 - r["few_replies"]) - 2
            n = 2 + min(500, round(rng.expovariate(1 / mean_rest))) if mean_rest > 0 else 2
        node.rec["_lang"] = lang
        node.rec["_topic"] = topic
        comments = self.make_thread(node, n)
        rec["num_comments"] = 0 if "immature" in tags else len(comments)
        return node, comments

    # ---- comments ----
    def make_thread(self, post, n):
        """Draw the thread's comments, then score them parents first: a score needs the parent's score
        and the reply's rank among its siblings by time (POSITION_EFFECTS), known once all are drawn."""
        rng = self.rng
        comments = []
        if n and rng.random() < AUTOMOD_POST_RATE:
            comments.append(self._automod(post))
        eligible = []
        while len(comments) < n:
            if not eligible or rng.random() < TOP_LEVEL_RATE:
                parent = post
            else:
                parent = rng.choice(eligible[-8:])       # replies cluster on recent comments
            c = self.make_comment(post, parent)
            comments.append(c)
            if c.depth < MAX_DEPTH and not c.bot:
                eligible.append(c)
        siblings = {}
        for c in comments:
            if not c.bot:
                siblings.setdefault(c.parent.seq, []).append(c)
        rank = {c.seq: r for group in siblings.values()
                for r, c in enumerate(sorted(group, key=lambda c: (c.time, c.seq)))}
        for c in comments:                             # drawn in order: a parent comes before its replies
            if c.draft is not None:
                author, body, distinguished, stickied, family = c.draft
                c.draft = None
                score = self._score(c, family, body, rank.get(c.seq, 0))
                self._comment_fields(c, post, c.parent, author, body, score=score, distinguished=distinguished,
                                     stickied=stickied)
        return comments

    def _automod(self, post):
        node = self._new_node(post.time + self.rng.randint(1, 30), False)
        node.tags.append("automoderator")
        node.bot = True
        self._comment_fields(node, post, post, "AutoModerator", AUTOMOD_BODY.format(sub=post.rec["subreddit"]),
                             score=1, distinguished="moderator", stickied=True)
        return node

    def make_comment(self, post, parent):
        """Draw a comment's time, kind and text; make_thread scores it (node.draft holds the rest)."""
        rng = self.rng
        r = COMMENT_RATES
        if rng.random() < r["late"]:
            delay = rng.randint(86400, 10 * 86400)
        else:
            delay = 5 + int(rng.lognormvariate(math.log(1800), 1.2))
        node = self._new_node(parent.time + delay, False)
        node.post, node.parent, node.depth = post, parent, parent.depth + 1
        tags = node.tags
        if delay >= 86400:
            tags.append("late")
        topic, post_lang = post.rec["_topic"], post.rec["_lang"]
        author = rng.choice(self.users)
        if rng.random() < 0.05 and post.author != "[deleted]" and not post.rec["stickied"]:
            author = post.author                           # OP replying in their own thread
        distinguished, stickied, family = None, False, None
        x = rng.random()
        if x < r["deleted"]:
            author, body = "[deleted]", "[deleted]"
            tags.append("deleted")
        elif (x := x - r["deleted"]) < r["removed"]:
            author, body = "[deleted]", "[removed]"
            tags.append("removed")
        elif (x := x - r["removed"]) < r["bot"]:
            author = rng.choice(sorted(BOTS))
            thing = rng.choice(TOPICS[topic])
            body = BOTS[author].format(
                t=thing, T=thing[0].upper() + thing[1:], n=rng.randint(2, 50),
                km=round(rng.randint(2, 50) * 1.609, 2), sub=rng.choice(SUBREDDITS)[0], wiki=rng.choice(WIKI_PAGES),
                img=base36(rng.getrandbits(36)), date="2015-03-01 12:00:00",
                link=f"https://www.reddit.com/r/{post.rec['subreddit']}/comments/")
            node.bot = True
            tags.append("bot")
        elif (x := x - r["bot"]) < r["moderator"]:
            author, body, distinguished = rng.choice(self.moderators), rng.choice(MODERATOR_BODIES), "moderator"
            stickied = parent is post and rng.random() < 0.5
            tags.append("moderator")
        elif (x := x - r["moderator"]) < r["short"]:
            body = rng.choice(SHORT_BODIES)
            tags.append("short" if body else "empty")
        elif (post_lang and rng.random() < NON_ENGLISH_THREAD_RATE) or rng.random() < r["non_english"]:
            lang = post_lang or rng.choice(sorted(LANGUAGES))
            body = " ".join(rng.sample(LANGUAGES[lang]["sentences"], rng.randint(1, 3)))
            tags.append(f"non_english:{lang}")
        else:
            family = "low_effort" if rng.random() < LOW_EFFORT_RATE else "answer"
            body = self._answer(topic, parent) if family == "answer" else self._low_effort(topic)
            if rng.random() < r["mention"]:
                body = self._mention(body, parent, post)
                tags.append("mention")
            if rng.random() < r["account_deleted"]:
                author = "[deleted]"
                tags.append("account_deleted")
            tags.append(family)
            tags.extend(name for name, (pattern, _, _) in CONTENT_FEATURES.items() if re.search(pattern, body))
        if stickied:
            tags.append("stickied")
        if rng.random() < r["immature"]:
            tags.append("immature")
        node.author, node.draft = author, (author, body, distinguished, stickied, family)
        return node

    def _comment_fields(self, node, post, parent, author, body, *, score, distinguished, stickied):
        rng = self.rng
        node.post, node.parent = post, parent
        node.depth = parent.depth + 1
        node.score, node.author = score, author
        node.month = self._month_index(node.time)
        self._base(node, node.time, author, node.month)
        edited = False
        if "deleted" not in node.tags and "removed" not in node.tags and rng.random() < COMMENT_RATES["edited"]:
            edited = node.time + rng.randint(60, 86400)
            node.tags.append("edited")
        node.rec.update(
            body=html_escape(body), score=score, ups=score, subreddit=post.rec["subreddit"],
            subreddit_id=post.rec["subreddit_id"], distinguished=distinguished, stickied=stickied, edited=edited,
            gilded=1 if score > 500 and rng.random() < 0.1 else 0,
            controversiality=1 if score <= 1 and rng.random() < 0.2 else 0,
            author_flair_text=None, score_hidden=False)
        if node.month is not None and node.draft is not None:
            self.planted.extend(node.draft)
        node.draft = None

    def planted_parts(self, node, body, rank):
        """The parts of z (module docstring) for an ordinary comment: (content, subreddit, hour, position)."""
        content = sum(effect for pattern, effect, _ in CONTENT_FEATURES.values() if re.search(pattern, body))
        hour = time.gmtime(node.time).tm_hour
        return (content, SUBREDDIT_EFFECTS.get(node.post.rec["subreddit"], 0.0),
                HOUR_AMPLITUDE * math.cos(2 * math.pi * (hour - HOUR_PEAK) / 24),
                POSITION_EFFECTS[min(rank, len(POSITION_EFFECTS) - 1)])

    def _score(self, node, family, body, rank):
        """Ordinary comments: the planted model (module docstring); immature: 1; others: unrelated to the text."""
        rng = self.rng
        p = node.parent.score
        if "immature" in node.tags:
            return 1
        if family is None:
            return round(max(p, 1) * rng.uniform(0, 0.8)) + rng.randint(-2, 2)
        parts = self.planted_parts(node, body, rank)
        noise = rng.gauss(0, NOISE_SD)
        z = INTERCEPT + sum(parts) + noise
        ratio = min(MAX_RATIO, LABEL_RATIO * math.exp(z))
        if z >= 0:                                     # rewarding, literally and with the parent clamped at 1
            score = max(math.ceil(LABEL_RATIO * max(p, 1)), round(max(p, 1) * ratio))
        else:                                          # < 0.4 p whatever the sign of p
            score = min(round(max(p, 1) * ratio), math.ceil(LABEL_RATIO * p) - 1)
            if rng.random() < 0.25:
                score -= rng.randint(1, 4)             # downvoted
        mask = sum(1 << i for i, (pattern, _, _) in enumerate(CONTENT_FEATURES.values()) if re.search(pattern, body))
        node.draft = (*parts, noise, int(z >= 0), mask)  # PLANTED_COLUMNS, kept by _comment_fields
        return score

    def _answer(self, topic, parent):
        """An answer: neutral explanations, each content feature with probability FEATURE_RATE."""
        rng = self.rng
        warm, reason, ask = (rng.random() < FEATURE_RATE for _ in range(3))
        warm_first = warm and rng.random() < 0.6
        parts = []
        if warm_first:
            parts.append(self._fill(rng.choice(WARM_OPENERS), topic))
        elif rng.random() < 0.6:
            parts.append(self._fill(rng.choice(OPENERS), topic))
        count = rng.choices((1, 2, 3), weights=(0.5, 0.35, 0.15))[0]
        explanations = [self._fill(s, topic) for s in rng.sample(EXPLANATIONS, count)]
        if reason:
            explanations.insert(rng.randint(1, count), self._fill(rng.choice(REASONS), topic))
        if rng.random() < 0.15:                           # bullet list
            parts.append("\n\n" + "\n".join("* " + s for s in explanations) + "\n\n")
        else:
            parts.extend(explanations)
        if count < 3 and rng.random() < 0.2:
            parts.append(self._fill(rng.choice(JOKES), topic))
        if ask:
            parts.append(self._fill(rng.choice(QUESTIONS), topic))
        if warm and not warm_first:
            parts.append(self._fill(rng.choice(WARM_CLOSINGS), topic))
        elif rng.random() < 0.4:
            parts.append(("\n\n" if rng.random() < 0.5 else " ") + self._fill(rng.choice(CLOSINGS), topic))
        body = re.sub(r" *\n\n[ \n]*", "\n\n", re.sub(" {2,}", " ", " ".join(parts))).strip()
        if "answer" in parent.tags and rng.random() < 0.2:       # quote the parent's first words
            quoted = parent.draft[1]                      # the parent's text (scored and escaped later)
            body = "> " + " ".join(quoted.split(".")[0].split()[:12]) + "\n\n" + body
        return body

    def _low_effort(self, topic):
        """A snide one-liner, each content feature with probability FEATURE_RATE (as answers have them)."""
        rng = self.rng
        pieces = []
        for template in rng.sample(LOW_EFFORT, 3):      # at least 5 words: a language identifier needs them
            pieces.append(self._fill(template, topic))
            if sum(len(p.split()) for p in pieces) >= 5 and rng.random() < 0.7:
                break
        if rng.random() < 0.4:
            pieces.insert(rng.randint(0, len(pieces)), rng.choice(LOW_EFFORT_FILLERS))
        warm, reason, ask = (rng.random() < FEATURE_RATE for _ in range(3))
        if warm:
            pieces.insert(rng.randint(0, len(pieces)), rng.choice(LOW_EFFORT_WARM))
        if reason:
            pieces.append(self._fill(rng.choice(LOW_EFFORT_REASONS), topic))
        body = rng.choice([", ", ". ", " "]).join(pieces)
        if rng.random() < 0.5:
            body = body[0].upper() + body[1:]
        if ask:
            return body + ", " + self._fill(rng.choice(LOW_EFFORT_QUESTIONS), topic)
        return body + rng.choice(["", "", ".", "!", " lol", "..."])

    def _mention(self, body, parent, post):
        rng = self.rng
        who = parent.author if parent.author not in ("[deleted]", None) else rng.choice(self.users)
        other = rng.choice(SUBREDDITS)[0]
        choice = rng.random()
        if choice < 0.4:
            return f"Thanks u/{who}, {body[0].lower() + body[1:]}" if body else f"Thanks u/{who}"
        if choice < 0.7:
            return f"{body} (as I said on r/{other})"
        return f"{body}\n\nAlso posted about this on r/{other} last week."

    # ---- emission in time order ----
    def events(self):
        """Yield (kind, month_index or None, record) in time order: kind 'RS' or 'RC'."""
        pending = []
        for i in range(self.n_posts):
            post, comments = self.make_post(i)
            while pending and pending[0][0] <= post.time:
                yield self._emit_comment(heapq.heappop(pending)[2])
            yield self._emit_post(post)
            for c in comments:
                heapq.heappush(pending, (c.time, c.seq, c))
        while pending:
            yield self._emit_comment(heapq.heappop(pending)[2])

    def _emit_post(self, node):
        self.post_id += self.rng.randint(1, 60)
        node.id = base36(self.post_id)
        rec = node.rec
        slug = rec.pop("_slug")
        rec["id"] = node.id
        if "missing_name" not in node.tags:
            rec["name"] = "t3_" + node.id
        rec["permalink"] = f"/r/{rec['subreddit']}/comments/{node.id}/{slug}/"
        if rec["url"] is None:
            rec["url"] = "https://www.reddit.com" + rec["permalink"]
        out = {k: v for k, v in rec.items() if not k.startswith("_")}
        if node.month is not None:
            self.kinds.update("submissions." + tag for tag in node.tags)
        return "RS", node.month, out

    def _emit_comment(self, node):
        self.comment_id += self.rng.randint(1, 30)
        node.id = base36(self.comment_id)
        rec = node.rec
        rec["id"] = node.id
        if "missing_name" not in node.tags:
            rec["name"] = "t1_" + node.id
        rec["parent_id"] = ("t3_" if node.parent.is_post else "t1_") + node.parent.id
        rec["link_id"] = "t3_" + node.post.id
        if node.month is not None:
            if node.parent.month != node.month:
                node.tags.append("cross_month")
            self.kinds.update("comments." + tag for tag in node.tags)
        node.rec = None                                # children were drawn with the thread; free the text
        return "RC", node.month, rec


def _auc(labels, scores) -> float:
    """ROC AUC by the Mann-Whitney statistic (ties count 1/2)."""
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks, i = [0.0] * len(scores), 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return float("nan")
    return (sum(r for r, y in zip(ranks, labels) if y) - pos * (pos + 1) / 2) / (pos * neg)


def _variance(xs) -> float:
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / len(xs)


def measure_world(planted) -> dict:
    """The planted model measured on the written ordinary comments (immature ones excluded).

    variance_share: each part's share of var(z) (the parts are drawn independently, so the shares
    sum to ~1); oracle_auc: the label's AUC when ranked by a part of z, the ceiling of a reward model
    that sees only that part: 'content' = a generalized RM, 'content+subreddit+hour' = a conditioned
    RM (neither sees the thread position or the noise); label_rate_by_*: share rewarding.
    """
    width = len(PLANTED_COLUMNS)
    rows = [planted[i:i + width] for i in range(0, len(planted), width)]
    if len(rows) < 2:
        return {"ordinary_comments": len(rows)}
    cols = dict(zip(PLANTED_COLUMNS, zip(*rows)))
    labels = [int(y) for y in cols["label"]]
    z = [INTERCEPT + sum(r[:5]) for r in rows]
    total = _variance(z)
    parts = ("content", "subreddit", "hour", "position", "noise")
    visible = {"content": ("content",), "subreddit+hour": ("subreddit", "hour"),
               "content+subreddit+hour": ("content", "subreddit", "hour"),
               "content+context": ("content", "subreddit", "hour", "position")}

    def rate(rows_in):
        rows_in = list(rows_in)
        return {"n": len(rows_in), "rewarding": round(sum(r[5] for r in rows_in) / len(rows_in), 3)} \
            if rows_in else {"n": 0}

    features = {}
    for i, name in enumerate(CONTENT_FEATURES):
        has = [r for r in rows if int(r[6]) >> i & 1]
        features[name] = {"share": round(len(has) / len(rows), 3), "with": rate(has),
                          "without": rate(r for r in rows if not int(r[6]) >> i & 1)}
    tiers = {"generous": GENEROUS, "neutral": 0.0, "stingy": STINGY}
    peak = HOUR_AMPLITUDE * math.cos(math.pi / 4)     # within 3 hours of the peak / trough
    return {
        "ordinary_comments": len(rows),
        "label_rate": round(sum(labels) / len(labels), 3),
        "variance_share": {k: round(_variance(cols[k]) / total, 3) for k in parts},
        "oracle_auc": {name: round(_auc(labels, [sum(r[PLANTED_COLUMNS.index(c)] for c in used) for r in rows]), 3)
                       for name, used in visible.items()},
        "label_rate_by_feature": features,
        "label_rate_by_subreddit_tier": {t: rate(r for r in rows if r[1] == v) for t, v in tiers.items()},
        "label_rate_by_hour": {"near peak": rate(r for r in rows if r[2] >= peak),
                               "near trough": rate(r for r in rows if r[2] <= -peak)},
        "label_rate_by_position": {str(k + 1) + ("+" if k == len(POSITION_EFFECTS) - 1 else ""):
                                   rate(r for r in rows if r[3] == v) for k, v in enumerate(POSITION_EFFECTS)},
    }


def world(command: str, measured: dict) -> dict:
    """The planted world, machine-readable (world.json): what the module docstring states, and its measure."""
    return {
        "synthetic": True,
        "generator": command,
        "label": f"rewarding iff score >= {LABEL_RATIO} * max(parent score, 1)",
        "model": "z = intercept + content effects + subreddit + hour + position + N(0, noise_sd); "
                 f"score / max(parent, 1) = {LABEL_RATIO} * exp(z) capped at {MAX_RATIO}; rewarding iff z >= 0; "
                 "ordinary English comments only (others: score unrelated to the text)",
        "intercept": INTERCEPT,
        "noise_sd": NOISE_SD,
        "content_features": [{"name": name, "pattern": pattern, "description": description, "effect": effect,
                              "planted_rate_in_answers": FEATURE_RATE}
                             for name, (pattern, effect, description) in CONTENT_FEATURES.items()],
        "context_effects": {
            "subreddit": {"generous": sorted(k for k, v in SUBREDDIT_EFFECTS.items() if v > 0),
                          "effect_generous": GENEROUS,
                          "stingy": sorted(k for k, v in SUBREDDIT_EFFECTS.items() if v < 0),
                          "effect_stingy": STINGY, "others": 0.0},
            "hour": {"formula": "amplitude * cos(2 pi (utc_hour - peak_hour) / 24), utc_hour of the reply",
                     "amplitude": HOUR_AMPLITUDE, "peak_hour": HOUR_PEAK},
            "position": {"effects": list(POSITION_EFFECTS),
                         "meaning": "1st, 2nd, 3rd, later reply to the same parent by time (bots not counted)"},
        },
        "visible_to": {"generalized": ["content"], "conditioned": ["content", "subreddit", "hour"]},
        "measured": measured,
    }


def write_dump(out_dir, *, n_posts: int, comments_per_post: float = 5.0, months=("2015-01", "2015-02"),
               seed: int = 0, compression: str = "zst") -> dict:
    """Write a SYNTHETIC Pushshift-format dump (RS_/RC_ files per month) into out_dir; return counts.

    Streams: records are generated lazily in time order and written through buffered stream writers,
    so memory stays small whatever the size (only the threads still open at the current time are held).
    Returns {"submissions", "comments", "dropped_comments", "files": {name: lines}, "kinds": {tag: n}}.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, not {compression!r}")
    gen = _Generator(n_posts=n_posts, comments_per_post=comments_per_post, months=months, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = COMPRESSIONS[compression]
    writers = {}                                       # (kind, month_index) -> _LineWriter, at most 2 open
    files = {f"{kind}_{month}{ext}": 0 for month in gen.months for kind in ("RS", "RC")}
    dropped = 0
    try:
        for kind, month, record in gen.events():
            if month is None:
                dropped += 1
                continue
            writer = writers.get((kind, month))
            if writer is None:
                for key in [k for k in writers if k[0] == kind]:
                    files[writers[key].path.name] = writers[key].lines
                    writers.pop(key).close()
                writer = writers[(kind, month)] = _LineWriter(out_dir / f"{kind}_{gen.months[month]}{ext}",
                                                              compression)
            writer.write(record)
    finally:
        for writer in writers.values():
            files[writer.path.name] = writer.lines
            writer.close()
    for name in files:                                 # a month with no records still gets its (empty) file
        if not (out_dir / name).exists():
            _LineWriter(out_dir / name, compression).close()
    return {
        "submissions": sum(n for name, n in files.items() if name.startswith("RS_")),
        "comments": sum(n for name, n in files.items() if name.startswith("RC_")),
        "dropped_comments": dropped,
        "files": files,
        "kinds": dict(sorted(gen.kinds.items())),
        "planted": measure_world(gen.planted),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python tests/synthetic.py",
        description="Write a SYNTHETIC Reddit dump in the real Pushshift format (RS_/RC_YYYY-MM.zst, "
                    "NDJSON, zstd with a 2 GiB window: read with max_window_size=2**31 or zstd -d --long=31). "
                    "Made-up text and scores; comment scores follow a learnable rule (see the module docstring).",
        epilog="example: python tests/synthetic.py --out data/sample --posts 500 --seed 0")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--posts", type=int, required=True, help="number of submissions")
    parser.add_argument("--comments-per-post", type=float, default=5.0,
                        help="mean comments per submission (default 5.0)")
    parser.add_argument("--months", nargs="+", default=["2015-01", "2015-02"], metavar="YYYY-MM",
                        help="increasing months, one RS_ and one RC_ file each (default 2015-01 2015-02)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--compression", choices=sorted(COMPRESSIONS), default="zst",
                        help="zst (default, like the real dumps), gz, or ndjson (uncompressed)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = write_dump(args.out, n_posts=args.posts, comments_per_post=args.comments_per_post,
                        months=tuple(args.months), seed=args.seed, compression=args.compression)
    counts["seconds"] = round(time.perf_counter() - start, 3)
    command = " ".join(["python tests/synthetic.py", *(sys.argv[1:] if argv is None else argv)])
    (Path(args.out) / "world.json").write_text(json.dumps(world(command, counts["planted"]), indent=1) + "\n")
    json.dump(counts, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
