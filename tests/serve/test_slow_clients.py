"""Slow and idle clients cannot stop others from being served: idle connections and
trickled headers are closed at the header deadline, a trickled body gets 408, and beyond the
connection cap new requests get 503 — all while a well-behaved client is answered."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import wait_for
from tests.serve.test_command import BODY, _free_port, _serve, _stop, _wait_ready

HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def url(packages: Path) -> Iterator[str]:
    port = _free_port()
    process = _serve(
        str(packages / "tiny" / "1"), "--port", str(port),
        "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", "1", "--max-connections", "1500",
    )  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, address)
        yield address
    finally:
        _stop(process)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (recv returns b"")."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _good(url: str) -> float:
    started = time.monotonic()
    response = httpx.post(f"{url}/v2/models/tiny/infer", json=BODY, timeout=10)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def test_a_thousand_idle_connections_do_not_stop_a_good_client(url: str) -> None:
    idle = [_connect(url) for _ in range(1000)]
    try:
        assert _good(url) < 2.0  # served at once, while 1,000 connections sit idle
        # The header deadline closes them all; none waits for the client to give up.
        deadline = HEADER_TIMEOUT + 10
        assert all(_closed_by_server(sock, deadline) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    assert _good(url) < 2.0


def test_trickled_headers_are_cut_off(url: str) -> None:
    sock = _connect(url)
    try:
        sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert _good(url) < 2.0
        assert _closed_by_server(sock, HEADER_TIMEOUT + 10)
    finally:
        sock.close()


def test_a_trickled_body_gets_408(url: str) -> None:
    sock = _connect(url)
    try:
        head = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head + b'{"inputs": ')  # the rest never comes
        assert _good(url) < 2.0
        sock.settimeout(15)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"error":"the request body did not arrive within 1 s"' in answer
    finally:
        sock.close()


def test_beyond_the_connection_cap_new_requests_get_503(packages: Path) -> None:
    port = _free_port()
    # The cap is each worker process's: one process here, so that 25 connections exceed it.
    process = _serve(
        str(packages / "tiny" / "1"),
        "--port",
        str(port),
        "--max-connections",
        "20",
        "--workers",
        "1",
    )
    address = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, address)
        held = [_connect(address) for _ in range(25)]
        try:
            response = httpx.post(f"{address}/v2/models/tiny/infer", json=BODY, timeout=10)
            assert response.status_code == 503
        finally:
            for sock in held:
                sock.close()

        def served() -> bool:  # the server sees the closes asynchronously
            reply = httpx.post(f"{address}/v2/models/tiny/infer", json=BODY, timeout=10)
            return reply.status_code == 200

        wait_for(served, timeout=10, what="a request to be served once the connections closed")
    finally:
        _stop(process)


def _response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response's head and body from ``sock`` (the body by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_heads_held_for_their_body_still_answer_head_and_100_continue(url: str) -> None:
    """The server writes a response's head with its body: a HEAD response (no body write), a
    100 Continue (a head that must leave at once) and keep-alive requests after them."""
    with _connect(url) as sock:
        sock.sendall(b"HEAD /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        body = json.dumps(BODY).encode()
        sock.sendall(
            b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        continued = b""
        while not continued.endswith(b"\r\n\r\n"):  # before the body is sent
            continued += sock.recv(65536)
        assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        head, answer = _response(sock)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(answer)["outputs"]
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(sock)[0].startswith(b"HTTP/1.1 200")
