"""`shipyard serve` as a user runs it: a real process, a real client, a graceful stop."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

import shipyard
from shipyard.artifact import Artifact
from tests.conftest import REPO
from tests.serve.conftest import wait_for

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": [0.0] * 128}]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "shipyard", "serve", *args, "--log-level", "warning"]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(process: subprocess.Popen[str], url: str) -> None:
    """Poll readiness until 200; fail at once if the process exits, else at the deadline."""

    def ready() -> bool:
        if process.poll() is not None:
            _, stderr = process.communicate()
            raise AssertionError(f"shipyard serve exited ({process.returncode}): {stderr}")
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout=120, what=f"{url} to be ready")


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT, as Ctrl-C; the server drains and exits 0. Returns (stdout, stderr)."""
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    return stdout, stderr


def test_serve_command_serves_and_drains_on_sigint(packages: Path) -> None:
    port, grpc_port = _free_port(), _free_port()
    url = f"http://127.0.0.1:{port}"
    args = (str(packages), "--port", str(port), "--grpc-port", str(grpc_port))
    process = _serve(*args, env={"SHIPYARD_SERVE_TOKEN": "s3cret"})
    try:
        _wait_ready(process, url)
        headers = {"Authorization": "Bearer s3cret"}
        denied = httpx.post(f"{url}/v2/models/tiny/infer", json=BODY, timeout=10)
        assert denied.status_code == 401 and "error" in denied.json()
        answer = httpx.post(f"{url}/v2/models/tiny/infer", json=BODY, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["shape"] == [2, 10]
        from tritonclient.grpc import InferenceServerClient

        client = InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_model_ready("tiny", headers={"authorization": "Bearer s3cret"})
        client.close()
    finally:
        stdout, _ = _stop(process)
    # The startup table: every model's served version, its artifact and why, the addresses.
    assert f"repository {packages.resolve()}" in stdout
    assert f"serving on {url}, gRPC 127.0.0.1:{grpc_port}" in stdout
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines()]
    ready = {(row[0], row[1]): row for row in rows if row and row[-1] == "READY"}
    assert set(ready) == {("tiny", "2"), ("slow", "1"), ("rows", "1")}, stdout
    artifact, why, backend, batching = ready[("tiny", "2")][2:6]
    assert (artifact, why) == ("onnx (model.onnx)", "the only artifact")
    assert (backend, batching) == ("onnxruntime", "up to 16 rows, 0 ms delay")
    assert ready[("slow", "1")][5] == "up to 16 rows, 0 ms delay"


def test_serve_command_serves_a_package_folder_with_strict(packages: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = _serve(str(packages / "tiny" / "1"), "--port", str(port), "--strict")
    try:
        _wait_ready(process, url)
        answer = httpx.post(f"{url}/v2/models/tiny/infer", json=BODY, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
        assert httpx.get(f"{url}/v2/models/slow", timeout=10).status_code == 404
        logits = np.asarray(answer.json()["outputs"][0]["data"])
        assert logits.shape == (20,)
    finally:
        stdout, _ = _stop(process)
    assert f"package {(packages / 'tiny' / '1').resolve()} (model 'tiny' version 1)" in stdout


def test_serve_command_strict_refuses_a_broken_model_in_one_line(
    packages: Path, tmp_path: Path
) -> None:
    shutil.copytree(packages / "tiny", tmp_path / "tiny")
    (tmp_path / "tiny" / "2" / "shipyard.json").write_text("{not json")
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", str(tmp_path), "--strict"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: refusing to start (strict): 1 model(s) failed to load")
    assert "model 'tiny': version 2: cannot read" in line
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_serve_command_missing_repository_is_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert "nope is not a folder: pass a repository" in line


def test_serve_command_serves_a_model_file_from_a_temporary_package(small_onnx: Artifact) -> None:
    """As `mlserver start` or a one-model Triton repository would: one file, served at once."""
    assert small_onnx.path is not None
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    options = ("--name", "tiny-file", "--max-batch-size", "4")
    process = _serve(str(small_onnx.path), "--port", str(port), *options)
    x = np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype(np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1, 8, 8],
                        "data": x.ravel().tolist()}]}  # fmt: skip
    try:
        _wait_ready(process, url)
        answer = httpx.post(f"{url}/v2/models/tiny-file/infer", json=body, timeout=10)
        config = httpx.get(f"{url}/v2/models/tiny-file/config", timeout=10).json()
    finally:
        stdout, _ = _stop(process)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["shape"] == [2, 10]
    with shipyard.open_session(small_onnx) as session:
        expected = session.run({"x": x})["logits"]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 10)), expected, atol=1e-6)
    assert config["max_batch_size"] == 4
    assert f"packaged {small_onnx.path} as model 'tiny-file' version 1 in a temporary" in stdout
    # The startup table names the temporary package; it is gone once the server stopped.
    match = re.search(r"package (\S+) \(model 'tiny-file' version 1\)", stdout)
    assert match is not None, stdout
    assert Path(match[1]).name == "1" and not Path(match[1]).parent.parent.exists()


def test_serve_command_refuses_file_options_for_a_folder(packages: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", str(packages), "--name", "x", "--threads", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: --name, --threads apply to a model file; ")


def test_serve_command_missing_model_file_is_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", str(tmp_path / "nope.onnx")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line == f"error: model file {tmp_path / 'nope.onnx'} does not exist"
