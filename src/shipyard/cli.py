"""The ``shipyard`` command: build, export, validate, bench, inspect.

Errors print as one line on stderr with a non-zero exit; ``--debug`` shows the traceback.
Exit codes: 0 success, 1 a validation gate failed, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shipyard.errors import GateError, InputError, ShipyardError
from shipyard.signature import Signature, TensorSpec

app = typer.Typer(
    name="shipyard",
    help="Take a trained PyTorch model to production: export, validate, benchmark, package.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)
# Options several commands share, declared once.
RecipeArg = Annotated[
    Path | None, typer.Argument(help="Recipe YAML (default: built-in digits example).")
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Model repository to write into.")]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace an existing version.")]
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

_INPUT_SPEC = re.compile(r"^([A-Za-z_][\w.:-]*):(\w+)\[([^\]]*)\]$")


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")


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


def _signature(inputs: list[str] | None, recipe: Path | None) -> Signature | None:
    if inputs:
        return Signature(inputs=tuple(parse_input_spec(i) for i in inputs))
    if recipe is not None:
        from shipyard.recipe import load_recipe

        return load_recipe(recipe).signature
    return None


def _load(
    specs: list[str],
    signature: Signature | None,
    weights: Path | None = None,
    kwargs: str | None = None,
) -> list[Any]:
    """Artifacts for each spec: a package folder gives all its artifacts, any model source one.

    A torch source without a signature borrows the inputs of an ONNX file among ``specs``.
    """
    from shipyard.package import is_package, load_package
    from shipyard.sources import load_model, onnx_signature

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


@app.command()
def build(
    recipe: RecipeArg = None,
    output: OutputOpt = Path("out"),
    overwrite: OverwriteOpt = False,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the benchmark step.")] = False,
    no_finetune: Annotated[
        bool, typer.Option("--no-finetune", help="Allow structured pruning without fine-tuning.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a recipe and write the package OUTPUT/<model>/<version>/."""
    from shipyard.build import as_recipe
    from shipyard.build import build as run_build
    from shipyard.optimize import optimize as run_optimize

    loaded = as_recipe(recipe)
    if no_finetune:  # the user accepts the accuracy loss of pruning without retraining
        for step in loaded.passes:
            if step.name == "prune":
                step.prune = step.prune.model_copy(update={"allow_without_finetune": True})
    try:
        if loaded.optimize is not None:  # `optimize:` in the recipe: the build is a search
            result = run_optimize(loaded, output, overwrite=overwrite, on_step=_on_step(as_json))
        else:
            result = run_build(
                loaded,
                output,
                overwrite=overwrite,
                run_bench=False if no_bench else None,
                on_step=_on_step(as_json),
            )
    except GateError as error:
        if error.report is not None:
            _print_validation(error.report)
        raise
    _print_result(result, as_json)


def _on_step(quiet: bool) -> Any:
    def on_step(message: str, seconds: float) -> None:
        if not quiet:
            console.print(
                f"[green]✓[/] {escape(message)} [dim]({seconds:.1f} s)[/]", highlight=False
            )

    return on_step


