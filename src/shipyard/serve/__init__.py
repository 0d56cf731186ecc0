"""Serving: an Open Inference Protocol v2 (KServe V2 / Triton HTTP) server over a repository.

``run_server(path)`` serves a model repository (``<path>/<model>/<version>/``), one model
folder (``<path>/<version>/``) or one package folder (``<path>/shipyard.json``) with dynamic
batching; ``create_app(path)`` returns the ASGI app for embedding or tests. The schema of a
manifest's ``"serving"`` key, ``ServingConfig``, is package schema: :mod:`shipyard.serving`.
Importing this package is cheap: the web stack (Starlette, uvicorn, prometheus-client) loads
on first use of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Server-wide default: request bodies (gRPC messages) above this get 413 (RESOURCE_EXHAUSTED).
# 64 MiB: a batch of 80 float32 224x224x3 images in binary form.
MAX_BODY_BYTES = 64 * 2**20

if TYPE_CHECKING:
    from shipyard.serve.app import Startup, V2App
    from shipyard.serve.layout import Layout
    from shipyard.serve.tls import Tls


def create_app(repository: str | Path | Layout, **options: Any) -> V2App:
    """The V2 server ASGI app; see :func:`shipyard.serve.app.create_app` for ``options``."""
    from shipyard.serve.app import create_app as create

    return create(repository, **options)


def run_server(
    repository: str | Path | Layout,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    auth_token: str | None = None,
    admin_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    watch_seconds: float | None = None,
    log_level: str = "info",
    access_log: bool = False,
    graceful_timeout: int = 30,
    grpc_port: int | None = None,
    strict: bool = False,
    on_loaded: Callable[[Startup], None] | None = None,
    tls: Tls | None = None,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
    max_connections: int = 2048,
    verify_key: str | Path | None = None,
    workers: int = 1,
) -> None:
    """Serve ``repository`` on ``host:port`` until SIGINT/SIGTERM, then drain and return.

    ``repository``: a model repository, one model folder or one package folder (a model or
    package folder is served alone; see :mod:`shipyard.serve.layout`).
    Binds to loopback by default: pass ``host="0.0.0.0"`` (and a token) to serve a network.
    ``auth_token``: bearer token for inference, metadata and /metrics (health stays open).
    ``admin_token``: bearer token for /v2/repository (default: ``auth_token``).
    ``max_body_bytes``: larger request bodies get 413. ``watch_seconds``: poll the repository
    this often and (re)load models whose version folders changed. ``access_log``: log every
    request (off by default: logging costs more than a small model's inference).
    ``graceful_timeout``: seconds in-flight requests get to finish on shutdown.
    ``grpc_port``: also serve the protocol over gRPC on ``host:grpc_port`` (None: HTTP only).
    ``strict``: load every model before any port opens, and refuse to start when one fails
    to load or there is none (as Triton's ``--exit-on-error``). ``on_loaded``: called once
    with a :class:`~shipyard.serve.app.Startup` when the startup loads have finished.
    ``tls``: serve HTTPS and gRPC over TLS (mutual TLS with ``tls.client_ca``).
    Slow and idle clients: a connection whose request headers are not complete
    ``header_timeout`` seconds after it opened (or after its last response) is closed; a body
    that takes longer than ``body_timeout`` gets 408; beyond ``max_connections`` connections
    (or requests in progress) new requests get 503.
    ``verify_key``: serve only versions whose ``model.sig`` this public key (PEM) verifies
    (see :func:`~shipyard.serve.app.create_app`).
    Raises RepositoryError (one line, saying what to pass or what failed) when ``repository``
    is not a folder, or with ``strict``, before serving anything.
    ``workers``: serve from this many processes on the one port (each with its own sessions
    and batchers; see :mod:`shipyard.serve.workers`); ``on_loaded`` must then be picklable.
    """
    options: dict[str, Any] = dict(
        repository=repository, host=host, port=port, auth_token=auth_token,
        admin_token=admin_token, max_body_bytes=max_body_bytes, watch_seconds=watch_seconds,
        log_level=log_level, access_log=access_log, graceful_timeout=graceful_timeout,
        grpc_port=grpc_port, strict=strict, on_loaded=on_loaded, tls=tls,
        header_timeout=header_timeout, body_timeout=body_timeout,
        max_connections=max_connections, verify_key=verify_key,
    )  # fmt: skip
    if workers > 1:
        from shipyard.serve.workers import run_workers

        run_workers(workers, host, port, serve_one, options)
        return
    serve_one(**options)


def serve_one(
    repository: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    auth_token: str | None = None,
    admin_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    watch_seconds: float | None = None,
    log_level: str = "info",
    access_log: bool = False,
    graceful_timeout: int = 30,
    grpc_port: int | None = None,
    strict: bool = False,
    on_loaded: Callable[[Startup], None] | None = None,
    tls: Tls | None = None,
    header_timeout: float = 10.0,
    body_timeout: float = 30.0,
    max_connections: int = 2048,
    verify_key: str | Path | None = None,
    sockets: list[Any] | None = None,
    link: Any = None,
) -> None:
    """One server process (``run_server``'s work, or one worker's, on ``sockets``, following
    the other workers' repository operations through ``link``)."""
    import uvicorn

    from shipyard.serve.guard import http_protocol

    app = create_app(
        repository,
        auth_token=auth_token,
        admin_token=admin_token,
        max_body_bytes=max_body_bytes,
        watch_seconds=watch_seconds,
        grpc_port=grpc_port,
        grpc_host=host,
        strict=strict,
        on_loaded=on_loaded,
        tls=tls,
        body_timeout=body_timeout,
        verify_key=verify_key,
        link=link,
    )

    class LoadFirst(uvicorn.Server):
        """uvicorn, in whose event loop a strict server loads its models before uvicorn
        starts (a failure then ends the run with our one-line error, never a traceback), and
        which drains before it stops: on SIGINT/SIGTERM, new requests get 503 (HTTP, with
        ``Connection: close``) or UNAVAILABLE (gRPC) while those in progress finish; uvicorn
        stops once none is in progress and no client was turned away for 0.2 s (so that
        clients see a refusal, not a closed connection), or after ``graceful_timeout``."""

        drain: asyncio.Task[None] | None = None

        async def serve(self, sockets: Any = None) -> None:
            self.loop = asyncio.get_running_loop()
            if strict:
                await app.server.start_loading()
            await super().serve(sockets)

        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets)
            # A drained stop is a clean one: uvicorn (0.29+) would raise the signal again once
            # serve() returns, and SIGINT then cancels the lifespan with a traceback.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.drain is not None or self.should_exit or not hasattr(self, "loop"):
                super().handle_exit(sig, frame)  # a second signal: stop now
                return
            app.server.draining = True
            self.loop.call_soon_threadsafe(self._start_drain, sig, frame)

        def _start_drain(self, sig: int, frame: Any) -> None:
            self.drain = self.loop.create_task(self._drained(sig, frame))

        async def _drained(self, sig: int, frame: Any) -> None:
            dispatcher = app.server.dispatcher
            deadline = time.monotonic() + graceful_timeout
            while time.monotonic() < deadline and (
                dispatcher.active or time.monotonic() - dispatcher.last_refused < 0.2
            ):
                await asyncio.sleep(0.01)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=graceful_timeout,
        http=http_protocol(header_timeout),
        limit_concurrency=max_connections,
        **(tls.uvicorn_options() if tls is not None else {}),
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C while loading, as uvicorn.run does
        LoadFirst(config).run(sockets=sockets)


__all__ = ["MAX_BODY_BYTES", "create_app", "run_server", "serve_one"]
