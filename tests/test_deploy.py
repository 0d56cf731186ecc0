"""``shipyard deploy k8s``: the manifests load as YAML, have the structure KubeRay and KServe
read, name what exists (the builders, the serve flags), and the Serve config passes Ray's own
schema. Nothing here runs on a cluster."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import shipyard
from shipyard.recipe import parse_recipe
from tests.conftest import REPO

RECIPE = """\
name: {name}
model: {{source: "tests.conftest:small_net"}}
signature:
  inputs: [{{name: x, dtype: float32, shape: [batch, 1, 8, 8]}}]
  outputs: [{{name: logits, dtype: float32, shape: [batch, 10]}}]
passes: [{{export: {{dynamo: false}}}}]
validate: {{samples: 2}}
serve: {serve}
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deploy-repository")
    scaled = "{max_batch_size: 8, autoscaling: {min_replicas: 1, max_replicas: 4}, replica_cpus: 2}"
    for name, serving in (("digits", "{replicas: 2}"), ("text_model", scaled)):
        shipyard.build(parse_recipe(RECIPE.format(name=name, serve=serving)), root, run_bench=False)
    return root


@pytest.fixture(scope="module")
def manifests(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    out = tmp_path_factory.mktemp("manifests")
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "deploy", "k8s", str(repository), "-o", str(out),
         "--image", "registry.example/shipyard:0.1.0", "--worker-cpus", "4"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in out.iterdir()}


def test_rayservice_runs_every_model_with_its_manifest_settings(manifests: dict) -> None:
    (service,) = manifests["rayservice.yaml"]
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (workers,) = cluster["workerGroupSpecs"]
    # digits: 2 replicas x 1 CPU; text_model: 1-4 replicas x 2 CPUs -> 4-10 CPUs, 4 per pod.
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 3)
    assert cluster["enableInTreeAutoscaling"] is True
    for pod in (head, workers["template"]["spec"]):
        (container,) = pod["containers"]
        assert container["image"] == "registry.example/shipyard:0.1.0"
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1"
        assert env["SHIPYARD_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
        assert container["volumeMounts"] == [
            {"name": "models", "mountPath": "/models", "readOnly": True}
        ]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shipyard-models"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    apps = {app["name"]: app for app in config["applications"]}
    assert set(apps) == {"digits", "text_model", "_front"}
    assert apps["_front"]["route_prefix"] == "/"
    (digits,) = apps["digits"]["deployments"]
    assert digits["num_replicas"] == 2 and digits["max_ongoing_requests"] == 2 * (256 + 16)
    (text,) = apps["text_model"]["deployments"]
    assert text["autoscaling_config"]["max_replicas"] == 4
    assert text["ray_actor_options"] == {"num_cpus": 2.0}


def test_serve_config_passes_rays_schema_and_its_builders_build(
    manifests: dict, repository: Path
) -> None:
    pytest.importorskip("ray.serve", reason="Ray's Serve config schema ships with the 'ray' extra")
    from ray.serve.schema import ServeDeploySchema

    (service,) = manifests["rayservice.yaml"]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)  # Ray's own validation of a Serve config
    for app in config["applications"]:
        module, _, function = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module), function)
        args: dict[str, Any] = yaml.safe_load(
            yaml.safe_dump(app["args"]).replace("/models", str(repository))
        )
        built = builder(args)  # what Ray calls on the cluster, here against the local folder
        assert type(built).__name__ == "Application"


def test_kserve_runtime_and_services(manifests: dict) -> None:
    runtime, *services = manifests["kserve.yaml"]
    assert (runtime["apiVersion"], runtime["kind"]) == (
        "serving.kserve.io/v1alpha1",
        "ClusterServingRuntime",
    )
    spec = runtime["spec"]
    assert spec["supportedModelFormats"][0]["name"] == "shipyard"
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (container,) = spec["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http1": 8080, "h2c": 8081}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert "--model-dir=/mnt/models" in container["args"]
    # Every flag the runtime passes is one `shipyard serve` has.
    flags = {arg.split("=")[0] for arg in container["args"] if arg.startswith("--")}
    known = {opt for param in serve_command_params() for opt in param}
    assert flags <= known, flags - known
    names = {s["metadata"]["name"]: s for s in services}
    assert set(names) == {"digits", "text-model"}  # Kubernetes names: no '_'
    model = names["text-model"]["spec"]["predictor"]
    assert model["model"]["storageUri"] == "pvc://shipyard-models/text_model"
    assert model["model"]["runtime"] == "shipyard" and (
        model["minReplicas"],
        model["maxReplicas"],
    ) == (1, 4)


def serve_command_params() -> list[list[str]]:
    import typer.main

    from shipyard.cli.app import app

    command = typer.main.get_command(app)
    serve = command.commands["serve"]  # type: ignore[attr-defined]
    return [param.opts for param in serve.params]


def test_the_runtimes_command_line_serves_a_model_folder_under_the_service_name(
    repository: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "shipyard", "serve", f"--model-dir={repository / 'text_model'}",
         "--model-name=text-model", "--host=127.0.0.1", f"--port={port}", "--strict",
         "--log-level", "warning"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        from tests.serve.conftest import wait_for

        def ready() -> bool:
            assert process.poll() is None, process.communicate()[1]
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=60, what="the server")
        assert httpx.get(f"{url}/v2/models/text-model/ready", timeout=5).status_code == 200
        assert httpx.get(f"{url}/v2/models/text_model", timeout=5).status_code == 404
    finally:
        process.terminate()
        process.communicate(timeout=30)
