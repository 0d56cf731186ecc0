"""Stateful serving: the sequence batcher of one model version (Triton's, with implicit state).

A version whose manifest has ``serving.sequence`` (:class:`shipyard.stateful.SequenceConfig`)
is served by a :class:`SequenceBatcher` instead of the dynamic batcher. Clients send one chunk
per request with ``sequence_id`` (and ``sequence_start`` on the first, ``sequence_end`` on the
last: :mod:`shipyard.serve.sequence_control`); the server keeps every live sequence's state
tensors and context (:class:`~shipyard.stateful.Carry`) between its requests.

- **Order**: a sequence's chunks run one at a time, in arrival order; chunks of different
  sequences share a model call: up to ``max_batch_size`` sequences whose next chunk is waiting
  are stepped together, their states gathered along the state's batch axis and scattered back
  (:class:`~shipyard.stateful.Stepper`). As in the dynamic batcher, a call starts as soon as a
  session is free and either ``max_batch_size`` sequences are ready, or every live sequence
  not being stepped is (none could join), or the oldest ready chunk has waited
  ``max_queue_delay_ms`` (default 0: batches form from what queues while a call runs).
- **Lifetime**: ``sequence_start`` creates a sequence (or restarts a live one: its state is
  reset when that chunk runs); ``sequence_end`` drops it after its chunk; a sequence unused
  for ``idle_timeout_s`` is dropped (a sweep every quarter of it, and on lookup).
- **Refusals**: a chunk of an unknown sequence without ``sequence_start`` (never started,
  ended, or idle too long) is 400; a request without ``sequence_id`` is 400; a new sequence
  beyond ``max_sequences`` is 503 with Retry-After. A chunk that times out or whose client
  leaves before it runs is skipped; one that already ran has moved the state.
- **Whole clips**: with ``speech`` set, a WAV file as a BYTES input runs as a sequence of its
  own and is answered with speech segments (:mod:`shipyard.serve.speech`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from shipyard.runtimes.base import Session
from shipyard.serve.errors import (
    BadRequest,
    ModelNotReady,
    RequestTimeout,
    ServeError,
    VersionRetired,
)
from shipyard.serve.metrics import VersionMetrics
from shipyard.serve.sequence_control import SequenceControl
from shipyard.serve.speech import SpeechClips
from shipyard.serving import ServingConfig
from shipyard.stateful import Carry, Stepper

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


class TooManySequences(ServeError):
    """``max_sequences`` sequences are live; a new one must wait for one to end (503)."""

    status = 503
    retry_after = 1


@dataclass(slots=True, eq=False)
class _Step:
    feeds: Mapping[str, np.ndarray]
    start: bool
    end: bool
    future: asyncio.Future[Outputs]
    enqueued: float


@dataclass(slots=True, eq=False)
class _Sequence:
    key: int | str | None  # None: a whole clip's private sequence (not in the table)
    carry: Carry | None = None  # None until its first step has run
    steps: deque[_Step] = field(default_factory=deque)
    running: bool = False
    queued: bool = False  # in the ready queue
    ended: bool = False  # its last queued step carries sequence_end
    used: float = 0.0  # time.monotonic() of its last request or result


def _expire(future: asyncio.Future[Outputs], seconds: float) -> None:
    if not future.done():
        future.set_exception(
            RequestTimeout(f"no result within the timeout of {seconds * 1e3:g} ms")
        )


class SequenceBatcher:
    """Keep, batch and step the sequences of one version on its ``sessions``.

    The same life cycle as :class:`~shipyard.serve.batcher.Batcher`: :meth:`start` inside
    the event loop, :meth:`infer` per request, :meth:`close` to drain and close the sessions.
    Raises ServingConfigError when ``config.sequence`` does not fit the model.
    """

    def __init__(
        self,
        sessions: Sequence[Session],
        config: ServingConfig,
        *,
        label: str = "model",
        metrics: VersionMetrics | None = None,
    ) -> None:
        if not sessions or config.sequence is None:
            raise ValueError("a sequence batcher needs sessions and a sequence config")
        self.config = config.sequence
        self.stepper = Stepper(sessions[0].signature, self.config)
        self.clips = SpeechClips.create(self.stepper, self.config.speech)
        self.signature = self.clips.signature if self.clips else self.stepper.client
        self.label = label
        self.max_batch_size = max(config.max_batch_size, 1)
        self._timeout = config.timeout_ms / 1e3 if config.timeout_ms else None
        self._delay = config.max_queue_delay_ms / 1e3
        self._idle = self.config.idle_timeout_s
        self._sessions, self._free = list(sessions), list(sessions)
        self._metrics = metrics
        self._sequences: dict[int | str, _Sequence] = {}
        self._ready: deque[_Sequence] = deque()
        self._waiting = 0  # steps queued, all sequences together
        self._running = 0
        self._stepping = 0  # sequences in the running calls
        self._closing = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(len(sessions), thread_name_prefix=f"seq-{label}")

    @property
    def depth(self) -> int:
        """Chunks waiting for their turn (not yet running)."""
        return self._waiting

    @property
    def live(self) -> int:
        """Sequences whose state is kept."""
        return len(self._sequences)

    def start(self) -> None:
        """Start the scheduler and the idle sweep on the running event loop."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._schedule()), loop.create_task(self._sweep())]
        self._tasks[0].add_done_callback(self._scheduler_done)

    async def infer(
        self,
        feeds: Mapping[str, np.ndarray],
        control: SequenceControl | None,
        timeout: float | None = None,
    ) -> Outputs:
        """Run one chunk of sequence ``control`` (or a whole WAV clip: see the module) and
        return the client's outputs. ``timeout`` (seconds) replaces ``timeout_ms``.

        Raises BadRequest / InputError (400), TooManySequences or VersionRetired (503),
        RequestTimeout (504).
        """
        if self._closing:
            raise VersionRetired(f"{self.label} is being unloaded; retry")
        limit = timeout if timeout is not None else self._timeout
        if any(array.dtype.kind == "O" for array in feeds.values()):
            if self.clips is None:
                raise BadRequest(
                    f"{self.label} takes no whole clips (its package sets no "
                    f"serving.sequence.speech); send chunks: {self.signature.describe_inputs()}"
                )
            return await self.clips.answer(self, feeds, limit)
        if control is None:
            raise BadRequest(
                f"{self.label} keeps state per sequence: send the parameters sequence_id "
                f"(and sequence_start on a sequence's first request, sequence_end on its last)"
            )
        self.stepper.client.check_inputs(feeds)
        rows = len(next(iter(feeds.values())))
        if rows != 1:
            raise BadRequest(
                f"a request carries one step of its sequence (batch dimension 1), got {rows}"
            )
        sequence = self._lookup(control)
        return await self._await(self._enqueue(sequence, feeds, control), limit)

    def _lookup(self, control: SequenceControl) -> _Sequence:
        now = time.monotonic()
        sequence = self._sequences.get(control.id)
        if sequence is not None and self._idle_since(sequence, now):
            del self._sequences[control.id]  # idle too long: the sweep had not come yet
            sequence = None
        if sequence is None or (sequence.ended and not control.start):
            if not control.start:
                raise BadRequest(
                    f"{self.label}: no live sequence {control.id!r}: start it with "
                    f"sequence_start (sequences end with sequence_end or after "
                    f"{self._idle:g} s unused)"
                )
            if sequence is None:
                if len(self._sequences) >= self.config.max_sequences:
                    raise TooManySequences(
                        f"{self.label}: {self.config.max_sequences} sequences are live "
                        f"(max_sequences); end one or retry later"
                    )
                sequence = self._sequences[control.id] = _Sequence(control.id)
        sequence.used = now
        return sequence

    def _idle_since(self, sequence: _Sequence, now: float) -> bool:
        idle = not sequence.running and not sequence.steps
        return idle and now - sequence.used > self._idle

    def _enqueue(
        self, sequence: _Sequence, feeds: Mapping[str, np.ndarray], control: SequenceControl
    ) -> asyncio.Future[Outputs]:
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        step = _Step(feeds, control.start, control.end, future, time.perf_counter())
        sequence.steps.append(step)
        sequence.ended = control.end
        self._waiting += 1
        self._make_ready(sequence)
        return future

    def _make_ready(self, sequence: _Sequence) -> None:
        if sequence.steps and not sequence.running and not sequence.queued:
            sequence.queued = True
            self._ready.append(sequence)
            self._wake.set()

    async def _await(self, future: asyncio.Future[Outputs], limit: float | None) -> Outputs:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(limit, _expire, future, limit) if limit else None
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()

    def clip_sequence(self) -> _Sequence:
        """A private sequence for one whole clip (not counted, never looked up)."""
        return _Sequence(None, used=time.monotonic())

    def clip_step(
        self, sequence: _Sequence, feeds: Mapping[str, np.ndarray], first: bool
    ) -> asyncio.Future[Outputs]:
        """Queue one chunk of a whole clip's private ``sequence``; its future."""
        return self._enqueue(sequence, feeds, SequenceControl(0, start=first))

    async def close(self) -> None:
        """Stop accepting chunks, finish queued and running ones, close the sessions."""
        self._closing = True
        self._wake.set()
        if self._tasks:
            self._tasks[1].cancel()
            await asyncio.shield(self._tasks[0])
        self._executor.shutdown(wait=True)
        for session in self._sessions:
            session.close()
        self._sequences.clear()

    # -- scheduling ---------------------------------------------------------------------------
    async def _sweep(self) -> None:
        """Drop sequences unused for ``idle_timeout_s`` (checked every quarter of it)."""
        interval = min(self._idle / 4, 1.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key in [k for k, s in self._sequences.items() if self._idle_since(s, now)]:
                del self._sequences[key]

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._ready or not self._free:
                if self._closing and not self._ready and self._running == 0:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._wait()
            if wait > 0:  # until the oldest chunk's delay runs out or something changes
                self._wake.clear()
                timer = loop.call_later(wait, self._wake.set)
                await self._wake.wait()
                timer.cancel()
                continue
            batch = self._take()
            if batch:
                self._dispatch(loop, batch)

    def _wait(self) -> float:
        """Seconds to wait for more sequences before stepping the ready ones (0: now)."""
        could_join = min(self.max_batch_size, len(self._sequences) - self._stepping)
        if not self._delay or self._closing or len(self._ready) >= could_join:
            return 0.0
        head = self._ready[0].steps
        return self._delay - (time.perf_counter() - head[0].enqueued) if head else 0.0

    def _take(self) -> list[tuple[_Sequence, _Step]]:
        """The next waiting step of up to ``max_batch_size`` ready sequences, oldest first;
        steps whose caller gave up (timeout, gone) are dropped on the way."""
        batch: list[tuple[_Sequence, _Step]] = []
        while self._ready and len(batch) < self.max_batch_size:
            sequence = self._ready.popleft()
            sequence.queued = False
            while sequence.steps and sequence.steps[0].future.done():
                self._skip(sequence)
            if not sequence.steps:
                continue
            sequence.running = True
            self._waiting -= 1
            batch.append((sequence, sequence.steps.popleft()))
        return batch

    def _skip(self, sequence: _Sequence) -> None:
        step = sequence.steps.popleft()
        self._waiting -= 1
        if step.end and not sequence.steps:
            self._forget(sequence)

    def _forget(self, sequence: _Sequence) -> None:
        if sequence.key is not None and self._sequences.get(sequence.key) is sequence:
            del self._sequences[sequence.key]

    def _dispatch(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[_Sequence, _Step]]
    ) -> None:
        session = self._free.pop()
        self._running += 1
        self._stepping += len(batch)
        start = self.stepper.start
        carries = [start() if s.start or q.carry is None else q.carry for q, s in batch]
        if self._metrics is not None:
            now = time.perf_counter()
            for _, step in batch:
                self._metrics.queue_time.observe(now - step.enqueued)
        feeds = [step.feeds for _, step in batch]
        done = self._executor.submit(self._run, session, feeds, carries)
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, session, batch, f))

    def _run(
        self, session: Session, steps: list[Mapping[str, np.ndarray]], carries: list[Carry]
    ) -> tuple[list[Carry], list[Outputs], float]:
        """Worker thread: gather, run once, scatter."""
        started = time.perf_counter()
        feeds = self.stepper.feeds(steps, carries)
        carried, answers = self.stepper.advance(feeds, session.run(feeds))
        return carried, answers, time.perf_counter() - started

    def _finish(
        self,
        session: Session,
        batch: list[tuple[_Sequence, _Step]],
        done: ConcurrentFuture[tuple[list[Carry], list[Outputs], float]],
    ) -> None:
        self._free.append(session)
        self._running -= 1
        self._stepping -= len(batch)
        self._wake.set()
        error = done.exception()
        if error is None:
            carried, answers, seconds = done.result()
            if self._metrics is not None:
                self._metrics.compute_time.observe(seconds)
                self._metrics.batch_size.observe(len(batch))
        now = time.monotonic()
        for index, (sequence, step) in enumerate(batch):
            sequence.running, sequence.used = False, now
            if error is None:
                sequence.carry = carried[index]
                if not step.future.done():
                    step.future.set_result(answers[index])
            elif not step.future.done():
                step.future.set_exception(error)
            if step.end and not sequence.steps:
                self._forget(sequence)
            elif step.end:
                sequence.carry = None  # a restart is queued behind the end
            self._make_ready(sequence)

    def _scheduler_done(self, task: asyncio.Task[None]) -> None:
        # A bug in the scheduler must not leave callers waiting forever.
        if task.cancelled() or task.exception() is None:
            return
        logger.error("sequence batcher of %s stopped", self.label, exc_info=task.exception())
        self._closing = True
        for sequence in [*self._sequences.values(), *self._ready]:
            for step in sequence.steps:
                if not step.future.done():
                    step.future.set_exception(ModelNotReady(f"{self.label}: scheduler failed"))
        self._sequences.clear()
        self._ready.clear()


__all__ = ["SequenceBatcher", "TooManySequences"]
