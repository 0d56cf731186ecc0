"""Pre- and post-processing that travels with the model in its package.

``image``: encoded images to model tensors (``decode``, ``preprocess``, ``ImagePreprocess``);
``labels``: class names (``read_labels``, ``top_k``); ``settings``: the recipe's
``preprocess:``/``postprocess:`` sections as the manifest records them. Validation data,
bench, predict and serve all call these, so every path sees the same tensors.
"""

from shipyard.processing.image import DEFAULT_MAX_PIXELS, ImagePreprocess, decode, preprocess
from shipyard.processing.labels import LABELS_FILE, read_labels, softmax, top_k
from shipyard.processing.settings import Postprocess, Preprocess, install

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "LABELS_FILE",
    "ImagePreprocess",
    "Postprocess",
    "Preprocess",
    "decode",
    "install",
    "preprocess",
    "read_labels",
    "softmax",
    "top_k",
]
