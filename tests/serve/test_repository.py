"""The repository extension: load, unload, failed loads, draining, watching the folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import add_version, metric, serving, wait_for

X = np.ones((1, 1, 8, 8), np.float32)
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [1.0] * 64}]}


def _version(client: httpx.Client, model: str) -> str:
    response = client.post(f"/v2/models/{model}/infer", json=BODY)
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


@contextlib.contextmanager
def _served(repository: Path) -> Iterator[tuple[httpx.Client, triton.InferenceServerClient]]:
    """A server over ``repository``, an httpx client and a tritonclient for it."""
    with serving(repository) as server, httpx.Client(base_url=server.url) as client:
        triton_client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            yield client, triton_client
        finally:
            triton_client.close()


async def _until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 30) -> None:
    """Poll ``condition`` until true; TimeoutError naming ``what`` at the deadline."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def test_an_unloaded_model_answers_503_until_loaded_again(packages: Path, tmp_path: Path) -> None:
    add_version(packages, tmp_path, "tiny", 1)
    with _served(tmp_path) as (client, triton_client):
        assert triton_client.is_model_ready("tiny") and _version(client, "tiny") == "1"
        triton_client.unload_model("tiny")
        assert not triton_client.is_model_ready("tiny")
        response = client.post("/v2/models/tiny/infer", json=BODY)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert triton_client.is_server_ready()  # an explicitly unloaded model is not expected
        triton_client.load_model("tiny")
        assert triton_client.is_model_ready("tiny") and triton_client.is_server_ready()
        assert _version(client, "tiny") == "1"


def test_a_new_version_goes_live_on_load_and_retires_the_old(
    packages: Path, tmp_path: Path
) -> None:
    add_version(packages, tmp_path, "tiny", 1)
    with _served(tmp_path) as (client, triton_client):
        add_version(packages, tmp_path, "tiny", 2)
        assert _version(client, "tiny") == "1"  # nothing changes before the load
        triton_client.load_model("tiny")
        assert _version(client, "tiny") == "2"
        assert client.get("/v2/models/tiny").json()["versions"] == ["2"]  # latest 1
        retired = client.post("/v2/models/tiny/versions/1/infer", json=BODY)
        assert retired.status_code == 503 and "not selected" in retired.json()["error"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("tampered file", "modified after packaging"),
        ("invalid serving config", "serving.threads"),
    ],
)
def test_a_broken_new_version_never_replaces_the_serving_one(
    packages: Path, tmp_path: Path, breakage: str, message: str
) -> None:
    add_version(packages, tmp_path, "tiny", 2)
    with _served(tmp_path) as (client, triton_client):
        if breakage == "tampered file":  # sha256 mismatch
            broken = add_version(packages, tmp_path, "tiny", 3, source=("tiny", 1))
            (broken / "model.onnx").write_bytes(b"not a model")
        else:
            serving_config = {"threads": 0}
            add_version(packages, tmp_path, "tiny", 3, source=("tiny", 1), serving=serving_config)
        with pytest.raises(InferenceServerException, match=re.escape(message)):
            triton_client.load_model("tiny")
        assert _version(client, "tiny") == "2"
        index = {e["version"]: e for e in triton_client.get_model_repository_index()}
        assert index["2"]["state"] == "READY"
        assert index["3"]["state"] == "UNAVAILABLE" and message in index["3"]["reason"]
        assert client.post("/v2/models/tiny/versions/3/infer", json=BODY).status_code == 503


def test_removing_a_broken_version_and_loading_again_keeps_serving(
    packages: Path, tmp_path: Path
) -> None:
    add_version(packages, tmp_path, "tiny", 2)
    broken = add_version(packages, tmp_path, "tiny", 3, source=("tiny", 1))
    (broken / "model.onnx").write_bytes(b"not a model")
    with _served(tmp_path) as (client, triton_client):
        assert _version(client, "tiny") == "2"  # latest 1 fell back past the broken one
        shutil.rmtree(broken)
        triton_client.load_model("tiny")  # no failure left: no exception
        assert _version(client, "tiny") == "2"
        index = triton_client.get_model_repository_index()
        assert [(e["version"], e["state"]) for e in index] == [("2", "READY")]


