"""The batcher on its own, with real ONNX Runtime sessions: dispatch rules and draining."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

import shipyard
from shipyard.package import load_package
from shipyard.runtimes.base import Session
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


class Gated:
    """A real ONNX Runtime session whose ``run`` first waits for ``gate``: while the test
    holds it closed, the batcher's only instance stays busy and requests queue in the order
    the test sends them, however fast or slow the machine."""

    def __init__(self, session: Session, gate: threading.Event) -> None:
        self.session, self.gate = session, gate
        self.signature = session.signature
        self.entered = threading.Event()  # set when a batch reached the session
        self.arrivals: list[float] = []  # perf_counter() when each batch reached it
        self.threads: list[str] = []  # the thread that ran each batch

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.arrivals.append(time.perf_counter())
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        return self.session.run(feeds)

    def close(self) -> None:
        self.session.close()


def _gated(packages: Path, **config: object) -> tuple[Batcher, VersionMetrics, threading.Event]:
    artifact = load_package(packages / "tiny" / "1").artifacts[0]
    gate = threading.Event()
    session = Gated(shipyard.open_session(artifact, threads=1), gate)
    metrics = ServeMetrics().version("tiny", 1)
    settings = ServingConfig.model_validate(config)
    return Batcher([session], settings, metrics=metrics), metrics, gate  # type: ignore[list-item]


async def _queued(batcher: Batcher, depth: int) -> None:
    """Yield to the loop until ``depth`` requests wait in the queue (events, not time)."""
    for _ in range(10_000):
        if batcher.depth == depth:
            return
        await asyncio.sleep(0)
    raise TimeoutError(f"the queue never held {depth} requests (it holds {batcher.depth})")


def test_requests_that_queue_while_the_instance_is_busy_share_a_batch(packages: Path) -> None:
    batcher, metrics, gate = _gated(packages, max_batch_size=16, max_queue_delay_ms=0)
    session = batcher._sessions[0]

    async def run() -> list[dict[str, np.ndarray]]:
        batcher.start()
        first = asyncio.create_task(batcher.infer(_x(1, seed=0)))
        await asyncio.to_thread(session.entered.wait, 30)  # the instance is busy with it
        second = asyncio.create_task(batcher.infer(_x(2, seed=1)))
        await _queued(batcher, 1)
        third = asyncio.create_task(batcher.infer(_x(3, seed=2)))
        await _queued(batcher, 2)
        gate.set()
        results = list(await asyncio.gather(first, second, third))
        await batcher.close()
        return results

    results = asyncio.run(run())
    assert [r["logits"].shape for r in results] == [(1, 10), (2, 10), (3, 10)]
    assert _batches(metrics) == (2, 6)  # 1 alone, then 2 + 3 together as they queued


def test_the_inference_thread_takes_the_next_batch_itself(packages: Path) -> None:
    """A thread done with a batch runs the next one due without waiting for the event loop:
    here the loop is blocked (a synchronous wait) when the first batch ends, and the second
    must still reach the session."""
    batcher, metrics, gate = _gated(packages, max_batch_size=16, max_queue_delay_ms=0)
    session = batcher._sessions[0]

    async def run() -> tuple[bool, list[dict[str, np.ndarray]]]:
        batcher.start()
        first = asyncio.create_task(batcher.infer(_x(1, seed=0)))
        await asyncio.to_thread(session.entered.wait, 30)  # the instance is busy with it
        second = asyncio.create_task(batcher.infer(_x(2, seed=1)))
        await _queued(batcher, 1)
        session.entered.clear()
        gate.set()
        reached = session.entered.wait(timeout=30)  # blocks the loop: no dispatch from it
        results = list(await asyncio.gather(first, second))
        await batcher.close()
        return reached, results

    reached, results = asyncio.run(run())
    assert reached, "the second batch waited for the event loop"
    assert [r["logits"].shape for r in results] == [(1, 10), (2, 10)]
    assert session.threads[0] == session.threads[1]
    assert _batches(metrics) == (2, 3)


def test_a_lone_request_runs_inline_and_requests_sent_together_share_a_batch(
    packages: Path,
) -> None:
    batcher, metrics, gate = _gated(
        packages, max_batch_size=16, max_queue_delay_ms=0, inline_below_ms=60_000
    )
    gate.set()
    session = batcher._sessions[0]

    async def run() -> list[dict[str, np.ndarray]]:
        batcher.start()
        await batcher.infer(_x(1))  # through a thread: measures what a run costs
        await batcher.infer(_x(1))  # alone, and faster than the limit: on the loop
        together = await asyncio.gather(*(batcher.infer(_x(1, seed=i)) for i in range(4)))
        await batcher.close()
        return list(together)

    together = asyncio.run(run())
    loop_thread = threading.current_thread().name  # asyncio.run's loop runs in this thread
    assert [r["logits"].shape for r in together] == [(1, 10)] * 4
    assert session.threads[0] != loop_thread
    assert session.threads[1] == loop_thread
    assert session.threads[2] != loop_thread
    assert _batches(metrics) == (3, 6)  # 1, 1 inline, then the four together


def test_queue_delay_counts_from_the_oldest_request(packages: Path) -> None:
    delay = 0.5
    batcher, metrics, gate = _gated(packages, max_batch_size=16, max_queue_delay_ms=delay * 1e3)
    session = batcher._sessions[0]

    async def run() -> tuple[float, float]:
        batcher.start()
        busy = asyncio.create_task(batcher.infer(_x(1)))  # waits out the delay, then runs
        await asyncio.to_thread(session.entered.wait, 30)  # and holds the only instance
        sent = time.perf_counter()
        oldest = asyncio.create_task(batcher.infer(_x(2)))
        await _queued(batcher, 1)
        while time.perf_counter() - sent < delay:  # the oldest has waited its delay (at
            await asyncio.sleep(0.01)  # least: a slow machine only makes it wait longer)
        newest_sent = time.perf_counter()
        newest = asyncio.create_task(batcher.infer(_x(3)))
        await _queued(batcher, 2)
        gate.set()
        await asyncio.gather(busy, oldest, newest)
        single = time.perf_counter()
        await batcher.infer(_x(1))
        alone = time.perf_counter() - single
        await batcher.close()
        return session.arrivals[1] - newest_sent, alone

    newest_waited, alone = asyncio.run(run())
    assert _batches(metrics) == (3, 7)  # 1 alone, 2 + 3 rows together, then 1 alone
    # Once the instance was free the batch left at once: the oldest had waited its delay.
    # Had the delay restarted at the newest arrival, the newest would have waited it too.
    assert newest_waited < delay
    assert alone >= delay  # a lone request waits out the delay: nothing else can join


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


class Quadratic:
    """A real ONNX Runtime session whose batches cost more per row the more rows they hold,
    as a convolutional net's do on a 1-thread CPU instance (exaggerated: 2 ms x rows²)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.signature = session.signature
        self.sizes: list[int] = []  # rows of each batch, in order

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(feeds["x"])
        self.sizes.append(rows)
        time.sleep(0.002 * rows * rows)
        return self.session.run(feeds)

    def close(self) -> None:
        self.session.close()


def test_batches_shrink_to_the_size_cheapest_per_row(packages: Path) -> None:
    artifact = load_package(packages / "tiny" / "1").artifacts[0]
    session = Quadratic(shipyard.open_session(artifact, threads=1))
    batcher = Batcher([session], ServingConfig(max_batch_size=8))  # type: ignore[list-item]

    async def run() -> None:
        batcher.start()
        for wave in range(12):  # a request alone, then 7 at once
            await batcher.infer(_x(1, seed=wave))
            await asyncio.gather(*(batcher.infer(_x(1, seed=i)) for i in range(7)))
        await batcher.close()

    asyncio.run(run())
    assert session.sizes[:4] == [1, 7, 1, 7]  # batches as large as the queue, until measured
    assert max(session.sizes[-24:]) <= 2  # then one row (a trial of two now and then)
