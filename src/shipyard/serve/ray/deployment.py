"""The Ray Serve side of the Ray engine: one deployment per model, and the front.

Each model is an application of its own, routed by Ray's ingress on the prefix
``/v2/models/<model>``. Its replicas run the single-process server's ASGI app
(:func:`shipyard.serve.create_app`) over that model's folder: the same dispatch, endpoints,
binary extension, errors, batcher and metrics, and one Runtime session per instance, opened
once per replica. Mounting the app (``serve.ingress``) rather than writing a handler keeps one
request path for both engines. The app is built in the replica (``__serve_build_asgi_app__``),
which loads the model before Ray sends it traffic; a replica whose model has no version that
loads fails to start, with the reason, and Ray reports the deployment as failed. Ray runs the
app's lifespan, so a stopping replica drains its batchers as the single-process server does.

The front (route ``/``) answers what is not one model's: ``/v2``, health, the repository
index, ``/metrics`` of every replica, and unknown models. It asks the model deployments
through Ray handles; it never touches a request for a served model.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.serve import create_app
from shipyard.serve.app import EXTENSIONS, V2App, error_response
from shipyard.serve.dispatch import Dispatcher
from shipyard.serve.errors import BadRequest, ModelNotFound, ModelNotReady, RepositoryError
from shipyard.serve.infer import Receive, Scope, Send
from shipyard.serve.layout import Layout, find_layout, served_as
from shipyard.serve.ray.exposition import merge
from shipyard.serve.ray.settings import FRONT
from shipyard.serve.repository import Repository, check_name

QUIET = {"enable_access_log": False, "log_level": "WARNING"}  # logging costs more than digits
ASK_TIMEOUT_S = 10.0  # the front's questions to model replicas (health, index, metrics)


class FullPath:
    """Ray hands an application the route prefix as ``root_path``; the V2 app routes on the
    whole path (``/v2/models/{m}/...``), so it gets an empty ``root_path``."""

    def __init__(self, app: V2App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["root_path"] = ""
        await self.app(scope, receive, send)


def served(folder: str, name: str | None = None) -> Layout:
    """The layout a replica serves: ``folder`` (a model or package folder, or a repository
    for the front), under ``name`` when given (``--model-name``)."""
    layout = find_layout(folder)
    return served_as(layout, name) if name else layout


def _with_tokens(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options``, the tokens taken from the environment where not given: on Kubernetes
    they come from a Secret, never from the Serve config (which any cluster user reads)."""
    merged = dict(options)
    merged.setdefault("auth_token", os.environ.get("SHIPYARD_SERVE_TOKEN") or None)
    merged.setdefault("admin_token", os.environ.get("SHIPYARD_SERVE_ADMIN_TOKEN") or None)
    return merged


@serve.ingress()
class ModelReplica:
    """One replica of one model: the V2 app over ``folder`` (that model's folder, or one
    package folder), served as ``name`` when given.

    ``options``: ``create_app`` keyword arguments (tokens, body limits, ``watch_seconds``).
    """

    def __init__(self, folder: str, name: str | None, options: Mapping[str, Any]) -> None:
        self.layout, self.options = served(folder, name), _with_tokens(options)
        self.v2: V2App | None = None  # `app` is Ray's

    async def __serve_build_asgi_app__(self) -> FullPath:
        app = create_app(self.layout, **self.options)
        await app.server.start_loading()  # the lifespan finds it done: loaded before traffic
        repository = app.server.repository
        if not repository.ready():
            why = "; ".join(f"version {r.version}: {r.reason}" for r in repository.rows())
            await repository.close()
            raise RepositoryError(
                f"model '{self.layout.model}' has no version that loads "
                f"({' '.join((why or 'no version folder').split())})"
            )
        self.v2 = app
        return FullPath(app)

    def _server(self) -> Any:
        assert self.v2 is not None, "the replica has not built its app"
        return self.v2.server

    async def readiness(self) -> str | None:
        """Why this replica is not ready (None when it is)."""
        reason: str | None = self._server().not_ready_reason()
        return reason

    async def index(self, ready_only: bool) -> list[dict[str, Any]]:
        """This replica's repository index (every replica loads the same folder)."""
        entries: list[dict[str, Any]] = await self._server().repository.index(ready_only)
        return entries

    async def metrics(self) -> tuple[str, bytes]:
        """(this replica's id, its Prometheus text)."""
        body, _ = self._server().metrics.render()
        return serve.get_replica_context().replica_id.unique_id, body


