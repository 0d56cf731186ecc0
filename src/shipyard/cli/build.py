"""``shipyard build`` and ``shipyard optimize``: run a recipe into a package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from shipyard.cli import render
from shipyard.cli.app import app, console
from shipyard.cli.options import JsonOpt, OutputOpt, OverwriteOpt, RecipeArg, VersionOpt
from shipyard.errors import GateError, InputError
from shipyard.events import Stage, StepEvent

SignKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--sign-key",
        envvar="SHIPYARD_SIGN_KEY",
        show_default=False,
        help="Sign the package with this elliptic-curve private key (PEM): model.sig, "
        "written before the version folder appears; replaces the recipe's sign: section "
        "(env SHIPYARD_SIGN_KEY; an encrypted key's password: env SHIPYARD_SIGN_KEY_PASSWORD).",
    ),
]


@app.command()
def build(
    recipe: RecipeArg = None,
    output: OutputOpt = Path("out"),
    version: VersionOpt = None,
    overwrite: OverwriteOpt = False,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the benchmark step.")] = False,
    no_finetune: Annotated[
        bool, typer.Option("--no-finetune", help="Allow structured pruning without fine-tuning.")
    ] = False,
    as_json: JsonOpt = False,
    sign_key: SignKeyOpt = None,
) -> None:
    """Run a recipe and write the package OUTPUT/<model>/<version>/."""
    from shipyard.build import as_recipe
    from shipyard.build import build as run_build
    from shipyard.optimize import optimize as run_optimize

    loaded = with_signing(with_version(as_recipe(recipe), version), sign_key)
    if no_finetune:  # the user accepts the accuracy loss of pruning without retraining
        for step in loaded.passes:
            if step.name == "prune":
                step.prune = step.prune.model_copy(update={"allow_without_finetune": True})
    try:
        if loaded.optimize is not None:  # `optimize:` in the recipe: the build is a search
            result = run_optimize(
                loaded, output, overwrite=overwrite, on_step=step_printer(as_json)
            )
        else:
            result = run_build(
                loaded,
                output,
                overwrite=overwrite,
                run_bench=False if no_bench else None,
                on_step=step_printer(as_json),
            )
    except GateError as error:
        if error.report is not None:
            console.print(render.validation(error.report))  # type: ignore[arg-type]
        raise
    print_result(result, as_json)


def step_printer(quiet: bool) -> Any:
    """An ``on_step`` callback printing each finished step (nothing when ``quiet``)."""

    def on_step(event: StepEvent) -> None:
        if not quiet:
            console.print(render.step_line(event.message, event.seconds), highlight=False)

    return on_step


@app.command()
def optimize(
    recipe: RecipeArg = None,
    output: OutputOpt = Path("out"),
    budget: Annotated[
        str | None,
        typer.Option(help="Time budget with its unit: 90s, 10m, 1h (default: the recipe's, 10m)."),
    ] = None,
    objective: Annotated[str | None, typer.Option(help="latency, size or throughput.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size the objective is measured at.")
    ] = None,
    no_prune: Annotated[
        bool, typer.Option("--no-prune", help="Skip structured-pruning candidates.")
    ] = False,
    version: VersionOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    sign_key: SignKeyOpt = None,
) -> None:
    """Search prune/quantize candidates, measured here; package the best that passes the gates.

    Exit 0 when the chosen candidate passed its gates, 1 when none did (the closest is
    packaged and the table says by how much it missed).
    """
    from pydantic import ValidationError

    from shipyard.build import as_recipe
    from shipyard.optimize import optimize as run_optimize
    from shipyard.optimize import plan_size, prunable
    from shipyard.problems import describe
    from shipyard.recipe import OptimizeSettings

    loaded = with_signing(with_version(as_recipe(recipe), version), sign_key)
    values = (loaded.optimize or OptimizeSettings()).model_dump()
    overrides = {"budget": budget, "objective": objective, "batch_size": batch_size}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if no_prune:
        values["prune_levels"] = []
    try:
        settings = OptimizeSettings.model_validate(values)
    except ValidationError as error:
        raise InputError(describe(error, name=_option_of)) from error
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn(f"budget {settings.budget:.0f} s"),
    )
    quiet = as_json or not console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=quiet) as progress:
        total = plan_size(settings, prunable(loaded.task, loaded.data.train is not None))
        task = progress.add_task("candidates", total=total)

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
    search = result.manifest["search"]
    if not as_json:
        console.print(render.search_outcome(search), highlight=False)
    if search["passed"] == 0:  # packaged the closest, but say it failed
        raise typer.Exit(1)


def _option_of(loc: tuple[Any, ...]) -> str:
    """An OptimizeSettings field as the option that sets it: ``budget`` -> ``--budget``."""
    field = str(loc[0]) if loc else ""
    return f"--{field.replace('_', '-')}" if field else "optimize"


def with_version(recipe: Any, version: int | None) -> Any:
    """The recipe with ``version`` replaced (``--version``), checked like the recipe's own."""
    if version is None:
        return recipe
    if version < 1:
        raise InputError(f"--version {version}: versions are integers >= 1")
    return recipe.model_copy(update={"version": version})


def with_signing(recipe: Any, key: Path | None) -> Any:
    """The recipe signed with ``key`` (``--sign-key``) instead of its own ``sign:``."""
    if key is None:
        return recipe
    from shipyard.recipe import SignSettings

    return recipe.model_copy(update={"sign": SignSettings(key=str(key.resolve()))})


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
        console.print(render.bench(result.benchmark))  # against the first: the reference
    default = result.manifest.get("default_artifact")
    if default is not None:
        reason = result.manifest.get("default_artifact_reason", "")
        console.print(f"[bold]serves[/] {escape(default)}: {escape(reason)}", highlight=False)
    if result.recipe.sign is not None:
        from shipyard.signing import SIGNATURE_FILE

        signature = result.package_dir / SIGNATURE_FILE
        console.print(f"[bold]signed[/] {escape(str(signature))}", highlight=False)
    console.print(
        f"[bold]package[/] {escape(str(result.package_dir))} ({result.seconds:.1f} s); "
        f"report {escape(str(result.package_dir / 'report.md'))}",
        highlight=False,
    )
