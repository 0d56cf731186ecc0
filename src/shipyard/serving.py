"""The serving settings of one package version: the manifest's optional ``"serving"`` key.

Package schema, like the signature: the recipe's ``serve:`` section validates against it and
the build writes it into ``shipyard.json``, so it lives outside ``serve/`` and importing it
never loads the web stack. Example (what a recipe's ``serve:`` section writes into
``shipyard.json``)::

    "serving": {"max_batch_size": 16, "preferred_batch_sizes": [8, 16],
                "max_queue_delay_ms": 0.0, "instances": 1, "threads": 1,
                "version_policy": {"latest": 1}}

The knobs follow Triton's dynamic batcher and version policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipyard.errors import ServingConfigError
from shipyard.stateful import SequenceConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatestPolicy(_Strict):
    """Serve the ``latest`` highest-numbered versions that load."""

    latest: int = Field(ge=1)

    def select(self, versions: Sequence[int]) -> list[int]:
        """Versions in preference order; the repository loads them until ``latest`` are up."""
        return sorted(versions, reverse=True)


class SpecificPolicy(_Strict):
    """Serve exactly these versions."""

    specific: list[int] = Field(min_length=1)

    def select(self, versions: Sequence[int]) -> list[int]:
        return sorted((v for v in versions if v in set(self.specific)), reverse=True)


class AllPolicy(_Strict):
    """Serve every version in the model folder."""

    all: Literal[True]

    def select(self, versions: Sequence[int]) -> list[int]:
        return sorted(versions, reverse=True)


VersionPolicy = LatestPolicy | SpecificPolicy | AllPolicy


class Autoscaling(_Strict):
    """Replicas between ``min_replicas`` and ``max_replicas`` (the Ray engine), aiming at
    ``target_ongoing_requests`` requests in progress per replica (None: one full batch per
    instance, ``max(max_batch_size, 1) * instances``)."""

    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


class ServingConfig(_Strict):
    """How one version is served. Every field has a default; ``{}`` is a valid config.

    - ``artifact``: which artifact (by name) to serve; default the manifest's
      ``default_artifact``.
    - ``max_batch_size``: most rows in one batch; 0 disables batching (each request runs
      alone, as sent).
    - ``preferred_batch_sizes``: dispatch as soon as one of these can be formed.
    - ``max_queue_delay_ms``: longest the oldest queued request waits for a batch to fill.
      Default 0 (as in Triton): under load, batches still form from the requests that queue
      while an instance is busy, and a lone client pays no wait (measured on the digits CNN:
      p50 0.40 ms at 0 ms vs 2.89 ms at 2 ms).
    - ``max_queue_size``: queued requests beyond which new ones get 503 + Retry-After.
    - ``timeout_ms``: a request not answered within this gets 504 (None: no limit).
    - ``instances``: sessions run concurrently, each with ``threads`` threads.
    - ``inline_below_ms``: a request that finds the queue empty, every instance idle and no
      other request arriving with it runs on the event loop itself, without the hop to an
      inference thread, when the model's
      recent single-request runs took less than this (0 disables; so does a
      ``max_queue_delay_ms``, which asks requests to wait for others). The hop costs tens of
      microseconds, more than a small model's whole run.
    - ``version_policy``: ``{"latest": N}``, ``{"specific": [..]}`` or ``{"all": true}``; the
      newest version's manifest decides for the whole model.
    - ``sequence``: the model keeps state per sequence (see :mod:`shipyard.stateful`); then
      ``max_batch_size`` is the most sequences stepped in one call.
    - ``replicas``, ``replica_cpus``, ``autoscaling``: the Ray engine (``serve --engine ray``)
      runs ``replicas`` copies of the model, each reserving ``replica_cpus`` CPUs (None:
      ``instances * threads``), or scales between the bounds of ``autoscaling``. The newest
      version's manifest decides, as for the version policy; the single-process server
      ignores them.
    """

    artifact: str | None = None
    max_batch_size: int = Field(default=16, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    max_queue_size: int = Field(default=256, ge=1)
    timeout_ms: float | None = Field(default=10_000, gt=0)
    instances: int = Field(default=1, ge=1)
    threads: int = Field(default=1, ge=1)
    inline_below_ms: float = Field(default=0.5, ge=0)
    version_policy: VersionPolicy = Field(default_factory=lambda: LatestPolicy(latest=1))
    sequence: SequenceConfig | None = None
    replicas: int = Field(default=1, ge=1)
    replica_cpus: float | None = Field(default=None, gt=0)
    autoscaling: Autoscaling | None = None

    @model_validator(mode="after")
    def _preferred_fit(self) -> ServingConfig:
        bad = [
            size for size in self.preferred_batch_sizes if size < 1 or size > self.max_batch_size
        ]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes {bad} must lie in 1..max_batch_size ({self.max_batch_size})"
            )
        return self

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ServingConfig:
        """The config in ``manifest["serving"]`` (defaults when absent).

        Raises ServingConfigError naming the field when it is invalid.
        """
        raw = manifest.get("serving") or {}
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            problems = "; ".join(
                f"serving.{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
                for item in error.errors()
            )
            raise ServingConfigError(f"invalid serving config: {problems}") from error


__all__ = [
    "AllPolicy",
    "Autoscaling",
    "LatestPolicy",
    "ServingConfig",
    "ServingConfigError",
    "SpecificPolicy",
    "VersionPolicy",
]
