"""``shipyard serve``, ``inspect`` and ``report``: what is done with a finished package."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from shipyard.cli import engine as ray_engine
from shipyard.cli.app import app, console
from shipyard.cli.options import (
    InstancesOpt,
    MaxBatchOpt,
    NameOpt,
    QueueDelayOpt,
    ThreadsOpt,
    serving_options,
)
from shipyard.errors import InputError

if TYPE_CHECKING:  # the web stack loads only when the server runs
    from shipyard.serve.app import Startup


@app.command()
def serve(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="A model repository (<model>/<version>/shipyard.json), one model folder "
            "(<version>/shipyard.json), one package folder (shipyard.json), or one model "
            "file (.onnx, .tflite, OpenVINO .xml); all but a repository are served alone.",
        ),
    ] = None,
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
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Load every model before opening a port; refuse to start (exit 2) when one "
            "fails to load or there is none.",
        ),
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="SHIPYARD_TLS_CERT", help="PEM certificate: serve HTTPS and gRPC over TLS."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(envvar="SHIPYARD_TLS_KEY", help="PEM private key of --tls-cert."),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            envvar="SHIPYARD_TLS_CLIENT_CA",
            help="PEM CA: require client certificates it signed (mutual TLS).",
        ),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(help="Close a connection whose request headers take longer (s).")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(help="Answer 408 to a request whose body takes longer (s).")
    ] = 30.0,
    max_connections: Annotated[
        int,
        typer.Option(
            help="Connections served at once by each worker process; new requests get 503 beyond."
        ),
    ] = 2048,
    workers: Annotated[
        str,
        typer.Option(
            envvar="SHIPYARD_WORKERS",
            metavar="N|auto",
            help="Server processes sharing the port, each with its own sessions and batchers "
            "(one process and its GIL use about one core). auto: one per usable core, which "
            "measured best; 1 for a stateful model, or when the models already use every "
            "core or would not fit in memory that many times (the startup line says why).",
        ),
    ] = "auto",
    name: NameOpt = None,
    max_batch_size: MaxBatchOpt = None,
    max_queue_delay_ms: QueueDelayOpt = None,
    instances: InstancesOpt = None,
    threads: ThreadsOpt = None,
    verify_key: Annotated[
        Path | None,
        typer.Option(
            envvar="SHIPYARD_VERIFY_KEY",
            show_default=False,
            help="Public key (PEM): serve only versions whose model.sig it verifies; others are "
            "refused, with the reason in /v2/repository/index (env SHIPYARD_VERIFY_KEY).",
        ),
    ] = None,
    engine: ray_engine.EngineOpt = "process",
    replicas: ray_engine.ReplicasOpt = None,
    autoscale: ray_engine.AutoscaleOpt = None,
    replica_cpus: ray_engine.ReplicaCpusOpt = None,
    ray_address: ray_engine.AddressOpt = None,
    ray_ingress: ray_engine.IngressOpt = "haproxy",
    model_name: ray_engine.ModelNameOpt = None,
    model_dir: ray_engine.ModelDirOpt = None,
) -> None:
    """Serve models over the Open Inference Protocol v2 (KServe / Triton HTTP, gRPC).

    A model file is packaged into a temporary folder first (removed on exit), as
    shipyard package would; --name and the serving options apply to a model file only.
    With --engine ray each model becomes a Ray Serve deployment (replicas, autoscaling, a
    cluster with --address), answering the same protocol.
    """
    from shipyard.serve import run_server
    from shipyard.serve.layout import find_layout, served_as
    from shipyard.serve.tls import Tls
    from shipyard.serve.worker_count import choose_workers, parse_workers

    path = ray_engine.served_path(path, model_dir)
    ray_only = {"--replicas": replicas is not None, "--autoscale": autoscale is not None}
    ray_only |= {"--replica-cpus": replica_cpus is not None, "--address": bool(ray_address)}
    process_only = {"--grpc-port": grpc_port is not None, "--tls-cert": tls_cert is not None}
    try:
        count = parse_workers(workers)
    except ValueError:
        raise InputError(
            f"--workers {workers}: give auto or a whole number of worker processes (1 or more)"
        ) from None
    process_only |= {"--workers": count not in (None, 1), "--verify-key": verify_key is not None}
    ray_engine.check_engine(engine, ray_only, process_only)

    if (tls_cert is None) != (tls_key is None):
        raise InputError("--tls-cert and --tls-key go together: give both, or neither")
    if tls_client_ca is not None and tls_cert is None:
        raise InputError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS)")
    tls = Tls(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
    serving = serving_options(
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        instances=instances,
        threads=threads,
    )
    given = ["--name"] * (name is not None) + [f"--{k.replace('_', '-')}" for k in serving]
    if given and not _is_model_file(path):
        raise InputError(
            f"{', '.join(given)} apply to a model file; {path} is a folder, whose packages "
            f"carry their name and serving settings in shipyard.json"
        )

    bracketed = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    address = f"{'https' if tls else 'http'}://{bracketed}:{port}"

    def run(served: Path) -> None:
        target = served_as(find_layout(served), model_name) if model_name else served
        processes, why = count or 1, ""
        if count is None and engine != "ray":
            processes, why = choose_workers(served)
        extra = ""  # the startup line says how many processes serve, and why when auto chose
        if processes > 1 or why:
            extra = f"; {processes} worker processes" if processes > 1 else "; one process"
            extra += f" ({why})" if why else ""
        show = partial(show_startup, address, bracketed, tls is not None, extra)
        if engine == "ray":
            options: dict[str, Any] = {"replicas": replicas, "autoscale": autoscale}
            options["address"] = ray_address
            options |= {"replica_cpus": replica_cpus, "ingress": ray_ingress}
            options |= {"auth_token": token, "admin_token": admin_token, "watch_seconds": watch}
            options |= {"max_body_bytes": int(max_body_mb * 2**20), "body_timeout": body_timeout}
            ray_engine.serve_on_ray(target, host, port, options)
            return
        # Tokens come from the environment by default: command lines are visible to local users.
        run_server(
            target,
            host,
            port,
            auth_token=token,
            admin_token=admin_token,
            watch_seconds=watch,
            max_body_bytes=int(max_body_mb * 2**20),
            log_level=log_level,
            grpc_port=grpc_port,
            strict=strict,
            on_loaded=show,
            tls=tls,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections=max_connections,
            verify_key=verify_key,
            workers=processes,
        )

    if not _is_model_file(path):
        run(path)
        return
    with tempfile.TemporaryDirectory(prefix="shipyard-serve-") as temporary:
        run(_package_for_serving(path, Path(temporary), name, serving))


def show_startup(address: str, host: str, tls: bool, workers: str, startup: Startup) -> None:
    """The startup table (module level: a worker process receives it pickled); ``workers``
    says how many processes serve, and why."""
    from shipyard.cli import render_serving

    grpc = ""
    if startup.grpc_port is not None:
        grpc = f", gRPC{' (TLS)' if tls else ''} {host}:{startup.grpc_port}"
    console.print(render_serving.serving(startup, f"serving on {address}{grpc}{workers}"))


def _is_model_file(path: Path) -> bool:
    """A file, or a path that does not exist but is named as a model file would be (so that
    its error says the file is missing rather than that it is no folder)."""
    from shipyard.sources import MODEL_FILES

    named = path.suffix.lower() in {*MODEL_FILES, ".bin"}
    return path.is_file() or (named and not path.exists())


def _package_for_serving(
    path: Path, folder: Path, name: str | None, serving: dict[str, Any]
) -> Path:
    """Package model file ``path`` into ``folder``; return the package folder. Its one run
    is on two random inputs and it is not benchmarked, so that the server starts soon."""
    from shipyard.build import build
    from shipyard.model_file import file_recipe

    recipe = file_recipe(path, name=name, serving=serving, samples=2)
    result = build(recipe, folder, run_bench=False)
    console.print(
        f"[green]✓[/] packaged {escape(str(path))} as model {escape(recipe.name)!r} version "
        f"{recipe.version} in a temporary folder, removed on exit "
        f"[dim]({result.seconds:.1f} s)[/]",
        highlight=False,
    )
    return result.package_dir


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A package folder or an .onnx file.")],
) -> None:
    """Show a package's artifacts and signature, or an ONNX file's signature."""
    from shipyard.package import is_package, load_package
    from shipyard.runtimes.onnxruntime import onnx_signature

    if path.is_dir() and is_package(path):
        package = load_package(path)
        console.print(
            f"[bold]{escape(package.name)}[/] version {package.version} — "
            f"{escape(str(package.path))}"
        )
        signature = package.signature
        served = (package.manifest.get("serving") or {}).get("artifact")
        served = served or package.manifest.get("default_artifact")
        for artifact in package.artifacts:
            size = artifact.size_bytes / 1e6
            mark = "  ← served" if artifact.name == served else ""
            console.print(f"  {artifact.name}: {artifact.path} ({size:.2f} MB){mark}", markup=False)
        if served is not None:
            why = package.manifest.get("default_artifact_reason") or "the package's default"
            if (package.manifest.get("serving") or {}).get("artifact"):
                why = "named by the recipe's serve: artifact:"
            console.print(f"  serves {served}: {why}", markup=False, highlight=False)
    elif path.suffix == ".onnx" and path.is_file():
        signature = onnx_signature(path)
    else:
        raise InputError(f"{path} is neither a package folder nor an .onnx file")
    for spec in signature.inputs:
        console.print(f"  input  {spec.describe()}", highlight=False, markup=False)
    for spec in signature.outputs:
        console.print(f"  output {spec.describe()}", highlight=False, markup=False)
    shown = package.manifest.get("examples") if path.is_dir() else None
    if shown and shown.get("predictions"):
        from shipyard.cli import render

        console.print(render.examples(shown))


@app.command()
def report(
    package: Annotated[Path, typer.Argument(help="A package folder (OUT/<model>/<version>).")],
) -> None:
    """Write report.md, report.html and the plots of a package again from its manifest.

    Edited or deleted reports are fine (they are not covered by the package's hashes); a
    package whose model files or manifest changed is refused. A manifest written by an older
    Shipyard is brought up to date.
    """
    from shipyard.report import regenerate

    written, repaired = regenerate(package)
    for path in written:
        console.print(f"[green]✓[/] {escape(str(path))}", highlight=False)
    if repaired:
        console.print(
            f"[green]✓[/] {escape(str(package / 'shipyard.json'))} updated: reports are no "
            "longer in its hashes, and it now carries its own digest",
            highlight=False,
        )