def test_in_flight_requests_finish_when_their_version_is_unloaded(
    packages: Path, tmp_path: Path
) -> None:
    add_version(packages, tmp_path, "slow", 1, serving={"max_batch_size": 0})

    async def scenario(url: str) -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            requests = [
                asyncio.create_task(client.post("/v2/models/slow/infer", json=BODY))
                for _ in range(6)
            ]

            async def queued() -> bool:  # requests wait behind the one running
                text = (await client.get("/metrics")).text
                return metric(text, "shipyard_queue_depth", model="slow", version="1") >= 2

            await _until(queued, "requests to queue")
            unload = await client.post("/v2/repository/models/slow/unload")
            return list(await asyncio.gather(*requests)), unload

    with serving(tmp_path) as server:
        responses, unload = asyncio.run(scenario(server.url))
        assert unload.status_code == 200
        assert [r.status_code for r in responses] == [200] * 6
        after = httpx.post(f"{server.url}/v2/models/slow/infer", json=BODY)
        assert after.status_code == 503 and "unloaded" in after.json()["error"]


def test_shutdown_drains_in_flight_requests(packages: Path, tmp_path: Path) -> None:
    add_version(packages, tmp_path, "slow", 1, serving={"max_batch_size": 0})

    async def scenario(server_stop: object, url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            requests = [
                asyncio.create_task(client.post("/v2/models/slow/infer", json=BODY))
                for _ in range(4)
            ]

            async def in_flight() -> bool:
                text = (await client.get("/metrics")).text
                return metric(text, "shipyard_inflight_requests") >= 4

            await _until(in_flight, "4 requests in flight")
            await asyncio.to_thread(server_stop)  # type: ignore[arg-type]
            return [r.status_code for r in await asyncio.gather(*requests)]

    with serving(tmp_path) as server:
        assert asyncio.run(scenario(server.stop, server.url)) == [200] * 4


def test_watch_loads_new_versions_and_forgets_removed_models(
    packages: Path, tmp_path: Path
) -> None:
    add_version(packages, tmp_path, "tiny", 1)
    with serving(tmp_path, watch_seconds=0.05) as server, httpx.Client(base_url=server.url) as c:
        add_version(packages, tmp_path, "tiny", 2)
        wait_for(lambda: _version(c, "tiny") == "2", what="version 2 to go live")
        add_version(packages, tmp_path, "other", 1, source=("tiny", 1))
        wait_for(lambda: c.get("/v2/models/other/ready").status_code == 200, what="new model")
        shutil.rmtree(tmp_path / "other")
        wait_for(lambda: c.get("/v2/models/other").status_code == 404, what="removal")
        # A manifest rewritten in place (e.g. a new serving config) is reloaded too.
        manifest = tmp_path / "tiny" / "2" / "shipyard.json"
        data = json.loads(manifest.read_text())
        data["serving"] = {"max_batch_size": 4}
        manifest.write_text(json.dumps(data))
        wait_for(
            lambda: c.get("/v2/models/tiny/config").json()["max_batch_size"] == 4,
            what="reload with the new config",
        )
        assert c.get("/v2/health/ready").status_code == 200


def test_new_version_goes_live_under_traffic_without_errors(packages: Path, tmp_path: Path) -> None:
    add_version(packages, tmp_path, "tiny", 1, serving={"max_queue_delay_ms": 1})

    async def scenario(url: str) -> tuple[list[int], set[str]]:
        statuses: list[int] = []
        versions: set[str] = set()
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def worker() -> None:
                while not stop.is_set():
                    response = await client.post("/v2/models/tiny/infer", json=BODY)
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        versions.add(response.json()["model_version"])

            async def answered(count: int) -> bool:
                return len(statuses) >= count

            workers = [asyncio.create_task(worker()) for _ in range(4)]
            await _until(lambda: answered(20), "20 answers before the load")
            await asyncio.to_thread(add_version, packages, tmp_path, "tiny", 2)
            assert (await client.post("/v2/repository/models/tiny/load")).status_code == 200
            seen = len(statuses)
            await _until(lambda: answered(seen + 20), "20 answers after the load")
            stop.set()
            await asyncio.gather(*workers)
        return statuses, versions

    with serving(tmp_path) as server:
        statuses, versions = asyncio.run(scenario(server.url))
    assert set(statuses) == {200} and versions == {"1", "2"}


def test_a_model_whose_only_version_is_broken_is_reported_not_served(
    packages: Path, tmp_path: Path
) -> None:
    add_version(packages, tmp_path, "tiny", 1)
    broken = add_version(packages, tmp_path, "broken", 1, source=("tiny", 1))
    (broken / "shipyard.json").write_text("{not json")
    with serving(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 400 and "no ready version" in ready.json()["error"]
        response = client.post("/v2/models/broken/infer", json=BODY)
        assert response.status_code == 503 and "failed to load" in response.json()["error"]
        assert str(tmp_path) not in response.json()["error"]  # server paths stay private
        (entry,) = [e for e in client.post("/v2/repository/index").json() if e["name"] == "broken"]
        assert entry["state"] == "UNAVAILABLE" and "cannot read" in entry["reason"]
        assert _version(client, "tiny") == "1"  # the other model serves regardless
