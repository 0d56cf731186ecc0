"""Options several commands share, declared once, and the loading they have in common."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.errors import InputError
from shipyard.signature import Signature, TensorSpec

RecipeArg = Annotated[
    Path | None, typer.Argument(help="Recipe YAML (default: built-in digits example).")
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Model repository to write into.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing version.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
DataOpt = Annotated[str | None, typer.Option(help="pkg.module:function, .npz or .npy.")]
InputOpt = Annotated[
    list[str] | None,
    typer.Option("--input", "-i", help="NAME:DTYPE[DIMS] for torch sources, once per input."),
]
AtolOpt = Annotated[float | None, typer.Option(help="Gate: max absolute error.")]
RtolOpt = Annotated[float | None, typer.Option(help="Gate: relative tolerance.")]
CosineOpt = Annotated[float | None, typer.Option(help="Gate: minimum cosine similarity.")]
Top1Opt = Annotated[float | None, typer.Option(help="Gate: minimum top-1 agreement.")]
SamplesOpt = Annotated[int | None, typer.Option(help="Use at most this many samples.")]
WeightsOpt = Annotated[
    Path | None, typer.Option(help="state_dict (.safetensors or .pt) for a factory.")
]
KwargsOpt = Annotated[str | None, typer.Option(help="JSON kwargs for the factory.")]

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
    except ValueError as error:
        raise InputError(f"--input {text!r}: {error}") from error


def signature_from(inputs: list[str] | None, recipe: Path | None) -> Signature | None:
    """The signature the user gave: ``--input`` specs, else a recipe's, else None."""
    if inputs:
        return Signature(inputs=tuple(parse_input_spec(i) for i in inputs))
    if recipe is not None:
        from shipyard.recipe import load_recipe

        return load_recipe(recipe).signature
    return None


def load_artifacts(
    specs: list[str],
    signature: Signature | None,
    weights: Path | None = None,
    kwargs: str | None = None,
) -> list[Any]:
    """Artifacts for each spec: a package folder gives all its artifacts, any model source one.

    A torch source without a signature borrows the inputs of an ONNX file among ``specs``.
    """
    from shipyard.package import is_package, load_package
    from shipyard.runtimes.onnxruntime import onnx_signature
    from shipyard.sources import load_model

    try:
        extra = json.loads(kwargs) if kwargs else {}
    except json.JSONDecodeError as error:
        raise InputError(f"--kwargs is not valid JSON: {error}") from error
    if signature is None:
        onnx_files = [Path(s) for s in specs if s.endswith(".onnx") and Path(s).is_file()]
        if onnx_files:
            signature = Signature(inputs=onnx_signature(onnx_files[0]).inputs)
    loaded: list[Any] = []
    for spec in specs:
        if Path(spec).is_dir() and is_package(Path(spec)):
            loaded.extend(load_package(spec).artifacts)
            continue
        name = Path(spec).name if Path(spec).exists() else spec.rpartition(":")[2]
        loaded.append(load_model(spec, signature, kwargs=extra, weights=weights, name=name))
    return loaded
