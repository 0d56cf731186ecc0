"""A DLRM-style recommender on MovieLens-100k (read from the recbole wheel), with a time split.

``trained()`` gives a model scoring about 0.73 AUC on the later 20% of the ratings;
``train()``, ``validation()`` and ``calibration()`` give the matching inputs (a dict: four
int64 id tensors and float32 ``dense``) and int64 labels (1: rated 4 or 5).
"""

from shipyard.examples.recsys.data import calibration, candidates, train, validation
from shipyard.examples.recsys.model import (
    ARCH_VERSION,
    DLRM,
    auc,
    build_model,
    checkpoint_path,
    predict,
    trained,
)

__all__ = [
    "ARCH_VERSION",
    "DLRM",
    "auc",
    "build_model",
    "calibration",
    "candidates",
    "checkpoint_path",
    "predict",
    "train",
    "trained",
    "validation",
]
