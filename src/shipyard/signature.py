"""Tensor signatures: the names, dtypes and shapes a model takes and returns.

A dimension is an ``int`` (fixed) or a ``str`` naming a dynamic dimension (``"batch"``).
Every Session checks its inputs against the signature before running, so a wrong shape or
dtype gets one readable error instead of a backend's stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shipyard.errors import InputError

Dim = int | str

_DTYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
}


class TensorSpec(BaseModel):
    """One named tensor: ``{name: x, dtype: float32, shape: [batch, 1, 8, 8]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    dtype: str = "float32"
    shape: tuple[Dim, ...]
    # Set where an artifact takes an image tensor in another layout than the model it was
    # made from (TFLite's channels_last_io): data sets stay channels-first (the PyTorch
    # layout) and validation transposes them for this artifact. None: as the source model.
    layout: Literal["NCHW", "NHWC"] | None = None
    # True: the model is not meant to see NaN or Inf in this input (an image, token ids as
    # floats); every Session and the server refuse such an input, naming it, before running.
    finite: bool = False
    # [low, high], inclusive, for integer inputs such as embedding ids (``range: [0, 942]``):
    # every Session and the server refuse a value outside it, naming the input, the value and
    # its index. ONNX Runtime would otherwise fail deep in a Gather, or (some backends) read
    # past the table and return a silently wrong score.
    range: tuple[int, int] | None = None

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in _DTYPES:
            raise ValueError(f"unknown dtype {value!r}; use one of {sorted(_DTYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: tuple[Dim, ...]) -> tuple[Dim, ...]:
        for dim in value:
            if isinstance(dim, int) and dim < 1:
                raise ValueError(f"fixed dimensions must be >= 1, got {dim}")
        return value

    @field_validator("finite")
    @classmethod
    def _float_only(cls, value: bool, info: ValidationInfo) -> bool:
        dtype = info.data.get("dtype")
        if value and dtype is not None and np.dtype(dtype).kind != "f":
            raise ValueError(f"finite: true applies to float inputs; this one is {dtype}")
        return value

    @field_validator("range")
    @classmethod
    def _integer_range(
        cls, value: tuple[int, int] | None, info: ValidationInfo
    ) -> tuple[int, int] | None:
        if value is None:
            return value
        dtype = info.data.get("dtype")
        if dtype is not None and np.dtype(dtype).kind not in "iu":
            raise ValueError(f"range applies to integer inputs; this one is {dtype}")
        if value[0] > value[1]:
            raise ValueError(f"range [{value[0]}, {value[1]}]: the low end is above the high end")
        return value

    @field_validator("layout")
    @classmethod
    def _four_dims(cls, value: str | None, info: ValidationInfo) -> str | None:
        shape = info.data.get("shape")
        if value is not None and shape is not None and len(shape) != 4:
            raise ValueError(f"layout {value} needs a 4-dimensional shape, got {list(shape)}")
        return value

    def from_channels_first(self, array: np.ndarray) -> np.ndarray:
        """``array`` (channels-first, as PyTorch takes it) in this tensor's layout."""
        if self.layout == "NHWC":
            return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
        return array

    def to_channels_first(self, array: np.ndarray) -> np.ndarray:
        """The inverse of ``from_channels_first``: this tensor's layout -> channels-first."""
        if self.layout == "NHWC":
            return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
        return array

    @property
    def dynamic_dims(self) -> dict[int, str]:
        """Axis index -> dynamic dimension name."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, sizes: Mapping[str, int] | None = None, default: int = 1) -> tuple:
        """The shape with every dynamic dimension replaced by ``sizes[name]`` (or ``default``)."""
        sizes = sizes or {}
        return tuple(d if isinstance(d, int) else sizes.get(d, default) for d in self.shape)

    def describe(self) -> str:
        layout = f" {self.layout}" if self.layout else ""
        bounds = f" in [{self.range[0]}, {self.range[1]}]" if self.range else ""
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]{layout}{bounds}"


class Signature(BaseModel):
    """The inputs and outputs of a model, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()

    @field_validator("inputs")
    @classmethod
    def _has_inputs(cls, value: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        if not value:
            raise ValueError("a signature needs at least one input")
        names = [spec.name for spec in value]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, got {names}")
        return value

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def with_outputs(self, outputs: Sequence[TensorSpec]) -> Signature:
        return Signature(inputs=self.inputs, outputs=tuple(outputs))

    def example_inputs(
        self, batch: int = 1, seed: int = 0, sizes: Mapping[str, int] | None = None
    ) -> dict[str, np.ndarray]:
        """Random inputs that satisfy the signature; every dynamic dim gets ``batch``.

        Floats are standard normal; integers are drawn from the input's ``range`` when it
        has one, else from [0, 100) so that token ids and class indices stay in range for
        typical models.
        """
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = spec.concrete_shape(sizes, default=batch)
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                out[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                out[spec.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                low, high = spec.range if spec.range is not None else (0, 99)
                out[spec.name] = rng.integers(low, high + 1, shape).astype(dtype)
        return out

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise InputError naming the first input that contradicts the signature.

        Dynamic dimensions that share a name (e.g. ``batch``) must agree across inputs.
        """
        names = self.input_names
        missing = [n for n in names if n not in feeds]
        unknown = [n for n in feeds if n not in names]
        if missing or unknown:
            raise InputError(self._name_mismatch(missing, unknown))
        bound: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            array = feeds[spec.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input '{spec.name}' must be a numpy array, got {type(array)}")
            if array.dtype != np.dtype(spec.dtype):
                raise InputError(
                    f"input '{spec.name}' has dtype {array.dtype}, expected {spec.dtype} "
                    f"({spec.describe()}); convert it with .astype(np.{spec.dtype})"
                )
            if array.ndim != len(spec.shape):
                raise InputError(
                    f"input '{spec.name}' has shape {tuple(array.shape)} ({array.ndim} dims), "
                    f"expected {len(spec.shape)} dims: {spec.describe()}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise InputError(
                        f"input '{spec.name}' has shape {tuple(array.shape)}, expected "
                        f"{spec.describe()}: dimension {axis} must be {want}, got {got}"
                    )
                if isinstance(want, str):
                    if want in bound and bound[want][0] != got:
                        first_size, first_input = bound[want]
                        raise InputError(
                            f"dynamic dimension '{want}' is {first_size} in input "
                            f"'{first_input}' but {got} in input '{spec.name}'"
                        )
                    bound.setdefault(want, (got, spec.name))
            if spec.range is not None and array.size:
                low, high = spec.range
                if array.min() < low or array.max() > high:
                    bad = np.flatnonzero((array < low) | (array > high))
                    raise InputError(
                        f"input '{spec.name}' holds {bad.size} value(s) outside its range "
                        f"[{low}, {high}] (the first at flat index {bad[0]}: "
                        f"{array.flat[bad[0]]}); this model has no entry for them"
                    )
            if spec.finite and not np.isfinite(array).all():
                bad = np.flatnonzero(~np.isfinite(array))
                raise InputError(
                    f"input '{spec.name}' holds {bad.size} NaN or Inf value(s) (the first at "
                    f"flat index {bad[0]}: {array.flat[bad[0]]}); this model's signature says "
                    f"finite: true, so clean or drop them before sending"
                )

    def _name_mismatch(self, missing: list[str], unknown: list[str]) -> str:
        """One message naming every missing and every unknown input: a client that sent
        ``y`` for ``x`` learns both names at once."""
        parts = [f"missing input(s) {missing}"] if missing else []
        parts += [f"unknown input(s) {unknown}"] if unknown else []
        hint = ""
        if len(missing) == 1 and len(unknown) == 1:
            hint = f" (rename '{unknown[0]}' to '{missing[0]}'?)"
        return f"{' and '.join(parts)}{hint}; the model takes {self.describe_inputs()}"

    def describe_inputs(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)
