"""Triton's classification extension on a real server: top-k classes with the package's
labels as BYTES strings "<value>:<index>:<label>", over HTTP JSON, HTTP binary and gRPC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from shipyard.package import seal
from tests.serve.conftest import Server, add_version, reference, serving

LABELS = [f"class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def labelled(packages: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """tiny v1 with a labels file (its manifest names it), and tiny v1 without one."""
    root = tmp_path_factory.mktemp("labelled")
    folder = add_version(packages, root, "named", 1, source=("tiny", 1))
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    manifest = json.loads((folder / "shipyard.json").read_text())
    seal(folder, {**manifest, "postprocess": {"labels": "labels.txt"}})
    add_version(packages, root, "bare", 1, source=("tiny", 1))
    with serving(root, grpc_port=0) as server:
        yield server


def _body(x: np.ndarray, count: object) -> dict[str, object]:
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return {
        "inputs": [tensor],
        "outputs": [{"name": "logits", "parameters": {"classification": count}}],
    }


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _expected(packages: Path, x: np.ndarray, k: int) -> list[list[str]]:
    logits = reference(packages, "tiny", 1, x)
    rows = []
    for row in logits:
        top = np.argsort(-row, kind="stable")[:k]
        rows.append([f"{row[i]:f}:{i}:{LABELS[i]}" for i in top])
    return rows


def _parsed(strings: list[str]) -> list[tuple[float, int, str]]:
    out = []
    for text in strings:
        value, index, label = text.split(":", 2)
        out.append((float(value), int(index), label))
    return out


def _close(got: list[list[str]], want: list[list[str]]) -> None:
    for got_row, want_row in zip(got, want, strict=True):
        for (v, i, label), (w, j, wanted) in zip(_parsed(got_row), _parsed(want_row), strict=True):
            assert (i, label) == (j, wanted) and v == pytest.approx(w, abs=1e-4)


def test_json_request_gets_the_top_classes(labelled: Server, packages: Path) -> None:
    x = _images(2)
    body = _body(x, 3)
    with httpx.Client(base_url=labelled.url) as client:
        answer = client.post("/v2/models/named/infer", json=body)
        assert answer.status_code == 200, answer.text
        (output,) = answer.json()["outputs"]
        assert (output["datatype"], output["shape"]) == ("BYTES", [2, 3])
        got = [output["data"][0:3], output["data"][3:6]]
        _close(got, _expected(packages, x, 3))
        assert "classification" in client.get("/v2").json()["extensions"]


def test_tritonclient_class_count_over_http_binary_and_grpc(
    labelled: Server, packages: Path
) -> None:
    x = _images(4)
    want = _expected(packages, x, 5)
    http = triton_http.InferenceServerClient(labelled.url.removeprefix("http://"))
    inputs = [triton_http.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=True)
    wanted = [triton_http.InferRequestedOutput("logits", binary_data=True, class_count=5)]
    result = http.infer("named", inputs, outputs=wanted).as_numpy("logits")
    assert result.shape == (4, 5)
    _close([[v.decode() for v in row] for row in result], want)

    port = labelled.app.server.grpc_port
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    g_inputs = [triton_grpc.InferInput("x", list(x.shape), "FP32")]
    g_inputs[0].set_data_from_numpy(x)
    g_wanted = [triton_grpc.InferRequestedOutput("logits", class_count=5)]
    g_result = grpc.infer("named", g_inputs, outputs=g_wanted).as_numpy("logits")
    assert g_result.shape == (4, 5)
    _close([[v.decode() for v in row] for row in g_result], want)
    assert "classification" in grpc.get_server_metadata().extensions


@pytest.mark.parametrize(
    ("model", "count", "message"),
    [
        ("bare", 3, "classification needs the model's class labels"),
        ("named", "three", "'classification' must be a positive integer"),
        ("named", -1, "'classification' must be a positive integer"),
    ],
)
def test_bad_classification_requests_get_400_and_the_server_keeps_serving(
    labelled: Server, model: str, count: object, message: str
) -> None:
    x = _images(1)
    body = _body(x, count)
    with httpx.Client(base_url=labelled.url) as client:
        answer = client.post(f"/v2/models/{model}/infer", json=body)
        assert answer.status_code == 400 and message in answer.json()["error"], answer.text
        assert "output 'logits'" in answer.json()["error"]
        body.pop("outputs")  # the same request without classification is served
        assert client.post(f"/v2/models/{model}/infer", json=body).status_code == 200


def test_more_classes_than_the_model_has_returns_them_all(labelled: Server) -> None:
    x = _images(1)
    body = _body(x, 50)
    with httpx.Client(base_url=labelled.url) as client:
        output = client.post("/v2/models/named/infer", json=body).json()["outputs"][0]
    assert output["shape"] == [1, 10]
    assert sorted(int(s.split(":")[1]) for s in output["data"]) == list(range(10))
