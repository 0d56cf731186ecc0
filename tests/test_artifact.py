from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.artifact import Artifact
from shipyard.errors import ArtifactError
from tests.conftest import SMALL_SIGNATURE, small_net


@pytest.mark.parametrize(
    ("format", "path", "module", "message"),
    [
        ("onnxx", Path("m.onnx"), None, "artifact 'm': unknown format 'onnxx'; known: .*'onnx'"),
        ("torch", None, None, "artifact 'm': a torch artifact needs its module="),
        ("onnx", None, small_net(), "artifact 'm': a onnx artifact needs its path="),
    ],
)
def test_an_inconsistent_artifact_says_what_is_missing(
    format: str, path: Path | None, module: object, message: str
) -> None:
    with pytest.raises(ArtifactError, match=message):
        Artifact("m", format, SMALL_SIGNATURE, path=path, module=module)  # type: ignore[arg-type]
