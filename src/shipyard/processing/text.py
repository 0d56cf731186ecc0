"""Text in, token ids out: the package's tokenizer, run the same way everywhere.

This is the one implementation of text pre-processing: validation data, calibration data,
``shipyard compare`` and the server all call it, so a model is validated on exactly the tokens
it is served. It uses Hugging Face's ``tokenizers`` library on the model's own
``tokenizer.json`` (copied into the package), with the settings the manifest records:

- ``max_length`` tokens per text, special tokens included (all-MiniLM-L6-v2: 256, its
  ``sentence_bert_config.json``); a longer text is cut from the right, as sentence-transformers
  and ``transformers`` do by default (``truncation: false`` refuses it instead);
- a batch is padded to its longest text, not to ``max_length`` (padding costs compute: the
  Rotten Tomatoes snippets have a median of 27 tokens).

A text is read at most ``max_length * CHARS_PER_TOKEN`` characters far: a 20 MB string took
12.5 s to tokenize here, and only its first few hundred words can reach the model. The cut is
exact: the tokens kept must end before a whitespace inside the part read (words after it only
give tokens past the cut), else the text is refused (a few words of thousands of characters).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import DataError, InputError, MissingExtraError
from shipyard.imports import import_reference, is_reference

if TYPE_CHECKING:
    from shipyard.signature import Signature

#: The file name a tokenizer gets inside a package.
TOKENIZER_FILE = "tokenizer.json"
#: How far into a text the tokenizer reads, per token of ``max_length`` (see the docstring).
CHARS_PER_TOKEN = 32


class TextPreprocess(BaseModel):
    """``preprocess: {text: {tokenizer: path/to/model, max_length: 256}}``

    ``tokenizer``: a ``tokenizer.json``, a folder holding one (a Hugging Face model folder),
    or ``pkg.module:attr`` naming either; copied into the package as ``tokenizer.json``.
    ``max_length`` defaults to the folder's ``sentence_bert_config.json`` ``max_seq_length``
    (else its ``tokenizer_config.json`` ``model_max_length``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokenizer: str = Field(description="tokenizer.json, its folder, or pkg.module:attr")
    max_length: int | None = Field(
        default=None, ge=2, description="Tokens per text, special tokens included"
    )
    truncation: bool = Field(
        default=True, description="Cut longer texts from the right (false: refuse them)"
    )
    input: str = Field(default="text", description="The BYTES input clients send texts in")
    ids: str = Field(default="input_ids", description="The model input of token ids")
    mask: str = Field(default="attention_mask", description="The model input of the mask")
    type_ids: str | None = Field(
        default="token_type_ids", description="The model input of segment ids, if it takes one"
    )

    def tokenizer_path(self, base_dir: Path) -> Path:
        """The ``tokenizer.json`` file ``tokenizer`` names; DataError when there is none."""
        if is_reference(self.tokenizer):
            target = import_reference(self.tokenizer, DataError)
            path = Path(target() if callable(target) else target)
        else:
            path = Path(self.tokenizer).expanduser()
            path = path if path.is_absolute() else base_dir / path
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise DataError(
                f"preprocess.text: no tokenizer at {path}; give a tokenizer.json (the "
                f"'tokenizers' library's format) or the model folder holding one"
            )
        return path

    def resolved(self, base_dir: Path) -> TextPreprocess:
        """These settings with ``tokenizer`` an absolute file and ``max_length`` set.

        Raises DataError when the tokenizer is missing or no maximum length is known."""
        path = self.tokenizer_path(base_dir).resolve()
        length = self.max_length or folder_max_length(path.parent)
        if length is None:
            raise DataError(
                f"preprocess.text: set max_length (tokens per text): {path.parent} has no "
                f"sentence_bert_config.json or tokenizer_config.json that says it"
            )
        return self.model_copy(update={"tokenizer": str(path), "max_length": length})

    def fed_inputs(self, signature: Signature) -> list[str]:
        """The model inputs the tokenizer feeds; ValueError when it cannot feed the model
        (every input must come from the tokenizer)."""
        names = signature.input_names
        wanted = [self.ids, self.mask, *([self.type_ids] if self.type_ids else [])]
        missing = [name for name in (self.ids, self.mask) if name not in names]
        if missing:
            raise ValueError(
                f"preprocess.text: the model has no input {missing[0]!r} (inputs: {names}); "
                f"name its token id and mask inputs with 'ids' and 'mask'"
            )
        other = [name for name in names if name not in wanted]
        if other:
            raise ValueError(
                f"preprocess.text feeds {wanted} but the model also takes {other}: "
                f"name it with 'type_ids' or give the model only the tokenizer's inputs"
            )
        kinds = {s.name: s.dtype for s in signature.inputs if np.dtype(s.dtype).kind not in "iu"}
        if kinds:
            raise ValueError(f"preprocess.text: token inputs must be integers, got {kinds}")
        return [name for name in wanted if name in names]


def folder_max_length(folder: Path) -> int | None:
    """The maximum length a model folder states: sentence-transformers' ``max_seq_length``,
    else the tokenizer's ``model_max_length`` (ignored when it is the "unlimited" 1e30)."""
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and 1 < value < 1_000_000:
            return value
    return None


@dataclass
class Tokenized:
    """A batch of texts as model inputs (int64, padded to the longest text), and which texts
    were cut at ``max_length`` (their indices)."""

    feeds: dict[str, np.ndarray]
    truncated: list[int] = field(default_factory=list)


def _as_text(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"element {index} is not UTF-8 text: {error}") from None
    raise InputError(f"element {index} is a {type(value).__name__}, not text")


class TextTokenizer:
    """The tokenizer of resolved ``config`` (see :meth:`TextPreprocess.resolved`); ``inputs``:
    the model inputs it feeds (default: ids, mask and type ids)."""

    def __init__(self, config: TextPreprocess, inputs: Sequence[str] | None = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as error:
            raise MissingExtraError("text pre-processing", "text", "tokenizers") from error
        if config.max_length is None:
            raise ValueError("TextTokenizer needs resolved settings (TextPreprocess.resolved)")
        self.config, self.max_length = config, config.max_length
        try:
            self.tokenizer = Tokenizer.from_file(config.tokenizer)
        except Exception as error:  # the Rust side raises plain Exception
            raise DataError(f"cannot read tokenizer {config.tokenizer}: {error}") from error
        padding = self.tokenizer.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        self.pad_id = padding.get("pad_id", self.tokenizer.token_to_id(pad_token) or 0)
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=pad_token)  # to the longest
        if config.truncation:
            self.tokenizer.enable_truncation(self.max_length)
        else:
            self.tokenizer.no_truncation()
        every = [config.ids, config.mask, *([config.type_ids] if config.type_ids else [])]
        self.inputs = list(inputs) if inputs is not None else every
        self.reach = self.max_length * CHARS_PER_TOKEN

    @property
    def padding(self) -> dict[str, int]:
        """The value each fed input is padded with (the batcher pads requests alike)."""
        pads = {self.config.ids: self.pad_id, self.config.mask: 0}
        if self.config.type_ids:
            pads[self.config.type_ids] = 0
        return {name: pads[name] for name in self.inputs}

    def __call__(self, texts: Sequence[Any]) -> Tokenized:
        """Tokenize ``texts`` (str, or UTF-8 bytes); InputError naming the element for bytes
        that are not UTF-8, an empty batch, or (``truncation: false``) a text that is too
        long."""
        if len(texts) == 0:
            raise InputError("no text to tokenize: send at least one")
        strings = [_as_text(value, index) for index, value in enumerate(texts)]
        cut = [index for index, text in enumerate(strings) if len(text) > self.reach]
        for index in cut:
            strings[index] = strings[index][: self.reach]
        encodings = self.tokenizer.encode_batch(strings)
        if not self.config.truncation:
            long = [i for i, e in enumerate(encodings) if len(e.ids) > self.max_length]
            if long or cut:
                index = min([*long, *cut])
                raise InputError(
                    f"element {index} has more than {self.max_length} tokens, the maximum "
                    f"(this package refuses longer texts: truncation false)"
                )
        for index in cut:
            self._check_cut(index, strings[index], encodings[index])
        truncated = [index for index, e in enumerate(encodings) if e.overflowing]
        columns = {
            self.config.ids: [e.ids for e in encodings],
            self.config.mask: [e.attention_mask for e in encodings],
        }
        if self.config.type_ids:
            columns[self.config.type_ids] = [e.type_ids for e in encodings]
        feeds = {name: np.asarray(columns[name], dtype=np.int64) for name in self.inputs}
        return Tokenized(feeds, truncated)

    def _check_cut(self, index: int, text: str, encoding: Any) -> None:
        """A text read only ``reach`` characters far gives the whole text's tokens when the
        kept tokens end before a whitespace in the part read (see the module's docstring)."""
        marks = encoding.special_tokens_mask
        ends = [
            end for (_, end), special in zip(encoding.offsets, marks, strict=True) if not special
        ]
        end = max(ends, default=0)
        if not encoding.overflowing or not any(c.isspace() for c in text[end:]):
            raise InputError(
                f"element {index}: its first {self.reach:,} characters give fewer than "
                f"{self.max_length} tokens of whole words; send shorter text"
            )


def _is_texts(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "USO" and value.ndim == 1
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def tokenize_value(value: Any, config: TextPreprocess, signature: Signature) -> Any:
    """A data source's value with its texts tokenized: texts (a list of str or a 1-D string
    array) as ``x``, alone or in ``(x, labels)``, or under ``config.input`` in a dict (or a
    Dataset). Returns a Dataset whose batches are cut to their longest text (see
    ``Dataset.mask``), or ``value`` unchanged when it holds no texts."""
    from shipyard.data import Dataset

    labels, x = None, value
    if isinstance(value, Dataset):
        x, labels = value.inputs, value.labels
    elif isinstance(value, tuple) and len(value) == 2:
        x, labels = value
    if isinstance(x, Mapping):
        texts, rest = x.get(config.input), {k: v for k, v in x.items() if k != config.input}
    else:
        texts, rest = x, {}
    if texts is None or not _is_texts(texts):
        return value
    tokenizer = TextTokenizer(config, config.fed_inputs(signature))
    try:
        feeds = tokenizer(list(texts)).feeds
    except InputError as error:
        raise DataError(f"cannot tokenize the data's texts: {error}") from error
    inputs = {**{k: np.asarray(v) for k, v in rest.items()}, **feeds}
    return Dataset(inputs, None if labels is None else np.asarray(labels), mask=config.mask)


def check_texts(texts: np.ndarray, name: str) -> np.ndarray:
    """A BYTES input of texts as a 1-D array: shape ``[N]`` or ``[N, 1]``; InputError else."""
    flat = texts[:, 0] if texts.ndim == 2 and texts.shape[1] == 1 else texts
    if flat.ndim != 1 or flat.size == 0:
        raise InputError(
            f"input '{name}': send texts as BYTES of shape [N] or [N, 1], one text per "
            f"element; got shape {list(texts.shape)}"
        )
    return flat
