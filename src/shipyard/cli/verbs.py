"""One-off artifact verbs: ``shipyard export`` (and the pass verbs generated from the registry)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli.app import app, console
from shipyard.cli.options import InputOpt, KwargsOpt, WeightsOpt, load_artifacts, signature_from
from shipyard.errors import InputError


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="pkg.module:factory, TorchScript or .pt2 file.")],
    to: Annotated[str, typer.Option("--to", help="Target format.")] = "onnx",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the file.")] = Path(
        "model.onnx"
    ),
    input: InputOpt = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Take the signature from this recipe.")
    ] = None,
    weights: WeightsOpt = None,
    kwargs: KwargsOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    dynamo: Annotated[
        bool, typer.Option(help="Use the dynamo exporter (else TorchScript).")
    ] = True,
    simplify: Annotated[bool, typer.Option(help="Simplify the graph with onnxslim.")] = True,
) -> None:
    """Export one model to ONNX, checked by onnx.checker and against PyTorch."""
    from shipyard.passes.export import ExportConfig, export_onnx
    from shipyard.validate import validate as run_validate

    if to != "onnx":
        raise InputError(f"--to {to!r}: only 'onnx' is available in this version")
    if output.suffix != ".onnx":
        raise InputError(f"--output {output}: the file name must end in .onnx")
    source = load_artifacts([model], signature_from(input, recipe), weights, kwargs)[0]
    if source.format == "onnx":
        raise InputError(f"{model} is already an ONNX file")
    config = ExportConfig(opset=opset, dynamo=dynamo, simplify=simplify, filename=output.name)
    exported = export_onnx(source, output, config)
    report = run_validate(source, exported, samples=16)
    stats = ", ".join(f"{o.name}: max abs {o.max_abs:.2e}" for o in report.outputs)
    notes = exported.provenance[-1].notes
    console.print(
        f"[green]✓[/] {output} ({exported.size_bytes / 1e6:.2f} MB, "
        f"{notes.get('exporter')} exporter, opset {opset}); vs PyTorch: {stats}",
        highlight=False,
    )
