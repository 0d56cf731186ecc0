"""Dynamic batching under concurrent clients, backpressure and timeouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np

from shipyard.serve.ray import RayServer
from tests.serve.conftest import Server, metric, on_each_engine, reference

# Every test here runs against the single-process server and the Ray engine ([ray]).
server = on_each_engine()


def _body(x: np.ndarray, **extra: object) -> dict:
    datatype = "FP32"
    tensor = {"name": "x", "datatype": datatype, "shape": list(x.shape), "data": x.ravel().tolist()}
    return {"inputs": [tensor], **extra}


async def _post_all(url: str, path: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post(path, json=body) for body in bodies))


def test_concurrent_requests_share_batches_and_get_their_own_rows(
    server: Server, packages: Path
) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    rng = np.random.default_rng(1)
    # Mostly single images, some requests carrying a batch of 3 themselves.
    inputs = [rng.standard_normal((3 if i % 5 == 0 else 1, 1, 8, 8), np.float32) for i in range(32)]
    responses = asyncio.run(
        _post_all(server.url, "/v2/models/tiny/infer", [_body(x) for x in inputs])
    )
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        output = response.json()["outputs"][0]
        assert output["shape"] == [len(x), 10]
        logits = np.asarray(output["data"], np.float32).reshape(len(x), 10)
        np.testing.assert_allclose(logits, reference(packages, "tiny", 2, x), atol=1e-5)
    after = httpx.get(f"{server.url}/metrics").text
    labels = {"model": "tiny", "version": "2"}

    def delta(name: str, **more: str) -> float:
        return metric(after, name, **labels, **more) - metric(before, name, **labels, **more)

    batches, rows = delta("shipyard_batch_size_count"), delta("shipyard_batch_size_sum")
    single_row_batches = delta("shipyard_batch_size_bucket", le="1.0")
    assert rows == sum(len(x) for x in inputs)
    # With 20 ms of queue delay and 32 concurrent clients, batches of more than one form.
    assert batches < 32 and single_row_batches < batches, (batches, single_row_batches)


def test_requests_with_different_dynamic_dims_run_in_separate_batches(server: Server) -> None:
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((1 + i % 2, 3 + i % 3), np.float32) for i in range(12)]
    responses = asyncio.run(
        _post_all(server.url, "/v2/models/rows/infer", [_body(x) for x in inputs])
    )
    for x, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        out = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(len(x), 2)
        np.testing.assert_allclose(out[:, 0], x.mean(axis=1), rtol=1e-5)
        np.testing.assert_allclose(out[:, 1], x.max(axis=1), rtol=1e-6)


def test_full_queue_answers_503_with_retry_after(server: Server) -> None:
    # slow: ~20 ms per request, no batching, one instance, a queue of one request.
    x = np.zeros((1, 1, 8, 8), np.float32)
    responses = asyncio.run(_post_all(server.url, "/v2/models/slow/infer", [_body(x)] * 8))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            if response.headers["content-type"].startswith("text/plain"):
                # The Ray engine: Ray's own queue in front of the replicas was full too.
                assert isinstance(server, RayServer) and "backpressure" in response.text
                continue
            assert "queue full" in response.json()["error"]
    single = httpx.post(f"{server.url}/v2/models/slow/infer", json=_body(x), timeout=30)
    assert single.status_code == 200


def test_request_timeout_answers_504(server: Server) -> None:
    # tritonclient's `timeout` parameter is in microseconds; slow takes ~20 ms.
    x = np.zeros((1, 1, 8, 8), np.float32)
    body = _body(x, parameters={"timeout": 1000})
    response = httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=30)
    assert response.status_code == 504 and "timeout" in response.json()["error"]
    assert httpx.post(f"{server.url}/v2/models/slow/infer", json=_body(x)).status_code == 200
