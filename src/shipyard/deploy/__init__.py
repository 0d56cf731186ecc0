"""Deployment manifests for platforms Shipyard does not run itself (Kubernetes: KubeRay,
KServe). Generated from a served folder; see :mod:`shipyard.deploy.k8s`."""

from shipyard.deploy.k8s import (
    inference_services,
    ray_service,
    serve_config,
    serving_runtime,
    write_manifests,
)

__all__ = [
    "inference_services",
    "ray_service",
    "serve_config",
    "serving_runtime",
    "write_manifests",
]
