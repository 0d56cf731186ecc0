"""Bad requests get their status and ``{"error": ...}``; the server keeps serving."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.conftest import Server, on_each_engine, serving

X = np.zeros((1, 1, 8, 8), dtype=np.float32)
GOOD = {"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": X.ravel().tolist()}
ROWS = {"name": "x", "datatype": "FP32"}  # the "rows" model: [batch, seq] of any length

# Every test here runs against the single-process server and the Ray engine ([ray]).
server = on_each_engine()


def _binary(size: int, payload: bytes, header_length: int | None = None, name: str = "x") -> dict:
    tensor = {**GOOD, "name": name, "parameters": {"binary_data_size": size}}
    del tensor["data"]
    header = json.dumps({"inputs": [tensor]}).encode()
    length = len(header) if header_length is None else header_length
    return {
        "content": header + payload,
        "headers": {"Inference-Header-Content-Length": str(length)},
    }


CASES = {
    "malformed JSON": ("/v2/models/tiny/infer", {"content": b'{"inputs": ['}, 400, "JSON"),
    "not an object": ("/v2/models/tiny/infer", {"json": [1, 2]}, 400, "object"),
    "no inputs": ("/v2/models/tiny/infer", {"json": {"inputs": []}}, 400, "inputs"),
    "unknown model": ("/v2/models/nope/infer", {"json": {"inputs": [GOOD]}}, 404, "nope"),
    "unknown version": (
        "/v2/models/tiny/versions/9/infer",
        {"json": {"inputs": [GOOD]}},
        404,
        "version 9",
    ),
    "non-numeric version": (
        "/v2/models/tiny/versions/latest/infer",
        {"json": {"inputs": [GOOD]}},
        400,
        "version",
    ),
    "wrong datatype": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [{**GOOD, "datatype": "FP64"}]}},
        400,
        "input 'x' has datatype FP64",
    ),
    "unknown datatype": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [{**GOOD, "datatype": "FLOAT"}]}},
        400,
        "unknown datatype",
    ),
    "BYTES": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [{**GOOD, "datatype": "BYTES"}]}},
        400,
        "BYTES",
    ),
    "wrong shape": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [{**GOOD, "shape": [1, 8, 8, 1]}]}},
        400,
        "input 'x'",
    ),
    "data length differs from shape": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [{**GOOD, "shape": [2, 1, 8, 8]}]}},
        400,
        "holds 64 values but shape [2, 1, 8, 8] needs 128",
    ),
    "NaN where the model forbids it": (
        "/v2/models/tiny/infer",
        {"content": json.dumps({"inputs": [{**GOOD, "data": [float("nan")] + [0.0] * 63}]})},
        400,
        "input 'x' holds 1 NaN or Inf value(s)",
    ),
    "not numbers": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [{**GOOD, "data": ["a"] * 64}]}},
        400,
        "input 'x'",
    ),
    "unknown input": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [{**GOOD, "name": "y"}]}},
        400,
        "missing input(s) ['x'] and unknown input(s) ['y'] (rename 'y' to 'x'?)",
    ),
    "unknown input, binary": (
        "/v2/models/tiny/infer",
        _binary(X.nbytes, X.tobytes(), name="y"),
        400,
        "missing input(s) ['x'] and unknown input(s) ['y'] (rename 'y' to 'x'?)",
    ),
    "an extra input": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [GOOD, {**GOOD, "name": "mask"}]}},
        400,
        "unknown input(s) ['mask']; the model takes x: float32[batch, 1, 8, 8]",
    ),
    "unknown output": (
        "/v2/models/tiny/infer",
        {"json": {"inputs": [GOOD], "outputs": [{"name": "probs"}]}},
        400,
        "unknown output 'probs'",
    ),
    "batch above max_batch_size": (
        "/v2/models/tiny/infer",
        {
            "json": {
                "inputs": [
                    {**GOOD, "shape": [17, 1, 8, 8], "data": [0.0] * (17 * 64)},
                ]
            }
        },
        400,
        "max_batch_size",
    ),
    "truncated binary body": (
        "/v2/models/tiny/infer",
        _binary(X.nbytes, X.tobytes()[:100]),
        400,
        "truncated",
    ),
    "binary size differs from shape": (
        "/v2/models/tiny/infer",
        _binary(100, X.tobytes()[:100]),
        400,
        "binary_data_size",
    ),
    "extra binary bytes": (
        "/v2/models/tiny/infer",
        _binary(X.nbytes, X.tobytes() + b"1234"),
        400,
        "belong to no input",
    ),
    "header length larger than the body": (
        "/v2/models/tiny/infer",
        _binary(X.nbytes, X.tobytes(), header_length=10**6),
        400,
        "Inference-Header-Content-Length",
    ),
    "compressed body": (
        "/v2/models/tiny/infer",
        {"content": b"\x1f\x8b", "headers": {"Content-Encoding": "gzip"}},
        400,
        "Content-Encoding",
    ),
    # The decoded path matches no route: the name never reaches a lookup or the filesystem.
    "path traversal in the model name": (
        "/v2/models/..%2F..%2Fetc/infer",
        {"json": {"inputs": [GOOD]}},
        404,
        "Not Found: POST /v2/models/../../etc/infer",
    ),
    "path traversal on load": (
        "/v2/repository/models/..%2Fslow/load",
        {},
        404,
        "Not Found: POST /v2/repository/models/../slow/load",
    ),
    "deeply nested JSON": (
        "/v2/models/tiny/infer",
        {"content": b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"},
        400,
        "deeper than 1024 levels",
    ),
    "ragged data, small body": (
        "/v2/models/rows/infer",
        {"json": {"inputs": [{**ROWS, "shape": [2, 3], "data": [[1, 2], [3, 4, 5, 6]]}]}},
        400,
        "'data' is a ragged nested list",
    ),
    "ragged data, large body (simdjson)": (
        "/v2/models/rows/infer",
        {"json": {"inputs": [{**ROWS, "shape": [2, 900], "data": [[1.5] * 899, [2.5] * 901]}]}},
        400,
        "'data' is a ragged nested list",
    ),
    "dot name on load": ("/v2/repository/models/.hidden/load", {}, 400, "invalid model name"),
    "unknown model on load": ("/v2/repository/models/nothing/load", {}, 404, "nothing"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_answered_and_the_server_keeps_serving(
    client: httpx.Client, case: str
) -> None:
    path, kwargs, status, message = CASES[case]
    assert message, "every case names the message it expects"
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and message in error, error
    assert client.post("/v2/models/tiny/infer", json={"inputs": [GOOD]}).status_code == 200


def test_nested_data_with_the_shapes_lengths_is_served(client: httpx.Client) -> None:
    for seq in (3, 900):  # orjson below 4 kB, simdjson above
        data = [[float(i)] * seq for i in range(2)]
        body = {"inputs": [{**ROWS, "shape": [2, seq], "data": data}]}
        response = client.post("/v2/models/rows/infer", json=body)
        assert response.status_code == 200, response.text


def test_nan_is_served_where_the_model_allows_it(client: httpx.Client) -> None:
    # "rows" declares no finite: true, so NaN reaches the model (and comes back as NaN).
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, "NaN"]}]}
    text = json.dumps(body).replace('"NaN"', "NaN")
    response = client.post("/v2/models/rows/infer", content=text)
    assert response.status_code == 200, response.text
    assert "NaN" in response.text


def test_unknown_route_and_method_answer_v2_errors(client: httpx.Client) -> None:
    assert client.get("/v2/nothing").json()["error"].startswith("Not Found")
    response = client.get("/v2/models/tiny/infer")
    assert response.status_code == 405 and "error" in response.json()


def test_dot_segments_are_refused_before_the_filesystem(server: Server) -> None:
    # httpx normalises "..", http.client sends the path as given.
    for target in ("/v2/models/../infer", "/v2/repository/models/../load", "/v2/models/../ready"):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("POST" if "ready" not in target else "GET", target, body=b"{}")
        reply = connection.getresponse()
        assert reply.status == 400
        assert "invalid model name" in json.loads(reply.read())["error"]
        connection.close()


def test_oversized_body_gets_413_by_header_and_while_streaming(repository: Path) -> None:
    with (
        serving(repository, max_body_bytes=1024) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        big = {"inputs": [{**GOOD, "shape": [8, 1, 8, 8], "data": [0.0] * 512}]}
        response = client.post("/v2/models/tiny/infer", json=big)
        assert response.status_code == 413 and "limit" in response.json()["error"]

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(16):
                yield b" " * 256

        response = client.post("/v2/models/tiny/infer", content=chunks())
        assert response.status_code == 413 and "limit" in response.json()["error"]
        assert client.post("/v2/models/tiny/infer", json={"inputs": [GOOD]}).status_code == 200


def test_bearer_tokens_guard_inference_and_repository(repository: Path) -> None:
    with serving(repository, auth_token="infer-token", admin_token="admin-token") as server:
        client = httpx.Client(base_url=server.url)
        user = {"Authorization": "Bearer infer-token"}
        admin = {"Authorization": "Bearer admin-token"}
        body = {"inputs": [GOOD]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, admin):
            response = client.post("/v2/models/tiny/infer", json=body, headers=headers)
            assert response.status_code == 401 and "token" in response.json()["error"]
            assert response.headers["www-authenticate"] == "Bearer"
        assert client.post("/v2/models/tiny/infer", json=body, headers=user).status_code == 200
        assert client.get("/v2/models/tiny", headers=user).status_code == 200
        assert client.get("/v2/models/tiny").status_code == 401
        assert client.get("/metrics").status_code == 401
        # Probes stay open.
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post("/v2/repository/index", headers=user).status_code == 401
        assert client.post("/v2/repository/index", headers=admin).status_code == 200
        client.close()
