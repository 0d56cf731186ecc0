"""The V2 protocol end to end: httpx and tritonclient against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.serve.conftest import Server, metric, on_each_engine, reference

RNG = np.random.default_rng(0)

# Every test here runs against the single-process server and the Ray engine ([ray]).
server = on_each_engine()


def _images(batch: int) -> np.ndarray:
    return RNG.standard_normal((batch, 1, 8, 8)).astype(np.float32)


def _json_input(x: np.ndarray, nested: bool = False) -> dict:
    data = x.tolist() if nested else x.ravel().tolist()
    return {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": data}


def test_server_metadata_and_health(client: httpx.Client) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "shipyard"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_shows_served_versions_and_dynamic_dims(client: httpx.Client) -> None:
    meta = client.get("/v2/models/tiny").json()
    assert meta == {
        "name": "tiny",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get("/v2/models/tiny/versions/1").json()["name"] == "tiny"
    assert client.get("/v2/models/tiny/versions/2/ready").status_code == 200
    config = client.get("/v2/models/tiny/config").json()
    assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == [1, 8, 8]


@pytest.mark.parametrize("nested", [False, True])
def test_json_inference_equals_in_process_onnx_runtime(
    client: httpx.Client, packages: Path, nested: bool
) -> None:
    x = _images(3)
    body = {"id": "req-7", "inputs": [_json_input(x, nested)], "parameters": {"tag": "a"}}
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "req-7" and answer["model_version"] == "2"
    assert answer["parameters"] == {"tag": "a"}
    (output,) = answer["outputs"]
    assert output["datatype"] == "FP32" and output["shape"] == [3, 10]
    logits = np.asarray(output["data"], dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits, reference(packages, "tiny", 2, x), rtol=1e-6, atol=1e-6)
    # A specific version answers with its own model (v2 adds 1.0 to v1's logits).
    v1 = client.post("/v2/models/tiny/versions/1/infer", json=body).json()
    logits_v1 = np.asarray(v1["outputs"][0]["data"], dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits_v1, reference(packages, "tiny", 1, x), rtol=1e-6, atol=1e-6)
    assert v1["model_version"] == "1"


def test_binary_request_and_response_with_httpx(client: httpx.Client, packages: Path) -> None:
    x = _images(2)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 1, 8, 8],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = client.post(
        "/v2/models/tiny/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    logits = np.frombuffer(response.content[length:], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(logits, reference(packages, "tiny", 2, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, True), (True, False)])
def test_tritonclient_unchanged(
    server: Server, packages: Path, binary_in: bool, binary_out: bool
) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
        assert not client.is_model_ready("no-such-model")
        meta = client.get_model_metadata("tiny")
        assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
        x = _images(4)
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary_in)
        wanted = triton.InferRequestedOutput("logits", binary_data=binary_out)
        result = client.infer("tiny", [tensor], outputs=[wanted], request_id="t1")
        assert result.get_response()["id"] == "t1"
        expected = reference(packages, "tiny", 2, x)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6, atol=1e-6)
        # No outputs named: tritonclient asks for every output in binary.
        result = client.infer("tiny", [tensor], model_version="1")
        expected = reference(packages, "tiny", 1, x)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6, atol=1e-6)
    finally:
        client.close()


def test_version_policy_serves_only_the_latest(client: httpx.Client) -> None:
    assert client.get("/v2/models/policy").json()["versions"] == ["2"]
    body = {"inputs": [_json_input(_images(1))]}
    assert client.post("/v2/models/policy/infer", json=body).json()["model_version"] == "2"
    response = client.post("/v2/models/policy/versions/1/infer", json=body)
    assert response.status_code == 404 and "version 1" in response.json()["error"]
    index = client.post("/v2/repository/index").json()
    entries = {(e["name"], e["version"]): e["state"] for e in index}
    assert entries[("policy", "2")] == "READY" and entries[("policy", "1")] == "UNAVAILABLE"
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert ("policy", "1") not in {(e["name"], e["version"]) for e in ready}


def test_metrics_count_requests_by_status(client: httpx.Client) -> None:
    body = {"inputs": [_json_input(_images(1))]}
    before = client.get("/metrics").text
    assert client.post("/v2/models/tiny/versions/1/infer", json=body).status_code == 200
    assert client.post("/v2/models/tiny/versions/1/infer", json={"inputs": []}).status_code == 400
    after = client.get("/metrics").text
    for status in ("200", "400"):
        labels = {"model": "tiny", "version": "1", "status": status}
        assert metric(after, "shipyard_requests_total", **labels) == pytest.approx(
            metric(before, "shipyard_requests_total", **labels) + 1
        )
    for name in (
        "shipyard_request_duration_seconds_count",
        "shipyard_queue_duration_seconds_count",
        "shipyard_compute_duration_seconds_count",
        "shipyard_batch_size_count",
        "shipyard_model_load_seconds",
    ):
        assert metric(after, name, model="tiny", version="1") > 0, name
    assert "shipyard_queue_depth{" in after and "shipyard_inflight_requests" in after
