"""``shipyard serve``'s engine options (``--engine ray`` and its scale-out flags) and the
options a serving runtime (KServe) passes, kept apart from the single-process options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard.errors import InputError

EngineOpt = Annotated[
    str,
    typer.Option(
        help="process: one server process (default); ray: each model a Ray Serve deployment "
        "with replicas (needs the 'ray' extra).",
    ),
]
ReplicasOpt = Annotated[
    int | None,
    typer.Option(help="Ray: replicas of every model (default: each manifest's, else 1)."),
]
AutoscaleOpt = Annotated[
    str | None,
    typer.Option(metavar="MIN,MAX", help="Ray: autoscale every model between MIN and MAX."),
]
ReplicaCpusOpt = Annotated[
    float | None,
    typer.Option(help="Ray: CPUs each replica reserves (default: instances x threads)."),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray: join this cluster (auto, HOST:PORT, ray://...); default: start a local "
        "one-node cluster for this command and stop it on exit.",
    ),
]
IngressOpt = Annotated[
    str,
    typer.Option(
        help="Ray, local cluster: haproxy (Ray's high-throughput ingress; its stats and "
        "metrics listeners bind all interfaces) or proxy (Ray's Python proxy, loopback only).",
    ),
]
ModelNameOpt = Annotated[
    str | None,
    typer.Option(
        help="Serve a model or package folder under this name (a serving runtime passes it).",
    ),
]
ModelDirOpt = Annotated[
    Path | None,
    typer.Option(help="The folder to serve, instead of PATH (as serving runtimes pass it)."),
]

ENGINES = ("process", "ray")


def served_path(path: Path | None, model_dir: Path | None) -> Path:
    """PATH or --model-dir: exactly one of them."""
    if (path is None) == (model_dir is None):
        raise InputError("give the folder to serve as PATH or as --model-dir, not both or none")
    return path if path is not None else model_dir  # type: ignore[return-value]


def check_engine(engine: str, ray_only: dict[str, bool], process_only: dict[str, bool]) -> None:
    """InputError when ``engine`` is unknown or an option of the other engine was given."""
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: choose process or ray")
    given = [name for name, used in (ray_only if engine == "process" else {}).items() if used]
    if given:
        raise InputError(f"{', '.join(given)} apply to --engine ray")
    refused = [name for name, used in (process_only if engine == "ray" else {}).items() if used]
    if refused:
        raise InputError(
            f"{', '.join(refused)} not available with --engine ray: Ray's ingress terminates "
            "the connections (terminate TLS in front of it), --replicas takes the place of "
            "--workers, and gRPC and --verify-key are the single-process server's"
        )


def serve_on_ray(target: Any, host: str, port: int, options: dict[str, Any]) -> None:
    """Deploy ``target`` (a folder or Layout) on Ray and serve until SIGINT/SIGTERM."""
    from shipyard.cli import render_serving
    from shipyard.cli.app import console
    from shipyard.serve.ray import RayServer, Scale, run_ray_server
    from shipyard.serve.ray.settings import parse_autoscale

    autoscale = options.pop("autoscale")
    scale = Scale(
        replicas=options.pop("replicas"),
        autoscale=parse_autoscale(autoscale) if autoscale else None,
        replica_cpus=options.pop("replica_cpus"),
    )
    server = RayServer(target, host, port, scale=scale, **options)
    run_ray_server(server, lambda startup: console.print(render_serving.ray_serving(startup)))


__all__ = [
    "AddressOpt",
    "AutoscaleOpt",
    "EngineOpt",
    "IngressOpt",
    "ModelDirOpt",
    "ModelNameOpt",
    "ReplicaCpusOpt",
    "ReplicasOpt",
    "check_engine",
    "serve_on_ray",
    "served_path",
]
