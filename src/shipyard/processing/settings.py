"""The recipe's ``preprocess:`` and ``postprocess:`` sections, as the manifest records them.

``Preprocess`` says how raw inputs become the model's tensors (``image``: decode, resize,
crop, normalise; ``text``: the tokenizer, copied into the package); ``Postprocess`` how
outputs become answers (``labels``: a class-name file, copied into the package). Both are
checked against the model's signature before any slow step, and ``install`` puts their files
into a package folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import DataError
from shipyard.imports import import_reference, is_reference
from shipyard.processing.image import ImagePreprocess
from shipyard.processing.labels import LABELS_FILE, read_labels
from shipyard.processing.text import TOKENIZER_FILE, TextPreprocess
from shipyard.signature import Signature, TensorSpec


class Preprocess(BaseModel):
    """``preprocess: {image: {...}}`` or ``{text: {...}}``: how encoded images or texts
    become the model's input tensors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: ImagePreprocess | None = None
    text: TextPreprocess | None = None

    def check(self, signature: Signature) -> None:
        """ValueError naming what does not fit the model's inputs."""
        self.image_input(signature)
        if self.text is not None:
            self.text.fed_inputs(signature)

    def resolved(self, base_dir: Path) -> Preprocess:
        """These settings with the tokenizer's file found (relative to ``base_dir``, the
        recipe's or package's folder) and its maximum length known; see ``TextPreprocess``."""
        if self.text is None:
            return self
        return self.model_copy(update={"text": self.text.resolved(base_dir)})

    def image_input(self, signature: Signature) -> TensorSpec | None:
        """The input ``image`` feeds; raises ValueError when it cannot take the images."""
        config = self.image
        if config is None:
            return None
        names = signature.input_names
        if config.input is None and len(names) != 1:
            raise ValueError(f"preprocess.image: the model takes {names}: name one with 'input'")
        name = config.input or names[0]
        if name not in names:
            raise ValueError(
                f"preprocess.image: input {name!r} is not a model input; inputs: {names}"
            )
        spec = next(s for s in signature.inputs if s.name == name)
        if spec.dtype != config.dtype:
            raise ValueError(
                f"preprocess.image: dtype {config.dtype} but input {name!r} is {spec.dtype}"
            )
        expected = config.sample_shape()
        shape = spec.shape[1:]
        fits = expected is None or (
            len(shape) == len(expected)
            and all(isinstance(d, str) or d == e for d, e in zip(shape, expected, strict=True))
        )
        if not fits:
            raise ValueError(
                f"preprocess.image: crop {config.crop} in layout {config.layout} gives "
                f"{list(expected or ())} per image, but input {name!r} takes {list(spec.shape)}"
            )
        return spec


class Postprocess(BaseModel):
    """``postprocess: {labels: labels.txt, top_k: 5}``

    ``labels``: a file with one class name per line (relative to the recipe), or
    ``pkg.module:attr`` naming such a path (a file shipped inside a Python package).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: str | None = Field(default=None, description="Class names, one per line")
    top_k: int = Field(default=5, ge=1, description="Classes an answer names, best first")

    def labels_path(self, base_dir: Path) -> Path | None:
        """Where ``labels`` points: a reference's value, or a path against ``base_dir``."""
        if self.labels is None:
            return None
        if is_reference(self.labels):
            target = import_reference(self.labels, DataError)
            return Path(target() if callable(target) else target)
        path = Path(self.labels).expanduser()
        return path if path.is_absolute() else base_dir / path

    def read_labels(self, base_dir: Path, signature: Signature) -> list[str] | None:
        """The class names, checked against the first output's class dimension."""
        path = self.labels_path(base_dir)
        if path is None:
            return None
        labels = read_labels(path)
        output = signature.outputs[0] if signature.outputs else None
        classes = output.shape[-1] if output is not None and output.shape else None
        if isinstance(classes, int) and classes != len(labels):
            raise DataError(
                f"postprocess labels: {path} names {len(labels)} classes but output "
                f"{output.name!r} has {classes}"  # type: ignore[union-attr]
            )
        return labels


def install(
    folder: Path,
    preprocess: Preprocess | None,
    postprocess: Postprocess | None,
    base_dir: Path,
    signature: Signature,
) -> dict[str, Any]:
    """Copy the processing files into the package ``folder``; return the manifest entries
    (``preprocess``, ``postprocess`` with file names relative to the package). The files
    are then covered by the package's sha256 list like every other file."""
    entries: dict[str, Any] = {}
    if preprocess is not None:
        entries["preprocess"] = preprocess.model_dump(mode="json", exclude_none=True)
        if preprocess.text is not None:  # the tokenizer's file, and the length it was given
            text = preprocess.text.resolved(base_dir)
            shutil.copyfile(text.tokenizer, folder / TOKENIZER_FILE)
            packaged = text.model_copy(update={"tokenizer": TOKENIZER_FILE})
            entries["preprocess"]["text"] = packaged.model_dump(mode="json")
    if postprocess is not None:
        entry = postprocess.model_dump(mode="json", exclude_none=True)
        source = postprocess.labels_path(base_dir)
        if source is not None:
            labels = postprocess.read_labels(base_dir, signature)
            shutil.copyfile(source, folder / LABELS_FILE)
            entry.update(labels=LABELS_FILE, classes=len(labels or ()))
        entries["postprocess"] = entry
    return entries
