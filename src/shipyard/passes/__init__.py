"""Passes: functions ``Artifact x Config -> Artifact``, registered by name.

A pass declares its typed config once (a pydantic model); the recipe schema for the
``passes:`` list is generated from this registry, so the config is also the documentation.
What a pass makes (a torch module or a file) is declared here too, and nowhere else.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from shipyard.errors import MissingExtraError
from shipyard.passes.convert_openvino import OpenVinoConfig, run_convert_openvino
from shipyard.passes.convert_tensorrt import TensorRtConfig, run_convert_tensorrt
from shipyard.passes.convert_tflite import TfliteConfig, run_convert_tflite
from shipyard.passes.export import ExportConfig, run_export
from shipyard.passes.finetune import FinetuneConfig, run_finetune
from shipyard.passes.prune import PruneConfig, run_prune
from shipyard.passes.quantize import QuantizeConfig, run_quantize

if TYPE_CHECKING:
    from shipyard.artifact import Artifact
    from shipyard.passes.context import PassContext


@dataclass(frozen=True)
class PassSpec:
    """One registered pass.

    ``makes`` is what ``run`` returns: ``"module"``, a new torch module that replaces the
    model for later steps (prune, finetune); ``"file"``, a file artifact made from its input
    while the torch module stays as it was (export, quantize, convert_*). A file is validated,
    benchmarked and packaged; a module is what later torch passes start from.
    """

    name: str
    config: type[BaseModel]
    run: Callable[[Artifact, Any, PassContext], Artifact]
    makes: Literal["module", "file"]
    summary: str
    # The optional extra the pass needs and the modules it provides (the pass and the
    # runtime that validates its result), checked before a build does any work.
    extra: str | None = None
    modules: tuple[str, ...] = ()

    def check_extra(self) -> None:
        """Raise MissingExtraError (naming the extra) when a module the pass needs is absent."""
        for module in self.modules:
            if importlib.util.find_spec(module) is None:
                raise MissingExtraError(f"the {self.name} pass", self.extra or "", module)


PASSES: dict[str, PassSpec] = {
    spec.name: spec
    for spec in (
        PassSpec(
            "prune",
            PruneConfig,
            run_prune,
            "module",
            "torch module -> pruned torch module (l1_unstructured or structured)",
        ),
        PassSpec(
            "finetune",
            FinetuneConfig,
            run_finetune,
            "module",
            "torch module -> fine-tuned torch module (needs data: train:)",
        ),
        PassSpec("export", ExportConfig, run_export, "file", "torch module -> ONNX file"),
        PassSpec(
            "convert_openvino",
            OpenVinoConfig,
            run_convert_openvino,
            "file",
            "ONNX file or torch module -> OpenVINO IR (.xml + .bin): fp32, fp16 or int8 (NNCF)",
            extra="openvino",
            modules=("openvino", "nncf"),
        ),
        PassSpec(
            "convert_tflite",
            TfliteConfig,
            run_convert_tflite,
            "file",
            "torch module -> TFLite (LiteRT) file: fp32, dynamic_int8, weight_only_int8 or "
            "int8 (PT2E, calibrated); optional NHWC I/O",
            extra="tflite",
            modules=("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
        ),
        PassSpec(
            "convert_tensorrt",
            TensorRtConfig,
            run_convert_tensorrt,
            "file",
            "ONNX file -> TensorRT engine (.plan + .plan.json build record): fp32, fp16, "
            "int8 from symmetric QDQ; built on and for this machine's NVIDIA GPU",
            extra="tensorrt",
            modules=("tensorrt",),
        ),
        PassSpec(
            "quantize",
            QuantizeConfig,
            run_quantize,
            "file",
            "ONNX file -> int8 (dynamic or static QDQ) or fp16 ONNX file",
        ),
    )
}

__all__ = ["PASSES", "PassSpec"]
