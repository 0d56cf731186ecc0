"""Kubernetes manifests for a served folder: a KubeRay ``RayService`` (the Ray engine) and,
as the alternative, a KServe ``ClusterServingRuntime`` with one ``InferenceService`` per
model (each pod the single-process server).

Plain dictionaries, written as YAML by :func:`write_manifests`. Both read the packages from
a PersistentVolumeClaim (``claim``) holding the served folder as it is on disk (a repository:
``<model>/<version>/shipyard.json``): the RayService mounts it at ``/models``, KServe's
storage initializer makes ``pvc://<claim>/<model>`` its ``/mnt/models``. Bearer tokens come
from the Secret ``shipyard-tokens`` (keys ``token``, ``admin-token``) when it exists.

The RayService's ``serveConfigV2`` deploys the same application builders ``shipyard serve
--engine ray`` uses (:mod:`shipyard.serve.ray.deployment`), with each model's deployment
options from its manifest (:mod:`shipyard.serve.ray.settings`), and turns on Ray's HAProxy
ingress in every pod. These manifests are generated and checked for structure; they have
not been applied to a cluster by our tests.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from shipyard.serve.layout import Layout
from shipyard.serve.ray.settings import (
    FRONT,
    Scale,
    deployment_options,
    model_config,
    replica_bounds,
)

MODELS_MOUNT = "/models"  # where the RayService's pods see the claim
KSERVE_MODELS = "/mnt/models"  # where KServe's storage initializer puts storageUri
RAY_VERSION = "2.60.0"
SERVE_PORT, HTTP_PORT, GRPC_PORT = 8000, 8080, 8081
TOKENS_SECRET = "shipyard-tokens"


def dns_name(model: str) -> str:
    """A Kubernetes object name for ``model`` (lowercase, '-' for '_' and '.')."""
    name = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")
    return name[:63].rstrip("-") or "model"


def _token_env() -> list[dict[str, Any]]:
    return [
        {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": TOKENS_SECRET, "key": key, "optional": True}},
        }
        for variable, key in (
            ("SHIPYARD_SERVE_TOKEN", "token"),
            ("SHIPYARD_SERVE_ADMIN_TOKEN", "admin-token"),
        )
    ]


def serve_config(layout: Layout, scale: Scale) -> dict[str, Any]:
    """The Ray Serve config (``serveConfigV2``) for the models of ``layout``, mounted at
    ``/models``: one application per model plus the front, as ``serve --engine ray``."""
    root = MODELS_MOUNT
    applications = []
    models = layout.model_names()
    for model in models:
        folder = f"{root}/{model}" if layout.kind == "repository" else root
        options = deployment_options(model_config(layout, model), scale)
        args: dict[str, Any] = {"folder": folder}
        if layout.kind != "repository":
            args["name"] = model
        applications.append(
            {
                "name": model,
                "route_prefix": f"/v2/models/{model}",
                "import_path": "shipyard.serve.ray.deployment:model_app",
                "args": args,
                "deployments": [{"name": model, **options}],
            }
        )
    front_options = {"name": models[0]} if layout.kind != "repository" else {}
    applications.append(
        {
            "name": FRONT,
            "route_prefix": "/",
            "import_path": "shipyard.serve.ray.deployment:front_app",
            "args": {"folder": root, "models": models, "options": front_options},
        }
    )
    return {"http_options": {"host": "0.0.0.0", "port": SERVE_PORT}, "applications": applications}


def _ray_container(name: str, image: str, cpus: int, memory: str) -> dict[str, Any]:
    ports = [{"containerPort": SERVE_PORT, "name": "serve"}]
    if name == "ray-head":
        ports += [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ]
    return {
        "name": name,
        "image": image,
        "ports": ports,
        "env": [
            # Ray's high-throughput ingress (HAProxy), as serve --engine ray starts it locally.
            {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
            {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
            {"name": "OMP_NUM_THREADS", "value": "1"},
            *_token_env(),
        ],
        "resources": {
            "requests": {"cpu": str(cpus), "memory": memory},
            "limits": {"cpu": str(cpus), "memory": memory},
        },
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}],
    }


def ray_service(
    layout: Layout,
    image: str,
    claim: str,
    name: str = "shipyard",
    scale: Scale | None = None,
    worker_cpus: int = 4,
) -> dict[str, Any]:
    """A KubeRay ``RayService``: a head (no replicas on it) and a CPU worker group sized for
    the replicas the models reserve at their fewest and most."""
    scale = scale or Scale()
    plans = [deployment_options(model_config(layout, m), scale) for m in layout.model_names()]
    low = sum(replica_bounds(o)[0] * o["ray_actor_options"]["num_cpus"] for o in plans)
    high = sum(replica_bounds(o)[1] * o["ray_actor_options"]["num_cpus"] for o in plans)
    fewest, most = math.ceil(low / worker_cpus), math.ceil(high / worker_cpus)
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]

    def pod(container: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"containers": [container], "volumes": volumes}}

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "shipyard"}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(layout, scale), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": fewest != most,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": pod(_ray_container("ray-head", image, 2, "4Gi")),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "replicas": max(fewest, 1),
                        "minReplicas": max(fewest, 1),
                        "maxReplicas": max(most, 1),
                        "rayStartParams": {},
                        "template": pod(
                            _ray_container("ray-worker", image, worker_cpus, f"{2 * worker_cpus}Gi")
                        ),
                    }
                ],
            },
        },
    }


def serving_runtime(image: str, name: str = "shipyard") -> dict[str, Any]:
    """A KServe ``ClusterServingRuntime``: ``shipyard serve`` on ``/mnt/models`` under the
    InferenceService's name, V2 over HTTP (8080) and gRPC (8081, port name ``h2c``)."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ClusterServingRuntime",
        "metadata": {"name": name},
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(HTTP_PORT),
                "prometheus.kserve.io/path": "/metrics",
            },
            "supportedModelFormats": [
                {"name": "shipyard", "version": "1", "autoSelect": True, "priority": 1}
            ],
            "protocolVersions": ["v2", "grpc-v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": image,
                    "command": ["shipyard"],
                    "args": [
                        "serve",
                        f"--model-dir={KSERVE_MODELS}",
                        "--model-name={{.Name}}",
                        "--host=0.0.0.0",
                        f"--port={HTTP_PORT}",
                        f"--grpc-port={GRPC_PORT}",
                        "--strict",
                    ],
                    "env": [{"name": "OMP_NUM_THREADS", "value": "1"}, *_token_env()],
                    # Serverless (Knative) mode exposes one port: keep h2c for gRPC clients,
                    # or the HTTP port for REST ones; RawDeployment serves both.
                    "ports": [
                        {"containerPort": HTTP_PORT, "name": "http1", "protocol": "TCP"},
                        {"containerPort": GRPC_PORT, "name": "h2c", "protocol": "TCP"},
                    ],
                    "readinessProbe": {
                        "httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT},
                        "periodSeconds": 5,
                    },
                    "livenessProbe": {
                        "httpGet": {"path": "/v2/health/live", "port": HTTP_PORT},
                        "periodSeconds": 10,
                    },
                    "resources": {
                        "requests": {"cpu": "1", "memory": "2Gi"},
                        "limits": {"cpu": "1", "memory": "2Gi"},
                    },
                }
            ],
        },
    }


