"""`shipyard serve` as a user runs it: a real process, a real client, a graceful stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import REPO


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_command_serves_and_drains_on_sigint(packages: Path) -> None:
    port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "SHIPYARD_SERVE_TOKEN": "s3cret"}
    command = [
        sys.executable,
        "-m",
        "shipyard",
        "serve",
        str(packages),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--grpc-port",
        str(grpc_port),
    ]
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # poll readiness; no fixed sleep
            assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                continue
        headers = {"Authorization": "Bearer s3cret"}
        x = np.zeros((2, 1, 8, 8), np.float32)
        body = {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": x.ravel().tolist()}
            ]
        }
        denied = httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=10)
        assert denied.status_code == 401 and "error" in denied.json()
        answer = httpx.post(f"{url}/v2/models/tiny/infer", json=body, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["shape"] == [2, 10]
        from tritonclient.grpc import InferenceServerClient

        client = InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_model_ready("tiny", headers={"authorization": "Bearer s3cret"})
        client.close()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


def test_serve_command_missing_repository_is_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "nope" in run.stderr
