"""The V2 protocol over gRPC (``inference.GRPCInferenceService``) on the HTTP app's state.

:func:`start_grpc_server` runs a ``grpc.aio`` server in the running event loop (uvicorn's) over
the same repository, batchers, tokens and metrics as HTTP; the app's lifespan starts and stops
it. Errors carry a readable message and the status code that matches their HTTP status:

=============================  ======  ===============================================
gRPC status                    HTTP    when
=============================  ======  ===============================================
INVALID_ARGUMENT               400     bad input, failed load
UNAUTHENTICATED                401     token configured, ``authorization`` missing/wrong
NOT_FOUND                      404     unknown model or version
RESOURCE_EXHAUSTED             413     message above ``max_body_bytes`` (gRPC refuses it)
UNAVAILABLE                    503     queue full, model not ready, unloading
DEADLINE_EXCEEDED              504     the request's timeout (or the call's deadline)
INTERNAL                       500     a bug
=============================  ======  ===============================================

UNAVAILABLE answers carry trailing metadata ``retry-after: 1`` (HTTP's Retry-After). Metrics:
inference calls are counted in ``shipyard_requests_total`` like HTTP requests, with the HTTP
status their outcome maps to (oversized messages are refused by gRPC before any handler, so
they are not counted). Tokens travel as call metadata ``authorization: Bearer <token>``
(tritonclient: ``headers={"authorization": "Bearer <token>"}``; metadata keys are lowercase).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import grpc
from grpc import aio

from shipyard.errors import InputError
from shipyard.serve.errors import (
    BadRequest,
    ModelNotFound,
    ModelNotReady,
    ServeError,
    Unauthorized,
    VersionRetired,
)
from shipyard.serve.grpc import inference_pb2 as pb
from shipyard.serve.grpc import inference_pb2_grpc as pb_grpc
from shipyard.serve.grpc.codec import (
    DecodedInfer,
    decode_request,
    elements,
    encode_response,
    parameter,
)
from shipyard.serve.metrics import ServeMetrics
from shipyard.serve.repository import Repository, check_name

logger = logging.getLogger(__name__)

# gRPC answers the V2 extensions it implements (binary tensors and model configuration are HTTP's).
EXTENSIONS = ["model_repository", "parameters"]
# Seconds in-flight calls get to finish on shutdown before they are cancelled.
GRACE_SECONDS = 30.0
# Typed (non-raw) requests and responses with more values than this are converted in a worker
# thread: building Python lists of millions of numbers would stall every other request.
_INLINE_VALUES = 65_536
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_UNAUTHORIZED = "missing or wrong bearer token (call metadata 'authorization: Bearer <token>')"


class ServerState(Protocol):
    """What the gRPC service shares with the HTTP app (``shipyard.serve.app._Server``)."""

    repository: Repository
    metrics: ServeMetrics
    auth: bytes | None  # the exact `authorization` value required, b"Bearer <token>"
    admin: bytes | None
    max_body_bytes: int

    def not_ready_reason(self) -> str | None: ...


def status_of(error: BaseException) -> tuple[grpc.StatusCode, int]:
    """(gRPC status code, HTTP status) of an error a call ended in."""
    if isinstance(error, ServeError):
        status = error.status
    elif isinstance(error, InputError):
        status = 400
    else:
        status = 500
    return _CODES.get(status, grpc.StatusCode.INTERNAL), status


Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, aio.ServicerContext], Awaitable[Response]]


def _rpc(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """End the call with the status and message its error maps to."""

    @functools.wraps(handler)
    async def call(self: Any, request: Request, context: aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except Exception as caught:  # CancelledError (client gone, deadline) passes
            error = caught
        code, _ = status_of(error)
        if code is grpc.StatusCode.INTERNAL:
            logger.error("gRPC %s failed", handler.__name__, exc_info=error)
            message = f"internal error: {type(error).__name__}: {error}"
        else:
            message = str(error)
        trailing: tuple[tuple[str, str], ...] = ()
        if isinstance(error, ServeError) and error.retry_after:
            trailing = (("retry-after", str(error.retry_after)),)
        await context.abort(code, message, trailing)
        raise AssertionError("unreachable: abort raises")

    return call


def _authorize(context: aio.ServicerContext, expected: bytes | None) -> None:
    if expected is None:
        return
    given: str | bytes = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            given = value
    if not hmac.compare_digest(given.encode() if isinstance(given, str) else given, expected):
        raise Unauthorized(_UNAUTHORIZED)


class InferenceService:
    """The RPCs of ``inference.GRPCInferenceService`` over ``state`` (every one of them)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.repository, self.metrics = state.repository, state.metrics

    # -- health and metadata (health stays open, as over HTTP) --------------------------------
    @_rpc
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.not_ready_reason() is None)

    @_rpc
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        _authorize(context, self.state.auth)
        try:
            self.repository.get(request.name, request.version or None)
        except (ModelNotFound, ModelNotReady):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        from shipyard import __version__

        _authorize(context, self.state.auth)
        return pb.ServerMetadataResponse(
            name="shipyard", version=__version__, extensions=EXTENSIONS
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        _authorize(context, self.state.auth)
        served = self.repository.get(request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(v) for v in self.repository.versions(served.name)],
            platform=served.platform,
            inputs=[tensor(**spec) for spec in served.inputs],
            outputs=[tensor(**spec) for spec in served.outputs],
        )

    # -- inference ----------------------------------------------------------------------------
    @_rpc
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = time.perf_counter()
        served = None
        self.metrics.inflight.inc()
        try:
            _authorize(context, self.state.auth)
            name, version = request.model_name, request.model_version or None
            served = self.repository.get(name, version)
            if not request.raw_input_contents and elements(request) > _INLINE_VALUES:
                decoded = await asyncio.to_thread(decode_request, request, served.signature)
            else:
                decoded = decode_request(request, served.signature)
            timeout = _earliest(decoded.timeout, context.time_remaining())
            try:
                outputs = await served.batcher.infer(decoded.inputs, timeout)
            except VersionRetired:
                if version is not None:
                    raise
                # Unloaded or replaced after the lookup: the newest version answers.
                served = self.repository.get(name, None)
                outputs = await served.batcher.infer(decoded.inputs, timeout)
            response = await _encode(served.name, served.version, outputs, decoded)
        except Exception as error:
            labels = (served.name, str(served.version)) if served else ("", "")
            self.metrics.count(*labels, status_of(error)[1])
            raise
        finally:
            self.metrics.inflight.dec()
        served.metrics.succeeded.inc()
        served.metrics.latency.observe(time.perf_counter() - started)
        return response

    # -- repository extension (admin token) ---------------------------------------------------
    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        _authorize(context, self.state.admin)
        entries = await self.repository.index(request.ready)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[index(**entry) for entry in entries])

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        _authorize(context, self.state.admin)
        name = check_name(request.model_name)
        parameters: Mapping[str, pb.ModelRepositoryParameter] = request.parameters
        config = parameter(parameters["config"]) if "config" in parameters else None
        if config or any(key.startswith("file:") for key in parameters):
            raise BadRequest("loading with an override config or files is not supported")
        await self.repository.load(name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        _authorize(context, self.state.admin)
        await self.repository.unload(check_name(request.model_name))
        return pb.RepositoryModelUnloadResponse()


def _earliest(*seconds: float | None) -> float | None:
    given = [s for s in seconds if s is not None]
    return max(min(given), 1e-6) if given else None


async def _encode(
    model: str, version: int, outputs: Mapping[str, Any], decoded: DecodedInfer
) -> pb.ModelInferResponse:
    values = sum(array.size for array in outputs.values())
    if not decoded.raw and values > _INLINE_VALUES:
        return await asyncio.to_thread(encode_response, model, version, outputs, decoded)
    return encode_response(model, version, outputs, decoded)


class GrpcServer:
    """A running ``grpc.aio`` server; ``port`` is the bound port (useful when asked for 0)."""

    def __init__(self, server: aio.Server, port: int) -> None:
        self.server, self.port = server, port

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Refuse new calls, give in-flight ones ``grace`` seconds, then cancel them."""
        await self.server.stop(grace)


async def start_grpc_server(state: ServerState, host: str, port: int) -> GrpcServer:
    """Serve ``state`` over gRPC on ``host:port`` (0: a free port) in the running loop.

    Messages above ``state.max_body_bytes`` are refused with RESOURCE_EXHAUSTED. Raises
    OSError when the address cannot be bound (also when another server holds the port:
    SO_REUSEPORT is off, so two servers never silently share one).
    """
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", state.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as error:
        raise OSError(f"cannot serve gRPC on {address}: {error}") from None
    await server.start()
    logger.info("serving gRPC on %s:%d", host, bound)
    return GrpcServer(server, bound)


__all__ = ["GrpcServer", "InferenceService", "ServerState", "start_grpc_server", "status_of"]