def inference_services(layout: Layout, claim: str, runtime: str = "shipyard") -> list[dict]:
    """One KServe ``InferenceService`` per model, named after it (clients call
    ``/v2/models/<that name>``), its packages at ``pvc://<claim>/<model>``."""
    services = []
    for model in layout.model_names():
        where = f"pvc://{claim}/{model}" if layout.kind == "repository" else f"pvc://{claim}"
        config = model_config(layout, model)
        autoscaling = config.autoscaling
        low, high = (
            (autoscaling.min_replicas, autoscaling.max_replicas)
            if autoscaling
            else (config.replicas, config.replicas)
        )
        services.append(
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": {"name": dns_name(model)},
                "spec": {
                    "predictor": {
                        "minReplicas": low,
                        "maxReplicas": high,
                        "model": {
                            "modelFormat": {"name": "shipyard"},
                            "runtime": runtime,
                            "protocolVersion": "v2",
                            "storageUri": where,
                        },
                    }
                },
            }
        )
    return services


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors for repeated parts, multi-line strings (the Serve
    config) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _string)


def write_manifests(files: dict[str, list[dict[str, Any]]], folder: Path) -> list[Path]:
    """Write each ``{file name: [documents]}`` as multi-document YAML into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, documents in files.items():
        path = folder / name
        path.write_text(yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False))
        written.append(path)
    return written


__all__ = [
    "dns_name",
    "inference_services",
    "ray_service",
    "serve_config",
    "serving_runtime",
    "write_manifests",
]
