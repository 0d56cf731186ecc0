"""Prometheus metrics of one server, on a private registry (two apps in one process never clash).

Names (all prefixed ``shipyard_``): ``requests_total{model,version,status}``,
``request_duration_seconds``, ``queue_duration_seconds``, ``compute_duration_seconds``,
``batch_size`` (rows per executed batch), ``queue_depth``, ``inflight_requests``,
``model_load_seconds`` and, for stateful versions, ``live_sequences``. Requests for unknown
models are counted with empty labels so that a client cannot grow the label set.
"""

from __future__ import annotations

import contextlib
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

# Several worker processes (``shipyard serve --workers N``): prometheus_client keeps every value
# in files under this folder, and /metrics sums what every worker wrote, so that one scrape of
# any worker tells the truth about all of them. Read once: the mode is fixed at import.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# Small models answer in well under a millisecond; ResNet-sized ones in tens to hundreds.
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class VersionMetrics:
    """The metric children of one model version, bound once so the hot path skips label lookups."""

    def __init__(self, metrics: ServeMetrics, model: str, version: str) -> None:
        self.latency = metrics.request_seconds.labels(model, version)
        self.queue_time = metrics.queue_seconds.labels(model, version)
        self.compute_time = metrics.compute_seconds.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)
        self.succeeded = metrics.requests.labels(model, version, "200")
        # A gauge computed at scrape time (set_function) exists in one process only: with
        # several workers the batcher sets the depth as it changes instead.
        self.track_depth = MULTIPROCESS


class ServeMetrics:
    """Every metric of one app; ``render()`` gives the ``/metrics`` body and content type."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "shipyard_requests",
            "Inference requests by model, version and HTTP status",
            (*labels, "status"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "shipyard_request_duration_seconds",
            "Time from receiving an inference request to its response",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "shipyard_queue_duration_seconds",
            "Time a request waited in the batching queue",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_seconds = Histogram(
            "shipyard_compute_duration_seconds",
            "Time one batch spent in the runtime (concatenate, run, split)",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "shipyard_batch_size",
            "Rows per executed batch",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "shipyard_queue_depth",
            "Requests waiting in the batching queue",
            labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            "shipyard_inflight_requests",
            "Inference requests being handled",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.load_seconds = Gauge(
            "shipyard_model_load_seconds",
            "Seconds the last load of a version took (read, verify, open, smoke test)",
            labels,
            registry=self.registry,
            multiprocess_mode="max",
        )

        self.live_sequences = Gauge(
            "shipyard_live_sequences",
            "Sequences whose state a stateful version keeps",
            labels,
            registry=self.registry,
        )

    def version(self, model: str, version: int) -> VersionMetrics:
        """The children of ``model``/``version`` (set ``queue_depth.set_function`` on it)."""
        return VersionMetrics(self, model, str(version))

    def count(self, model: str, version: str, status: int) -> None:
        """Count a finished request (errors and requests that never reached a version)."""
        self.requests.labels(model, version, str(status)).inc()

    def forget(self, model: str, version: int) -> None:
        """Drop the queue-depth gauge of an unloaded version (its queue no longer exists)."""
        for gauge in (self.queue_depth, self.live_sequences):
            if MULTIPROCESS:  # prometheus_client removes no child there; a zero adds nothing
                gauge.labels(model, str(version)).set(0)
                continue
            with contextlib.suppress(KeyError):
                gauge.remove(model, str(version))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type (every worker's, summed, when
        several serve)."""
        if MULTIPROCESS:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
