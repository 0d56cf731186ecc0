"""Passes: functions ``Artifact x Config -> Artifact``, registered by name.

A pass declares its typed config once (a pydantic model); the recipe schema for the
``passes:`` list is generated from this registry, so the config is also the documentation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shipyard.passes.export import ExportConfig, run_export

if TYPE_CHECKING:
    from shipyard.artifact import Artifact
    from shipyard.passes.context import PassContext


@dataclass(frozen=True)
class PassSpec:
    name: str
    config: type[BaseModel]
    run: Callable[[Artifact, Any, PassContext], Artifact]
    summary: str


PASSES: dict[str, PassSpec] = {
    "export": PassSpec("export", ExportConfig, run_export, "torch module -> ONNX file"),
}

__all__ = ["PASSES", "PassSpec"]
