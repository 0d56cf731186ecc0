"""The inference endpoint, ``POST /v2/models/{m}[/versions/{v}]/infer``, as plain ASGI.

This is the hot path, so it skips the web framework: measured here on 2 cores with the same
client, an empty handler answered ~10,000 req/s as plain ASGI, ~6,350 on a Starlette route and
~2,700 on a FastAPI route. Per request it parses the headers once and hands the request to
the dispatcher (:mod:`shipyard.serve.dispatch`: auth, lookup, decode, batch, encode, metrics),
which calls back :class:`HttpTransport` for what only HTTP knows: the body (413 on
Content-Length or while streaming) and the JSON/binary codec. Then it sends the reply; no
logging unless something unexpected fails.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import numpy as np

from shipyard.serve.codec import (
    InferRequest,
    decode_image_body,
    decode_request,
    encode_response,
)
from shipyard.serve.dispatch import Dispatcher, Transport, failure
from shipyard.serve.errors import BadRequest, PayloadTooLarge, ServeError, ShuttingDown
from shipyard.signature import Signature

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, Headers, bytes]

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_JSON = b"application/json"


# Seconds a request's whole body may take to arrive after its headers (408 past it).
BODY_TIMEOUT = 30.0


class BodyTimeout(ServeError):
    """The body did not arrive in time (408 Request Timeout)."""

    status = 408


class ClientGone(ServeError):
    """The client disconnected before its request body arrived; nobody reads the answer.

    Counted in the metrics as 499 (nginx's "client closed request"), never sent."""

    status = 499


def reply(value: Any, status: int = 200, headers: Headers | None = None) -> Reply:
    """A JSON reply."""
    body = json.dumps(value, separators=(",", ":")).encode()
    return status, [(b"content-type", _JSON), *(headers or [])], body


def error_reply(error: BaseException) -> Reply:
    """``{"error": message}`` with the status :func:`~shipyard.serve.dispatch.failure` gives
    (500 for our bugs), ``Retry-After`` where it has one and ``WWW-Authenticate`` on 401."""
    answer = failure(error)
    headers = []
    if answer.retry_after:
        headers.append((b"retry-after", str(answer.retry_after).encode()))
    if answer.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if isinstance(error, ShuttingDown):  # the client's next request opens a new connection
        headers.append((b"connection", b"close"))
    return reply({"error": answer.message}, answer.status, headers)


async def send_reply(send: Send, answer: Reply) -> None:
    status, headers, body = answer
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# An inference request as HTTP hands it to dispatch: the ASGI receive callable and the
# Content-Length, Inference-Header-Content-Length, Content-Encoding and Content-Type values.
HttpRequest = tuple[Receive, bytes | None, str | None, bytes | None, bytes | None]
# The complete request: its body, Inference-Header-Content-Length, and whether the body is
# one encoded image (Content-Type image/*) rather than a V2 request.
HttpBody = tuple[bytes, str | None, bool]


class HttpTransport(Transport[HttpRequest, HttpBody, InferRequest, tuple[bytes, int | None]]):
    """V2 over HTTP: the body after the headers, JSON or the binary tensor extension."""

    receives = True

    def __init__(self, max_body_bytes: int, body_timeout: float = BODY_TIMEOUT) -> None:
        self.max_body_bytes, self.body_timeout = max_body_bytes, body_timeout

    async def receive(self, request: HttpRequest) -> HttpBody:
        """The body: PayloadTooLarge when Content-Length or the bytes received so far exceed
        ``max_body_bytes`` (a client may send no Content-Length, or a false one); ClientGone
        when the client disconnects first; BodyTimeout (408) when the whole body has not
        arrived ``body_timeout`` seconds after the headers (a trickling client)."""
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        # One timer per request (~1 us), not a wait_for task per chunk.
        timer = asyncio.get_running_loop().call_later(self.body_timeout, expire)
        try:
            return await self._read(request)
        except asyncio.CancelledError:
            if expired:
                if hasattr(task, "uncancel"):  # 3.11+: this cancellation is handled here
                    task.uncancel()
                raise BodyTimeout(
                    f"the request body did not arrive within {self.body_timeout:g} s"
                ) from None
            raise
        finally:
            timer.cancel()

    async def _read(self, request: HttpRequest) -> HttpBody:
        receive, length, header_length, encoding, content_type = request
        if encoding not in (None, b"identity"):
            raise BadRequest("compressed request bodies (Content-Encoding) are not supported")
        limit = self.max_body_bytes
        if length is not None:
            if not length.isdigit():
                raise BadRequest("Content-Length must be a non-negative integer")
            if int(length) > limit:
                raise PayloadTooLarge(f"the body has {int(length)} bytes; the limit is {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone("the client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        image = content_type is not None and content_type.startswith(b"image/")
        return body, header_length, image

    def decode_cost(self, payload: HttpBody) -> int:
        # Binary tensors are views of the body. A JSON number takes at least ~4 bytes with its
        # separator, so JSON bodies go to a thread from 256 KiB on.
        body, header_length, image = payload
        return 0 if header_length is not None or image else len(body) // 4

    def decode(self, payload: HttpBody, signature: Signature) -> InferRequest:
        body, header_length, image = payload
        if image:
            return decode_image_body(body, signature)
        return decode_request(body, header_length, signature)

    def encode_cost(self, outputs: Mapping[str, np.ndarray], decoded: InferRequest) -> int:
        # Counted in 4-byte values whether JSON or binary: joining binary outputs copies them.
        size = 0
        for array in outputs.values():
            size += array.nbytes
        return size // 4

    def encode(
        self,
        model: str,
        version: int,
        outputs: Mapping[str, np.ndarray],
        decoded: InferRequest,
    ) -> tuple[bytes, int | None]:
        return encode_response(model, version, outputs, decoded)


class Inference:
    """Answers ``POST .../infer`` through ``dispatcher``, reading bodies with ``transport``."""

    def __init__(self, dispatcher: Dispatcher, transport: HttpTransport) -> None:
        self.dispatcher, self.transport = dispatcher, transport

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        """Answer one request (nothing when the client left before its body arrived)."""
        length = header_length = authorization = encoding = content_type = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
            elif key == b"authorization":
                authorization = value
            elif key == b"content-encoding":
                encoding = value
            elif key == b"content-type":
                content_type = value.lower()
        request = (receive, length, header_length, encoding, content_type)
        try:
            content, json_length = await self.dispatcher.infer(
                self.transport, request, model, version, authorization
            )
        except ClientGone:
            return
        except Exception as error:
            await send_reply(send, error_reply(error))
            return
        if json_length is None:
            headers = [(b"content-type", _JSON)]
        else:
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(json_length).encode()),
            ]
        await send_reply(send, (200, headers, content))
