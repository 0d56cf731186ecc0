"""Measure several artifacts side by side, in one process, on the same inputs.

``bench([torch_artifact, onnx_artifact])`` opens every artifact, warms each one up, then times
them *interleaved*: each round runs every session once, starting from a different session every
round. A burst of machine noise (another process, a frequency change) then hits every artifact
alike, so the ratios between them stay meaningful even when the absolute numbers drift. Numbers
are only comparable within one report: rerun the baseline whenever you compare across runs.

Measuring never prints: ``on_progress`` receives a :class:`~shipyard.events.BenchProgress`
after each timed round, and ``shipyard.cli.render.bench`` draws a report.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import psutil

from shipyard.artifact import Artifact
from shipyard.errors import InputError
from shipyard.events import BenchCallback, BenchProgress
from shipyard.hardware import hardware_fingerprint
from shipyard.runtimes.base import Session, open_session

_MIN_ROUNDS = 5  # max_seconds never cuts a batch size below this many rounds
_MB = 1024 * 1024


@dataclass
class LatencyStats:
    """Latency of one artifact at one batch size, in ms per ``Session.run`` call.

    That call includes what every user pays on top of the backend: the signature check of the
    inputs and the numpy <-> backend conversions.
    """

    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    samples_per_s: float  # batch / median seconds: throughput of one session, one stream

    @classmethod
    def from_ns(cls, batch: int, samples_ns: Sequence[int]) -> LatencyStats:
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        return cls(
            batch=batch,
            runs=len(ms),
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            mean_ms=float(ms.mean()),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            samples_per_s=batch / (p50 / 1e3),
        )


@dataclass
class ArtifactBench:
    """One artifact's results.

    ``load_rss_mb`` is the growth of this process's RSS across opening the session and its first
    run. It is an approximation: every artifact lives in the same process, so memory freed or
    shared (torch's allocator, libraries already imported by an earlier artifact) blurs it.
    ``file_bytes`` is ``Artifact.size_bytes`` (parameter bytes for an in-memory torch module).
    """

    name: str
    format: str
    backend: str
    threads: int
    file_bytes: int
    load_rss_mb: float
    latency: list[LatencyStats]

    def at(self, batch: int) -> LatencyStats:
        """The stats for ``batch``; KeyError if it was not measured."""
        for stats in self.latency:
            if stats.batch == batch:
                return stats
        raise KeyError(f"{self.name} was not measured at batch {batch}")


@dataclass
class BenchReport:
    """Everything one ``bench`` call measured, plus the conditions it measured under."""

    results: list[ArtifactBench]
    fingerprint: dict[str, Any]
    batch_sizes: list[int]
    threads: int | None
    warmup: int
    runs: int
    loadavg_start: tuple[float, float, float]
    loadavg_end: tuple[float, float, float]
    peak_rss_mb: float
    seconds: float
    timed: str = "Session.run"  # what one timed call covers

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (tuples become lists in JSON)."""
        return asdict(self)

    def get(self, name: str) -> ArtifactBench:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no artifact named {name!r}; measured: {[r.name for r in self.results]}")

    def speedups(self, baseline: str, batch: int) -> dict[str, float]:
        """``baseline`` p50 / each artifact's p50 at ``batch``: above 1 means faster."""
        base = self.get(baseline).at(batch).p50_ms
        return {r.name: base / r.at(batch).p50_ms for r in self.results}


class _Prepared(Session):
    """A session whose every run starts with ``prepare`` (end-to-end timing)."""

    def __init__(
        self,
        inner: Session,
        prepare: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    ) -> None:
        super().__init__(inner.artifact, inner.device, inner.requested_threads)
        self.inner, self.prepare = inner, prepare
        self.backend = inner.backend  # type: ignore[misc]

    @property
    def threads(self) -> int:
        return self.inner.threads

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.run(self.prepare(feeds))

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        return self.inner.run(self.prepare(feeds), outputs)  # raw inputs: not the signature's

    def close(self) -> None:
        self.inner.close()


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / _MB


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows: no getrusage, the current RSS is the best we have
        return _rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes
    return peak / _MB if sys.platform == "darwin" else peak / 1024


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # not available on Windows
        return (float("nan"), float("nan"), float("nan"))


def _time_rounds(
    sessions: Sequence[Session],
    feeds: dict[str, np.ndarray],
    runs: int,
    max_seconds: float | None,
    advance: Callable[[int], None],
) -> list[list[int]]:
    """Interleaved timed loop at one batch size; returns per-session latencies in ns."""
    samples: list[list[int]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    # A collection pause would land on whichever session happens to run: keep it out.
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    try:
        for r in range(runs):
            # rotate the start so that no artifact always runs first (cold caches) or last
            shift = r % len(sessions)
            for i in order[shift:] + order[:shift]:
                t0 = time.perf_counter_ns()
                sessions[i].run(feeds)
                samples[i].append(time.perf_counter_ns() - t0)
            advance(1)
            done = r + 1
            over_time = max_seconds is not None and time.perf_counter() - start >= max_seconds
            if over_time and _MIN_ROUNDS <= done < runs:
                advance(runs - done)  # keep the progress total honest
                break
    finally:
        gc.enable()
    return samples


def bench(
    artifacts: Sequence[Artifact],
    *,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = 1,
    warmup: int = 5,
    runs: int = 50,
    max_seconds: float | None = None,
    seed: int = 0,
    on_progress: BenchCallback | None = None,
    inputs: Callable[[int], dict[str, np.ndarray]] | None = None,
    prepare: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    timed: str | None = None,
    sizes: Mapping[str, int] | None = None,
) -> BenchReport:
    """Time every artifact at every batch size, interleaved, on identical inputs.

    ``threads`` goes to every session (``None`` keeps each backend's default). ``warmup`` runs
    per session and batch size are discarded. ``runs`` is the number of timed rounds per batch
    size; ``max_seconds`` caps each batch size's timed loop (at least 5 rounds are kept).
    Inputs come from ``signature.example_inputs(batch, seed)`` of the first artifact, so all
    artifacts must share a signature; ``sizes`` fixes other dynamic dimensions (``{"seq": 32}``:
    32 tokens per text), the rest take the batch size. ``on_progress(BenchProgress)`` follows
    the timed rounds. End to end: ``inputs(batch)`` gives the raw inputs instead (encoded
    images...) and ``prepare(raw)`` turns them into the model's tensors inside every timed call,
    so the numbers include the package's pre-processing; ``timed`` says so in the report.
    Raises InputError on no artifacts, duplicate names or impossible counts.
    """
    if not artifacts:
        raise InputError("bench needs at least one artifact")
    names = [a.name for a in artifacts]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise InputError(
            f"artifact names must be unique (they key the report): {twice} given more than "
            f"once; load each with its own name=..."
        )
    if runs < 1:
        raise InputError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise InputError(f"warmup must be 0 or more, got {warmup}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise InputError(f"batch sizes must be integers >= 1, got {list(batch_sizes)}")
    if max_seconds is not None and max_seconds < 0:
        raise InputError(f"max_seconds must be 0 or more, got {max_seconds}")
    began = time.perf_counter()
    loadavg_start = _loadavg()
    # The same arrays for every artifact: one signature, one seed.
    signature = artifacts[0].signature
    make = inputs or (lambda b: signature.example_inputs(b, seed, sizes))
    feeds_at = {b: make(b) for b in batch_sizes}

    sessions: list[Session] = []
    load_rss: list[float] = []
    samples: dict[int, list[list[int]]] = {}
    try:
        # One after another, so each RSS delta belongs to one artifact.
        for artifact in artifacts:
            before = _rss_mb()
            session: Session = open_session(artifact, threads=threads)
            if prepare is not None:
                session = _Prepared(session, prepare)
            sessions.append(session)
            session.run(feeds_at[batch_sizes[0]])  # first run allocates buffers / plans kernels
            load_rss.append(_rss_mb() - before)
        total = runs * len(batch_sizes)
        done = 0
        for b in batch_sizes:
            # Warm up right before timing, so every session's buffers for this shape are hot.
            for session in sessions:
                for _ in range(warmup):
                    session.run(feeds_at[b])

            def advance(rounds: int, batch: int = b) -> None:
                nonlocal done
                done += rounds
                if on_progress is not None:
                    on_progress(BenchProgress(batch, done, total))

            samples[b] = _time_rounds(sessions, feeds_at[b], runs, max_seconds, advance)
        results = [
            ArtifactBench(
                name=a.name,
                format=a.format,
                backend=s.backend,
                threads=s.threads,
                file_bytes=a.size_bytes,
                load_rss_mb=load_rss[i],
                latency=[LatencyStats.from_ns(b, samples[b][i]) for b in batch_sizes],
            )
            for i, (a, s) in enumerate(zip(artifacts, sessions, strict=True))
        ]
    finally:
        for session in sessions:
            session.close()
    return BenchReport(
        results=results,
        fingerprint=hardware_fingerprint(),
        batch_sizes=list(batch_sizes),
        threads=threads,
        warmup=warmup,
        runs=runs,
        loadavg_start=loadavg_start,
        loadavg_end=_loadavg(),
        peak_rss_mb=_peak_rss_mb(),
        seconds=time.perf_counter() - began,
        timed=timed or ("prepare + Session.run" if prepare else "Session.run"),
    )
