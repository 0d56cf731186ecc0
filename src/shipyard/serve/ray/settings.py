"""How one model runs on Ray Serve: its deployment options, from its manifest and the flags.

Pure Python (no Ray import), so the rules are testable anywhere. A model's settings come from
its newest version's manifest (``serving``: ``replicas``, ``replica_cpus``, ``autoscaling``,
as the version policy does); flags given to ``shipyard serve --engine ray`` override them for
every model.

Each replica runs the repository's own batcher (``serve/batcher.py``), so its queue, its
503 ``queue full`` and its batches behave as in the single-process server. Ray caps the
requests a replica holds at ``max_ongoing_requests``, and a batch can only form from
requests the replica holds (ray-project/ray#43288): we set it to twice what the batcher can
hold (``max_queue_size`` waiting plus one batch per instance running), so that batches reach
``max_batch_size`` and the batcher's own limit answers first, with the single-process
server's 503, ``Retry-After: 1`` and ``{"error": "... queue full ..."}``. Requests beyond
that wait in Ray's queue (``max_queued_requests``), which is bounded by ``max_queue_size``
too: when it is full Ray answers 503 with ``Retry-After: 1`` itself, its body Ray's text
(``Request dropped due to backpressure ...``), not a V2 error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shipyard.errors import InputError
from shipyard.package import load_package
from shipyard.serve.layout import Layout, find_layout
from shipyard.serving import ServingConfig

FRONT = "_front"  # the front's application: not a valid model name, so never a model's
# Seconds a stopping replica lets its requests finish (Ray's default is 20).
GRACEFUL_SHUTDOWN_S = 30.0


@dataclass(frozen=True)
class Scale:
    """Flags that override every model's manifest: a fixed replica count, autoscaling
    bounds ``(min, max)``, or CPUs per replica; None: the manifest decides."""

    replicas: int | None = None
    autoscale: tuple[int, int] | None = None
    replica_cpus: float | None = None

    def __post_init__(self) -> None:
        if self.replicas is not None and self.autoscale is not None:
            raise InputError("--replicas and --autoscale exclude each other: give one")
        if self.replicas is not None and self.replicas < 1:
            raise InputError(f"--replicas must be at least 1, not {self.replicas}")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 1 <= low <= high:
                raise InputError(f"--autoscale {low},{high}: need 1 <= MIN <= MAX")
        if self.replica_cpus is not None and self.replica_cpus <= 0:
            raise InputError(f"--replica-cpus must be positive, not {self.replica_cpus:g}")


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"1,4"`` -> ``(1, 4)``; InputError naming the flag otherwise."""
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise InputError(f"--autoscale {text!r}: write MIN,MAX replicas, e.g. 1,4")
    return int(parts[0]), int(parts[1])


def model_config(layout: Layout, model: str) -> ServingConfig:
    """The serving config that decides how ``model`` scales: its newest version's (a broken
    newest manifest defers to the next; defaults when none is readable)."""
    versions = layout.versions(model)
    for number in sorted(versions, reverse=True):
        try:
            manifest = load_package(versions[number], verify=False).manifest
            return ServingConfig.from_manifest(manifest)
        except Exception:  # that version's load reports why; scale by the next one
            continue
    return ServingConfig()


def replica_capacity(config: ServingConfig) -> int:
    """Requests one replica's batcher holds: its queue plus one batch per instance."""
    return config.max_queue_size + max(config.max_batch_size, 1) * config.instances


def deployment_options(config: ServingConfig, scale: Scale) -> dict[str, Any]:
    """Ray Serve deployment options (``Deployment.options(**...)``) for one model."""
    cpus = scale.replica_cpus or config.replica_cpus or float(config.instances * config.threads)
    options: dict[str, Any] = {
        "max_ongoing_requests": 2 * replica_capacity(config),
        "max_queued_requests": config.max_queue_size,
        "backpressure_config": {"status_code": 503, "retry_after_s": 1},
        "ray_actor_options": {"num_cpus": cpus},
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
    }
    autoscaling = config.autoscaling
    if scale.replicas is not None or (autoscaling is None and scale.autoscale is None):
        options["num_replicas"] = scale.replicas or config.replicas
        return _one_replica_if_stateful(config, options)
    low, high = scale.autoscale or (autoscaling.min_replicas, autoscaling.max_replicas)  # type: ignore[union-attr]
    target = autoscaling.target_ongoing_requests if autoscaling is not None else None
    options["autoscaling_config"] = {
        "min_replicas": low,
        "initial_replicas": low,
        "max_replicas": high,
        "target_ongoing_requests": target or max(config.max_batch_size, 1) * config.instances,
    }
    return _one_replica_if_stateful(config, options)


def _one_replica_if_stateful(config: ServingConfig, options: dict[str, Any]) -> dict[str, Any]:
    """``options``, unless they run a stateful model on more than one replica: Ray routes each
    request to any replica, so a sequence's chunks would meet a replica without its state."""
    most = replica_bounds(options)[1]
    if config.sequence is not None and most > 1:
        raise InputError(
            f"a stateful model (serving.sequence) keeps each sequence's state in one replica, "
            f"and Ray routes each request to any of them: serve it on 1 replica, not {most}"
        )
    return options


def replica_bounds(options: dict[str, Any]) -> tuple[int, int]:
    """(fewest, most) replicas ``options`` can run."""
    autoscaling = options.get("autoscaling_config")
    if autoscaling is None:
        return options["num_replicas"], options["num_replicas"]
    return autoscaling["min_replicas"], autoscaling["max_replicas"]


def cpus_needed(plans: dict[str, dict[str, Any]]) -> float:
    """CPUs the deployments reserve at their largest: what a local cluster must offer."""
    return sum(
        replica_bounds(options)[1] * options["ray_actor_options"]["num_cpus"]
        for options in plans.values()
    )


def served_folder(layout: Layout, model: str | None) -> tuple[str, str | None]:
    """(folder, name) a replica of ``model`` serves (``model`` None: the front's): a
    repository's model folder, named by itself; or ``layout``'s one folder with the name it
    is served as when that differs from the folder's own (``--model-name``)."""
    if layout.kind == "repository":
        return str(layout.path / model) if model else str(layout.path), None
    own = find_layout(layout.path).model
    return str(layout.path), (layout.model if layout.model != own else None)


__all__ = [
    "FRONT",
    "Scale",
    "cpus_needed",
    "deployment_options",
    "model_config",
    "parse_autoscale",
    "replica_bounds",
    "replica_capacity",
    "served_folder",
]
