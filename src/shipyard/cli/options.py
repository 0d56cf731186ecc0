"""Options several commands share, declared once, and the loading they have in common."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from shipyard.errors import InputError
from shipyard.problems import describe
from shipyard.serving import ServingConfig
from shipyard.signature import Signature, TensorSpec
from shipyard.stateful import SequenceConfig

RecipeArg = Annotated[
    Path | None, typer.Argument(help="Recipe YAML (default: built-in digits example).")
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Model repository to write into.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing version.")]
VersionOpt = Annotated[
    int | None,
    typer.Option("--version", help="Package version to write (default: the recipe's version)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
DataOpt = Annotated[str | None, typer.Option(help="pkg.module:function, .npz or .npy.")]
InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        metavar="NAME:DTYPE[DIMS]",
        help="An input of a torch source, e.g. x:float32[batch,3,224,224]; once per input.",
    ),
]
AtolOpt = Annotated[float | None, typer.Option(help="Gate: max absolute error.")]
RtolOpt = Annotated[float | None, typer.Option(help="Gate: relative tolerance.")]
CosineOpt = Annotated[float | None, typer.Option(help="Gate: minimum cosine similarity.")]
Top1Opt = Annotated[float | None, typer.Option(help="Gate: minimum top-1 agreement.")]
SamplesOpt = Annotated[int | None, typer.Option(help="Use at most this many samples.")]
WeightsOpt = Annotated[
    Path | None, typer.Option(help="state_dict (.safetensors or .pt) for a factory.")
]
RecipeOpt = Annotated[Path | None, typer.Option(help="Take the signature from a recipe.")]
KwargsOpt = Annotated[str | None, typer.Option(help="JSON kwargs for the factory.")]

NameOpt = Annotated[
    str | None,
    typer.Option(
        "--name", help="Model name (default: the file's name without suffix, made a valid name)."
    ),
]
_SERVING = ServingConfig.model_fields
MaxBatchOpt = Annotated[
    int | None,
    typer.Option(
        help="Serving: most rows in one batch, 0 for none "
        f"(default {_SERVING['max_batch_size'].default})."
    ),
]
QueueDelayOpt = Annotated[
    float | None,
    typer.Option(
        help="Serving: longest a request waits for its batch to fill, in ms "
        f"(default {_SERVING['max_queue_delay_ms'].default:g})."
    ),
]
InstancesOpt = Annotated[
    int | None,
    typer.Option(help=f"Serving: sessions run at once (default {_SERVING['instances'].default})."),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(help=f"Serving: threads per session (default {_SERVING['threads'].default})."),
]


def serving_options(**values: Any) -> dict[str, Any]:
    """The serving options given (``max_batch_size=...``; None: not given), checked by
    ``ServingConfig``; InputError naming the option when it refuses a value."""
    given = {key: value for key, value in values.items() if value is not None}
    try:
        ServingConfig.model_validate(given)
    except ValidationError as error:
        raise InputError(describe(error, name=_option)) from error
    return given


def _option(loc: tuple[Any, ...]) -> str:
    return f"--{str(loc[0]).replace('_', '-')}" if loc else "serving"


_INPUT_SPEC = re.compile(r"^([A-Za-z_][\w.:-]*):(\w+)\[([^\]]*)\]$")


def parse_input_spec(text: str) -> TensorSpec:
    """``x:float32[batch,3,224,224]`` -> TensorSpec (dims: ints or dynamic names)."""
    match = _INPUT_SPEC.match(text.replace(" ", ""))
    if not match:
        raise InputError(
            f"--input {text!r}: expected NAME:DTYPE[DIMS], e.g. x:float32[batch,3,224,224]"
        )
    dims = tuple(int(d) if d.isdigit() else d for d in match[3].split(",") if d)
    try:
        return TensorSpec(name=match[1], dtype=match[2], shape=dims)
    except ValidationError as error:
        raise InputError(describe(error, f"--input {text!r}: ")) from error


def signature_from(inputs: list[str] | None, recipe: Path | None) -> Signature | None:
    """The signature the user gave: ``--input`` specs, else a recipe's, else None."""
    if inputs:
        return Signature(inputs=tuple(parse_input_spec(i) for i in inputs))
    if recipe is not None:
        from shipyard.recipe import load_recipe

        return load_recipe(recipe).signature
    return None


_LABEL = re.compile(r"^([A-Za-z0-9][\w.+-]*)=(.+)$")


def split_label(spec: str) -> tuple[str | None, str]:
    """``int8=out/m.onnx`` -> (``int8``, ``out/m.onnx``); a spec without a label, or an
    existing path that happens to hold ``=``, -> (None, spec)."""
    match = _LABEL.match(spec)
    if match is None or Path(spec).exists():
        return None, spec
    return match[1], match[2]


