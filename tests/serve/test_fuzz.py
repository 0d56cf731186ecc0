"""Hostile input, seeded: 10,000 HTTP and 2,000 gRPC requests a client could send, each
answered without a 5xx (with a JSON error body over HTTP), and the server still serving a good
request exactly as before. A failure prints the seed and the request that broke it."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from shipyard.serve.grpc import inference_pb2 as pb
from shipyard.serve.grpc import inference_pb2_grpc as pb_grpc
from tests.serve.conftest import Server

SEED = 20261128
HTTP_REQUESTS = 10_000
GRPC_REQUESTS = 2_000
GOOD_X = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
GOOD = {
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": GOOD_X.ravel().tolist()}
    ]
}

DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT64", "UINT8", "BOOL", "BYTES", "STRING", "", 7]
WEIRD: list[Any] = [
    None, True, -1, 0, 2**63, -(2**63) - 1, 1e308, float("nan"), "", "x", "💥" * 50, [], {},
    [[]], [None], {"a": 1}, "NaN", [1, "2"], [[1, 2], [3]], 3.5, "\x00", [2**70],
]  # fmt: skip


def _shape(rng: random.Random) -> Any:
    return rng.choice([
        [1, 1, 8, 8], [2, 1, 8, 8], [0, 1, 8, 8], [-1, 1, 8, 8], [1, 64], [2**40, 2**40],
        [1, 1, 8, 8, 1], [], [1.5], ["1"], None, "1,1,8,8", [2**31] * 4, [1] * 64,
    ])  # fmt: skip


def _tensor(rng: random.Random) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": rng.choice(["x", "x", "y", "", None, 5, "x" * 300]),
        "datatype": rng.choice(DATATYPES),
        "shape": _shape(rng),
    }
    kind = rng.randrange(6)
    if kind == 0:
        tensor["data"] = [rng.uniform(-1e6, 1e6) for _ in range(rng.choice([0, 1, 63, 64, 65]))]
    elif kind == 1:
        tensor["data"] = rng.choice(WEIRD)
    elif kind == 2:
        tensor["data"] = [[rng.random() for _ in range(8)] for _ in range(rng.choice([7, 8, 9]))]
    elif kind == 3:
        tensor["parameters"] = {"binary_data_size": rng.choice([0, 1, 256, -4, 2**62, "256"])}
    elif kind == 4:
        tensor["parameters"] = rng.choice(WEIRD)
    for key in rng.sample(list(tensor), rng.randrange(2)):  # sometimes drop a field
        del tensor[key]
    return tensor


def _json_body(rng: random.Random) -> dict[str, Any] | list[Any] | Any:
    kind = rng.randrange(10)
    if kind == 0:
        return rng.choice(WEIRD)
    body: dict[str, Any] = {"inputs": [_tensor(rng) for _ in range(rng.choice([0, 1, 1, 2, 3]))]}
    if kind == 1:
        body["inputs"] = rng.choice(WEIRD)
    if kind in (2, 3):
        body["outputs"] = rng.choice([
            [{"name": "logits", "parameters": {"classification": rng.choice(WEIRD)}}],
            [{"name": rng.choice(WEIRD)}], rng.choice(WEIRD),
            [{"name": "logits", "parameters": {"binary_data": rng.choice(WEIRD)}}],
        ])  # fmt: skip
    if kind in (4, 5):
        body["parameters"] = rng.choice([{"timeout": rng.choice(WEIRD)}, rng.choice(WEIRD)])
    if kind == 6:
        body["id"] = rng.choice(WEIRD)
    if kind == 7:  # a good tensor twice, or NaN where the model forbids it
        good = dict(GOOD["inputs"][0])
        body["inputs"] = rng.choice([[good, good], [{**good, "data": [float("nan")] * 64}]])
    return body


def _http_request(rng: random.Random) -> dict[str, Any]:
    path = rng.choice([
        "/v2/models/tiny/infer", "/v2/models/tiny/infer", "/v2/models/tiny/versions/1/infer",
        "/v2/models/rows/infer", "/v2/models/nope/infer", "/v2/models/tiny/versions/0/infer",
        "/v2/models/tiny/versions/99999999999999999999/infer", "/v2/models/%00/infer",
        "/v2/repository/index", "/v2/models/tiny", "/v2/models/tiny/config",
    ])  # fmt: skip
    kind = rng.randrange(8)
    headers: dict[str, str] = {}
    if kind == 0:
        content = rng.randbytes(rng.choice([0, 1, 17, 1000, 5000]))
    elif kind == 1:  # deep nesting
        depth = rng.choice([10, 1_000, 2_000, 50_000])
        content = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == 2:  # truncated JSON
        text = json.dumps(_json_body(rng), allow_nan=True).encode()
        content = text[: rng.randrange(max(len(text), 1))]
    elif kind == 3:  # binary extension with a lying header
        header = json.dumps(_json_body(rng), allow_nan=True).encode()
        content = header + rng.randbytes(rng.choice([0, 3, 256, 300]))
        headers["Inference-Header-Content-Length"] = str(
            rng.choice([len(header), len(header) + 10, 0, -1, 10**12, "abc"])
        )
    else:
        content = json.dumps(_json_body(rng), allow_nan=True).encode()
    if rng.random() < 0.05:
        headers["Content-Encoding"] = rng.choice(["gzip", "identity", "br"])
    return {"method": rng.choice(["POST"] * 9 + ["GET"]), "url": path, "content": content,
            "headers": headers}  # fmt: skip


def _requests(count: int, make: Callable[[random.Random], Any]) -> Iterator[tuple[int, Any]]:
    rng = random.Random(SEED)
    for index in range(count):
        yield index, make(rng)


def _good_answer(client: httpx.Client) -> list[float]:
    response = client.post("/v2/models/tiny/infer", json=GOOD)
    assert response.status_code == 200, response.text
    return response.json()["outputs"][0]["data"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_hostile_http_requests_never_get_a_5xx(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        before = _good_answer(client)
        statuses: dict[int, int] = {}
        for index, request in _requests(HTTP_REQUESTS, _http_request):
            response = client.request(**request)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            where = f"seed {SEED}, request {index}: {request!r:.300}"
            assert response.status_code < 500, f"{where} -> {response.status_code} {response.text}"
            if response.status_code >= 400:
                error = response.json().get("error")
                assert isinstance(error, str) and error, f"{where} -> {response.text}"
        assert client.get("/v2/health/live").status_code == 200
        assert _good_answer(client) == before
    assert sum(v for k, v in statuses.items() if k >= 400) > HTTP_REQUESTS // 2, statuses


def _grpc_request(rng: random.Random) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=rng.choice(["tiny", "tiny", "rows", "nope", "", "a" * 200, "../x"]),
        model_version=rng.choice(["", "", "1", "0", "-1", "x", "99999999999999999999"]),
        id=rng.choice(["", "id", "💥"]),
    )
    for _ in range(rng.choice([0, 1, 1, 2])):
        tensor = request.inputs.add(
            name=rng.choice(["x", "x", "y", ""]),
            datatype=str(rng.choice(DATATYPES)),
            shape=rng.choice([[1, 1, 8, 8], [2, 1, 8, 8], [-1, 8], [2**40, 2**40], [], [1, 64]]),
        )
        kind = rng.randrange(5)
        if kind == 0:
            tensor.contents.fp32_contents.extend(
                rng.random() for _ in range(rng.choice([0, 63, 64]))
            )
        elif kind == 1:
            tensor.contents.int64_contents.extend([2**62, -1])
        elif kind == 2:
            request.raw_input_contents.append(rng.randbytes(rng.choice([0, 255, 256, 257])))
        elif kind == 3:
            tensor.contents.bytes_contents.append(b"abc")
        if rng.random() < 0.2:
            tensor.parameters[
                rng.choice(["shared_memory_region", "x", "binary_data_size"])
            ].int64_param = -5
    if rng.random() < 0.3:
        output = request.outputs.add(name=rng.choice(["logits", "probs", ""]))
        output.parameters["classification"].int64_param = rng.choice([-1, 0, 3, 2**40])
    if rng.random() < 0.2:
        request.parameters["timeout"].int64_param = rng.choice([-1, 0, 1, 2**62])
    return request


@pytest.mark.slow
def test_hostile_grpc_requests_never_get_internal(server_with_grpc: Server) -> None:
    port = server_with_grpc.app.server.grpc_port
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    codes: dict[str, int] = {}
    good = pb.ModelInferRequest(model_name="tiny")
    good.inputs.add(name="x", datatype="FP32", shape=[1, 1, 8, 8])
    good.raw_input_contents.append(GOOD_X.tobytes())
    before = stub.ModelInfer(good, timeout=30).raw_output_contents[0]
    for index, request in _requests(GRPC_REQUESTS, _grpc_request):
        try:
            stub.ModelInfer(request, timeout=30)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
            assert code not in ("INTERNAL", "UNKNOWN"), f"seed {SEED}, request {index}: {request}"
            assert error.details(), f"seed {SEED}, request {index}: no message"
        codes[code] = codes.get(code, 0) + 1
    assert stub.ModelInfer(good, timeout=30).raw_output_contents[0] == before
    assert codes.get("INVALID_ARGUMENT", 0) > GRPC_REQUESTS // 2, codes
    channel.close()


@pytest.fixture(scope="module")
def server_with_grpc(repository: Any) -> Iterator[Server]:
    from tests.serve.conftest import serving

    with serving(repository, grpc_port=0) as running:
        yield running
