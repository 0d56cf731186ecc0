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

from shipyard.serve.errors import InternalError

logger = logging.getLogger(__name__)

_LOG = "repository-ops.jsonl"
_FOLLOW_SECONDS = 0.25  # how soon another worker applies a load or unload
_ACK_SECONDS = 300.0  # the longest a load or unload waits for the other workers
_ACK_POLL_SECONDS = 0.02
_YOUNG_SECONDS = 10.0  # a worker that dies sooner after starting is not restarted


class WorkerLink:
    """One worker's end of the shared log of repository operations.

    A worker asked to load or unload a model appends the operation (:meth:`publish`); every
    other worker applies it (:meth:`follow`) and appends an acknowledgement, and the asking
    worker answers its client only once all of them did (:meth:`wait`): after a load returns,
    every worker serves the model, whichever one the next connection reaches.
    """

    def __init__(self, folder: Path, index: int, workers: int) -> None:
        self.path, self.index, self.workers = folder / _LOG, index, workers
        self.seen = 0  # bytes of the log already read
        self.ops: list[dict[str, Any]] = []  # other workers' operations, not yet applied
        self.acks: dict[str, dict[int, str]] = {}  # operation id -> worker -> error ("": ok)
        self._count = 0

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry) + "\n"
        with open(self.path, "a", encoding="utf-8") as log:
            fcntl.flock(log, fcntl.LOCK_EX)
            log.write(line)
            log.flush()
            fcntl.flock(log, fcntl.LOCK_UN)

    def publish(self, op: str, model: str) -> str:
        """Append ``op`` (``load`` or ``unload``) of ``model`` for the other workers; returns
        the operation's id, which :meth:`wait` takes."""
        self._count += 1
        ident = f"{self.index}-{os.getpid()}-{self._count}"
        self._append({"id": ident, "worker": self.index, "op": op, "model": model})
        return ident

    def read(self) -> None:
        """Take in what the log gained since the last call: operations and acknowledgements."""
        try:
            with open(self.path, encoding="utf-8") as log:
                log.seek(self.seen)
                text = log.read()
        except FileNotFoundError:
            return
        complete = text[: text.rfind("\n") + 1]  # a line being written waits for the next call
        self.seen += len(complete.encode())
        for line in complete.splitlines():
            entry = json.loads(line) if line else {}
            if "ack" in entry:
                self.acks.setdefault(entry["ack"], {})[entry["worker"]] = entry.get("error", "")
            elif entry.get("op") and entry.get("worker") != self.index:
                self.ops.append(entry)

    def pending(self) -> list[dict[str, Any]]:
        """The operations other workers appended since the last call."""
        self.read()
        ops, self.ops = self.ops, []
        return ops

    async def wait(self, ident: str, timeout: float = _ACK_SECONDS) -> dict[int, str]:
        """Until every other worker acknowledged operation ``ident`` (or ``timeout`` s went
        by: a worker that died and is being started again loads the repository itself).
        Returns the errors other workers met, by worker."""
        deadline = time.monotonic() + timeout
        while True:
            self.read()
            acks = self.acks.get(ident, {})
            if len(acks) >= self.workers - 1:
                self.acks.pop(ident, None)
                return {worker: error for worker, error in acks.items() if error}
            if time.monotonic() > deadline:
                logger.warning(
                    "worker %d: %s not acknowledged by every worker within %g s",
                    self.index, ident, timeout,
                )  # fmt: skip
                return {}
            await asyncio.sleep(_ACK_POLL_SECONDS)

    async def announce(self, op: str, model: str, failed: bool = False) -> None:
        """Publish ``op`` of ``model`` and wait until every other worker did it: the next
        request finds the model loaded (or gone) whichever worker takes it. InternalError
        naming the workers that could not, unless this one ``failed`` too (its own error is
        then the answer)."""
        errors = await self.wait(self.publish(op, model))
        if errors and not failed:
            said = "; ".join(
                f"worker {worker}: {error}" for worker, error in sorted(errors.items())
            )
            raise InternalError(f"{op} of {model} done by this worker, not by every one: {said}")

    async def follow(self, apply: Callable[[str, str], Any]) -> None:
        """Apply the other workers' operations as they appear, acknowledging each (until
        cancelled)."""
        self.pending()  # what was there before this worker started is in its own startup load
        while True:
            await asyncio.sleep(_FOLLOW_SECONDS)
            for op in self.pending():
                error = ""
                try:
                    await apply(op["op"], op["model"])
                except Exception as failure:  # the asking worker reports it to its client
                    error = str(failure) or type(failure).__name__
                    logger.info("worker %d: %s %s: %s", self.index, op["op"], op["model"], error)
                if "id" in op:
                    self._append({"ack": op["id"], "worker": self.index, "error": error})


def _worker(
    index: int,
    sock: socket.socket,
    folder: str,
    run: Callable[..., None],
    options: dict,
    workers: int,
    errors: Any,
    parent: int,
) -> None:
    """A worker process: the whole server, on its own socket of the shared port. An error
    that stops it (a strict refusal, a bad TLS file) goes to the parent through ``errors``,
    which raises it as one server would: one line from the CLI, not a traceback per worker."""
    _detach_from_terminal(parent)
    link = WorkerLink(Path(folder), index, workers)
    if index != 0:
        options = {**options, "on_loaded": None}  # the first worker prints the table
    try:
        run(**options, sockets=[sock], link=link)
    except KeyboardInterrupt:  # Ctrl-C (forwarded) while it was still starting: a clean stop
        return
    except Exception as error:
        try:
            errors.put(error)
        except Exception:  # an error that does not pickle: its text
            errors.put(RuntimeError(f"{type(error).__name__}: {error}"))
        raise SystemExit(2) from None


def _detach_from_terminal(parent: int) -> None:
    """Leave the terminal's process group, so that Ctrl-C reaches the parent only (which
    forwards it once: a worker signalled twice stops at once, without draining), and stop
    when the parent dies (Linux), since no terminal signal reaches this process any more."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    # ``parent`` died before prctl took effect, perhaps before this process ran at all: hence
    # its pid handed over by the parent, not read here.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


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
    errors = context.SimpleQueue()  # what stopped a worker, raised here as one server's

    def start(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker,
            args=(index, socks[index], folder, run, options, workers, errors, os.getpid()),
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
        if not errors.empty():
            raise errors.get()
        raise SystemExit(failed[0])
