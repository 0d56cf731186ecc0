"""The dynamic batcher of one model version (asyncio), with Triton's knobs.

Requests wait in a bounded FIFO queue. The timer starts at the oldest waiting request; a batch
is dispatched as soon as a session instance is free and either ``max_batch_size`` rows are
waiting, a preferred batch size can be formed, or the oldest request has waited
``max_queue_delay_ms``. Inference runs in a thread pool with one worker per instance (ONNX
Runtime releases the GIL), so the next batch forms while the current one runs; an inference
thread that finishes a batch takes the next one due itself, without going back through the
event loop (handing each batch over from the loop left the thread idle ~0.4 ms a batch while
it waited for the loop to get to it and for the GIL: a third of its time for the recommender
at 1,024 rows). A request that finds the queue empty and every instance idle runs on the event
loop instead when the model is faster than the thread hop (``inline_below_ms``) and it is
alone: it first yields to the loop once, and runs inline only when no other request reached the
batcher meanwhile. Requests read together (concurrent clients) so share a batch in the thread
while the loop decodes and encodes others; run inline one after another, they left the
machine's other cores idle (the recommender at 256 rows a request, 8 clients: 0.61× the
in-process ceiling). Batches take at most the number of rows
measured cheapest per row (:mod:`shipyard.serve.batch_size`): up to ``max_batch_size``, fewer
when larger batches of this model cost more per row on this machine.

Requests may carry several rows (a batch of 3); they are concatenated along axis 0 and the
outputs are split back by row offsets (views, no copy). Requests whose non-batch dynamic
dimensions differ (e.g. sequence length) never share a batch, unless the batcher is given
``padding``: then requests of token ids are padded along axis 1 to the longest of the batch
(the value each input pads with: the pad id, mask 0), as a tokenizer pads the texts of one
request, so requests of any length share batches. Only a model whose outputs have no
sequence axis (a pooled embedding, a classifier's logits) can be padded so, and only with the
mask that tells it which tokens are padding: the package's tokenizer says both. With texts of
5 to 60 tokens at concurrency 32 (``benchmarks/serve/text.py``), batching only equal lengths
formed batches of about one request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from shipyard.errors import BackendError
from shipyard.runtimes.base import Session
from shipyard.serve.batch_size import BatchSize
from shipyard.serve.errors import (
    BadRequest,
    ModelNotReady,
    QueueFull,
    RequestTimeout,
    VersionRetired,
)
from shipyard.serve.metrics import VersionMetrics
from shipyard.serve.padding import batch_dimension, pad_to_longest, paddable
from shipyard.serving import ServingConfig

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass(slots=True, eq=False)
class _Pending:
    feeds: Mapping[str, np.ndarray]
    rows: int
    key: tuple[tuple[int, ...], ...] | None  # non-batch dynamic dims; equal keys may share
    future: asyncio.Future[Outputs]
    enqueued: float


def _expire(future: asyncio.Future[Outputs], seconds: float) -> None:
    if not future.done():
        future.set_exception(
            RequestTimeout(f"no result within the timeout of {seconds * 1e3:g} ms")
        )


class Batcher:
    """Queue, batch and run requests for one version on its ``sessions`` (one per instance).

    Call :meth:`start` inside the event loop, :meth:`infer` per request and :meth:`close` to
    drain: queued and running requests finish, then the sessions are closed.
    """

    def __init__(
        self,
        sessions: Sequence[Session],
        config: ServingConfig,
        *,
        label: str = "model",
        metrics: VersionMetrics | None = None,
        padding: Mapping[str, int] | None = None,
    ) -> None:
        if not sessions:
            raise ValueError("a batcher needs at least one session")
        self.signature = sessions[0].signature
        self.label = label
        self._sessions = list(sessions)
        self._free = list(sessions)
        self._names = self.signature.input_names
        self.max_batch_size = config.max_batch_size if batch_dimension(self.signature) else 0
        self._preferred = sorted(
            {p for p in config.preferred_batch_sizes if p <= self.max_batch_size}, reverse=True
        )
        self._delay = config.max_queue_delay_ms / 1e3
        self._max_queue = config.max_queue_size
        self._timeout = config.timeout_ms / 1e3 if config.timeout_ms else None
        # Inputs with dynamic dims past axis 0: their shapes decide which requests may share.
        self._varying = [
            spec.name
            for spec in self.signature.inputs
            if any(isinstance(d, str) for d in spec.shape[1:])
        ]
        self._padding = paddable(self.signature, self._varying, padding)
        if self._padding:  # every length may share a batch: padded in _run
            self._varying = []
        # Rows per batch, up to max_batch_size, at the size measured cheapest per row. Not
        # with padding: there a batch's cost follows its longest text more than its rows.
        self._size = (
            BatchSize(self.max_batch_size)
            if self.max_batch_size > 1 and not self._padding
            else None
        )
        # What a batch costs: the CPU time of its thread on a 1-thread CPU session, where
        # the wall clock also counts the machine's other work; else the wall clock.
        cpu_bound = all(
            getattr(s, "device", None) == "cpu" and getattr(s, "threads", 0) == 1 for s in sessions
        )
        self._clock = time.thread_time if cpu_bound else time.perf_counter
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        # The queue and its row count are shared by the loop and the inference threads (which
        # take the next batch themselves); the free sessions and the running count stay the
        # loop's.
        self._lock = threading.Lock()
        self._running = 0
        self._closing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(len(sessions), thread_name_prefix=f"infer-{label}")
        # The inline path: a request meeting an empty queue and idle instances runs on the loop
        # when recent single runs took less than this; `_single` tracks them (EWMA, seconds).
        # Not with a queue delay: whoever sets one asks requests to wait for company.
        self._inline_below = config.inline_below_ms / 1e3 if not self._delay else 0.0
        self._single = float("inf")
        self._arrivals = 0  # requests that reached infer(): did one come while we yielded?

    @property
    def depth(self) -> int:
        """Requests waiting (not yet dispatched)."""
        return len(self._queue)

    def start(self) -> None:
        """Start the scheduling task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._schedule())
        self._task.add_done_callback(self._scheduler_done)

    async def infer(self, feeds: Mapping[str, np.ndarray], timeout: float | None = None) -> Outputs:
        """Queue ``feeds`` (checked against the signature) and return every output.

        ``timeout`` (seconds) replaces the configured ``timeout_ms`` for this request. Raises
        InputError or BadRequest (400), QueueFull or VersionRetired (503), RequestTimeout (504).
        """
        if self._closing:
            raise VersionRetired(f"{self.label} is being unloaded; retry")
        if len(self._queue) >= self._max_queue and not self._purge():
            raise QueueFull(f"{self.label}: queue full ({self._max_queue} requests waiting)")
        self.signature.check_inputs(feeds)
        rows = 1
        if self.max_batch_size:
            rows = feeds[self._names[0]].shape[0]
            if not 0 < rows <= self.max_batch_size:
                raise BadRequest(
                    f"batch dimension of input '{self._names[0]}' is {rows}; {self.label} "
                    f"accepts 1..{self.max_batch_size} rows per request (max_batch_size)"
                )
        self._arrivals += 1
        if self._idle():
            # Alone? Let the requests the loop has already read reach the batcher first: with
            # company, all are queued and batched in the thread instead.
            arrivals = self._arrivals
            await asyncio.sleep(0)
            if self._closing:
                raise VersionRetired(f"{self.label} is being unloaded; retry")
            if arrivals == self._arrivals and self._idle():
                return self._inline(feeds, rows)
        key = tuple(feeds[name].shape[1:] for name in self._varying) if self._varying else None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        with self._lock:
            self._queue.append(_Pending(feeds, rows, key, future, time.perf_counter()))
            self._queued_rows += rows
        if self._metrics is not None and self._metrics.track_depth:
            self._metrics.queue_depth.set(len(self._queue))
        self._wake.set()
        limit = timeout if timeout is not None else self._timeout
        timer = loop.call_later(limit, _expire, future, limit) if limit else None
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()

    def _idle(self) -> bool:
        """The inline path is open: a fast model, nothing queued, every instance free."""
        return (
            self._single < self._inline_below
            and not self._queue
            and self._running == 0
            and len(self._free) == len(self._sessions)
        )

    def _inline(self, feeds: Mapping[str, np.ndarray], rows: int) -> Outputs:
        """Run one request on the event loop: the model is faster than a thread hop."""
        session = self._free.pop()
        started = time.perf_counter()
        try:
            outputs = session.run(feeds)
        finally:
            self._free.append(session)
        seconds = time.perf_counter() - started
        self._single = 0.8 * self._single + 0.2 * seconds
        if self._metrics is not None:
            self._metrics.queue_time.observe(0.0)
            self._metrics.compute_time.observe(seconds)
            self._metrics.batch_size.observe(rows)
        return outputs

    async def close(self) -> None:
        """Stop accepting requests, finish queued and running ones, close the sessions."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        self._executor.shutdown(wait=True)
        for session in self._sessions:
            session.close()

    def _purge(self) -> bool:
        """Drop entries whose callers gave up; True when that freed room in the queue."""
        with self._lock:
            before = len(self._queue)
            kept = deque(p for p in self._queue if not p.future.done())
            self._queued_rows = sum(p.rows for p in kept)
            self._queue = kept
            return len(kept) < before

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                wait = self._dispatch_due(loop)
            if wait is None:
                if self._closing and not self._queue and self._running == 0:
                    return
                self._wake.clear()
                await self._wake.wait()
            elif wait > 0:
                # Sleep until the oldest request's delay runs out or something changes.
                self._wake.clear()
                timer = loop.call_later(wait, self._wake.set)
                await self._wake.wait()
                timer.cancel()

    def _dispatch_due(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """With the lock held: dispatch a batch to a free instance when one is due. Returns 0
        when it did, the seconds until one is due, or None when nothing can go (no request, or
        no free instance)."""
        batch, wait = self._due()
        if batch is None:
            return wait
        session = self._free.pop()
        self._running += 1
        self._executor.submit(self._work, loop, session, batch)
        return 0.0

    def _due(self, holding: bool = False) -> tuple[list[_Pending] | None, float | None]:
        """With the lock held: the batch to run now (taken off the queue), or None and the
        seconds until one is due (None: nothing waits, or no instance is free; ``holding``:
        the caller has one, an inference thread done with its batch)."""
        queue = self._queue
        while queue and queue[0].future.done():
            self._queued_rows -= queue.popleft().rows
        if not queue or not (holding or self._free):
            return None, None
        cap, wait = self._decide()
        if wait > 0:
            return None, wait
        batch = self._take(cap)
        if not batch:
            return None, None
        if self._metrics is not None:
            if self._metrics.track_depth:
                self._metrics.queue_depth.set(len(queue))
            now = time.perf_counter()
            observe = self._metrics.queue_time.observe
            for pending in batch:
                observe(now - pending.enqueued)
        return batch, 0.0

    def _decide(self) -> tuple[int, float]:
        """(most rows to take, seconds to wait first); wait 0 means dispatch now."""
        if not self.max_batch_size:
            return 1, 0.0
        if self._closing:
            return self.max_batch_size, 0.0
        limit = self._size.limit if self._size is not None else self.max_batch_size
        rows = self._compatible_rows(limit)
        if rows >= limit:
            return limit, 0.0
        for size in self._preferred:
            if size <= limit and rows >= size:
                return size, 0.0
        waited = time.perf_counter() - self._queue[0].enqueued
        return limit, self._delay - waited

    def _compatible_rows(self, cap: int) -> int:
        """Rows that could join the oldest request's batch (stops counting at ``cap``)."""
        if not self._varying:
            return self._queued_rows
        head_key, rows = self._queue[0].key, 0
        for pending in self._queue:
            if pending.key == head_key and not pending.future.done():
                rows += pending.rows
                if rows >= cap:
                    break
        return rows

    def _take(self, cap: int) -> list[_Pending]:
        """Pop the oldest request and those after it that fit in ``cap`` rows (FIFO)."""
        queue, rows = self._queue, 0
        batch: list[_Pending] = []
        head_key = queue[0].key
        skipped: list[_Pending] = []
        while queue:
            pending = queue[0]
            if pending.future.done():
                queue.popleft()
                self._queued_rows -= pending.rows
                continue
            if batch and (rows + pending.rows > cap or not self.max_batch_size):
                break
            queue.popleft()
            if pending.key != head_key:
                skipped.append(pending)  # other shapes wait for a batch of their own
                continue
            batch.append(pending)
            rows += pending.rows
            self._queued_rows -= pending.rows
        # Put skipped requests back in front, in their original order.
        queue.extendleft(reversed(skipped))
        return batch

    def _work(
        self, loop: asyncio.AbstractEventLoop, session: Session, batch: list[_Pending]
    ) -> None:
        """Inference thread: run ``batch`` on ``session``, then each batch due after it, while
        the loop delivers the results; the session goes back when none is due."""
        while True:
            outcome: tuple[list[Outputs], float, float] | BaseException
            try:
                outcome = self._run(session, batch)
            except BaseException as error:  # every request of the batch gets it
                loop.call_soon_threadsafe(self._finish, session, batch, error)
                return
            with self._lock:
                following, _ = self._due(holding=True)
            loop.call_soon_threadsafe(
                self._finish, session if following is None else None, batch, outcome
            )
            if following is None:
                return
            batch = following

    def _run(self, session: Session, batch: list[_Pending]) -> tuple[list[Outputs], float, float]:
        """Worker thread: concatenate, run once, split the outputs back per request; with
        the seconds it took and its cost in seconds of ``self._clock``."""
        started, spent = time.perf_counter(), self._clock()
        if len(batch) == 1:
            results = [session.run(batch[0].feeds)]
            return results, time.perf_counter() - started, self._clock() - spent
        parts = [p.feeds for p in batch]
        if self._padding:
            parts = pad_to_longest(parts, self._padding)
        feeds = {name: np.concatenate([p[name] for p in parts]) for name in self._names}
        outputs = session.run(feeds)
        total = sum(p.rows for p in batch)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise BackendError(
                    f"{self.label}: output '{name}' has shape {array.shape} for a batch of "
                    f"{total} rows; its first dimension must be the batch"
                )
        results, start = [], 0
        for pending in batch:
            stop = start + pending.rows
            results.append({name: array[start:stop] for name, array in outputs.items()})
            start = stop
        return results, time.perf_counter() - started, self._clock() - spent

    def _finish(
        self,
        session: Session | None,
        batch: list[_Pending],
        outcome: tuple[list[Outputs], float, float] | BaseException,
    ) -> None:
        """On the loop: deliver ``batch``'s results (or the error it raised); give
        ``session`` back when its thread stopped (None: it went on with the next batch)."""
        if session is not None:
            self._free.append(session)
            self._running -= 1
            self._wake.set()
        if isinstance(outcome, BaseException):
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(outcome)
            return
        results, seconds, cost = outcome
        if len(batch) == 1:  # what the inline path would cost
            previous = self._single if self._single != float("inf") else seconds
            self._single = 0.8 * previous + 0.2 * seconds
        rows = sum(p.rows for p in batch)
        if self._size is not None:
            self._size.observe(rows, cost)
        if self._metrics is not None:
            self._metrics.compute_time.observe(seconds)
            self._metrics.batch_size.observe(rows)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    def _scheduler_done(self, task: asyncio.Task[None]) -> None:
        # A bug in the scheduler must not leave callers waiting forever.
        if task.cancelled() or task.exception() is None:
            return
        logger.error("batcher of %s stopped", self.label, exc_info=task.exception())
        self._closing = True
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(ModelNotReady(f"{self.label}: scheduler failed"))
        self._queue.clear()
