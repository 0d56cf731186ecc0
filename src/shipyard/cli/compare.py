"""``shipyard validate``, ``compare`` and ``bench``: the same inputs through several artifacts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer

from shipyard.cli import render
from shipyard.cli.app import app, console
from shipyard.cli.options import (
    AtolOpt,
    CosineOpt,
    DataOpt,
    InputOpt,
    JsonOpt,
    KwargsOpt,
    RtolOpt,
    SamplesOpt,
    Top1Opt,
    load_artifacts,
    package_data,
    package_preprocess,
    package_sequence,
    package_task,
    signature_from,
)
from shipyard.errors import InputError

if TYPE_CHECKING:
    import numpy as np


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
    kwargs: KwargsOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosineOpt = None,
    min_top1_agreement: Top1Opt = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="Gate: max accuracy drop (needs labels).")
    ] = None,
    max_auc_drop: Annotated[
        float | None, typer.Option(help="Gate: max AUC drop (task binary, needs labels).")
    ] = None,
    max_f1_drop: Annotated[
        float | None, typer.Option(help="Gate: max frame F1 drop (task detection, needs labels).")
    ] = None,
    min_sample_cosine: Annotated[
        float | None, typer.Option(help="Gate: every sample's cosine (outputs of rows).")
    ] = None,
    min_ranking_agreement: Annotated[
        float | None,
        typer.Option(help="Gate: triplets ordered as the reference (task embedding, labels)."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="classification, binary, detection, embedding or other; default: the recipe's"
            " or package's."
        ),
    ] = None,
    samples: SamplesOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare CANDIDATE with REFERENCE on the same inputs; exit 1 when a gate fails."""
    from shipyard.data import load_data
    from shipyard.recipe import Recipe, load_recipe
    from shipyard.stateful import Stepper
    from shipyard.validate import Gates
    from shipyard.validate import validate as run_validate

    gates = Gates()
    specs = [reference, candidate]
    sequence = package_sequence(specs)  # a stateful model: its rows run as sequences
    if recipe is not None:
        loaded_recipe = load_recipe(recipe)
        gates, task = loaded_recipe.validate_.gates, task or loaded_recipe.task
        sequence = loaded_recipe.serve.sequence or sequence
    task = task or package_task(specs) or "classification"
    tasks = get_args(Recipe.model_fields["task"].annotation)
    if task not in tasks:
        raise InputError(f"--task {task!r}: use one of {', '.join(tasks)}")
    gates = gates.merged(
        atol=atol,
        rtol=rtol,
        min_cosine=min_cosine,
        min_top1_agreement=min_top1_agreement,
        max_accuracy_drop=max_accuracy_drop,
        max_auc_drop=max_auc_drop,
        max_f1_drop=max_f1_drop,
        min_sample_cosine=min_sample_cosine,
        min_ranking_agreement=min_ranking_agreement,
    )
    loaded = load_artifacts(specs, signature_from(input, recipe), weights, kwargs)
    ref, cand = loaded[0], loaded[-1]
    data = data or package_data(specs)
    signature = ref.signature if sequence is None else Stepper(ref.signature, sequence).client
    processing = package_preprocess(specs)
    if recipe is not None and loaded_recipe.preprocess is not None:
        processing = loaded_recipe.preprocess.resolved(loaded_recipe.base_dir)
    dataset = load_data(data, signature, preprocess=processing) if data else None
    report = run_validate(ref, cand, dataset, gates, samples=samples, task=task, sequence=sequence)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(render.validation(report))
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

    loaded = load_artifacts(artifacts, signature_from(input, None))
    gates = Gates(
        atol=atol, rtol=rtol, min_cosine=min_cosine, min_top1_agreement=min_top1_agreement
    )
    if bisect:
        if len(loaded) != 2:
            raise InputError(f"--bisect compares exactly two ONNX files, got {len(loaded)}")
        processing = package_preprocess(artifacts)
        dataset = load_data(data, loaded[0].signature, preprocess=processing) if data else None
        feeds = dataset.take(samples or 8).inputs if dataset else None
        result = run_bisect(
            loaded[0],
            loaded[1],
            feeds,
            atol=atol if atol is not None else 1e-4,
            rtol=rtol if rtol is not None else 1e-3,
        )
        if as_json:
            first = result.first_divergence
            summary = {
                "compared": [asdict(d) for d in result.compared],
                "skipped": result.skipped,
                "first_divergence": asdict(first) if first else None,
            }
            print(json.dumps(summary, indent=2))
        else:
            console.print(render.bisect(result))
        if result.first_divergence is not None:
            raise typer.Exit(1)
        return
    data = data or package_data(artifacts)
    processing = package_preprocess(artifacts)
    dataset = load_data(data, loaded[0].signature, preprocess=processing) if data else None
    task = package_task(artifacts) or "classification"
    reports = run_compare(loaded, dataset, gates, samples=samples, task=task)
    if as_json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        where = f"; on {data}" if data else ""
        title = f"against {loaded[0].name} ({render.samples(reports[0])}{where})"
        console.print(render.comparison(reports, title))
        if gates == Gates():
            console.print(
                "no gates set, so only NaN/Inf is judged: add --atol, --min-cosine or "
                "--min-top1-agreement (and --data with labels for accuracy)",
                style="yellow",
                highlight=False,
            )
    if not all(r.passed for r in reports):
        raise typer.Exit(1)


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
    end_to_end: Annotated[
        bool,
        typer.Option(
            "--end-to-end",
            help="Time from encoded images to outputs: the package's pre-processing included.",
        ),
    ] = False,
    image: Annotated[
        Path | None,
        typer.Option(help="The image --end-to-end decodes (default: a synthetic 640x480 JPEG)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure artifacts side by side, interleaved, in one process.

    With --end-to-end every timed call decodes, resizes and normalises the images as the
    package's preprocess section says, then runs the model: what a served request costs.
    """
    from rich.progress import Progress

    from shipyard.bench import bench as run_bench
    from shipyard.events import BenchProgress

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError as error:
        raise InputError(f"--batch-sizes {batch_sizes!r}: expected integers like 1,8") from error
    loaded = load_artifacts(artifacts, signature_from(input, recipe))
    if image is not None and not end_to_end:
        raise InputError("--image is the picture --end-to-end decodes: add --end-to-end")
    raw = end_to_end_inputs(artifacts, loaded, image) if end_to_end else {}
    quiet = as_json or not console.is_terminal
    with Progress(console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("benchmarking", total=None)

        def on_progress(event: BenchProgress) -> None:
            bar.update(
                task, completed=event.done, total=event.total, description=f"batch {event.batch}"
            )

        report = run_bench(
            loaded,
            batch_sizes=sizes,
            threads=threads,
            runs=runs,
            warmup=warmup,
            max_seconds=max_seconds,
            on_progress=on_progress,
            **raw,
        )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(render.bench(report))


def end_to_end_inputs(specs: list[str], loaded: list[Any], image: Path | None) -> dict[str, Any]:
    """``bench``'s ``inputs=`` and ``prepare=`` for --end-to-end: N copies of one encoded
    image, pre-processed as the (first) package's manifest says on every timed call."""
    from shipyard.package import is_package, load_package
    from shipyard.serve.images import EncodedImages

    folders = [Path(s.rpartition("=")[2]) for s in specs]
    packages = [f for f in folders if f.is_dir() and is_package(f)]
    encoded = None
    for folder in packages:
        package = load_package(folder)
        encoded = EncodedImages.from_manifest(package.manifest, package.signature)
        if encoded is not None:
            break
    if encoded is None:
        raise InputError(
            "--end-to-end needs a package whose recipe has a preprocess: image section "
            "(build one with shipyard build); the files given have none"
        )
    if image is not None:
        try:
            data = image.read_bytes()
        except OSError as error:
            raise InputError(f"--image {image}: cannot read it ({error.strerror})") from None
    else:
        data = synthetic_jpeg()
    signature = loaded[0].signature
    images = encoded

    import numpy as np

    from shipyard.serve.errors import BadRequest

    def inputs(batch: int) -> dict[str, np.ndarray]:
        return {images.input: np.array([data] * batch, dtype=object)}

    def prepare(raw: Any) -> dict[str, np.ndarray]:
        feeds = images.convert(raw)
        return {name: feeds[name] for name in signature.input_names}

    try:
        prepare(inputs(1))  # a picture that cannot be used fails here, before any timing
    except BadRequest as error:
        raise InputError(f"--image {image or 'synthetic'}: {error}") from None
    what = f"{image.name}" if image is not None else "a 640x480 JPEG"
    timed = f"decode {what} + pre-process + Session.run"
    return {"inputs": inputs, "prepare": prepare, "timed": timed}


def synthetic_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A camera-sized JPEG with smooth gradients and noise (quality 90), made here."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
