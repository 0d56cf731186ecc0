"""Offline batch inference: a package's own model over a data file, results to a file.

``predict(package, data, output)`` runs the artifact the package serves (the same one
``shipyard serve`` picks) with one Runtime session over ``data`` in chunks of ``batch_size``
samples, so a data set larger than memory works (.npy is memory-mapped, Parquet read by row
batches; see :mod:`shipyard.tabular`), and writes every output to ``output`` (.npy, .npz or
Parquet). With ``engine="ray"`` the same sessions run in Ray Data: ``map_batches`` with
:class:`Predictor`, a callable class that opens its session once per actor
(``ActorPoolStrategy``), writing Parquet files into the folder ``output``; the rows keep
the input's order, and the numbers equal the single-process path's.

``data`` may also be a folder of images (a package with ``preprocess: image``) or a .txt file
of texts, one per line (a package with a tokenizer): the package's own pre-processing turns
each chunk into the model's inputs, as the server does, and the output gains the column that
names each row (``file``; ``line``, and ``text`` in Parquet), and, when the package has
class names (``postprocess: labels``), ``label``: the top-1 class of the first output. See
:mod:`shipyard.predict_inputs`. These run single-process: Ray Data reads tensor files only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import DataError, InputError
from shipyard.package import Package, load_package
from shipyard.predict_inputs import is_tensor_file, open_input
from shipyard.runtimes import open_session
from shipyard.tabular import (
    ChunkWriter,
    count_rows,
    file_format,
    from_table,
    parquet_files,
    read_chunks,
    to_table,
)

ENGINES = ("process", "ray")
Progress = Callable[[int, int], None]  # (rows done, rows in all)


@dataclass(frozen=True)
class Prediction:
    """What a run did: rows, seconds, the artifact that ran, where the results are, and how
    many texts were cut at the tokenizer's ``max_length`` (a .txt input)."""

    rows: int
    seconds: float
    artifact: str
    output: Path
    engine: str
    truncated: int = 0


def _served(package: Package) -> Any:
    from shipyard.serve.version import choose_artifact  # the rule `serve` applies
    from shipyard.serving import ServingConfig

    artifact, _ = choose_artifact(package, ServingConfig.from_manifest(package.manifest))
    return artifact


def predict(
    package: str | Path,
    data: str | Path,
    output: str | Path,
    *,
    engine: str = "process",
    batch_size: int = 256,
    threads: int = 1,
    actors: int = 2,
    address: str | None = None,
    on_progress: Progress | None = None,
) -> Prediction:
    """Run the package's served artifact over ``data``; write its outputs to ``output``.

    ``data``: .npy (a model with one input), .npz (an array per input name), Parquet (a
    column per input), a folder of images or a .txt file of texts (a package that
    pre-processes images or texts; see :mod:`shipyard.predict_inputs`). ``output``: .npy
    (one output), .npz or .parquet; with ``engine="ray"`` a folder of Parquet files.
    ``batch_size``: samples per session run. ``threads``: per session. Ray: ``actors``
    sessions at once, on the cluster at ``address`` (None: a local one started for this
    call, or the one this process is connected to). ``on_progress(done, total)`` after each
    chunk (single-process).
    """
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: choose process or ray")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, not {batch_size}")
    loaded = load_package(package)
    artifact = _served(loaded)
    data, output = Path(data), Path(output)
    if not data.exists():
        raise DataError(f"data file {data} does not exist")
    started = time.perf_counter()
    truncated = 0
    if engine == "ray":
        if not is_tensor_file(data):
            raise InputError(
                f"--engine ray reads .npy, .npz and Parquet; {data.name} (images or texts) "
                f"runs with --engine process"
            )
        rows = _predict_ray(
            loaded, artifact.name, data, output, batch_size, threads, actors, address
        )
    else:
        rows, truncated = _predict_here(
            loaded, artifact, data, output, batch_size, threads, on_progress
        )
    seconds = time.perf_counter() - started
    return Prediction(rows, seconds, artifact.name, output, engine, truncated)


