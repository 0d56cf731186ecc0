"""The recipe: one YAML file naming the model, its signature, data, passes, gates and bench.

``load_recipe(path)`` validates it with pydantic; every error names the field and the YAML
line it sits on, e.g. ``recipe.yaml:12: passes.0.export.opset: Input should be a valid
integer``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from shipyard.errors import RecipeError
from shipyard.imports import is_reference
from shipyard.passes import PASSES
from shipyard.passes.export import ExportConfig
from shipyard.passes.finetune import FinetuneConfig
from shipyard.passes.quantize_config import PRESETS, default_search
from shipyard.problems import location, message
from shipyard.processing.settings import Postprocess, Preprocess
from shipyard.serving import ServingConfig
from shipyard.signature import Signature
from shipyard.sources import is_model_file
from shipyard.validate import Gates

# A model name: a folder of the repository and a part of the serving URL.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSource(_Strict):
    """``source``: ``pkg.module:factory`` or a file (.pt2, TorchScript .pt; or a model file:
    .onnx, .tflite, OpenVINO .xml, packaged as it is when no pass makes another file)."""

    source: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None  # state_dict for the factory: .safetensors or .pt (weights only)


class DataSources(_Strict):
    """Each entry: ``pkg.module:function`` returning (x, y), or a .npz / .npy file."""

    validation: str | None = None
    calibration: str | None = None
    train: str | None = None
    # Named inputs (y: their names) whose top-k classes the report shows for every artifact.
    examples: str | None = None


class ValidateSettings(_Strict):
    gates: Gates = Field(default_factory=Gates)
    samples: int | None = Field(default=None, ge=1)  # None: the whole validation set
    batch_size: int = Field(default=64, ge=1)


class BenchSettings(_Strict):
    enabled: bool = True
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8])
    threads: int | None = Field(default=1, ge=1)
    warmup: int = Field(default=5, ge=0)
    runs: int = Field(default=50, ge=1)
    max_seconds: float | None = Field(default=20.0, gt=0)
    # Other dynamic dimensions' sizes ({seq: 32}: 32 tokens per text); the rest take the batch.
    sizes: dict[str, int] = Field(default_factory=dict)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError("batch_sizes must be a non-empty list of integers >= 1")
        return value


# One optional field per registered pass; exactly one must be set in each list entry.
# Beside it, two optional keys of the step itself:
#   from:  the name of an earlier artifact of this build to start from (default: the
#          previous step's result; "source" is the recipe's model, also named "torch" when it
#          is a PyTorch model), so that one recipe can branch: export -> quantize, and
#          convert_tflite from the model, in one package;
#   gates: this step's artifact's validation gates, instead of validate: gates: (an int8
#          artifact cannot meet the fp32 parity gates).
_PassStepBase = create_model(  # type: ignore[call-overload]
    "PassStep",
    __config__=ConfigDict(extra="forbid", populate_by_name=True),
    **{name: (spec.config | None, None) for name, spec in PASSES.items()},
    from_=(str | None, Field(default=None, alias="from", min_length=1)),
    gates=(Gates | None, None),
)


class PassStep(_PassStepBase):  # type: ignore[misc,valid-type]
    @property
    def name(self) -> str:
        chosen = [k for k in PASSES if getattr(self, k) is not None]
        return chosen[0]

    @property
    def config(self) -> BaseModel:
        config: BaseModel = getattr(self, self.name)
        return config

    @model_validator(mode="after")
    def _exactly_one(self) -> PassStep:
        chosen = [k for k in PASSES if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"each pass entry names exactly one pass ({', '.join(PASSES)}), got {chosen}"
            )
        return self


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)\s*$")


def parse_duration(value: str | float) -> float:
    """Seconds from a YAML number (``90``: seconds) or a string with its unit (``"90s"``,
    ``"10m"``, ``"1.5h"``). A string without a unit is refused: ``--budget 2`` could mean
    two seconds or two minutes, and guessing wrong wastes a search."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", value):
            raise ValueError(
                f"duration {value!r} has no unit: write {value.strip()}s, {value.strip()}m "
                f"or {value.strip()}h"
            )
        raise ValueError(f"duration {value!r}: use a number with s, m or h, e.g. 90s or 10m")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


Objective = Literal["latency", "size", "throughput"]


