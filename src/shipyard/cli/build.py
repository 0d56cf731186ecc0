"""``shipyard build`` and ``shipyard optimize``: run a recipe into a package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from shipyard.cli import render
from shipyard.cli.app import app, console
from shipyard.cli.options import JsonOpt, OutputOpt, OverwriteOpt, RecipeArg
from shipyard.errors import GateError, InputError
from shipyard.events import Stage, StepEvent


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
            console.print(render.validation(error.report))  # type: ignore[arg-type]
        raise
    print_result(result, as_json)


def _on_step(quiet: bool) -> Any:
    def on_step(event: StepEvent) -> None:
        if not quiet:
            console.print(render.step_line(event.message, event.seconds), highlight=False)

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

        def on_step(event: StepEvent) -> None:
            if event.stage is Stage.CANDIDATE:
                progress.advance(task)
            if not as_json:
                progress.console.print(
                    render.step_line(event.message, event.seconds), highlight=False
                )

        result = run_optimize(
            loaded, output, settings=settings, overwrite=overwrite, on_step=on_step
        )
    print_result(result, as_json)
    if result.manifest["search"]["passed"] == 0:  # packaged the closest, but say it failed
        raise typer.Exit(1)


def print_result(result: Any, as_json: bool) -> None:
    """A build's validation tables, candidates or bench tables, and where the package is."""
    if as_json:
        print(json.dumps(result.manifest, indent=2, default=str))
        return
    for report in result.validation:
        console.print(render.validation(report))
    search = result.manifest.get("search")
    if search:  # the candidate table; every latency detail is in the report
        console.print(render.candidates(result.manifest["candidates"], str(search["batch_size"])))
        console.print(f"[bold]search[/] {escape(search['verdict'])}", highlight=False)
    elif result.benchmark is not None:
        console.print(render.bench(result.benchmark, baseline="torch"))
    console.print(
        f"[bold]package[/] {escape(str(result.package_dir))} ({result.seconds:.1f} s); "
        f"report {escape(str(result.package_dir / 'report.md'))}",
        highlight=False,
    )