def _predict_here(
    package: Package,
    artifact: Any,
    data: Path,
    output: Path,
    batch_size: int,
    threads: int,
    on_progress: Progress | None,
) -> tuple[int, int]:
    kind = file_format(output, "output")
    source = open_input(data, package, artifact.signature, kind)
    if source.keys and kind == ".npy":
        raise DataError(
            f"the results of {data.name} carry a {source.keys[0]!r} column beside the "
            f"model's outputs: write .npz or .parquet"
        )
    top = _top_label(package, artifact.signature) if source.keys else None
    columns = [*source.keys, *(["label"] if top else [])]
    clash = sorted(set(columns) & set(artifact.signature.output_names))
    if clash:
        raise DataError(f"the model has an output named {clash[0]!r}, a column predict adds")
    output.parent.mkdir(parents=True, exist_ok=True)
    dtypes = {**source.dtypes, **({"label": top[1].dtype} if top else {})}
    writer = ChunkWriter(output, source.rows, dtypes)
    try:
        with open_session(artifact, threads=threads) as session:
            for chunk, keys in source.chunks(batch_size):
                outputs = session.run(_typed(chunk, artifact.signature))
                if top is not None:
                    keys = {**keys, "label": top[1][outputs[top[0]].argmax(axis=1)]}
                writer.write({**keys, **outputs})
                if on_progress is not None:
                    on_progress(writer.done, source.rows)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.done, source.truncated


def _top_label(package: Package, signature: Any) -> tuple[str, Any] | None:
    """For a package with class names (``postprocess: labels``, read as the server reads
    them): the output that holds the logits (the first, as the build's examples and the
    server's classification take it) and the names as a string array; None without."""
    import numpy as np

    from shipyard.serve.version import read_labels

    labels = read_labels(package)
    if not labels:
        return None
    first = signature.outputs[0]
    classes = first.shape[1] if len(first.shape) == 2 else None
    if classes is None or (isinstance(classes, int) and classes != len(labels)):
        return None  # not logits of one row per sample (the build checks the labels' count)
    return first.name, np.asarray(labels)


def _typed(chunk: dict[str, Any], signature: Any) -> dict[str, Any]:
    """Inputs in the signature's dtypes (Parquet gives float64 for float lists written by
    pandas; the session's signature check would refuse them)."""
    import numpy as np

    dtypes = {spec.name: spec.dtype for spec in signature.inputs}
    return {
        name: array if array.dtype == np.dtype(dtypes[name]) else array.astype(dtypes[name])
        for name, array in chunk.items()
    }


class Predictor:
    """Ray Data's callable class: one session per actor, opened once in the constructor;
    each call runs one batch (a pyarrow Table, or NumPy ``{"data": array}`` from
    ``read_numpy``) and returns the outputs as a pyarrow Table (:mod:`shipyard.tabular`)."""

    def __init__(self, package: str, artifact: str, threads: int) -> None:
        loaded = load_package(package)
        self.artifact = next(a for a in loaded.artifacts if a.name == artifact)
        self.names = self.artifact.signature.input_names
        self.session = open_session(self.artifact, threads=threads)

    def __call__(self, batch: Any) -> Any:
        if isinstance(batch, dict):  # read_numpy: one column, "data"
            inputs = {self.names[0]: batch["data"]}
        else:
            inputs = from_table(batch, self.names)
        return to_table(self.session.run(_typed(inputs, self.artifact.signature)))


def _predict_ray(
    package: Package,
    artifact: str,
    data: Path,
    output: Path,
    batch_size: int,
    threads: int,
    actors: int,
    address: str | None,
) -> int:
    from shipyard.serve.ray.cluster import Cluster

    if output.suffix.lower() in (".npy", ".npz"):
        raise InputError(f"--engine ray writes Parquet files into a folder, not {output.name}")
    names = package.signature.input_names
    kind = file_format(data, "data")
    if kind == ".npy" and len(names) != 1:
        raise DataError(f"{data} holds one array; the model takes {list(names)}: use .npz")
    # The actors hold their CPUs for the whole run; Ray Data's read and write tasks need
    # CPUs beside them, or the pipeline waits forever: a local cluster gets both.
    cluster = Cluster(address, num_cpus=float(actors * threads + 2), ingress="proxy")
    cluster.start()
    try:
        import logging

        import ray.data

        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan, per run
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in the input's order
        context.enable_progress_bars = sys.stderr.isatty()  # Ray Data's own bars
        if kind == ".parquet":
            dataset = ray.data.read_parquet(parquet_files(data)).select_columns(list(names))
            batch_format = "pyarrow"
        elif kind == ".npy":
            dataset, batch_format = ray.data.read_numpy(str(data)), "numpy"
        else:  # a zip member cannot be streamed: each input is read whole, as single-process
            chunks = [to_table(chunk) for chunk in read_chunks(data, names, batch_size)]
            dataset, batch_format = ray.data.from_arrow(chunks), "pyarrow"
        results = dataset.map_batches(
            Predictor,
            fn_constructor_args=(str(package.path), artifact, threads),
            batch_size=batch_size,
            batch_format=batch_format,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads,
        )
        results.write_parquet(str(output))
        return count_rows(output, names)  # what was written (a second count would rerun it)
    finally:
        cluster.stop()


__all__ = ["ENGINES", "Prediction", "Predictor", "predict"]
