"""Deadlines for slow and idle clients, below the ASGI app (where no request exists yet).

uvicorn keeps a connection that never sends a request, or that trickles its headers, open for
as long as the client likes (measured: still open after 30 and 40 s), so enough such clients
hold every file descriptor the process has. :func:`http_protocol` gives uvicorn a protocol
that closes a connection whose request headers are not complete ``header_timeout`` seconds
after it opened (or after its previous response). The body has its own deadline in
:class:`shipyard.serve.infer.HttpTransport` (408), and ``run_server`` caps the connections
uvicorn serves at once (503 beyond).

The same protocol writes each response's status line and headers together with its body
(:class:`HeldHead`): uvicorn writes them apart, two ``write`` syscalls and two TCP segments
per response (benchmarks/serve/profile_server.py: the writes were ~20 of ~95 µs of CPU per
request).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast


class HeldHead:
    """The transport uvicorn writes a response through: a response head (a status line other
    than 1xx, headers, the blank line) waits for the next write and leaves with it in one
    ``writelines`` (one ``writev``); ``flush`` sends a head still held (a response without
    a body write: HEAD), and ``close`` flushes first. Everything else is the transport's."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.writelines((head, data))
        elif data.startswith(b"HTTP/1.1 ") and data[9:10] != b"1" and data.endswith(b"\r\n\r\n"):
            self.head = data
        else:
            self.transport.write(data)

    def flush(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def http_protocol(header_timeout: float) -> type[Any] | str:
    """uvicorn's httptools protocol with a header deadline; "h11" (no deadline: uvicorn's
    h11 protocol offers no hook for it) when httptools is not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    class HeaderDeadline(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.held = HeldHead(transport)  # flow control keeps the transport itself
            self.transport = cast(asyncio.Transport, self.held)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            self.held.flush()
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers have the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline
