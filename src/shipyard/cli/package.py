"""``shipyard package``: one model file made a package, without a recipe.

The file goes through the build pipeline as a recipe with no passes would take it
(``model_file.file_recipe``): copied in, hashed, run once on the data, benchmarked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.markup import escape

from shipyard.cli.app import app, console
from shipyard.cli.build import print_result, step_printer
from shipyard.cli.options import (
    InstancesOpt,
    JsonOpt,
    MaxBatchOpt,
    NameOpt,
    OutputOpt,
    OverwriteOpt,
    QueueDelayOpt,
    SamplesOpt,
    ThreadsOpt,
    VersionOpt,
    serving_options,
)
from shipyard.errors import InputError

ModelFileArg = Annotated[
    Path,
    typer.Argument(
        help="A model file: .onnx, .tflite, or an OpenVINO .xml with its .bin beside it.",
        show_default=False,
    ),
]


@app.command()
def package(
    model: ModelFileArg,
    output: OutputOpt = Path("out"),
    name: NameOpt = None,
    version: VersionOpt = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Data to run it on (pkg.module:function, .npz or .npy); labels give its "
            "accuracy. Default: seeded random inputs."
        ),
    ] = None,
    samples: SamplesOpt = None,
    task: Annotated[
        str,
        typer.Option(help="classification (accuracy from labels), binary (AUC) or other."),
    ] = "classification",
    max_batch_size: MaxBatchOpt = None,
    max_queue_delay_ms: QueueDelayOpt = None,
    instances: InstancesOpt = None,
    threads: ThreadsOpt = None,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the benchmark step.")] = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Package one model file as it is: OUTPUT/<name>/<version>/, ready for shipyard serve.

    The signature is read from the file; the serving options are written into the package.
    """
    from shipyard.build import build
    from shipyard.model_file import file_recipe
    from shipyard.recipe import Recipe

    tasks = get_args(Recipe.model_fields["task"].annotation)
    if task not in tasks:
        raise InputError(f"--task {task!r}: use one of {', '.join(tasks)}")
    serving = serving_options(
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        instances=instances,
        threads=threads,
    )
    recipe = file_recipe(
        model,
        name=name,
        version=version or 1,
        serving=serving,
        data=data,
        samples=samples,
        task=task,
    )
    result = build(
        recipe,
        output,
        overwrite=overwrite,
        run_bench=False if no_bench else None,
        on_step=step_printer(as_json),
    )
    print_result(result, as_json)
    if not as_json:
        written = sorted(p for p in result.package_dir.rglob("*") if p.is_file())
        names = ", ".join(p.relative_to(result.package_dir).as_posix() for p in written)
        console.print(f"[bold]wrote[/] {escape(names)}", highlight=False)
        console.print(
            f"serve it: shipyard serve {escape(str(result.package_dir))}", highlight=False
        )
