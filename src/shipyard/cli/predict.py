"""``shipyard predict``: a package's model over a data file, offline (batch inference)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from shipyard.cli.app import app, console
from shipyard.cli.engine import AddressOpt


@app.command()
def predict(
    package: Annotated[Path, typer.Argument(help="A package folder (OUT/<model>/<version>).")],
    data: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help=".npy (one input), .npz (an array per input name) or Parquet (a column per "
            "input; a file or a folder); a folder of images (its subfolders too) for a "
            "package that pre-processes images; a .txt file, one text per line, for a "
            "package with a tokenizer.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Results: .npy (one output), .npz or .parquet; with --engine ray a folder of "
            "Parquet files. Images add a 'file' column, texts 'line' (and 'text' in Parquet); "
            "with class names in the package, 'label' (the top-1 class).",
        ),
    ],
    engine: Annotated[
        str, typer.Option(help="process: one session here; ray: Ray Data, a session per actor.")
    ] = "process",
    batch_size: Annotated[int, typer.Option(help="Samples per session run.")] = 256,
    threads: Annotated[int, typer.Option(help="Threads per session.")] = 1,
    actors: Annotated[int, typer.Option(help="Ray: sessions running at once.")] = 2,
    ray_address: AddressOpt = None,
) -> None:
    """Run a package's served model over a data file, in chunks (larger than memory works).

    The progress bar goes to stderr, on a terminal only. --engine ray runs the same session in
    Ray Data actors (map_batches) and writes Parquet; the numbers equal the single-process run.
    Images and texts are pre-processed by the package, as the server does, and run with
    --engine process; an image that cannot be decoded stops the run, naming the file.
    """
    from shipyard.predict import predict as run
    from shipyard.progress import progress_bar

    bar = progress_bar(
        TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    )
    with bar:
        task = bar.add_task("predict", total=None)
        result = run(
            package,
            data,
            output,
            engine=engine,
            batch_size=batch_size,
            threads=threads,
            actors=actors,
            address=ray_address,
            on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(
        f"[green]✓[/] {result.rows:,} rows through {escape(result.artifact)} "
        f"({result.engine}) in {result.seconds:.1f} s -> {escape(str(result.output))}",
        highlight=False,
    )
    if result.truncated:
        texts = "1 text was" if result.truncated == 1 else f"{result.truncated:,} texts were"
        console.print(
            f"[yellow]![/] {texts} cut at the package's max_length tokens", highlight=False
        )
