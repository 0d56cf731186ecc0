"""A small CNN trained on scikit-learn's 8x8 handwritten digits, with its fixed data split.

``trained()`` gives a model that scores above 97% on the held-out images; ``train()``,
``validation()`` and ``calibration()`` give the matching float32 ``(N, 1, 8, 8)`` inputs and
int64 labels.
"""

from shipyard.examples.digits.data import calibration, train, validation
from shipyard.examples.digits.model import (
    ARCH_VERSION,
    DigitsCNN,
    accuracy,
    build_model,
    cache_dir,
    checkpoint_path,
    trained,
)

__all__ = [
    "ARCH_VERSION",
    "DigitsCNN",
    "accuracy",
    "build_model",
    "cache_dir",
    "calibration",
    "checkpoint_path",
    "train",
    "trained",
    "validation",
]
