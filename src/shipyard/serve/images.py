"""Encoded images as a model's input: the package pre-processes them, the server applies it.

A version whose manifest has ``preprocess: {image: ...}`` takes, besides its input tensor,
the same input as BYTES: JPEG/PNG/... bytes, one image per element (shape ``[N]`` or
``[N, 1]``), as tritonclient sends ``np.object_`` arrays or ``curl --data-binary`` a file.
:meth:`EncodedImages.convert` decodes and pre-processes them with the package's own settings
(:mod:`shipyard.processing.image`, the code validation used) into the model's input tensor.
It blocks: dispatch runs it in a worker thread, and the images of one request are decoded in
parallel on a pool (Pillow releases the GIL while it decodes and resizes). The batcher then
batches the tensors as usual.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.errors import InputError
from shipyard.processing.image import ImagePreprocess, preprocess
from shipyard.serve.errors import BadRequest
from shipyard.signature import Signature

# One pool for the process, for images and texts (serve/text.py): decoding and tokenizing are
# CPU work, so more threads than cores only queue.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
POOL = ThreadPoolExecutor(max_workers=_CORES or 2, thread_name_prefix="shipyard-processing")


@dataclass(frozen=True)
class EncodedImages:
    """The input that takes encoded images and how they become its tensor."""

    input: str
    config: ImagePreprocess

    @classmethod
    def from_manifest(
        cls, manifest: Mapping[str, Any], signature: Signature
    ) -> EncodedImages | None:
        """The version's image pre-processing, or None when its package has none."""
        entry = (manifest.get("preprocess") or {}).get("image")
        if not entry:
            return None
        config = ImagePreprocess.model_validate(entry)
        name = config.input or signature.input_names[0]
        return cls(name, config)

    def describe(self) -> str:
        """For the model config: what a client may send instead of the tensor."""
        crop = self.config.crop_size
        size = f", resized and cropped to {crop[0]}x{crop[1]}" if crop else ""
        return f"{self.input}: BYTES of encoded images (JPEG, PNG, WebP...){size}"

    def _images(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        images = inputs[self.input]
        if images.ndim == 2 and images.shape[1] == 1:
            images = images[:, 0]
        if images.ndim != 1 or images.size == 0:
            raise BadRequest(
                f"input '{self.input}': send encoded images as BYTES of shape [N] or [N, 1], "
                f"one image per element; got shape {list(inputs[self.input].shape)}"
            )
        return images

    def _one(self, images: np.ndarray, index: int) -> np.ndarray:
        try:
            return preprocess([images[index]], self.config)
        except InputError as error:  # ImageError included: not an image, too big...
            raise BadRequest(f"input '{self.input}' image {index}: {error}") from None

    def convert(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` with the encoded images of ``self.input`` replaced by the model's
        tensor, in this thread. BadRequest naming the input and the element when an image
        cannot be used."""
        images = self._images(inputs)
        batch = np.concatenate([self._one(images, i) for i in range(images.size)])
        return {**inputs, self.input: batch}

    async def convert_async(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`convert` on the image pool, the images of one request in parallel. The pool
        has one thread per core: decoding is CPU work, and more threads than cores (as
        ``asyncio.to_thread``'s executor has) only take turns with the model's threads."""
        images = self._images(inputs)
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(
            *(loop.run_in_executor(POOL, self._one, images, i) for i in range(images.size))
        )
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)  # one: no copy
        return {**inputs, self.input: batch}


def encoded_inputs(inputs: Mapping[str, np.ndarray]) -> list[str]:
    """The names of ``inputs`` sent as BYTES (object arrays)."""
    return [name for name, array in inputs.items() if array.dtype.kind == "O"]
