"""scikit-learn's 8x8 digits (1797 images, 10 classes) with one fixed, seeded split.

Every function returns ``(x, y)``: ``x`` float32 of shape ``(N, 1, 8, 8)`` with pixels in
``[0, 1]`` and ``y`` int64 of shape ``(N,)``. The split never changes between calls, runs or
machines (a fixed ``random_state``), so a checkpoint trained on ``train()`` can be scored
honestly on ``validation()``.
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

#: Number of held-out images; the rest (1347) are for training.
VALIDATION_SIZE = 450
#: The split's seed: changing it would silently invalidate cached checkpoints' scores.
SPLIT_SEED = 0
#: Raw pixel values are integers in [0, 16].
_PIXEL_MAX = 16.0

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@functools.lru_cache(maxsize=1)
def _split() -> Split:
    """Load and split once per process; the arrays are read-only so the cache stays intact."""
    digits = load_digits()
    x = (digits.data.astype(np.float32) / np.float32(_PIXEL_MAX)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    # Stratified so both parts hold every class in the same proportion.
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=VALIDATION_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    for array in (x_train, y_train, x_val, y_val):
        array.setflags(write=False)
    return x_train, y_train, x_val, y_val


def train() -> tuple[np.ndarray, np.ndarray]:
    """The 1347 training images and labels (fresh, writable copies)."""
    x_train, y_train, _, _ = _split()
    return x_train.copy(), y_train.copy()


def validation() -> tuple[np.ndarray, np.ndarray]:
    """The 450 held-out images and labels (fresh, writable copies)."""
    _, _, x_val, y_val = _split()
    return x_val.copy(), y_val.copy()


def calibration(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` training images and labels, for quantization calibration.

    ``n`` may be 1 to 1347; the same ``n`` always gives the same images. Raises ``ValueError``
    outside that range rather than silently returning fewer images than asked for.
    """
    x_train, y_train, _, _ = _split()
    if not 1 <= n <= len(x_train):
        raise ValueError(f"calibration(n={n}): n must be between 1 and {len(x_train)}")
    return x_train[:n].copy(), y_train[:n].copy()
