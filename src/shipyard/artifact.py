"""Artifacts: one model in one format, its signature, and how it was made.

An Artifact is either a file on disk (``.onnx``, later ``.tflite`` ...) or an in-memory torch
module (format ``torch``). ``provenance`` lists the passes that produced it, each with its
config, so that every file in a package explains itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.errors import ArtifactError
from shipyard.signature import Signature

if TYPE_CHECKING:
    import torch

FORMATS = ("torch", "onnx", "openvino", "tflite", "tensorrt")


@dataclass
class PassRecord:
    """One step in an artifact's history: which pass, with which config, how long it took."""

    name: str
    config: dict[str, Any]
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.name,
            "config": self.config,
            "seconds": round(self.seconds, 3),
            **({"notes": self.notes} if self.notes else {}),
        }


@dataclass
class Artifact:
    """A model in one format.

    ``name`` labels it in tables and reports (``torch``, ``onnx``, ``onnx-int8``...).
    For format ``torch`` the model lives in ``module``; ``path`` (if any) is where it came from.
    """

    name: str
    format: str
    signature: Signature
    path: Path | None = None
    module: torch.nn.Module | None = None
    provenance: list[PassRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ArtifactError(
                f"artifact '{self.name}': unknown format {self.format!r}; known: {list(FORMATS)}"
            )
        if self.format == "torch" and self.module is None:
            raise ArtifactError(f"artifact '{self.name}': a torch artifact needs its module=")
        if self.format != "torch" and self.path is None:
            raise ArtifactError(f"artifact '{self.name}': a {self.format} artifact needs its path=")

    def files(self) -> list[Path]:
        """Every file the artifact consists of (an ONNX model may have external data)."""
        if self.path is None:
            return []
        files = [self.path]
        # ONNX may keep weights in external data; OpenVINO IR keeps them in the .bin beside .xml
        companions = [self.path.with_name(self.path.name + ".data"), self.path.with_suffix(".bin")]
        if self.format == "tensorrt":  # the build record: GPU, compute capability, version
            companions.append(self.path.with_name(self.path.name + ".json"))
        files += [c for c in companions if c != self.path and c.exists()]
        return files

    @property
    def size_bytes(self) -> int:
        if self.format == "torch" and self.module is not None and self.path is None:
            return sum(t.numel() * t.element_size() for t in self.module.state_dict().values())
        return sum(f.stat().st_size for f in self.files())

    def describe(self) -> str:
        where = str(self.path) if self.path else "in memory"
        return f"{self.name} ({self.format}, {where})"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    Readers never see a half-written file: on error the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; a package must be readable by the server's user too.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
