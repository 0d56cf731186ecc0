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
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InputError
from shipyard.serve import MAX_BODY_BYTES
from shipyard.serve.codec import parse_json
from shipyard.serve.dispatch import Dispatcher
from shipyard.serve.errors import BadRequest, ModelNotReady, RepositoryError, ServeError
from shipyard.serve.infer import (
    BODY_TIMEOUT,
    INFER_PATH,
    HttpTransport,
    Inference,
    Receive,
    Scope,
    Send,
    error_reply,
    reply,
    send_reply,
)
from shipyard.serve.layout import Layout, suggest
from shipyard.serve.metrics import ServeMetrics
from shipyard.serve.repository import LoadFailed, Repository, VersionRow, check_name
from shipyard.serve.tls import Tls

if TYPE_CHECKING:  # several workers only (fcntl, multiprocessing)
    from shipyard.serve.workers import WorkerLink

logger = logging.getLogger(__name__)

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "model_configuration",
    "parameters",
]
Handler = Callable[[Request], Awaitable[Response]]


def _json(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(body, status, headers, media_type="application/json")


def error_response(error: BaseException) -> Response:
    """``{"error": message}`` with the status the error maps to (500 for our bugs)."""
    status, headers, body = error_reply(error)
    return Response(body, status, {k.decode(): v.decode() for k, v in headers})


@dataclass(frozen=True)
class Startup:
    """What ``on_loaded`` receives once the startup loads have finished (and gRPC, when
    asked for, is serving): what was given, every version looked at, the bound gRPC port."""

    layout: Layout
    rows: list[VersionRow]
    grpc_port: int | None


class _Server:
    """The state one app's handlers share; ``dispatcher`` is shared with gRPC as well."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        max_body_bytes: int,
        strict: bool,
        on_loaded: Callable[[Startup], None] | None,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.dispatcher = dispatcher
        self.repository = dispatcher.repository
        self.metrics = dispatcher.metrics
        self.max_body_bytes = max_body_bytes
        self.http = HttpTransport(max_body_bytes, body_timeout)
        self.strict, self.on_loaded = strict, on_loaded
        self.loading: asyncio.Task[None] | None = None
        self.grpc_port: int | None = None  # the bound gRPC port while gRPC serves
        self._loaded = self._serving = False

    link: WorkerLink | None = None  # set when several workers serve (see serve.workers)

    async def change(self, op: str, model: str) -> list[int]:
        """A load or unload a client asked for (HTTP or gRPC): done here and, when several
        workers serve, by every one before it returns (see :meth:`WorkerLink.announce`).
        Returns the versions now served."""
        try:
            versions = await self.apply(op, model)
        except Exception as error:
            if isinstance(error, LoadFailed):  # logged as startup and --watch log theirs
                logger.warning("model %s: %s", model, error)
            if self.link is not None:  # the others try too; this worker's error is the answer
                await self.link.announce(op, model, failed=True)
            raise
        if self.link is not None:
            await self.link.announce(op, model)
        return versions

    async def apply(self, op: str, model: str) -> list[int]:
        """Load or unload ``model`` here (another worker's operation, or :meth:`change`)."""
        if op == "load":
            return await self.repository.load(model)
        await self.repository.unload(model)
        return []

    @property
    def draining(self) -> bool:
        """Shutting down: not ready, and new inference requests are refused (503)."""
        return self.dispatcher.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.dispatcher.draining = value

    def authorize(self, request: Request, admin: bool = False) -> None:
        self.dispatcher.authorize(request.headers.get("authorization"), admin)

    # -- startup ------------------------------------------------------------------------------
    def start_loading(self) -> asyncio.Task[None]:
        """The task loading every model at startup (started on the first call)."""
        if self.loading is None:
            self.loading = asyncio.get_running_loop().create_task(self._load())
        return self.loading

    async def _load(self) -> None:
        """Load every model; strict: RepositoryError (one line) on a failure or no model."""
        failures = await self.repository.load_all()
        layout = self.repository.layout
        empty = not self.repository.model_names()
        if self.strict and (failures or empty):
            await self.repository.close()
            if failures:
                why = " ".join("; ".join(failures.values()).split())  # one line
                raise RepositoryError(
                    f"refusing to start (strict): {len(failures)} model(s) failed to load: {why}"
                )
            raise RepositoryError(
                f"refusing to start (strict): no model in {layout.describe()}; {suggest(layout)}"
            )
        for name, why in failures.items():
            logger.warning("model %s: %s", name, why)
        if empty:
            logger.warning("no model in %s; %s", layout.describe(), suggest(layout))
        self._loaded = True
        self._report()

    def mark_serving(self) -> None:
        """The lifespan is up (gRPC bound when asked for): report once loads finish too."""
        self._serving = True
        self._report()

    def _report(self) -> None:
        if self.on_loaded is None or not (self._loaded and self._serving):
            return
        on_loaded, self.on_loaded = self.on_loaded, None  # once
        try:
            on_loaded(Startup(self.repository.layout, self.repository.rows(), self.grpc_port))
        except Exception:  # a broken report must not stop the server
            logger.exception("on_loaded failed")

    # -- health and metadata ------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        from shipyard import __version__

        self.authorize(request)
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
        self.authorize(request)
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
        self.authorize(request)
        name = request.path_params["model"]
        try:
            self.repository.get(name, request.path_params.get("version"))
        except ModelNotReady as error:
            return _json({"error": str(error)}, 400)
        return _json({"name": name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        self.authorize(request)
        served = self.repository.get(
            request.path_params["model"], request.path_params.get("version")
        )
        return _json(served.triton_config())

    async def metrics_text(self, request: Request) -> Response:
        self.authorize(request)
        body, content_type = self.metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    # -- repository extension -----------------------------------------------------------------
    async def _options(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        content_length = length.encode() if length else None
        body, _, _ = await self.http.receive((request.receive, content_length, None, None, None))
        if not body.strip():
            return {}
        value = parse_json(body)  # BadRequest for anything malformed, deep nesting included
        if not isinstance(value, dict):
            raise BadRequest("the request body must be a JSON object")
        return value

    async def index(self, request: Request) -> Response:
        self.authorize(request, admin=True)
        options = await self._options(request)
        entries = await self.repository.index(bool(options.get("ready")))
        return _json(entries)

    async def load(self, request: Request) -> Response:
        self.authorize(request, admin=True)
        name = check_name(request.path_params["model"])
        parameters = (await self._options(request)).get("parameters") or {}
        if parameters.get("config") or any(str(k).startswith("file:") for k in parameters):
            raise BadRequest("loading with an override config or files is not supported")
        versions = await self.change("load", name)
        return _json({"name": name, "versions": [str(v) for v in versions]})

    async def unload(self, request: Request) -> Response:
        self.authorize(request, admin=True)
        name = check_name(request.path_params["model"])
        await self._options(request)
        await self.change("unload", name)
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
    repository: str | Path | Layout,
    *,
    auth_token: str | None = None,
    admin_token: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    watch_seconds: float | None = None,
    grpc_port: int | None = None,
    grpc_host: str = "127.0.0.1",
    strict: bool = False,
    on_loaded: Callable[[Startup], None] | None = None,
    tls: Tls | None = None,
    body_timeout: float = BODY_TIMEOUT,
    link: WorkerLink | None = None,
    verify_key: str | Path | None = None,
) -> V2App:
    """The V2 server (an ASGI app) over ``repository``: a model repository folder, one model
    folder or one package folder (:mod:`shipyard.serve.layout`; a model or package folder is
    served alone), or its :class:`Layout`. Raises RepositoryError when it is not a folder,
    saying what to pass.

    ``auth_token``: bearer token for inference, metadata and /metrics (health stays open for
    probes). ``admin_token``: bearer token for the repository endpoints (default:
    ``auth_token``). ``max_body_bytes``: larger bodies get 413. ``watch_seconds``: poll the
    folder this often and (re)load models whose versions changed. Models load in the
    background at startup (unless ``strict``); ``/v2/health/ready`` answers 200 once they
    have.
    ``grpc_port``: also serve the protocol over gRPC on ``grpc_host:grpc_port`` (0: a free
    port, then read ``app.server.grpc_port``), in the same event loop, with the same models,
    batchers, tokens and metrics (see :mod:`shipyard.serve.grpc.server`); None: HTTP only.
    ``strict``: startup waits for the loads and fails with RepositoryError (one line) when a
    model failed to load or there is none; without it, models load in the background and
    failures show in the index. ``on_loaded``: called once with a :class:`Startup` when the
    startup loads have finished (the CLI prints its table). ``body_timeout``: seconds a
    request body may take to arrive (408 past it). ``tls``: gRPC over TLS with these
    files (HTTPS is the ASGI server's part: ``run_server`` passes the same files to uvicorn).
    ``verify_key``: a public key (PEM) every version's ``model.sig`` must verify with before it
    loads (:mod:`shipyard.signing`); failures show in the index and the log, the config
    endpoint names the signer (``parameters.signed_by``). SigningError: an unusable key.
    """
    if tls is not None:
        tls.check()
    verifier = None
    if verify_key is not None:
        from shipyard.signing import PackageVerifier

        verifier = PackageVerifier(verify_key)
    repo = Repository(repository, ServeMetrics(), verifier)  # a Layout, or a folder
    dispatcher = Dispatcher(repo, auth_token, admin_token)
    server = _Server(dispatcher, max_body_bytes, strict, on_loaded, body_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        grpc = watcher = follower = None
        loading = server.start_loading()  # run_server with strict has loaded already
        try:
            if strict or link is not None:  # no port opens before every model serves (a
                await loading  # worker's socket queues its connections: they wait, not 404)
            if grpc_port is not None:
                from shipyard.serve.grpc.server import start_grpc_server

                grpc = await start_grpc_server(
                    server, grpc_host, grpc_port, tls, reuse_port=link is not None
                )
                server.grpc_port = grpc.port
            if watch_seconds:
                watcher = asyncio.create_task(_watch(server.repository, watch_seconds))
            if link is not None:  # apply the other workers' loads and unloads
                server.link = link
                follower = asyncio.create_task(link.follow(server.apply))
            server.mark_serving()
            yield
        finally:
            # uvicorn has finished the in-flight HTTP requests by now; drain the batchers.
            server.draining = True
            if grpc is not None:  # in-flight calls finish (within a grace period) first
                await grpc.stop()
            for task in (watcher, follower, server.loading):
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
    return V2App(routed, Inference(dispatcher, server.http), server)


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


__all__ = ["MAX_BODY_BYTES", "Startup", "V2App", "create_app"]
