"""The settings of the ``quantize`` pass and its named presets.

``QuantizeConfig`` is the pass's typed config (its fields are the recipe keys and the
``shipyard quantize`` options); ``PRESETS`` are the named configs (``--preset``, a recipe's
``optimize: quantize:``), named after their data types like optimum's
``AutoQuantizationConfig``; ``default_search()`` the ones a search tries unless told.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_SHORT = {"int8": "s8", "uint8": "u8"}
_STATIC_ONLY = (
    "format",
    "activations",
    "calibration",
    "calibration_samples",
    "symmetric",
    "quantize_bias",
)
_INT8_ONLY = ("weights", "per_channel", "reduce_range", "embeddings")


class QuantizeConfig(BaseModel):
    """``quantize: {mode: static, format: qdq, activations: uint8, weights: int8}``

    ``format``, ``activations`` and ``calibration*`` apply to ``static``; ``weights``,
    ``per_channel`` and ``reduce_range`` to the int8 modes; ``keep_io_types`` to ``fp16``.
    ``reduce_range: auto`` follows ORT's guidance: 7-bit weights on x86 CPUs without VNNI,
    where the u8s8 kernels can saturate. ``exclude_nodes`` takes node names or fnmatch
    patterns (``/head/*``); those nodes and ``exclude_op_types`` stay float32.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["dynamic", "static", "fp16"] = Field(
        description="dynamic (no calibration), static (calibrated QDQ/QOperator) or fp16"
    )
    format: Literal["qdq", "qoperator"] = Field(
        default="qdq",
        description="static: QDQ (quantize/dequantize pairs) or QOperator (integer ops)",
    )
    activations: Literal["uint8", "int8"] = Field(
        default="uint8", description="static: activation type (uint8 is ORT's fast x86 path)"
    )
    weights: Literal["int8", "uint8"] = Field(default="int8", description="Weight type")
    per_channel: bool = Field(
        default=False, description="One scale per output channel instead of per tensor"
    )
    reduce_range: bool | Literal["auto"] = Field(
        default="auto",
        description="7-bit weights; auto: on x86 without VNNI, where u8s8 kernels can saturate",
    )
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="static: how activation ranges are calibrated"
    )
    calibration_samples: int = Field(
        default=256, ge=1, description="static: calibration samples used"
    )
    # TensorRT's explicit quantization takes only symmetric QDQ (zero points 0, int8) and
    # float biases: symmetric + quantize_bias false (the tensorrt_s8s8 preset).
    symmetric: bool = Field(
        default=False, description="Symmetric ranges (zero points 0), as TensorRT requires"
    )
    quantize_bias: bool = Field(
        default=True, description="Quantize biases to int32 (TensorRT wants float biases: false)"
    )
    preprocess: bool = Field(
        default=True, description="Run ORT's quant_pre_process (shape inference, fusions) first"
    )
    exclude_nodes: list[str] = Field(
        default_factory=list, description="Node names or fnmatch patterns (/head/*) kept in float"
    )
    exclude_op_types: list[str] = Field(
        default_factory=list, description="Op types kept in float, e.g. Softmax"
    )
    # ORT quantizes a Gather from a float initializer (an embedding lookup) in every int8
    # mode, with one scale per table. See passes/embeddings.py.
    embeddings: Literal["int8", "fp16", "fp32"] = Field(
        default="int8",
        description="int8 modes: embedding tables (Gather from a float initializer) as int8 "
        "(ORT's default), fp16 (half size, cast after the lookup) or fp32 (left as they are)",
    )
    keep_io_types: bool = Field(default=True, description="fp16: keep float32 inputs and outputs")
    filename: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.onnx$",
        description="File name in the package (default from the settings' label)",
    )
    name: str | None = Field(default=None, description="Artifact name (default onnx-<label>)")

    @model_validator(mode="after")
    def _consistent(self) -> QuantizeConfig:
        # Compared with the defaults, not model_fields_set: a dumped config must load again.
        ignored = [f for f in _STATIC_ONLY if self.mode != "static" and _changed(self, f)]
        ignored += [f for f in _INT8_ONLY if self.mode == "fp16" and _changed(self, f)]
        if self.mode != "fp16" and _changed(self, "keep_io_types"):
            ignored.append("keep_io_types")
        if ignored:
            raise ValueError(f"{', '.join(ignored)} do(es) not apply to mode {self.mode!r}")
        if self.mode == "static" and (self.activations, self.weights) == ("int8", "uint8"):
            raise ValueError(
                "ONNX Runtime cannot quantize int8 activations with uint8 weights; "
                "use weights: int8 or activations: uint8"
            )
        return self

    # Presets, named after their data types like optimum's AutoQuantizationConfig.
    @classmethod
    def static_qdq_u8s8(cls, **overrides: Any) -> QuantizeConfig:
        """Static QDQ, uint8 activations, int8 weights: ORT's fast int8 path on x86."""
        return cls(**{"mode": "static", "activations": "uint8", "weights": "int8", **overrides})

    @classmethod
    def static_qdq_s8s8(cls, **overrides: Any) -> QuantizeConfig:
        """Static QDQ, int8 activations and weights (ORT's default; usual on ARM and NPUs)."""
        return cls(**{"mode": "static", "activations": "int8", "weights": "int8", **overrides})

    @classmethod
    def tensorrt_s8s8(cls, **overrides: Any) -> QuantizeConfig:
        """Static QDQ, symmetric int8 activations and weights, float biases: what TensorRT's
        explicit quantization accepts (``convert_tensorrt: {precision: int8}``)."""
        values = {"activations": "int8", "symmetric": True, "quantize_bias": False, **overrides}
        return cls(**{"mode": "static", "weights": "int8", "per_channel": True, **values})

    @classmethod
    def dynamic_s8(cls, **overrides: Any) -> QuantizeConfig:
        """Dynamic (no calibration), int8 weights; activations are quantized at run time."""
        return cls(**{"mode": "dynamic", "weights": "int8", **overrides})

    @classmethod
    def dynamic_u8(cls, **overrides: Any) -> QuantizeConfig:
        """Dynamic, uint8 weights (u8u8 kernels: no saturation, so no reduce_range)."""
        return cls(**{"mode": "dynamic", "weights": "uint8", **overrides})

    @classmethod
    def fp16(cls, **overrides: Any) -> QuantizeConfig:
        """Float16 weights and compute; inputs and outputs stay float32."""
        return cls(**{"mode": "fp16", **overrides})

    def label(self) -> str:
        """A short unique tag: ``int8-static-qdq-u8s8``, ``int8-dynamic-s8-pc``, ``fp16``..."""
        if self.mode == "fp16":
            parts = ["fp16"]
        elif self.mode == "dynamic":
            parts = ["int8", "dynamic", _SHORT[self.weights]]
        else:
            parts = ["int8", "static", self.format, _SHORT[self.activations] + _SHORT[self.weights]]
        parts += ["pc"] if self.per_channel else []
        parts += ["sym"] if self.symmetric else []
        parts += [] if self.quantize_bias else ["fbias"]
        parts += [self.calibration] if self.calibration != "minmax" else []
        parts += [] if self.reduce_range == "auto" else ["rr" if self.reduce_range else "norr"]
        parts += [] if self.embeddings == "int8" else [f"emb{self.embeddings[2:]}"]
        # The fields not spelled out above still make the label unique, through a digest.
        rest = ("calibration_samples", "preprocess", "exclude_nodes", "exclude_op_types")
        extras = {f: getattr(self, f) for f in (*rest, "keep_io_types") if _changed(self, f)}
        if extras:
            parts.append(hashlib.sha256(json.dumps(extras).encode()).hexdigest()[:6])
        return "-".join(parts)

    def output_filename(self) -> str:
        return self.filename or f"model.{self.label()}.onnx"

    def artifact_name(self) -> str:
        return self.name or f"onnx-{self.label()}"


#: Preset name -> factory (keyword overrides allowed), in the order a search should try them.
PRESETS: dict[str, Callable[..., QuantizeConfig]] = {
    "static_qdq_u8s8": QuantizeConfig.static_qdq_u8s8,
    "static_qdq_u8s8_per_channel": partial(QuantizeConfig.static_qdq_u8s8, per_channel=True),
    "static_qdq_u8s8_entropy": partial(QuantizeConfig.static_qdq_u8s8, calibration="entropy"),
    "static_qdq_s8s8": QuantizeConfig.static_qdq_s8s8,
    "dynamic_s8": QuantizeConfig.dynamic_s8,
    "dynamic_u8": QuantizeConfig.dynamic_u8,
    "fp16": QuantizeConfig.fp16,
    # For models with embedding tables: int8 layers, tables in float16 or float32. On a model
    # without tables they equal dynamic_s8, so a search tries them only when a recipe names
    # them in `optimize: quantize:` (see default_search).
    "dynamic_s8_fp16_embeddings": partial(QuantizeConfig.dynamic_s8, embeddings="fp16"),
    "dynamic_s8_fp32_embeddings": partial(QuantizeConfig.dynamic_s8, embeddings="fp32"),
    # For transformers (MiniLM): int8 weights with one scale per output channel. Per-sample
    # cosine to the original on the MiniLM example's 256 texts, min / mean (AVX-512 VNNI):
    # dynamic_s8 0.888 / 0.957, per_channel 0.978 / 0.992, + reduce_range 0.973 / 0.991,
    # + fp16 embedding table 0.983 / 0.992 (35 MB instead of 23). Tried when a recipe names
    # them: on CNNs dynamic s8 runs ConvInteger, 2x slower than fp32 (MEASURED.md).
    "dynamic_s8_per_channel": partial(QuantizeConfig.dynamic_s8, per_channel=True),
    "dynamic_s8_per_channel_reduce_range": partial(
        QuantizeConfig.dynamic_s8, per_channel=True, reduce_range=True
    ),
    "dynamic_s8_per_channel_fp16_embeddings": partial(
        QuantizeConfig.dynamic_s8, per_channel=True, embeddings="fp16"
    ),
}
#: Presets a search tries only when a recipe names them (see default_search).
NAMED_ONLY = frozenset({"dynamic_s8_per_channel", "dynamic_s8_per_channel_reduce_range"})


def default_search() -> list[str]:
    """The presets an optimization search tries unless the recipe names others: every preset
    that applies to any model, i.e. all but the embedding-table ones and ``NAMED_ONLY``."""
    return [
        name
        for name, make in PRESETS.items()
        if make().embeddings == "int8" and name not in NAMED_ONLY
    ]


def _changed(config: BaseModel, field: str) -> bool:
    default = type(config).model_fields[field].get_default(call_default_factory=True)
    return bool(getattr(config, field) != default)