def distinct_labels(names: list[str], origins: list[str]) -> list[str]:
    """``names``, where two are equal each replaced by the shortest tail of its origin path
    that tells them apart (``a/model.onnx`` and ``b/model.onnx``); the same origin given
    twice gets ``#1``, ``#2``."""
    labels = list(names)
    for name in set(names):
        group = [i for i, n in enumerate(names) if n == name]
        if len(group) < 2:
            continue
        parts = [Path(origins[i]).parts for i in group]
        tails = [origins[i] for i in group]
        for k in range(1, max(len(p) for p in parts) + 1):
            candidate = ["/".join(p[-k:]) for p in parts]
            if len(set(candidate)) == len(candidate):
                tails = candidate
                break
        if len(set(tails)) < len(tails):
            tails = [f"{name}#{n}" for n in range(1, len(group) + 1)]
        for i, tail in zip(group, tails, strict=True):
            labels[i] = tail
    return labels


def _borrowed_signature(specs: list[str]) -> Signature | None:
    """The signature of the first package (outputs too: a stateful model's state outputs are
    named by it) or the inputs of the first ONNX file among ``specs``, for torch sources."""
    from shipyard.package import is_package, load_package
    from shipyard.runtimes.onnxruntime import onnx_signature

    for spec in specs:
        path = Path(split_label(spec)[1])
        if path.is_dir() and is_package(path):
            return load_package(path, verify=False).signature
        if path.suffix == ".onnx" and path.is_file():
            return Signature(inputs=onnx_signature(path).inputs)
    return None


def load_artifacts(
    specs: list[str],
    signature: Signature | None,
    weights: Path | None = None,
    kwargs: str | None = None,
) -> list[Any]:
    """Artifacts for each spec: a package folder gives all its artifacts, any model source one.

    A spec may carry its label, ``LABEL=PATH``; otherwise files are labelled by their name,
    packages' artifacts by theirs, and equal labels are told apart by their paths. A torch
    source without a signature borrows a package's signature or an ONNX file's inputs.
    """
    from shipyard.package import is_package, load_package
    from shipyard.sources import load_model

    try:
        extra = json.loads(kwargs) if kwargs else {}
    except json.JSONDecodeError as error:
        raise InputError(f"--kwargs is not valid JSON: {error}") from error
    if signature is None:
        signature = _borrowed_signature(specs)
    loaded: list[Any] = []
    origins: list[str] = []
    for spec in specs:
        label, source = split_label(spec)
        if Path(source).is_dir() and is_package(Path(source)):
            artifacts = load_package(source).artifacts
            for artifact in artifacts:
                if label is not None:
                    several = len(artifacts) > 1
                    artifact.name = f"{label}/{artifact.name}" if several else label
                loaded.append(artifact)
                origins.append(f"{source.rstrip('/')}/{artifact.name}")
            continue
        name = label or (Path(source).name if Path(source).exists() else source.rpartition(":")[2])
        loaded.append(load_model(source, signature, kwargs=extra, weights=weights, name=name))
        origins.append(source)
    labels = distinct_labels([a.name for a in loaded], origins)
    for artifact, label in zip(loaded, labels, strict=True):
        artifact.name = label
    return loaded


def package_task(specs: list[str]) -> str | None:
    """The task of the first package among ``specs`` (``binary``: AUC instead of accuracy)."""
    from shipyard.package import is_package, load_package

    for spec in specs:
        path = Path(split_label(spec)[1])
        if path.is_dir() and is_package(path):
            task = load_package(path, verify=False).manifest.get("task")
            return str(task) if task else None
    return None


def package_sequence(specs: list[str]) -> SequenceConfig | None:
    """The sequence settings of the first package among ``specs`` (a stateful model's
    ``serving.sequence``: validation steps its rows as sequences), or None."""
    from shipyard.package import is_package, load_package

    for spec in specs:
        path = Path(split_label(spec)[1])
        if path.is_dir() and is_package(path):
            return ServingConfig.from_manifest(load_package(path, verify=False).manifest).sequence
    return None


def package_data(specs: list[str]) -> str | None:
    """The validation data a package's recipe named (the first package among ``specs`` that
    has some and where it can still be found), for comparing without ``--data``."""
    from shipyard.imports import is_reference
    from shipyard.package import is_package, load_package

    for spec in specs:
        path = Path(split_label(spec)[1])
        if not (path.is_dir() and is_package(path)):
            continue
        manifest = load_package(path, verify=False).manifest
        recipe = (manifest.get("provenance") or {}).get("recipe") or {}
        data = (recipe.get("data") or {}).get("validation")
        if isinstance(data, str) and (is_reference(data) or Path(data).is_file()):
            return data
    return None


def package_preprocess(specs: list[str]) -> Any:
    """The pre-processing of the first package among ``specs`` that has some (its tokenizer
    found in the package), so that ``--data`` texts become the tokens its server makes."""
    from shipyard.package import is_package, load_package
    from shipyard.processing import Preprocess

    for spec in specs:
        path = Path(split_label(spec)[1])
        if not (path.is_dir() and is_package(path)):
            continue
        entry = load_package(path, verify=False).manifest.get("preprocess")
        if entry:
            return Preprocess.model_validate(entry).resolved(path)
    return None
