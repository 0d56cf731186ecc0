"""The batcher on its own, with real ONNX Runtime sessions: dispatch rules and draining."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

import shipyard
from shipyard.package import load_package
from shipyard.serve.batcher import Batcher
from shipyard.serve.metrics import ServeMetrics, VersionMetrics
from shipyard.serving import ServingConfig


def _batcher(packages: Path, **config: object) -> tuple[Batcher, VersionMetrics]:
    artifact = load_package(packages / "tiny" / "1").artifacts[0]
    settings = ServingConfig.model_validate(config)
    sessions = [shipyard.open_session(artifact, threads=1) for _ in range(settings.instances)]
    metrics = ServeMetrics().version("tiny", 1)
    return Batcher(sessions, settings, metrics=metrics), metrics


def _x(rows: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((rows, 1, 8, 8)).astype(np.float32)}


def _batches(metrics: VersionMetrics) -> tuple[float, float]:
    """(batches run, rows run) from the batch-size histogram."""
    samples = {s.name: s.value for s in metrics.batch_size.collect()[0].samples}
    return samples["shipyard_batch_size_count"], samples["shipyard_batch_size_sum"]


def test_preferred_batch_size_dispatches_without_waiting(packages: Path) -> None:
    batcher, metrics = _batcher(
        packages, max_batch_size=16, preferred_batch_sizes=[4], max_queue_delay_ms=10_000
    )

    async def run() -> float:
        batcher.start()
        started = time.perf_counter()
        results = await asyncio.gather(*(batcher.infer(_x(seed=i)) for i in range(4)))
        assert all(r["logits"].shape == (1, 10) for r in results)
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    assert asyncio.run(run()) < 5.0  # far below the 10 s queue delay
    assert _batches(metrics) == (1, 4)


def test_queue_delay_starts_at_the_oldest_request(packages: Path) -> None:
    batcher, metrics = _batcher(packages, max_batch_size=16, max_queue_delay_ms=100)

    async def run() -> tuple[float, float]:
        batcher.start()
        started = time.perf_counter()
        first = asyncio.create_task(batcher.infer(_x(2)))
        await asyncio.sleep(0.05)  # the second request arrives while the first waits
        await asyncio.gather(first, batcher.infer(_x(3)))
        elapsed = time.perf_counter() - started
        single = time.perf_counter()
        await batcher.infer(_x(1))
        alone = time.perf_counter() - single
        await batcher.close()
        return elapsed, alone

    elapsed, alone = asyncio.run(run())
    assert elapsed >= 0.1 and alone >= 0.1
    assert _batches(metrics) == (2, 6)  # 2 + 3 rows together, then 1 alone


def test_close_drains_queued_requests_across_instances(packages: Path) -> None:
    batcher, metrics = _batcher(packages, max_batch_size=4, max_queue_delay_ms=50, instances=2)

    async def run() -> list[dict[str, np.ndarray]]:
        batcher.start()
        pending = [asyncio.create_task(batcher.infer(_x(seed=i))) for i in range(10)]
        await asyncio.sleep(0)  # let every request enqueue
        await batcher.close()
        return [task.result() for task in pending]

    results = asyncio.run(run())
    artifact = load_package(packages / "tiny" / "1").artifacts[0]
    with shipyard.open_session(artifact, threads=1) as session:
        for i, result in enumerate(results):
            expected = session.run(_x(seed=i))["logits"]
            np.testing.assert_allclose(result["logits"], expected, atol=1e-5)
    batches, rows = _batches(metrics)
    assert rows == 10 and batches >= 3  # at most 4 rows per batch
