"""One request path: HTTP (JSON and binary) and gRPC answer alike because both call
``shipyard.serve.dispatch``; a change made there reaches both transports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from shipyard.serve.dispatch import bearer
from tests.serve.conftest import Server, metric, serving

TOKEN = "s3cret"
# The gRPC status code of each HTTP status, as the protocol table in grpc/server.py says.
GRPC_CODE = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND"}
X = np.zeros((1, 1, 8, 8), np.float32)


@pytest.fixture(scope="module")
def both(repository: Path) -> Iterator[Server]:
    """HTTP and gRPC from one server (one dispatcher) over the shared repository, with a token."""
    with serving(repository, grpc_port=0, auth_token=TOKEN) as running:
        yield running


def _datatype(array: np.ndarray) -> str:
    return {"float32": "FP32", "float64": "FP64"}[array.dtype.name]


def _http_json(url: str, path: str, inputs: dict[str, np.ndarray], token: str | None) -> tuple:
    tensors = [
        {"name": n, "datatype": _datatype(a), "shape": list(a.shape), "data": a.ravel().tolist()}
        for n, a in inputs.items()
    ]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # json.dumps writes NaN, which the server reads; httpx's json= would refuse it.
    content = json.dumps({"inputs": tensors}).encode()
    response = httpx.post(url + path, content=content, headers=headers, timeout=30)
    return response.status_code, response.json().get("error")


def _http_binary(url: str, path: str, inputs: dict[str, np.ndarray], token: str | None) -> tuple:
    tensors = [
        {
            "name": name,
            "datatype": _datatype(array),
            "shape": list(array.shape),
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array in inputs.items()
    ]
    header = json.dumps({"inputs": tensors}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = header + b"".join(array.tobytes() for array in inputs.values())
    response = httpx.post(url + path, content=body, headers=headers, timeout=30)
    return response.status_code, response.json().get("error")


def _grpc(address: str, model: str, version: str, inputs: dict[str, np.ndarray], token: str | None):
    tensors = []
    for name, array in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), _datatype(array))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    headers = {"authorization": f"Bearer {token}"} if token else None
    client = triton.InferenceServerClient(address)
    try:
        client.infer(model, tensors, version, headers=headers)
        return "OK", None
    except InferenceServerException as error:
        return str(error.status()).removeprefix("StatusCode."), error.message()
    finally:
        client.close()


def _answers(server: Server, model: str, version: str, inputs: dict, token: str | None) -> list:
    """(status, message) over HTTP JSON, HTTP binary and gRPC; HTTP statuses as gRPC codes."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    answers = []
    for send in (_http_json, _http_binary):
        status, message = send(server.url, path, inputs, token)
        answers.append((GRPC_CODE.get(status, str(status)), message))
    address = f"127.0.0.1:{server.app.server.grpc_port}"
    answers.append(_grpc(address, model, version, inputs, token))
    return answers


NAN = X.copy()
NAN.flat[3] = np.nan
# case: (model, version, inputs, token, expected gRPC code, a phrase of the shared message)
CASES = {
    "no token": ("tiny", "", {"x": X}, None, "UNAUTHENTICATED", "missing or wrong bearer token"),
    "wrong token": ("tiny", "", {"x": X}, "guess", "UNAUTHENTICATED", "Bearer <token>"),
    "unknown model": ("nope", "", {"x": X}, TOKEN, "NOT_FOUND", "unknown model 'nope'"),
    "unknown version": ("tiny", "9", {"x": X}, TOKEN, "NOT_FOUND", "no version 9"),
    "version not served": ("policy", "1", {"x": X}, TOKEN, "NOT_FOUND", "(serving [2])"),
    "input named y": (
        "tiny", "", {"y": X}, TOKEN, "INVALID_ARGUMENT",
        "missing input(s) ['x'] and unknown input(s) ['y'] (rename 'y' to 'x'?); "
        "the model takes x: float32[batch, 1, 8, 8]",
    ),
    "an extra input": (
        "tiny", "", {"x": X, "mask": X}, TOKEN, "INVALID_ARGUMENT", "unknown input(s) ['mask']",
    ),
    "wrong datatype": (
        "tiny", "", {"x": X.astype(np.float64)}, TOKEN, "INVALID_ARGUMENT",
        "input 'x' has datatype FP64, but the model expects FP32",
    ),
    "wrong shape": (
        "tiny", "", {"x": X.reshape(1, 8, 8, 1)}, TOKEN, "INVALID_ARGUMENT",
        "dimension 1 must be 1, got 8",
    ),
    "NaN where the model forbids it": (
        "tiny", "", {"x": NAN}, TOKEN, "INVALID_ARGUMENT", "flat index 3: nan",
    ),
    "batch above max_batch_size": (
        "tiny", "", {"x": np.zeros((17, 1, 8, 8), np.float32)}, TOKEN, "INVALID_ARGUMENT",
        "accepts 1..16 rows per request (max_batch_size)",
    ),
    "a good request": ("tiny", "", {"x": X}, TOKEN, "OK", None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_http_json_http_binary_and_grpc_get_one_answer(both: Server, case: str) -> None:
    model, version, inputs, token, code, phrase = CASES[case]
    answers = _answers(both, model, version, inputs, token)
    assert answers[0] == answers[1] == answers[2], answers
    status, message = answers[0]
    assert status == code, answers
    if phrase is None:
        assert message is None, message
    else:
        assert message is not None and phrase in message, message


def test_dispatch_counts_every_transport_in_one_metric(both: Server) -> None:
    def unauthorized() -> float:
        text = httpx.get(f"{both.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        return metric(text, "shipyard_requests_total", model="", version="", status="401")

    before = unauthorized()
    _answers(both, "tiny", "", {"x": X}, None)
    assert unauthorized() == before + 3  # JSON, binary and gRPC, counted in one place


def test_a_token_changed_in_the_dispatcher_reaches_both_transports(
    both: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The running server's one dispatcher holds the token; no transport keeps a copy.
    monkeypatch.setattr(both.app.server.dispatcher, "auth", bearer("rotated"))
    refused = _answers(both, "tiny", "", {"x": X}, TOKEN)
    assert [status for status, _ in refused] == ["UNAUTHENTICATED"] * 3, refused
    assert _answers(both, "tiny", "", {"x": X}, "rotated") == [("OK", None)] * 3
    # Metadata endpoints of both transports ask the same dispatcher.
    headers = {"Authorization": "Bearer rotated"}
    assert httpx.get(f"{both.url}/v2/models/tiny", headers=headers).status_code == 200
    client = triton.InferenceServerClient(f"127.0.0.1:{both.app.server.grpc_port}")
    try:
        assert client.get_model_metadata("tiny", headers={"authorization": "Bearer rotated"})
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.get_model_metadata("tiny", headers={"authorization": f"Bearer {TOKEN}"})
    finally:
        client.close()
