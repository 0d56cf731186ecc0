"""One-off artifact verbs: ``prune``, ``finetune``, ``quantize`` and ``convert``, generated from
the pass registry (a new pass gets its verb, or its ``convert --to`` target, for free), and
``export`` (the same as ``convert --to onnx``, kept for its short form).

Every verb loads MODEL, runs the pass with the options its config declares, validates the
result against MODEL on ``--validate-data`` (else ``--data``, else seeded random inputs, as the
table title says), prints the same parity table as ``build`` and writes ``-o`` only when every
gate passes (exit 1 otherwise, nothing written).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from rich.markup import escape

from shipyard.artifact import Artifact
from shipyard.cli import render
from shipyard.cli.app import app, console
from shipyard.cli.options import (
    AtolOpt,
    CosineOpt,
    InputOpt,
    JsonOpt,
    KwargsOpt,
    RtolOpt,
    SamplesOpt,
    Top1Opt,
    WeightsOpt,
    load_artifacts,
    signature_from,
)
from shipyard.cli.passgen import build_config, config_parameters, fields_summary, with_signature
from shipyard.errors import GateError, InputError
from shipyard.passes import PASSES

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _param(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, _KEYWORD, default=default, annotation=annotation)


def _common(model_help: str, output_help: str, data_help: str, torch_source: bool) -> list[Any]:
    """The parameters every verb shares: MODEL, -o, data, gates, --set, --overwrite, --json."""
    params = [
        _param(
            "model",
            Annotated[str, typer.Argument(metavar="MODEL", help=model_help, show_default=False)],
        ),
        _param(
            "output",
            Annotated[Path, typer.Option("--output", "-o", help=output_help, show_default=False)],
        ),
        _param("data", Annotated[str | None, typer.Option(help=data_help)], None),
        _param(
            "validate_data",
            Annotated[
                str | None,
                typer.Option(help="Held-out data to validate the result on (default: --data)."),
            ],
            None,
        ),
        _param("samples", SamplesOpt, None),
    ]
    if torch_source:
        params += [
            _param("input", InputOpt, None),
            _param(
                "recipe",
                Annotated[Path | None, typer.Option(help="Take the signature from a recipe.")],
                None,
            ),
            _param("weights", WeightsOpt, None),
            _param("kwargs", KwargsOpt, None),
        ]
    params += [
        _param("atol", AtolOpt, None),
        _param("rtol", RtolOpt, None),
        _param("min_cosine", CosineOpt, None),
        _param("min_top1_agreement", Top1Opt, None),
        _param(
            "max_accuracy_drop",
            Annotated[float | None, typer.Option(help="Gate: max accuracy drop (needs labels).")],
            None,
        ),
        _param(
            "set_",
            Annotated[
                list[str] | None,
                typer.Option(
                    "--set", help="KEY=VALUE for any setting of the pass (VALUE is YAML)."
                ),
            ],
            None,
        ),
        _param(
            "overwrite",
            Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")],
            False,
        ),
        _param("as_json", JsonOpt, False),
    ]
    return params


_COMMON_NAMES = {
    "model", "output", "data", "validate_data", "samples", "input", "recipe", "weights",
    "kwargs", "atol", "rtol", "min_cosine", "min_top1_agreement", "max_accuracy_drop",
    "set_", "overwrite", "as_json",
}  # fmt: skip


Steps = list[tuple[str, BaseModel]]


def _run(steps_for: Callable[[Artifact], Steps], values: dict[str, Any]) -> None:
    """Load MODEL and the data, apply ``steps_for(model)``, print the result (the verbs'
    shared body)."""
    from shipyard.apply import apply_passes
    from shipyard.data import load_data
    from shipyard.validate import Gates

    specs = [values["model"]]
    signature = signature_from(values.get("input"), values.get("recipe"))
    source = load_artifacts(specs, signature, values.get("weights"), values.get("kwargs"))[0]
    data = load_data(values["data"], source.signature) if values["data"] else None
    held_out = (
        load_data(values["validate_data"], source.signature) if values["validate_data"] else None
    )
    gates = Gates(
        atol=values["atol"],
        rtol=values["rtol"],
        min_cosine=values["min_cosine"],
        min_top1_agreement=values["min_top1_agreement"],
        max_accuracy_drop=values["max_accuracy_drop"],
    )
    try:
        applied = apply_passes(
            steps_for(source),
            source,
            values["output"],
            data=data,
            validation=held_out,
            gates=gates,
            samples=values["samples"],
            overwrite=values["overwrite"],
        )
    except GateError as error:
        if error.report is not None and not values["as_json"]:
            console.print(render.validation(error.report))  # type: ignore[arg-type]
        raise
    artifact = applied.artifact
    if values["as_json"]:
        result = {
            "output": str(artifact.path),
            "files": [str(f) for f in applied.files],
            "name": artifact.name,
            "format": artifact.format,
            "bytes": artifact.size_bytes,
            "provenance": [record.to_dict() for record in artifact.provenance],
            "validation": applied.report.to_dict(),
        }
        print(json.dumps(result, indent=2, default=str))
        return
    console.print(render.validation(applied.report))
    console.print(
        f"[green]✓[/] {escape(str(artifact.path))} ({artifact.format}, "
        f"{artifact.size_bytes / 1e6:.2f} MB): {escape(artifact.name)}",
        highlight=False,
    )


def _pass_verb(pass_name: str, model_help: str, output_help: str, data_help: str) -> None:
    """Register the verb ``pass_name``: its options are the pass config's fields."""
    spec = PASSES[pass_name]
    torch_source = pass_name != "quantize"
    generated = config_parameters(spec.config, skip=("filename",))
    fixed = _common(model_help, output_help, data_help, torch_source)
    if pass_name == "quantize":
        from shipyard.passes.quantize_config import PRESETS

        preset = typer.Option(help="Start from a named preset (options given override it).")
        names = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
        fixed.insert(2, _param("preset", Annotated[names | None, preset], None))

    def verb(**values: Any) -> None:
        base: dict[str, Any] = {}
        if values.get("preset"):
            from shipyard.passes.quantize_config import PRESETS

            base = PRESETS[values["preset"]]().model_dump(exclude_defaults=True)
        options = {k: v for k, v in values.items() if k not in _COMMON_NAMES and k != "preset"}
        config = build_config(spec.config, pass_name, base, options, values["set_"] or ())
        _run(lambda source: [(pass_name, config)], values)

    verb.__doc__ = f"{spec.summary[0].upper()}{spec.summary[1:]}; validated, written atomically."
    app.command(name=pass_name)(with_signature(verb, fixed, generated))


