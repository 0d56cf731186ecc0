"""The one request path both transports call: auth, lookup, decode, batch, encode, metrics.

A transport (HTTP in :mod:`shipyard.serve.infer`, gRPC in :mod:`shipyard.serve.grpc.server`)
keeps only its framing. It reads the model name and the credentials off the wire, hands its
request and its :class:`Transport` (its codec hooks) to :meth:`Dispatcher.infer`, and turns
what comes back, or the error raised, into its own reply with :func:`failure`. Everything in
between happens here, once, in this order:

1. the bearer check (:meth:`Dispatcher.authorize`; every other guarded endpoint uses it too),
2. the lookup of the version that serves the request,
3. the rest of the request where the transport has one (HTTP's body comes after its headers,
   so a refused or misaddressed request is answered before its body is read),
4. decoding, in a worker thread when it converts more than ``INLINE_VALUES`` values one by
   one: parsing megabytes of JSON numbers takes milliseconds that would stall every other
   request on the event loop; raw bytes are never counted (``np.frombuffer`` is free); then
   BYTES inputs through the package's processing, off the loop: texts tokenized
   (:mod:`shipyard.serve.text`), encoded images decoded (:mod:`shipyard.serve.images`); a
   stateful version takes whole clips in its sequence batcher,
5. batching (a stateful version's sequence batcher with the request's sequence parameters:
   :mod:`shipyard.serve.sequences`); when the version was unloaded or replaced after the lookup
   and the request named no version, once more on the newest one,
6. Triton's classification extension on the outputs that ask for it (the package's labels),
   then encoding, under the same rule as decoding,
7. metrics: the in-flight gauge, latency, and requests by model, version and status.

Per request this adds no thread hop and allocates nothing beyond what the steps themselves
need; the transport objects and this dispatcher live as long as the server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar, cast

import numpy as np

from shipyard.errors import InputError
from shipyard.serve.errors import (
    BadRequest,
    InternalError,
    ServeError,
    ShuttingDown,
    Unauthorized,
    VersionRetired,
)
from shipyard.serve.images import EncodedImages, encoded_inputs
from shipyard.serve.protocol import apply_classification
from shipyard.serve.repository import Repository
from shipyard.serve.sequence_control import SequenceControl
from shipyard.serve.text import ServedText
from shipyard.signature import Signature

logger = logging.getLogger(__name__)

# Decode or encode on the event loop up to this many values converted one by one; above it,
# in a worker thread. Measured on the 2-core dev machine: a hop to a worker thread
# ~75 us; 65,536 FP32 values took 1.2 ms to decode from JSON (simdjson) and 53 ms to encode
# as JSON, time in which the loop would answer no other request.
INLINE_VALUES = 65_536
UNAUTHORIZED = (
    "missing or wrong bearer token: send 'authorization: Bearer <token>' "
    "(an HTTP header, or gRPC call metadata)"
)

Outputs = dict[str, np.ndarray]


class DecodedRequest(Protocol):
    """What dispatch reads from a decoded request, whichever codec decoded it."""

    @property
    def inputs(self) -> dict[str, np.ndarray]: ...

    @property
    def timeout(self) -> float | None:
        """Seconds the request may wait for its result (None: the version's timeout_ms)."""
        ...

    @property
    def classification(self) -> Mapping[str, int]:
        """Outputs to return as their top classes (Triton's classification extension)."""
        ...

    @property
    def sequence(self) -> SequenceControl | None:
        """``sequence_id``/``sequence_start``/``sequence_end`` (None: no sequence named)."""
        ...

    @property
    def response_parameters(self) -> dict[str, Any]:
        """What the server says about the request in its response (texts truncated)."""
        ...


Request = TypeVar("Request")
Payload = TypeVar("Payload")
Decoded = TypeVar("Decoded", bound=DecodedRequest)
Encoded = TypeVar("Encoded")


class Transport(ABC, Generic[Request, Payload, Decoded, Encoded]):
    """A transport's codec hooks: what dispatch cannot know about the wire format.

    ``Request`` is what the transport hands to :meth:`Dispatcher.infer`, ``Payload`` the
    complete request its codec decodes (the same object unless ``receives``), ``Decoded``
    what the codec makes of it and ``Encoded`` its response. One instance serves every
    request; requests travel as plain values (tuples, messages), never as objects made per
    request for dispatch's sake.
    """

    # True when the request is not complete when dispatch starts (HTTP's body follows its
    # headers): then `receive` runs after the bearer check and the lookup.
    receives: ClassVar[bool] = False

    async def receive(self, request: Request) -> Payload:
        """The complete request (HTTP: its body); by default the request itself, for a
        transport whose requests arrive whole. Raise a ServeError to refuse it."""
        return cast(Payload, request)

    @abstractmethod
    def decode_cost(self, payload: Payload) -> int:
        """How many values decoding ``payload`` converts one by one (0 for raw bytes)."""

    @abstractmethod
    def decode(self, payload: Payload, signature: Signature) -> Decoded:
        """The request's inputs as arrays, checked against ``signature``; BadRequest if not."""

    @abstractmethod
    def encode_cost(self, outputs: Mapping[str, np.ndarray], decoded: Decoded) -> int:
        """How many values encoding ``outputs`` converts one by one."""

    @abstractmethod
    def encode(
        self, model: str, version: int, outputs: Mapping[str, np.ndarray], decoded: Decoded
    ) -> Encoded:
        """The response to ``decoded`` carrying ``outputs`` of ``model`` ``version``."""


class Failure(NamedTuple):
    """How a request that raised ``error`` is answered, on any transport."""

    status: int  # the HTTP status; gRPC maps it to its own code
    message: str  # the whole answer a client gets: {"error": message} / the status details
    retry_after: int | None  # seconds (HTTP Retry-After, gRPC trailing metadata)
    bug: bool  # not one of our errors: the transport logs it with its traceback


async def _processed(served: Any, inputs: dict[str, np.ndarray]) -> tuple[Outputs, dict[str, Any]]:
    """BYTES inputs as the model's tensors: texts tokenized by the package's tokenizer, or
    encoded images decoded and pre-processed; with what the response should say about them.
    BadRequest when the package pre-processes neither."""
    text: ServedText | None = served.text
    if text is not None:
        return await text.convert_async(inputs)
    images: EncodedImages | None = served.images
    if images is None:
        takes = served.signature.describe_inputs()
        raise BadRequest(
            f"BYTES inputs (texts or encoded images) are taken only by a model whose package "
            f"pre-processes them (preprocess: text or image in its recipe); this one takes "
            f"{takes}"
        )
    return await images.convert_async(inputs), {}


async def _batch(
    served: Any, inputs: dict[str, np.ndarray], decoded: Any, timeout: float | None
) -> Outputs:
    """The outputs of ``served``'s batcher: the sequence batcher with the request's sequence
    parameters for a stateful version, else the dynamic batcher."""
    if served.sequences is not None:
        outputs: Outputs = await served.sequences.infer(inputs, decoded.sequence, timeout)
        return outputs
    outputs = await served.batcher.infer(inputs, timeout)
    return outputs


def failure(error: BaseException) -> Failure:
    """The answer to ``error``: its status, message and Retry-After (500 for our bugs)."""
    if isinstance(error, ServeError):
        return Failure(error.status, str(error), error.retry_after, False)
    if isinstance(error, InputError):  # a Session's signature check
        return Failure(400, str(error), None, False)
    return Failure(500, f"internal error: {type(error).__name__}: {error}", None, True)


def bearer(token: str | None) -> bytes | None:
    """The exact ``authorization`` value a token requires (None: no token, open)."""
    return f"Bearer {token}".encode() if token else None


class Dispatcher:
    """The request path over ``repository``, shared by every transport of one server.

    ``auth_token``: bearer token for inference, metadata and /metrics (None: open).
    ``admin_token``: bearer token for the repository endpoints (default: ``auth_token``).
    """

    def __init__(
        self,
        repository: Repository,
        auth_token: str | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = repository.metrics
        self.auth = bearer(auth_token)
        self.admin = bearer(admin_token or auth_token)
        # Draining (before exit): new requests get ShuttingDown; `active` counts the requests
        # in progress on either transport, `last_refused` when one was last turned away.
        self.draining = False
        self.active = 0
        self.last_refused = 0.0

    def authorize(self, given: bytes | str | None, admin: bool = False) -> None:
        """Raise Unauthorized unless ``given`` (the ``authorization`` header or call
        metadata value) carries the inference token, or with ``admin`` the admin token."""
        expected = self.admin if admin else self.auth
        if expected is None:
            return
        if isinstance(given, str):
            given = given.encode("utf-8", "replace")
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not hmac.compare_digest(given or b"", expected):
            raise Unauthorized(UNAUTHORIZED)

    async def infer(
        self,
        transport: Transport[Request, Payload, Decoded, Encoded],
        request: Request,
        model: str,
        version: str | None,
        credentials: bytes | str | None,
        deadline: float | None = None,
    ) -> Encoded:
        """Answer one inference request; return the transport's encoded response.

        ``version`` as in the URL or message (None: the newest ready); ``credentials``: the
        ``authorization`` value the client sent; ``deadline``: seconds the caller still waits
        (gRPC's deadline), which caps the request's own timeout. Raises what the request ended
        in (our bugs as InternalError, logged here), after counting it; answer it with
        :func:`failure`.
        """
        started = time.perf_counter()
        served = None
        if self.draining:
            self.last_refused = time.monotonic()
            self.metrics.count("", "", 503)
            raise ShuttingDown("the server is shutting down; retry (another replica)")
        self.active += 1
        self.metrics.inflight.inc()
        try:
            if self.auth is not None:
                self.authorize(credentials)
            served = self.repository.get(model, version)
            if transport.receives:
                payload = await transport.receive(request)
            else:  # the request is complete as it arrived
                payload = cast(Payload, request)
            if transport.decode_cost(payload) > INLINE_VALUES:
                decoded = await asyncio.to_thread(transport.decode, payload, served.signature)
            else:
                decoded = transport.decode(payload, served.signature)
            inputs = decoded.inputs
            if encoded_inputs(inputs):  # BYTES: texts or images the package processes, or a 400
                if served.sequences is None:  # a stateful version takes whole clips
                    inputs, said = await _processed(served, inputs)
                    decoded.response_parameters.update(said)
            elif served.text is not None:  # token ids sent raw
                served.text.check_tokens(inputs)
            timeout = decoded.timeout
            if deadline is not None:
                left = max(deadline - (time.perf_counter() - started), 1e-6)
                timeout = left if timeout is None else min(timeout, left)
            try:
                outputs = await _batch(served, inputs, decoded, timeout)
            except VersionRetired:
                if version is not None:
                    raise
                # Unloaded or replaced since the lookup: the newest version answers.
                served = self.repository.get(model, None)
                outputs = await _batch(served, inputs, decoded, timeout)
            wanted = decoded.classification
            top_k = getattr(decoded, "default_top_k", None)
            if top_k and served.labels and not wanted:  # a raw image body: its top classes
                wanted = {next(iter(outputs)): top_k}
            if wanted:
                outputs = apply_classification(outputs, wanted, served.labels)
            encode = (served.name, served.version, outputs, decoded)
            if transport.encode_cost(outputs, decoded) > INLINE_VALUES:
                encoded = await asyncio.to_thread(transport.encode, *encode)
            else:
                encoded = transport.encode(*encode)
        except Exception as error:
            answer = failure(error)
            labels = (served.name, str(served.version)) if served is not None else ("", "")
            self.metrics.count(*labels, answer.status)
            if answer.bug:
                logger.exception("inference on model %r failed", model)
                raise InternalError(answer.message) from error
            raise
        finally:
            self.active -= 1
            self.metrics.inflight.dec()
        served.metrics.succeeded.inc()
        served.metrics.latency.observe(time.perf_counter() - started)
        return encoded


__all__ = [
    "INLINE_VALUES",
    "DecodedRequest",
    "Dispatcher",
    "Failure",
    "Transport",
    "bearer",
    "failure",
]
