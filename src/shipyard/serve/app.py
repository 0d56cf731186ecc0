"""The server's ASGI app: Open Inference Protocol v2 over HTTP (KServe V2 / Triton).

Inference requests go straight to :class:`shipyard.serve.infer.Inference` (plain ASGI, the hot
path); every other endpoint is a Starlette route (FastAPI's validation and dependency layer
would only add per-request work: each handler parses its own body).

Endpoints: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
``GET /v2/models/{m}[/versions/{v}]`` (metadata), ``.../ready``, ``.../config``,
``POST .../infer``, ``POST /v2/repository/index``, ``POST /v2/repository/models/{m}/load``
and ``/unload``, ``GET /metrics``. Every error answers ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InputError
from shipyard.serve.config import MAX_BODY_BYTES
from shipyard.serve.errors import (
    BadRequest,
    ModelNotReady,
    RepositoryError,
    ServeError,
    Unauthorized,
)
from shipyard.serve.infer import (
    INFER_PATH,
    Inference,
    Receive,
    Scope,
    Send,
    error_reply,
    read_body,
    reply,
    send_reply,
)
from shipyard.serve.metrics import ServeMetrics
from shipyard.serve.repository import Repository, check_name

logger = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "parameters"]
Handler = Callable[[Request], Awaitable[Response]]


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(body, status, headers, media_type="application/json")


def error_response(error: BaseException) -> Response:
    """``{"error": message}`` with the status the error maps to (500 for our bugs)."""
    status, headers, body = error_reply(error)
    return Response(body, status, {k.decode(): v.decode() for k, v in headers})


class _Server:
    """The state one app's handlers share."""

    def __init__(
        self,
        repository: Repository,
        auth_token: str | None,
        admin_token: str | None,
        max_body_bytes: int,
    ) -> None:
        self.repository = repository
        self.metrics = repository.metrics
        self.max_body_bytes = max_body_bytes
        self.auth = f"Bearer {auth_token}".encode() if auth_token else None
        # Without an admin token, repository endpoints fall back to the inference token.
        admin = admin_token or auth_token
        self.admin = f"Bearer {admin}".encode() if admin else None
        self.loading: asyncio.Task[None] | None = None
        self.draining = False
        self.grpc_port: int | None = None  # the bound gRPC port while gRPC serves

    @staticmethod
    def authorize(request: Request, expected: bytes | None) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")

    # -- health and metadata ------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        from shipyard import __version__

        self.authorize(request, self.auth)
        return _json({"name": "shipyard", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    def not_ready_reason(self) -> str | None:
        """Why the server is not ready (None when it is): one rule for HTTP and gRPC."""
        if self.draining:
            return "shutting down"
        if self.loading is None or not self.loading.done():
            return "loading models"
        if not self.repository.ready():
            return "a model has no ready version; see /v2/repository/index"
        return None

    async def ready(self, request: Request) -> Response:
        # The V2 spec answers "not ready" with a 4xx; Triton uses 400.
        reason = self.not_ready_reason()
        return _json({"error": reason}, 400) if reason else _json({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        self.authorize(request, self.auth)
        served = self.repository.get(
            request.path_params["model"], request.path_params.get("version")
        )
        return _json(
            {
                "name": served.name,
                "versions": [str(v) for v in self.repository.versions(served.name)],
                "platform": served.platform,
                "inputs": served.inputs,
                "outputs": served.outputs,
            }
        )

    async def model_ready(self, request: Request) -> Response:
        self.authorize(request, self.auth)
        name = request.path_params["model"]
        try:
            self.repository.get(name, request.path_params.get("version"))
        except ModelNotReady as error:
            return _json({"error": str(error)}, 400)
        return _json({"name": name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        self.authorize(request, self.auth)
        served = self.repository.get(
            request.path_params["model"], request.path_params.get("version")
        )
        return _json(served.triton_config())

    async def metrics_text(self, request: Request) -> Response:
        self.authorize(request, self.auth)
        body, content_type = self.metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    # -- repository extension -----------------------------------------------------------------
    async def _options(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        body = await read_body(
            request.receive, length.encode() if length else None, self.max_body_bytes
        )
        if not body.strip():
            return {}
        try:
            value = json.loads(body)
        except ValueError as error:
            raise BadRequest(f"the request is not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise BadRequest("the request body must be a JSON object")
        return value

    async def index(self, request: Request) -> Response:
        self.authorize(request, self.admin)
        options = await self._options(request)
        entries = await self.repository.index(bool(options.get("ready")))
        return _json(entries)

    async def load(self, request: Request) -> Response:
        self.authorize(request, self.admin)
        name = check_name(request.path_params["model"])
        parameters = (await self._options(request)).get("parameters") or {}
        if parameters.get("config") or any(str(k).startswith("file:") for k in parameters):
            raise BadRequest("loading with an override config or files is not supported")
        versions = await self.repository.load(name)
        return _json({"name": name, "versions": [str(v) for v in versions]})

    async def unload(self, request: Request) -> Response:
        self.authorize(request, self.admin)
        name = check_name(request.path_params["model"])
        await self._options(request)
        await self.repository.unload(name)
        return _json({"name": name, "versions": []})


def _guarded(handler: Handler) -> Handler:
    """Answer our errors as ``{"error": ...}`` without Starlette's exception middleware."""

    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as error:
            if not isinstance(error, ServeError | InputError):
                logger.exception("%s %s failed", request.method, request.url.path)
            return error_response(error)

    return guarded


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = f"{error.detail}: {request.method} {request.url.path}"
    return _json({"error": message}, error.status_code, error.headers)


def create_app(
    repository: str | Path,
    *,
    auth_token: str | None = None,
    admin_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    watch_seconds: float | None = None,
    grpc_port: int | None = None,
    grpc_host: str = "127.0.0.1",
) -> V2App:
    """The V2 server (an ASGI app) over the model repository folder ``repository``.

    ``auth_token``: bearer token for inference, metadata and /metrics (health stays open for
    probes). ``admin_token``: bearer token for the repository endpoints (default:
    ``auth_token``). ``max_body_bytes``: larger bodies get 413. ``watch_seconds``: poll the
    folder this often and (re)load models whose versions changed. Models load in the
    background at startup; ``/v2/health/ready`` answers 200 once they have.
    ``grpc_port``: also serve the protocol over gRPC on ``grpc_host:grpc_port`` (0: a free
    port, then read ``app.server.grpc_port``), in the same event loop, with the same models,
    batchers, tokens and metrics (see :mod:`shipyard.serve.grpc.server`); None: HTTP only.
    """
    root = Path(repository)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    server = _Server(Repository(root, ServeMetrics()), auth_token, admin_token, max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        grpc = None
        if grpc_port is not None:
            from shipyard.serve.grpc.server import start_grpc_server

            grpc = await start_grpc_server(server, grpc_host, grpc_port)
            server.grpc_port = grpc.port
        server.loading = asyncio.create_task(server.repository.load_all())
        watcher = (
            asyncio.create_task(_watch(server.repository, watch_seconds)) if watch_seconds else None
        )
        try:
            yield
        finally:
            # uvicorn has finished the in-flight HTTP requests by now; drain the batchers.
            server.draining = True
            if grpc is not None:  # in-flight calls finish (within a grace period) first
                await grpc.stop()
            for task in (watcher, server.loading):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await server.repository.close()

    routes = [
        Route("/v2", _guarded(server.server_metadata)),
        Route("/v2/health/live", server.live),
        Route("/v2/health/ready", server.ready),
        Route("/metrics", _guarded(server.metrics_text)),
        Route("/v2/repository/index", _guarded(server.index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", _guarded(server.load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", _guarded(server.unload), methods=["POST"]),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(prefix, _guarded(server.model_metadata)),
            Route(f"{prefix}/ready", _guarded(server.model_ready)),
            Route(f"{prefix}/config", _guarded(server.model_config)),
        ]
    routed = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    inference = Inference(server.repository, server.metrics, server.auth, max_body_bytes)
    return V2App(routed, inference, server)


class V2App:
    """The ASGI app ``create_app`` returns: ``POST .../infer`` goes straight to ``inference``
    (no routing, no middleware); everything else, lifespan included, to ``routed``."""

    def __init__(self, routed: Starlette, inference: Inference, server: _Server) -> None:
        self.routed, self.inference, self.server = routed, inference, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                if scope["method"] == "POST":
                    await self.inference(scope, receive, send, match[1], match[2])
                else:
                    method = scope["method"]
                    answer = reply({"error": f"{method} not allowed; use POST"}, 405)
                    await send_reply(send, (405, [*answer[1], (b"allow", b"POST")], answer[2]))
                return
        await self.routed(scope, receive, send)


async def _internal_error(request: Request, error: Exception) -> Response:
    return error_response(error)


async def _watch(repository: Repository, seconds: float) -> None:
    """Poll the repository folder every ``seconds`` and reload models that changed."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await repository.poll()
        except Exception:  # a bad poll must not end the watch
            logger.exception("polling %s failed", repository.root)


__all__ = ["MAX_BODY_BYTES", "V2App", "create_app"]
