"""Several server processes on one port: ``shipyard serve --workers N``.

One Python process and its GIL cap a server near one core, however many the machine has. Here
the parent binds the HTTP port once and starts ``N`` worker processes (``spawn``), each with
the whole server: its own repository, sessions and batchers, the same socket (the kernel
spreads connections over the processes accepting on it), and gRPC on the same port through
SO_REUSEPORT. The parent forwards SIGINT/SIGTERM, so each worker drains as one server does,
and restarts a worker that dies.

What must agree across workers goes through a folder the parent owns:

- metrics: prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), so one
  scrape of any worker reports the sum of all of them;
- repository operations: a load or unload asked of one worker (HTTP or gRPC) is appended to
  a log that every other worker follows (:class:`WorkerLink`), so each applies it too;
- the startup table: printed by the first worker once its models have loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_LOG = "repository-ops.jsonl"
_FOLLOW_SECONDS = 0.25  # how soon another worker applies a load or unload
_YOUNG_SECONDS = 10.0  # a worker that dies sooner after starting is not restarted


class WorkerLink:
    """One worker's end of the shared log of repository operations."""

    def __init__(self, folder: Path, index: int) -> None:
        self.path, self.index = folder / _LOG, index
        self.seen = 0  # bytes of the log already applied

    def publish(self, op: str, model: str) -> None:
        """Append ``op`` (``load`` or ``unload``) of ``model`` for the other workers."""
        line = json.dumps({"worker": self.index, "op": op, "model": model}) + "\n"
        with open(self.path, "a", encoding="utf-8") as log:
            fcntl.flock(log, fcntl.LOCK_EX)
            log.write(line)
            log.flush()
            fcntl.flock(log, fcntl.LOCK_UN)

    def pending(self) -> list[dict[str, Any]]:
        """The operations other workers appended since the last call."""
        try:
            with open(self.path, encoding="utf-8") as log:
                log.seek(self.seen)
                text = log.read()
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]  # a line being written waits for the next call
        self.seen += len(complete.encode())
        ops = [json.loads(line) for line in complete.splitlines() if line]
        return [op for op in ops if op.get("worker") != self.index]

    async def follow(self, apply: Callable[[str, str], Any]) -> None:
        """Apply the other workers' operations as they appear (until cancelled)."""
        self.pending()  # what was there before this worker started is in its own startup load
        while True:
            await asyncio.sleep(_FOLLOW_SECONDS)
            for op in self.pending():
                try:
                    await apply(op["op"], op["model"])
                except Exception as error:  # the asking worker reported it to its client
                    logger.info("worker %d: %s %s: %s", self.index, op["op"], op["model"], error)


def _worker(
    index: int, sock: socket.socket, folder: str, run: Callable[..., None], options: dict
) -> None:
    """A worker process: the whole server, on its own socket of the shared port."""
    link = WorkerLink(Path(folder), index)
    if index != 0:
        options = {**options, "on_loaded": None}  # the first worker prints the table
    run(**options, sockets=[sock], link=link)


def _listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` (the first one picks the port when it is
    0), each a worker's own, joined by ``SO_REUSEPORT``: the kernel spreads connections over
    them by their addresses. One shared socket let whichever worker woke first accept a burst:
    at c=64, two workers served no more than one (wrk, benchmarks/serve/peers.py)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.listen(2048)
        socks.append(sock)
    return socks


def run_workers(
    workers: int,
    host: str,
    port: int,
    run: Callable[..., None],
    options: dict[str, Any],
) -> None:
    """Bind ``host:port``, start ``workers`` processes running ``run(**options, sockets=...,
    link=...)``, forward signals to them, restart one that dies, return when all have
    stopped. ``run`` and ``options`` must be picklable (module-level functions, plain data)."""
    socks = _listeners(host, port, workers)
    folder = tempfile.mkdtemp(prefix="shipyard-workers-")
    metrics = Path(folder) / "metrics"
    metrics.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)  # inherited by the workers
    context = multiprocessing.get_context("spawn")
    stopping = False
    started: dict[int, float] = {}
    failed: list[int] = []

    def start(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker,
            args=(index, socks[index], folder, run, options),
            name=f"shipyard-worker-{index}",
        )
        process.start()
        started[index] = time.monotonic()
        return process

    processes = [start(index) for index in range(workers)]

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(process.is_alive() for process in processes):
            for index, process in enumerate(processes):
                process.join(timeout=0.2)
                if process.is_alive() or stopping:
                    continue
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid)
                code = process.exitcode
                clean = code in (0, -signal.SIGTERM, -signal.SIGINT)
                if clean or time.monotonic() - started[index] < _YOUNG_SECONDS:
                    # It stopped on its own, or could not start (a strict refusal, a bad
                    # port): a restart would fail the same way. Stop them all.
                    if not clean:
                        failed.append(code or 1)
                    forward(signal.SIGTERM, None)
                    continue
                logger.warning("worker %d exited with %s; restarting it", index, code)
                processes[index] = start(index)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in socks:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)
    if failed:
        raise SystemExit(failed[0])