class OptimizeSettings(_Strict):
    """``optimize: auto`` or ``{objective: latency, batch_size: 8, budget: 10m, ...}``."""

    objective: Objective = "latency"
    batch_size: int = Field(default=8, ge=1)
    budget: float = Field(default=600.0, gt=0)  # seconds; "10m" accepted
    prune_levels: list[float] = Field(default_factory=lambda: [0.75, 0.5])  # MACs kept
    quantize: list[str] = Field(default_factory=default_search)
    finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(epochs=10, distill_from_original=True)
    )
    # The search's own gates: an int8 model cannot meet export-parity gates such as atol 1e-4.
    # None: max_accuracy_drop 0.005 with labelled validation data, else min_cosine 0.99.
    gates: Gates | None = None

    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("prune_levels")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < level < 1 for level in value):
            raise ValueError("prune_levels are fractions of MACs to keep, each in (0, 1)")
        return value

    @field_validator("quantize")
    @classmethod
    def _presets(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in PRESETS]
        if unknown:
            raise ValueError(f"unknown quantization preset(s) {unknown}; known: {list(PRESETS)}")
        return value


class SignSettings(_Strict):
    """``sign: {key: private.pem}``: sign the package (``model.sig``, see ``signing.py``)
    before its version folder appears. ``certificate`` (and ``certificate_chain``): the key's
    signing certificate (and the certificates up to a root), carried in the signature.
    Paths are relative to the recipe."""

    key: str
    certificate: str | None = None
    certificate_chain: list[str] = Field(default_factory=list)


class Recipe(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(default=1, ge=1)
    description: str = ""
    # classification: accuracy from labels; binary: one score per row, AUC and log-loss;
    # detection: one yes/no per frame (speech?), precision/recall/F1 at 0.5
    # embedding: labels are groups of similar samples (the semantic check, embedding_metrics)
    task: Literal["classification", "binary", "detection", "embedding", "other"] = "classification"
    model: ModelSource
    signature: Signature | None = None
    data: DataSources = Field(default_factory=DataSources)
    passes: list[PassStep] = Field(default_factory=lambda: [PassStep(export=ExportConfig())])
    validate_: ValidateSettings = Field(default_factory=ValidateSettings, alias="validate")
    bench: BenchSettings = Field(default_factory=BenchSettings)
    optimize: OptimizeSettings | None = None  # `optimize: auto` = the default search
    serve: ServingConfig = Field(default_factory=ServingConfig)  # written to the manifest
    # Not in the manifest's copy of the recipe: key paths belong to the signing machine, not
    # to how the model was made.
    sign: SignSettings | None = Field(default=None, exclude=True)
    # How raw inputs become tensors and outputs answers; recorded in the manifest, files
    # (labels) copied into the package. Data functions with a `preprocess` parameter get it.
    preprocess: Preprocess | None = None
    postprocess: Postprocess | None = None

    @model_validator(mode="after")
    def _processing_fits(self) -> Recipe:
        if self.preprocess is not None and self.signature is not None:
            self.preprocess.check(self.signature)  # ValueError names the mismatch
        return self

    @field_validator("optimize", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return {} if value == "auto" else value

    @model_validator(mode="before")
    @classmethod
    def _model_file_passes(cls, data: Any) -> Any:
        """Without ``passes:``, a model file (.onnx, .tflite, .xml) is packaged as it is: the
        default export step cannot start from a file."""
        if not isinstance(data, dict) or "passes" in data:
            return data
        model = data.get("model")
        source = model.get("source") if isinstance(model, dict) else getattr(model, "source", None)
        if isinstance(source, str) and is_model_file(source):
            return {**data, "passes": []}
        return data

    # Where relative paths in the recipe are resolved from (the recipe's folder).
    base_dir: Path = Field(default=Path("."), exclude=True)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def resolve(self, value: str) -> str:
        """A path relative to the recipe's folder; ``pkg.module:attr`` references unchanged."""
        if is_reference(value):
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else self.base_dir / path)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Map every key path in the YAML document to its 1-based line number."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*path, key.value)] = key.start_mark.line + 1
            _line_index(value, (*path, key.value), out)
            out[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*path, i), out)


def _nearest_line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    # pydantic adds union/type tags to locations; drop parts until a YAML path matches.
    parts = tuple(p if isinstance(p, int) else str(p) for p in loc)
    parts = tuple(p for p in parts if not (isinstance(p, str) and "[" in p))
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return lines.get(())


def parse_recipe(text: str, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Validate recipe YAML text; ``source`` names it in error messages."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"{source}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping (name:, model:, ...)")
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    try:
        recipe = Recipe.model_validate({**data, "base_dir": base_dir or Path(".")})
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = tuple(item["loc"])
            where = location(loc) or "recipe"
            line = _nearest_line(lines, loc)
            prefix = f"{source}:{line}" if line else source
            problems.append(f"{prefix}: {where}: {message(item)}")
        raise RecipeError("; ".join(problems)) from error
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RecipeError(f"cannot read recipe {path}: {error.strerror}") from error
    return parse_recipe(text, source=str(path), base_dir=path.resolve().parent)


def default_recipe_path() -> Path:
    """The built-in example (digits CNN), built when ``shipyard build`` gets no recipe."""
    return Path(__file__).parent / "examples" / "digits" / "recipe.yaml"
