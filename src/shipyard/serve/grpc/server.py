"""The V2 protocol over gRPC (``inference.GRPCInferenceService``) on the HTTP app's state.

:func:`start_grpc_server` runs a ``grpc.aio`` server in the running event loop (uvicorn's) over
the same dispatcher (:mod:`shipyard.serve.dispatch`: repository, batchers, tokens, metrics)
as HTTP; the app's lifespan starts and stops it. This module keeps only gRPC's framing:
messages, call metadata, deadlines and status codes. Errors carry the message HTTP answers
with and the status code that matches their HTTP status:

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

UNAVAILABLE answers carry trailing metadata ``retry-after: 1`` (HTTP's Retry-After).
``ModelStreamInfer`` answers each request on its stream, a failed one with its message in
``error_message`` (:mod:`shipyard.serve.grpc.stream`). Metrics:
inference calls are counted in ``shipyard_requests_total`` like HTTP requests, with the HTTP
status their outcome maps to (oversized messages are refused by gRPC before any handler, so
they are not counted). Tokens travel as call metadata ``authorization: Bearer <token>``
(tritonclient: ``headers={"authorization": "Bearer <token>"}``; metadata keys are lowercase).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np
from grpc import aio

from shipyard.serve.dispatch import Dispatcher, Transport, failure
from shipyard.serve.errors import BadRequest, ModelNotFound, ModelNotReady
from shipyard.serve.grpc import inference_pb2 as pb
from shipyard.serve.grpc import inference_pb2_grpc as pb_grpc
from shipyard.serve.grpc.codec import (
    DecodedInfer,
    decode_request,
    elements,
    encode_response,
    parameter,
)
from shipyard.serve.grpc.stream import stream_infer
from shipyard.serve.repository import check_name
from shipyard.serve.tls import Tls
from shipyard.signature import Signature

logger = logging.getLogger(__name__)

# gRPC answers the V2 extensions it implements (binary tensors and model configuration are HTTP's).
EXTENSIONS = ["classification", "model_repository", "parameters"]
# Seconds in-flight calls get to finish on shutdown before they are cancelled.
GRACE_SECONDS = 30.0
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ServerState(Protocol):
    """What the gRPC service shares with the HTTP app (``shipyard.serve.app._Server``)."""

    dispatcher: Dispatcher
    max_body_bytes: int

    def not_ready_reason(self) -> str | None: ...

    async def change(self, op: str, model: str) -> list[int]: ...


def code_of(status: int) -> grpc.StatusCode:
    """The gRPC status code of an HTTP status (INTERNAL for any other)."""
    return _CODES.get(status, grpc.StatusCode.INTERNAL)


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
        answer = failure(error)
        if answer.bug:
            logger.error("gRPC %s failed", handler.__name__, exc_info=error)
        trailing: tuple[tuple[str, str], ...] = ()
        if answer.retry_after:
            trailing = (("retry-after", str(answer.retry_after)),)
        await context.abort(code_of(answer.status), answer.message, trailing)
        raise AssertionError("unreachable: abort raises")

    return call


def _credentials(context: aio.ServicerContext) -> str | bytes | None:
    """The ``authorization`` call metadata value (keys arrive lowercase)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


Message = pb.ModelInferRequest


class GrpcTransport(Transport[Message, Message, DecodedInfer, pb.ModelInferResponse]):
    """V2 over gRPC: ``ModelInferRequest`` in, ``ModelInferResponse`` out. Raw bytes cost
    nothing to convert; typed contents are converted value by value."""

    def decode_cost(self, request: pb.ModelInferRequest) -> int:
        return 0 if request.raw_input_contents else elements(request)

    def decode(self, request: pb.ModelInferRequest, signature: Signature) -> DecodedInfer:
        return decode_request(request, signature)

    def encode_cost(self, outputs: Mapping[str, np.ndarray], decoded: DecodedInfer) -> int:
        return 0 if decoded.raw else sum(array.size for array in outputs.values())

    def encode(
        self,
        model: str,
        version: int,
        outputs: Mapping[str, np.ndarray],
        decoded: DecodedInfer,
    ) -> pb.ModelInferResponse:
        return encode_response(model, version, outputs, decoded)


class InferenceService:
    """The RPCs of ``inference.GRPCInferenceService`` over ``state`` (every one of them)."""

    def __init__(self, state: ServerState) -> None:
        self.state, self.dispatcher = state, state.dispatcher
        self.repository = state.dispatcher.repository
        self.transport = GrpcTransport()

    def _authorize(self, context: aio.ServicerContext, admin: bool = False) -> None:
        self.dispatcher.authorize(_credentials(context), admin)

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
        self._authorize(context)
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

        self._authorize(context)
        return pb.ServerMetadataResponse(
            name="shipyard", version=__version__, extensions=EXTENSIONS
        )

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        self._authorize(context)
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
        # Metadata is read only when a token is required: most servers run without one.
        credentials = _credentials(context) if self.dispatcher.auth is not None else None
        return await self.dispatcher.infer(
            self.transport,
            request,
            request.model_name,
            request.model_version or None,
            credentials,
            context.time_remaining(),
        )

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        credentials = _credentials(context) if self.dispatcher.auth is not None else None
        answers = stream_infer(self.dispatcher, self.transport, requests, context, credentials)
        async for answer in answers:
            yield answer

    # -- repository extension (admin token) ---------------------------------------------------
    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        self._authorize(context, admin=True)
        entries = await self.repository.index(request.ready)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[index(**entry) for entry in entries])

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._authorize(context, admin=True)
        name = check_name(request.model_name)
        parameters: Mapping[str, pb.ModelRepositoryParameter] = request.parameters
        config = parameter(parameters["config"]) if "config" in parameters else None
        if config or any(key.startswith("file:") for key in parameters):
            raise BadRequest("loading with an override config or files is not supported")
        await self.state.change("load", name)  # here, and in the other workers if any
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._authorize(context, admin=True)
        name = check_name(request.model_name)
        await self.state.change("unload", name)
        return pb.RepositoryModelUnloadResponse()


class GrpcServer:
    """A running ``grpc.aio`` server; ``port`` is the bound port (useful when asked for 0)."""

    def __init__(self, server: aio.Server, port: int) -> None:
        self.server, self.port = server, port

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Refuse new calls, give in-flight ones ``grace`` seconds, then cancel them."""
        await self.server.stop(grace)


async def start_grpc_server(
    state: ServerState,
    host: str,
    port: int,
    tls: Tls | None = None,
    reuse_port: bool = False,
) -> GrpcServer:
    """Serve ``state`` over gRPC on ``host:port`` (0: a free port) in the running loop;
    over TLS (mutual with ``tls.client_ca``) when ``tls`` is given.

    Messages above ``state.max_body_bytes`` are refused with RESOURCE_EXHAUSTED. Raises
    OSError when the address cannot be bound (also when another server holds the port:
    SO_REUSEPORT is off, so two servers never silently share one).
    """
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", state.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, tls.grpc_credentials())
    except RuntimeError as error:
        raise OSError(f"cannot serve gRPC on {address}: {error}") from None
    await server.start()
    logger.info("serving gRPC on %s:%d", host, bound)
    return GrpcServer(server, bound)


__all__ = [
    "GrpcServer",
    "GrpcTransport",
    "InferenceService",
    "ServerState",
    "code_of",
    "start_grpc_server",
]
