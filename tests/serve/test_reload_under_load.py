"""A new version goes in and the old one out while 32 clients send: no request fails, and
every answer comes whole from one version or the other (both rows of a request agree)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from tests.serve.conftest import add_version, reference, serving, wait_for

CLIENTS = 32
X = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)
BODY = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": X.ravel().tolist()}]
}


def test_a_version_swap_under_load_fails_no_request(packages: Path, tmp_path: Path) -> None:
    want = {1: reference(packages, "tiny", 1, X), 2: reference(packages, "tiny", 2, X)}
    assert not np.allclose(want[1], want[2], atol=1e-3)  # the versions answer differently
    add_version(packages, tmp_path, "tiny", 1)  # latest: 1, so v2 will replace it
    stop = threading.Event()
    lock = threading.Lock()
    outcomes: Counter[str] = Counter()
    problems: list[str] = []

    def client(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                response = http.post("/v2/models/tiny/infer", json=BODY)
                with lock:
                    if response.status_code != 200:
                        problems.append(f"{response.status_code} {response.text}")
                        continue
                    answer = response.json()
                    version = int(answer["model_version"])
                    rows = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(2, 10)
                    if not np.allclose(rows, want[version], atol=1e-4):
                        problems.append(f"v{version} answered {rows.tolist()}")
                    outcomes[f"v{version}"] += 1

    with serving(tmp_path) as server:
        threads = [threading.Thread(target=client, args=(server.url,)) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        wait_for(lambda: outcomes["v1"] >= 200, timeout=60, what="v1 to serve under load")
        add_version(packages, tmp_path, "tiny", 2)
        with httpx.Client(base_url=server.url, timeout=60) as admin:
            loaded = admin.post("/v2/repository/models/tiny/load")
            assert loaded.status_code == 200 and loaded.json()["versions"] == ["2"], loaded.text
        swapped = outcomes["v2"]
        wait_for(lambda: outcomes["v2"] >= swapped + 200, timeout=60, what="v2 under load")
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert problems == [], problems[:5]
    assert outcomes["v1"] >= 200 and outcomes["v2"] >= 200, outcomes
