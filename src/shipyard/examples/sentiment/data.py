"""The sentiment example's data: Rotten Tomatoes snippets (see ``rotten_tomatoes``), as texts.

The functions return texts; ``shipyard.data.load_data`` tokenizes them with the recipe's
tokenizer (``preprocess: text``), so validation sees the tokens the package's server makes.
Labels: 0 rotten, 1 fresh (``LABELS_FILE`` names them).

- ``validation()``: the held-out side of the fixed split (991 snippets of 33 movies);
- ``calibration(n)``: ``n`` training-side snippets, spread over the training side;
- ``examples()``: a few sentences written for the report, named by themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shipyard.examples.rotten_tomatoes import split

#: The class names, line N naming class N (0 rotten, 1 fresh).
LABELS_FILE = Path(__file__).parent / "labels.txt"
EXAMPLES = (
    "A warm, funny and beautifully acted film.",
    "Two hours of my life I will never get back.",
    "The plot is thin but the performances carry it.",
    "Dull, predictable and far too long.",
)


def train() -> tuple[list[str], np.ndarray]:
    """The training side: texts and labels (3,875 snippets)."""
    snippets = split()[0]
    return [s.text for s in snippets], np.asarray([s.label for s in snippets], dtype=np.int64)


def validation() -> tuple[list[str], np.ndarray]:
    """The held-out side: texts and labels (991 snippets)."""
    snippets = split()[1]
    return [s.text for s in snippets], np.asarray([s.label for s in snippets], dtype=np.int64)


def calibration(n: int = 128) -> list[str]:
    """``n`` training-side snippets, spread over the training side."""
    snippets = split()[0]
    if not 1 <= n <= len(snippets):
        raise ValueError(f"calibration(n={n}): n must be in 1..{len(snippets)}")
    return [snippets[i].text for i in np.linspace(0, len(snippets) - 1, n).astype(int)]


def examples() -> tuple[list[str], np.ndarray]:
    """``EXAMPLES``, each named by itself (the report's top classes per example)."""
    return list(EXAMPLES), np.asarray(EXAMPLES)
