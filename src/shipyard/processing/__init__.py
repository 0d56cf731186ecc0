"""Pre- and post-processing that travels with the model in its package.

``image``: encoded images to model tensors (``decode``, ``preprocess``, ``ImagePreprocess``);
``text``: texts to token ids (``TextPreprocess``, ``TextTokenizer``);
``labels``: class names (``read_labels``, ``top_k``); ``settings``: the recipe's
``preprocess:``/``postprocess:`` sections as the manifest records them. Validation data,
bench, predict and serve all call these, so every path sees the same tensors.
"""

from shipyard.processing.image import DEFAULT_MAX_PIXELS, ImagePreprocess, decode, preprocess
from shipyard.processing.labels import LABELS_FILE, read_labels, softmax, top_k
from shipyard.processing.settings import Postprocess, Preprocess, install
from shipyard.processing.text import TOKENIZER_FILE, TextPreprocess, TextTokenizer, Tokenized

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "LABELS_FILE",
    "TOKENIZER_FILE",
    "ImagePreprocess",
    "Postprocess",
    "Preprocess",
    "TextPreprocess",
    "TextTokenizer",
    "Tokenized",
    "decode",
    "install",
    "preprocess",
    "read_labels",
    "softmax",
    "top_k",
]