@app.command()
def optimize(
    recipe: RecipeArg = None,
    output: OutputOpt = Path("out"),
    budget: Annotated[str | None, typer.Option(help="Time budget: 90s, 10m, 1h.")] = None,
    objective: Annotated[str | None, typer.Option(help="latency, size or throughput.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size the objective is measured at.")
    ] = None,
    no_prune: Annotated[
        bool, typer.Option("--no-prune", help="Skip structured-pruning candidates.")
    ] = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Search prune/quantize candidates, measured here; package the best that passes the gates."""
    from shipyard.build import as_recipe
    from shipyard.optimize import optimize as run_optimize
    from shipyard.recipe import OptimizeSettings

    loaded = as_recipe(recipe)
    values = (loaded.optimize or OptimizeSettings()).model_dump()
    overrides = {"budget": budget, "objective": objective, "batch_size": batch_size}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if no_prune:
        values["prune_levels"] = []
    try:
        settings = OptimizeSettings.model_validate(values)
    except ValueError as error:  # pydantic's message names the option
        raise InputError(" ".join(str(error).split())) from error
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    # Planned candidates: each torch variant exported, then each quantization preset of it.
    variants = 1 + (len(settings.prune_levels) if loaded.data.train else 0)
    planned = variants * (1 + len(settings.quantize))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn(f"budget {settings.budget:.0f} s"),
    )
    with Progress(*columns, console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("candidates", total=planned)

        def on_step(message: str, seconds: float) -> None:
            if message.startswith("candidate "):
                progress.advance(task)
            if not as_json:
                progress.console.print(
                    f"[green]✓[/] {escape(message)} [dim]({seconds:.1f} s)[/]", highlight=False
                )

        result = run_optimize(
            loaded, output, settings=settings, overwrite=overwrite, on_step=on_step
        )
    _print_result(result, as_json)
    if result.manifest["search"]["passed"] == 0:  # packaged the closest, but say it failed
        raise typer.Exit(1)


def _print_result(result: Any, as_json: bool) -> None:
    from shipyard.bench import render

    if as_json:
        print(json.dumps(result.manifest, indent=2, default=str))
        return
    for report in result.validation:
        _print_validation(report)
    search = result.manifest.get("search")
    if search:  # the candidate table; every latency detail is in the report
        _print_candidates(result.manifest["candidates"], str(search["batch_size"]))
        console.print(f"[bold]search[/] {escape(search['verdict'])}", highlight=False)
    elif result.benchmark is not None:
        console.print(render(result.benchmark, baseline="torch"))
    console.print(
        f"[bold]package[/] {result.package_dir} ({result.seconds:.1f} s); "
        f"report {result.package_dir / 'report.md'}",
        highlight=False,
    )


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
    weights: Annotated[
        Path | None, typer.Option(help="state_dict (.safetensors or .pt) for a factory.")
    ] = None,
    kwargs: Annotated[str | None, typer.Option(help="JSON kwargs for the factory.")] = None,
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
    source = _load([model], _signature(input, recipe), weights, kwargs)[0]
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


@app.command()
def validate(
    reference: Annotated[str, typer.Argument(help="Reference model source or package.")],
    candidate: Annotated[str, typer.Argument(help="Candidate model source or package.")],
    data: DataOpt = None,
    input: InputOpt = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Take signature and gates from a recipe.")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="state_dict for the reference factory.")
    ] = None,
    kwargs: Annotated[
        str | None, typer.Option(help="JSON kwargs for the reference factory.")
    ] = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosineOpt = None,
    min_top1_agreement: Top1Opt = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="Gate: max accuracy drop (needs labels).")
    ] = None,
    samples: SamplesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare CANDIDATE with REFERENCE on the same inputs; exit 1 when a gate fails."""
    from shipyard.data import load_data
    from shipyard.validate import Gates
    from shipyard.validate import validate as run_validate

    gates = Gates()
    if recipe is not None:
        from shipyard.recipe import load_recipe

        gates = load_recipe(recipe).validate_.gates
    gates = gates.merged(
        atol=atol,
        rtol=rtol,
        min_cosine=min_cosine,
        min_top1_agreement=min_top1_agreement,
        max_accuracy_drop=max_accuracy_drop,
    )
    loaded = _load([reference, candidate], _signature(input, recipe), weights, kwargs)
    ref, cand = loaded[0], loaded[-1]
    dataset = load_data(data, ref.signature) if data else None
    report = run_validate(ref, cand, dataset, gates, samples=samples)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_validation(report)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def compare(
    artifacts: Annotated[
        list[str], typer.Argument(help="Reference first, then candidates (sources or packages).")
    ],
    data: DataOpt = None,
    input: InputOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosineOpt = None,
    min_top1_agreement: Top1Opt = None,
    samples: SamplesOpt = None,
    bisect: Annotated[
        bool,
        typer.Option("--bisect", help="Two ONNX files: find the first node where they part ways."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the same inputs through every artifact; errors against the first. Exit 1 on a gate."""
    from shipyard.compare import bisect as run_bisect
    from shipyard.compare import compare as run_compare
    from shipyard.data import load_data
    from shipyard.validate import Gates

    loaded = _load(artifacts, _signature(input, None))
    gates = Gates(
        atol=atol, rtol=rtol, min_cosine=min_cosine, min_top1_agreement=min_top1_agreement
    )
    if bisect:
        if len(loaded) != 2:
            raise InputError(f"--bisect compares exactly two ONNX files, got {len(loaded)}")
        dataset = load_data(data, loaded[0].signature) if data else None
        feeds = dataset.take(samples or 8).inputs if dataset else None
        result = run_bisect(
            loaded[0],
            loaded[1],
            feeds,
            atol=atol if atol is not None else 1e-4,
            rtol=rtol if rtol is not None else 1e-3,
        )
        _print_bisect(result, as_json)
        if result.first_divergence is not None:
            raise typer.Exit(1)
        return
    dataset = load_data(data, loaded[0].signature) if data else None
    reports = run_compare(loaded, dataset, gates, samples=samples)
    if as_json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        table = Table(title=f"against {loaded[0].name} ({reports[0].samples} samples)")
        for column in (
            "candidate",
            "output",
            "max abs",
            "mean abs",
            "max rel",
            "cosine",
            "top-1",
            "NaN/Inf",
            "accuracy",
            "gates",
        ):
            table.add_column(
                column, justify="left" if column in ("candidate", "output") else "right"
            )
        for report in reports:
            for out in report.outputs:
                top1 = "—" if out.top1_agreement is None else f"{out.top1_agreement:.2%}"
                accuracy = (
                    "—" if report.accuracy_candidate is None else f"{report.accuracy_candidate:.2%}"
                )
                verdict = "ok" if report.passed else "[bold red]FAILED[/]"
                table.add_row(
                    escape(report.candidate),
                    escape(out.name),
                    f"{out.max_abs:.3g}",
                    f"{out.mean_abs:.3g}",
                    f"{out.max_rel:.3g}",
                    f"{out.cosine:.6f}",
                    top1,
                    f"{out.nonfinite_reference}/{out.nonfinite_candidate}",
                    accuracy,
                    verdict,
                )
        console.print(table)
        for report in reports:
            for gate in report.failures():
                console.print(
                    f"  [bold red]{escape(report.candidate)}: {escape(gate.describe())}[/]"
                )
    if not all(r.passed for r in reports):
        raise typer.Exit(1)


def _print_bisect(result: Any, as_json: bool) -> None:
    from dataclasses import asdict

    first = result.first_divergence
    if as_json:
        print(
            json.dumps(
                {
                    "compared": [asdict(d) for d in result.compared],
                    "skipped": result.skipped,
                    "first_divergence": asdict(first) if first else None,
                },
                indent=2,
            )
        )
        return
    table = Table(
        title=f"intermediate tensors ({len(result.compared)} compared, {result.skipped} not shared)"
    )
    for column in ("tensor", "node", "op", "max abs", "cosine", ""):
        table.add_column(column, justify="left" if column in ("tensor", "node", "op") else "right")
    stop = result.compared.index(first) + 1 if first else len(result.compared)
    for diff in result.compared[max(0, stop - 8) : stop]:  # the run-up to the first divergence
        mark = "ok" if diff.ok else "[bold red]first divergence[/]"
        table.add_row(
            escape(diff.tensor),
            escape(diff.node),
            diff.op_type,
            f"{diff.max_abs:.3g}",
            f"{diff.cosine:.6f}",
            mark,
        )
    console.print(table)
    if first:
        console.print(
            f"first divergence: tensor '{escape(first.tensor)}' from node "
            f"'{escape(first.node)}' ({first.op_type}), max abs {first.max_abs:.3g}",
            highlight=False,
        )
    else:
        console.print("no shared tensor differs beyond the tolerance")


@app.command()
def bench(
    artifacts: Annotated[list[str], typer.Argument(help="Model sources or packages to compare.")],
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8",
    threads: Annotated[int, typer.Option(help="Threads per inference.")] = 1,
    runs: Annotated[int, typer.Option(help="Timed runs per artifact and batch size.")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs.")] = 5,
    max_seconds: Annotated[float | None, typer.Option(help="Time cap per batch size.")] = None,
    input: InputOpt = None,
    recipe: Annotated[Path | None, typer.Option(help="Take the signature from a recipe.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure artifacts side by side, interleaved, in one process."""
    from shipyard.bench import bench as run_bench
    from shipyard.bench import render

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError as error:
        raise InputError(f"--batch-sizes {batch_sizes!r}: expected integers like 1,8") from error
    loaded = _load(artifacts, _signature(input, recipe))
    report = run_bench(
        loaded,
        batch_sizes=sizes,
        threads=threads,
        runs=runs,
        warmup=warmup,
        max_seconds=max_seconds,
        progress=not as_json,
    )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(render(report))


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A package folder or an .onnx file.")],
) -> None:
    """Show a package's artifacts and signature, or an ONNX file's signature."""
    from shipyard.package import is_package, load_package
    from shipyard.sources import onnx_signature

    if path.is_dir() and is_package(path):
        package = load_package(path)
        console.print(f"[bold]{package.name}[/] version {package.version} — {package.path}")
        signature = package.signature
        for artifact in package.artifacts:
            size = artifact.size_bytes / 1e6
            console.print(f"  {artifact.name}: {artifact.path} ({size:.2f} MB)", markup=False)
    elif path.suffix == ".onnx" and path.is_file():
        signature = onnx_signature(path)
    else:
        raise InputError(f"{path} is neither a package folder nor an .onnx file")
    for spec in signature.inputs:
        console.print(f"  input  {spec.describe()}", highlight=False, markup=False)
    for spec in signature.outputs:
        console.print(f"  output {spec.describe()}", highlight=False, markup=False)


@app.command()
def serve(
    repository: Annotated[Path, typer.Argument(help="Folder of <model>/<version>/ packages.")],
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="SHIPYARD_SERVE_TOKEN",
            show_default=False,
            help="Bearer token for inference, metadata and /metrics (env SHIPYARD_SERVE_TOKEN).",
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="SHIPYARD_SERVE_ADMIN_TOKEN",
            show_default=False,
            help="Bearer token for /v2/repository (default: --token).",
        ),
    ] = None,
    watch: Annotated[
        float | None, typer.Option(help="Poll the repository every SECONDS and load new versions.")
    ] = None,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body accepted (413 above).")
    ] = 64.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    grpc_port: Annotated[
        int | None, typer.Option(help="Also serve V2 over gRPC on this port (Triton uses 8001).")
    ] = None,
) -> None:
    """Serve a model repository over the Open Inference Protocol v2 (KServe / Triton HTTP)."""
    from shipyard.serve import run_server

    # Tokens come from the environment by default: command lines are visible to local users.
    run_server(
        repository,
        host,
        port,
        auth_token=token,
        admin_token=admin_token,
        watch_seconds=watch,
        max_body_bytes=int(max_body_mb * 2**20),
        log_level=log_level,
        grpc_port=grpc_port,
    )


