"""Texts as a model's input: the package's tokenizer turns them into token ids on the server.

A version whose manifest has ``preprocess: {text: ...}`` takes, besides its token inputs
(``input_ids``, ``attention_mask``...), one BYTES input of UTF-8 texts (``text`` unless the
recipe names another), one text per element (shape ``[N]`` or ``[N, 1]``), as JSON strings,
binary length-prefixed elements (tritonclient's ``np.object_`` arrays) or gRPC
``bytes_contents``. :meth:`ServedText.convert` tokenizes them with the package's own
``tokenizer.json`` and settings (:mod:`shipyard.processing.text`, the code validation used),
padded to the longest text of the request; dispatch runs it off the event loop, on the pool
the images use. The batcher then pads requests of different lengths to the longest of a batch
(``padding``), as the tokenizer pads texts within one request.

A text cut at ``max_length`` tokens is said so in the response parameters:
``truncated_texts`` (the indices, comma-separated) and ``max_length``. Token ids sent raw
keep working; sequences longer than ``max_length`` are refused (the model was validated, and
its position table may end, there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InputError
from shipyard.processing.text import TextPreprocess, TextTokenizer, check_texts
from shipyard.serve.errors import BadRequest
from shipyard.serve.images import POOL
from shipyard.signature import Signature

Parameters = dict[str, Any]


@dataclass(frozen=True)
class ServedText:
    """The BYTES input that takes texts, and the tokenizer that turns them into the model's
    token inputs. ``max_rows``: most texts in one request (the batcher's limit; 0: none)."""

    input: str
    tokenizer: TextTokenizer
    max_rows: int = 0

    @classmethod
    def from_manifest(
        cls, manifest: Mapping[str, Any], signature: Signature, folder: Path, max_rows: int = 0
    ) -> ServedText | None:
        """The version's text pre-processing, or None when its package has none. Raises
        ValueError (a bad section) or DataError (a tokenizer that cannot be read)."""
        entry = (manifest.get("preprocess") or {}).get("text")
        if not entry:
            return None
        config = TextPreprocess.model_validate(entry).resolved(folder)
        if folder.resolve() not in Path(config.tokenizer).parents:
            raise ValueError(f"the tokenizer {entry.get('tokenizer')!r} is outside the package")
        tokenizer = TextTokenizer(config, config.fed_inputs(signature))
        return cls(config.input, tokenizer, max_rows)

    @property
    def padding(self) -> dict[str, int]:
        """Pad value per token input: the batcher pads requests of other lengths alike."""
        return self.tokenizer.padding

    def describe(self) -> str:
        """For the model config: what a client may send instead of the token ids."""
        return (
            f"{self.input}: BYTES of UTF-8 texts, tokenized into "
            f"{', '.join(self.tokenizer.inputs)} (at most {self.tokenizer.max_length} tokens)"
        )

    def _texts(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        others = [n for n, a in inputs.items() if n != self.input and a.dtype.kind == "O"]
        if others:
            raise BadRequest(
                f"input '{others[0]}' is BYTES, but this model takes texts in input "
                f"'{self.input}' (BYTES) or token ids in {self.tokenizer.inputs} (INT64)"
            )
        mixed = [name for name in inputs if name != self.input]
        if mixed:
            raise BadRequest(
                f"send texts in '{self.input}' alone: the tokenizer makes {mixed} from them"
            )
        try:
            texts = check_texts(inputs[self.input], self.input)
        except InputError as error:
            raise BadRequest(str(error)) from None
        if self.max_rows and texts.size > self.max_rows:
            raise BadRequest(
                f"input '{self.input}' holds {texts.size} texts; this model takes at most "
                f"{self.max_rows} per request (max_batch_size)"
            )
        return texts

    def convert(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Parameters]:
        """The token inputs for the texts in ``inputs``, and the response parameters that say
        which texts were cut. BadRequest naming the input and element for a text that cannot
        be used (not UTF-8; too long when the package refuses long texts)."""
        texts = self._texts(inputs)
        try:
            tokenized = self.tokenizer(list(texts))
        except InputError as error:
            raise BadRequest(f"input '{self.input}' {error}") from None
        said: Parameters = {}
        if tokenized.truncated:
            said = {
                "truncated_texts": ",".join(str(i) for i in tokenized.truncated),
                "max_length": self.tokenizer.max_length,
            }
        return tokenized.feeds, said

    async def convert_async(
        self, inputs: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], Parameters]:
        """:meth:`convert` on the processing pool (tokenizers releases the GIL)."""
        return await asyncio.get_running_loop().run_in_executor(POOL, self.convert, inputs)

    def check_tokens(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Token ids sent raw: BadRequest when a sequence is longer than ``max_length``."""
        ids = inputs.get(self.tokenizer.config.ids)
        if ids is not None and ids.ndim == 2 and ids.shape[1] > self.tokenizer.max_length:
            raise BadRequest(
                f"input '{self.tokenizer.config.ids}' has {ids.shape[1]} tokens per row, above "
                f"this model's maximum of {self.tokenizer.max_length}"
            )
