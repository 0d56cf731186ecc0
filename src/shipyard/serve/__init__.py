"""Serving: an Open Inference Protocol v2 (KServe V2 / Triton HTTP) server over a repository.

``run_server(path)`` serves a model repository (``<path>/<model>/<version>/``), one model
folder (``<path>/<version>/``) or one package folder (``<path>/shipyard.json``) with dynamic
batching; ``create_app(path)`` returns the ASGI app for embedding or tests. The schema of a
manifest's ``"serving"`` key, ``ServingConfig``, is package schema: :mod:`shipyard.serving`.
Importing this package is cheap: the web stack (Starlette, uvicorn, prometheus-client) loads
on first use of the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

# Server-wide default: request bodies (gRPC messages) above this get 413 (RESOURCE_EXHAUSTED).
# 64 MiB: a batch of 80 float32 224x224x3 images in binary form.
MAX_BODY_BYTES = 64 * 2**20

if TYPE_CHECKING:
    from shipyard.serve.app import V2App


def create_app(repository: str | Path, **options: Any) -> V2App:
    """The V2 server ASGI app; see :func:`shipyard.serve.app.create_app` for ``options``."""
    from shipyard.serve.app import create_app as create

    return create(repository, **options)


def run_server(
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
) -> None:
    """Serve ``repository`` on ``host:port`` until SIGINT/SIGTERM, then drain and return.

    Binds to loopback by default: pass ``host="0.0.0.0"`` (and a token) to serve a network.
    ``auth_token``: bearer token for inference, metadata and /metrics (health stays open).
    ``admin_token``: bearer token for /v2/repository (default: ``auth_token``).
    ``max_body_bytes``: larger request bodies get 413. ``watch_seconds``: poll the repository
    this often and (re)load models whose version folders changed. ``access_log``: log every
    request (off by default: logging costs more than a small model's inference).
    ``graceful_timeout``: seconds in-flight requests get to finish on shutdown.
    ``grpc_port``: also serve the protocol over gRPC on ``host:grpc_port`` (None: HTTP only).
    Raises RepositoryError when ``repository`` is not a folder.
    """
    import uvicorn

    app = create_app(
        repository,
        auth_token=auth_token,
        admin_token=admin_token,
        max_body_bytes=max_body_bytes,
        watch_seconds=watch_seconds,
        grpc_port=grpc_port,
        grpc_host=host,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=graceful_timeout,
    )


__all__ = ["MAX_BODY_BYTES", "create_app", "run_server"]
