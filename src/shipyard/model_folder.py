"""A Hugging Face model folder (sentence-transformers or plain transformers) as a model source.

``load_model_folder(path)`` gives a torch module that computes what sentence-transformers'
``encode`` returns: the transformer, the folder's pooling (``1_Pooling/config.json``: mean,
CLS, max or mean-sqrt-len) and, when ``modules.json`` lists it, L2 normalisation, as one
``forward(input_ids, attention_mask[, token_type_ids])`` that exports to one ONNX graph with a
dynamic batch and sequence length. A folder without ``modules.json`` (a plain transformers
model) is mean-pooled and not normalised. Its signature:

- ``input_ids`` int64 ``[batch, seq]``, ``range: [0, vocab_size - 1]``: ids outside the
  vocabulary are refused by name before a Gather reads past the table;
- ``attention_mask`` int64 ``[batch, seq]``, ``range: [0, 1]``;
- ``token_type_ids`` int64 ``[batch, seq]``, ``range: [0, type_vocab_size - 1]``, when the
  model takes segment ids (BERT does; RoBERTa and DistilBERT do not);
- ``sentence_embedding`` float32 ``[batch, hidden]`` (sentence-transformers' own name; the
  dynamo exporter names a Gather ``embedding``, so an output of that name breaks the graph).

The weights are read with ``local_files_only``: nothing is downloaded. The tokenizer is not
part of the module: name the folder in the recipe's ``preprocess: {text: {tokenizer: ...}}``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shipyard.errors import MissingExtraError, SourceError
from shipyard.signature import Signature, TensorSpec

#: The output name: sentence-transformers' own.
EMBEDDING = "sentence_embedding"
_POOLING = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


def is_model_folder(path: Path) -> bool:
    """A folder with a transformers ``config.json``."""
    return path.is_dir() and (path / "config.json").is_file()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot read {path}: {error}") from error


def pooling_settings(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalise) from ``modules.json`` and the pooling module's config."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean", False
    modules = _read_json(modules_file)
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unknown = [kind for kind in kinds if kind not in _KNOWN_MODULES]
    if unknown:
        raise SourceError(
            f"{folder}: modules.json lists {unknown}; Shipyard exports a Transformer, Pooling "
            f"and Normalize (a Dense or other module would be left out of the graph)"
        )
    pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    mode = "mean"
    if pooling is not None:
        config = _read_json(folder / pooling.get("path", "") / "config.json")
        modes = [name for key, name in _POOLING.items() if config.get(key)]
        if len(modes) != 1:
            raise SourceError(f"{folder}: pooling {modes or 'none'}; one of {list(_POOLING)}")
        mode = modes[0]
    return mode, "Normalize" in kinds


class SentenceEncoder(nn.Module):
    """The transformer, pooled over the tokens the mask keeps, optionally L2-normalised."""

    def __init__(self, transformer: nn.Module, pooling: str = "mean", normalize: bool = True):
        super().__init__()
        self.transformer, self.pooling, self.normalize = transformer, pooling, normalize

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        tokens = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, **extra
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        if self.pooling == "cls":
            pooled = tokens[:, 0]
        elif self.pooling == "max":
            pooled = tokens.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:  # as sentence-transformers: the sum over kept tokens, by their count (>= 1e-9)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            pooled = (tokens * mask).sum(dim=1)
            pooled = pooled / (counts.sqrt() if self.pooling == "mean_sqrt_len" else counts)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=1)
        return pooled


def load_transformer(folder: Path) -> nn.Module:
    """The folder's transformer (``AutoModel``), from its files only, in eval mode."""
    try:
        from transformers import AutoModel
    except ImportError as error:
        raise MissingExtraError("Hugging Face model folders", "text", "transformers") from error
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" on stderr, on every load
    try:
        model: nn.Module = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot load the transformer in {folder}: {error}") from error
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval()


def folder_signature(folder: Path, transformer: nn.Module) -> Signature:
    """The signature of ``SentenceEncoder`` over the folder's transformer (module docstring)."""
    config = getattr(transformer, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise SourceError(f"{folder}/config.json states no vocab_size")
    tokens: tuple[int | str, ...] = ("batch", "seq")
    inputs = [
        TensorSpec(name="input_ids", dtype="int64", shape=tokens, range=(0, vocab - 1)),
        TensorSpec(name="attention_mask", dtype="int64", shape=tokens, range=(0, 1)),
    ]
    types = getattr(config, "type_vocab_size", None)
    takes = "token_type_ids" in inspect.signature(transformer.forward).parameters
    if takes and isinstance(types, int) and types > 0:
        spec = TensorSpec(name="token_type_ids", dtype="int64", shape=tokens, range=(0, types - 1))
        inputs.append(spec)
    hidden = getattr(config, "hidden_size", None)
    width: int | str = hidden if isinstance(hidden, int) else "hidden"
    output = TensorSpec(name=EMBEDDING, dtype="float32", shape=("batch", width))
    return Signature(inputs=tuple(inputs), outputs=(output,))


def load_model_folder(folder: str | Path) -> tuple[SentenceEncoder, Signature]:
    """The folder as one module (see the module docstring) and its signature."""
    folder = Path(folder)
    if not is_model_folder(folder):
        raise SourceError(f"{folder} is not a Hugging Face model folder (no config.json)")
    pooling, normalize = pooling_settings(folder)
    transformer = load_transformer(folder)
    encoder = SentenceEncoder(transformer, pooling, normalize).eval()
    return encoder, folder_signature(folder, transformer)