@app.command()
def report(
    package: Annotated[Path, typer.Argument(help="A package folder (OUT/<model>/<version>).")],
) -> None:
    """Write report.md, report.html and the plots of a package again from its manifest."""
    from shipyard.package import file_hashes, load_package, write_manifest
    from shipyard.report import write_report

    loaded = load_package(package)
    written = write_report(loaded.path, loaded.manifest)
    # The report files are part of the package: keep the manifest's hashes true.
    loaded.manifest["files"] = file_hashes(loaded.path)
    write_manifest(loaded.path, loaded.manifest)
    for path in written:
        console.print(f"[green]✓[/] {escape(str(path))}", highlight=False)


def _print_candidates(rows: list[dict[str, Any]], batch: str) -> None:
    table = Table(title=f"candidates (latency at batch {batch}, ms)")
    for column in ("candidate", "MB", "p50", "p99", "accuracy", "drop", "gates", "Pareto"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for row in rows:
        stats = row["latency"].get(batch, {})
        accuracy = "—" if row["accuracy"] is None else f"{row['accuracy']:.2%}"
        drop = "—" if row["accuracy_drop"] is None else f"{row['accuracy_drop'] * 100:+.2f}"
        verdict = "baseline" if row["baseline"] else ("pass" if row["passed"] else "FAIL")
        if row["chosen"]:
            verdict = f"[bold]{verdict}, chosen[/]"
        name = f"[bold]{escape(row['name'])}[/]" if row["chosen"] else escape(row["name"])
        table.add_row(
            name,
            f"{row['bytes'] / 1e6:.3f}",
            f"{stats.get('p50_ms', 0):.3f}",
            f"{stats.get('p99_ms', 0):.3f}",
            accuracy,
            drop,
            verdict,
            "✓" if row.get("pareto") else "",
        )
    console.print(table)


def _print_validation(report: Any) -> None:
    table = Table(title=f"{report.candidate} vs {report.reference} ({report.samples} samples)")
    for column in ("output", "max abs", "mean abs", "max rel", "cosine", "top-1 agree", "NaN/Inf"):
        table.add_column(column, justify="left" if column == "output" else "right")
    for out in report.outputs:
        top1 = "—" if out.top1_agreement is None else f"{out.top1_agreement:.2%}"
        table.add_row(
            out.name,
            f"{out.max_abs:.3g}",
            f"{out.mean_abs:.3g}",
            f"{out.max_rel:.3g}",
            f"{out.cosine:.6f}",
            top1,
            f"{out.nonfinite_reference}/{out.nonfinite_candidate}",
        )
    console.print(table)
    if report.accuracy_reference is not None:
        console.print(
            f"accuracy: {report.reference} {report.accuracy_reference:.2%}, "
            f"{report.candidate} {report.accuracy_candidate:.2%} "
            f"(drop {report.accuracy_drop * 100:+.2f} points)",
            highlight=False,
        )
    for gate in report.gates:
        style = "green" if gate.passed else "bold red"
        console.print(f"  [{style}]{escape(gate.describe())}[/]", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning our errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # Standalone mode: typer prints usage errors itself and exits 2.
        app(args=args, prog_name="shipyard")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    except ShipyardError as error:
        if debug:
            traceback.print_exc()
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 1 if isinstance(error, GateError) else 2
    except Exception as error:  # a bug of ours: still one line, the trace on request
        if debug:
            traceback.print_exc()
        errors.print(
            f"[bold red]internal error:[/] {type(error).__name__}: {escape(str(error))} "
            f"(run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
