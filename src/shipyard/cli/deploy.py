"""``shipyard deploy k8s``: Kubernetes manifests for a served folder (KubeRay, KServe)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shipyard.cli.app import app, console
from shipyard.cli.engine import AutoscaleOpt, ReplicaCpusOpt, ReplicasOpt

deploy_app = typer.Typer(help="Write deployment manifests for a platform.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("k8s")
def k8s(
    path: Annotated[
        Path, typer.Argument(help="A model repository, model folder or package folder.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write into.")],
    image: Annotated[
        str, typer.Option(help="The container image (built from the Dockerfile).")
    ] = "shipyard:0.1.0",
    claim: Annotated[
        str,
        typer.Option(help="PersistentVolumeClaim holding the folder as it is on disk."),
    ] = "shipyard-models",
    name: Annotated[str, typer.Option(help="RayService and ServingRuntime name.")] = "shipyard",
    worker_cpus: Annotated[int, typer.Option(help="CPUs per Ray worker pod.")] = 4,
    replicas: ReplicasOpt = None,
    autoscale: AutoscaleOpt = None,
    replica_cpus: ReplicaCpusOpt = None,
) -> None:
    """Write a KubeRay RayService (the Ray engine) and, as the alternative, a KServe
    ClusterServingRuntime with one InferenceService per model, as plain YAML.

    Both read the packages from the PersistentVolumeClaim --claim. The manifests were
    checked for structure, not applied to a cluster by Shipyard's tests.
    """
    from shipyard.deploy.k8s import (
        inference_services,
        ray_service,
        serving_runtime,
        write_manifests,
    )
    from shipyard.serve.layout import find_layout
    from shipyard.serve.ray.settings import Scale, parse_autoscale

    layout = find_layout(path)
    scale = Scale(replicas, parse_autoscale(autoscale) if autoscale else None, replica_cpus)
    files = {
        "rayservice.yaml": [ray_service(layout, image, claim, name, scale, worker_cpus)],
        "kserve.yaml": [serving_runtime(image, name), *inference_services(layout, claim, name)],
    }
    for written in write_manifests(files, output):
        console.print(f"[green]✓[/] {escape(str(written))}", highlight=False)
    console.print(
        f"build the image: docker build -t {image} .  (the Dockerfile at Shipyard's root); "
        f"put {layout.path} on the claim {claim!r}; then kubectl apply -f one of them",
        highlight=False,
        markup=False,
    )