def _json(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Response(body, status, media_type="application/json")


@serve.ingress()
class Front:
    """Route ``/``: the server-wide endpoints over the model deployments ``models``."""

    def __init__(self, folder: str, models: list[str], options: Mapping[str, Any]) -> None:
        self.models = sorted(models)
        tokens = _with_tokens(options)
        # Tokens are checked exactly as the single-process server checks them.
        repository = Repository(served(folder, options.get("name")))
        self.dispatcher = Dispatcher(repository, tokens["auth_token"], tokens["admin_token"])
        self.handles: dict[str, DeploymentHandle] = {}

    def _handle(self, model: str) -> DeploymentHandle:
        if model not in self.handles:
            self.handles[model] = serve.get_deployment_handle(model, app_name=model)
        return self.handles[model]

    async def _ask(self, model: str, method: str, *args: Any) -> Any:
        response = getattr(self._handle(model), method).remote(*args)
        return await asyncio.wait_for(response, ASK_TIMEOUT_S)

    def _authorize(self, request: Request, admin: bool = False) -> None:
        self.dispatcher.authorize(request.headers.get("authorization"), admin)

    async def metadata(self, request: Request) -> Response:
        from shipyard import __version__

        self._authorize(request)
        return _json({"name": "shipyard", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        answers = await asyncio.gather(
            *(self._ask(model, "readiness") for model in self.models), return_exceptions=True
        )
        for model, answer in zip(self.models, answers, strict=True):
            if isinstance(answer, BaseException):
                return _json({"error": f"model '{model}' does not answer: {answer}"}, 400)
            if answer is not None:
                return _json({"error": f"model '{model}': {answer}"}, 400)
        return _json({"ready": True})

    async def metrics(self, request: Request) -> Response:
        self._authorize(request)
        parts: list[tuple[str, bytes]] = []
        for model in self.models:
            broadcast = self._handle(model).broadcast("metrics")
            answers = await asyncio.wait_for(
                broadcast.results_async(return_exceptions=True), ASK_TIMEOUT_S
            )
            parts += [a for a in answers if not isinstance(a, BaseException)]
        return Response(merge(parts), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def index(self, request: Request) -> Response:
        self._authorize(request, admin=True)
        body = await request.body()
        options = json.loads(body) if body.strip() else {}
        if not isinstance(options, dict):
            raise BadRequest("the request body must be a JSON object")
        answers = await asyncio.gather(
            *(self._ask(model, "index", bool(options.get("ready"))) for model in self.models)
        )
        return _json([entry for entries in answers for entry in entries])

    async def load(self, request: Request) -> Response:
        self._authorize(request, admin=True)
        name = check_name(request.path_params["model"])
        if name not in self.models:
            raise ModelNotFound(f"unknown model '{name}'")
        raise BadRequest(
            "the Ray engine serves what the model folders hold, in every replica: add or "
            "remove version folders and start it with --watch SECONDS, or redeploy; "
            "load/unload would change one replica only"
        )

    async def model(self, request: Request) -> Response:
        name = check_name(request.path_params["model"])
        if name in self.models:  # Ray's routes were not updated yet
            raise ModelNotReady(f"model '{name}' is starting; retry")
        raise ModelNotFound(f"unknown model '{name}'")

    def __serve_build_asgi_app__(self) -> Starlette:
        def guarded(handler: Any) -> Any:
            async def run(request: Request) -> Response:
                try:
                    response: Response = await handler(request)
                    return response
                except Exception as error:
                    return error_response(error)

            return run

        routes = [
            Route("/v2", guarded(self.metadata)),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", guarded(self.ready)),
            Route("/metrics", guarded(self.metrics)),
            Route("/v2/repository/index", guarded(self.index), methods=["POST"]),
            Route("/v2/repository/models/{model}/load", guarded(self.load), methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", guarded(self.load), methods=["POST"]),
        ]
        # The single-process server's model routes: only models that are not served get here.
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route(prefix, guarded(self.model)),
                Route(f"{prefix}/ready", guarded(self.model)),
                Route(f"{prefix}/config", guarded(self.model)),
                Route(f"{prefix}/infer", guarded(self.model), methods=["POST"]),
            ]

        async def not_found(request: Request, error: Exception) -> Response:
            assert isinstance(error, HTTPException)
            message = f"{error.detail}: {request.method} {request.url.path}"
            return _json({"error": message}, error.status_code)

        return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


def model_app(args: dict[str, Any]) -> Application:
    """Ray Serve application builder (``import_path: shipyard.serve.ray.deployment:model_app``)
    for one model: ``args`` = ``{"folder": ..., "name": served name or absent, "options":
    create_app keyword arguments, "deployment": Ray deployment options}``. The deployment is
    named after the model; a Serve config's ``deployments:`` entry overrides its options."""
    layout = served(args["folder"], args.get("name"))
    assert layout.model is not None, "a model app serves one model or package folder"
    options = {"logging_config": QUIET, **args.get("deployment", {})}
    deployment = serve.deployment(name=layout.model, **options)(ModelReplica)
    return deployment.bind(args["folder"], args.get("name"), args.get("options", {}))


def front_app(args: dict[str, Any]) -> Application:
    """Ray Serve application builder for the front (route ``/``): ``args`` = ``{"folder":
    the served folder, "models": [model names], "options": {"name": ...} (tokens from the
    environment unless given)}``."""
    deployment = serve.deployment(
        name="front", num_replicas=1, ray_actor_options={"num_cpus": 0}, logging_config=QUIET
    )(Front)
    return deployment.bind(args["folder"], list(args["models"]), args.get("options", {}))


__all__ = ["FRONT", "QUIET", "Front", "FullPath", "ModelReplica", "front_app", "model_app"]