def converters() -> dict[str, str]:
    """``--to`` target -> the pass that converts to it, from the registry's names."""
    targets = {"onnx": "export"}
    targets.update(
        {name.removeprefix("convert_"): name for name in PASSES if name.startswith("convert_")}
    )
    return targets


_pass_verb(
    "prune",
    "Model source: pkg.module:factory (with --weights), TorchScript or .pt2.",
    "Where to write: NAME.pt2 (torch.export program) or NAME.onnx.",
    "Training data (.npz with inputs and labels, or pkg.module:function): Taylor importance.",
)
_pass_verb(
    "finetune",
    "Model source: pkg.module:factory (with --weights), TorchScript or .pt2.",
    "Where to write: NAME.pt2 (torch.export program) or NAME.onnx.",
    "Training data (.npz with inputs and labels, or pkg.module:function); required.",
)
_pass_verb(
    "quantize",
    "The ONNX file to quantize.",
    "Where to write the quantized .onnx file.",
    "Calibration data for static quantization (.npz/.npy or pkg.module:function).",
)


def _convert_steps(
    source: Artifact, to: str, precision: str | None, sets: list[str], data: bool
) -> Steps:
    """The passes ``convert --to TO --precision P`` runs: ONNX fp16/int8 is export + quantize."""
    from shipyard.passes.export import ExportConfig
    from shipyard.passes.quantize import QuantizeConfig

    targets = converters()
    if to not in targets:
        raise InputError(f"--to {to!r}: known targets are {', '.join(targets)}")
    name = targets[to]
    config_type = PASSES[name].config
    if to == "onnx":
        export = build_config(ExportConfig, "export", {}, {}, sets)
        if precision in (None, "fp32"):
            return [("export", export)]
        if precision == "fp16":
            return [("export", export), ("quantize", QuantizeConfig.fp16())]
        if precision == "int8":  # calibrated when there is data, else dynamic
            config = QuantizeConfig.static_qdq_u8s8() if data else QuantizeConfig.dynamic_s8()
            return [("export", export), ("quantize", config)]
        raise InputError(f"--precision {precision!r}: ONNX takes fp32, fp16 or int8")
    options: dict[str, Any] = {}
    if "precision" in config_type.model_fields:
        options["precision"] = precision
    if "source" in config_type.model_fields and source.format == "torch":
        options["source"] = "torch"  # OpenVINO converts a torch module itself, no ONNX step
    if precision is not None and not options:
        raise InputError(f"--to {to} has no precision setting")
    return [(name, build_config(config_type, name, {}, options, sets))]


def _register_convert() -> None:
    targets = converters()
    fixed = _common(
        "Model source: pkg.module:factory (with --weights), TorchScript, .pt2 or .onnx.",
        "Where to write (.onnx, .xml for OpenVINO, .tflite, .plan for TensorRT).",
        "Calibration data for int8 (.npz/.npy or pkg.module:function).",
        torch_source=True,
    )
    to = typer.Option("--to", help="Target format.")
    precision = typer.Option(
        help="fp32, fp16 or int8 (TFLite also dynamic_int8, weight_only_int8)."
    )
    fixed.insert(2, _param("to", Annotated[Literal[tuple(targets)], to]))
    fixed.insert(3, _param("precision", Annotated[str | None, precision], None))

    def convert(**values: Any) -> None:
        def steps(source: Artifact) -> Steps:
            sets = values["set_"] or []
            data = values["data"] is not None
            return _convert_steps(source, values["to"], values["precision"], sets, data)

        _run(steps, values)

    settings = "; ".join(
        f"{to}: {fields_summary(PASSES[name].config)}" for to, name in targets.items()
    )
    convert.__doc__ = (
        "Convert a model to another format (the passes "
        + ", ".join(targets.values())
        + "); validated against the input, written atomically.\n\n"
        + f"Settings each target takes with --set KEY=VALUE: {settings}"
    )
    app.command(name="convert")(with_signature(convert, fixed, []))


_register_convert()


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
    """Export one model to ONNX, checked by onnx.checker and against PyTorch (short for
    ``convert --to onnx``, which validates on data and takes gates)."""
    from shipyard.passes.export import ExportConfig, export_onnx
    from shipyard.validate import validate as run_validate

    if to != "onnx":
        raise InputError(f"--to {to!r}: export writes ONNX; use 'shipyard convert --to {to}'")
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
