"""MiniLM + a sentiment head trained on Rotten Tomatoes snippets: one package, two outputs.

``trained()`` gives the model (``logits`` over rotten/fresh, and the ``sentence_embedding``);
``validation()``, ``calibration()`` and ``examples()`` give texts, tokenized by the recipe's
tokenizer when loaded as data; ``LABELS_FILE`` names the two classes.
"""

from shipyard.examples.sentiment.data import (
    EXAMPLES,
    LABELS_FILE,
    calibration,
    examples,
    train,
    validation,
)
from shipyard.examples.sentiment.model import SentimentModel, head_path, trained

__all__ = [
    "EXAMPLES",
    "LABELS_FILE",
    "SentimentModel",
    "calibration",
    "examples",
    "head_path",
    "train",
    "trained",
    "validation",
]
