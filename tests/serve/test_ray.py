"""The Ray engine: its settings, its /metrics, a replica killed under load, and the command
stopped by SIGTERM or Ctrl-C with no process left. The shared conformance tests
(test_protocol, test_errors, test_batching) run on it too, as their ``[ray]`` variants."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from shipyard.errors import InputError
from shipyard.serve.layout import find_layout
from shipyard.serve.ray.exposition import merge
from shipyard.serve.ray.settings import Scale, deployment_options, model_config, parse_autoscale
from shipyard.serving import ServingConfig
from tests.conftest import REPO
from tests.serve.conftest import add_version, reference, wait_for

X = np.random.default_rng(3).standard_normal((1, 1, 8, 8)).astype(np.float32)
BODY = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": X.ravel().tolist()}]
}


# -- settings and metrics (no Ray) -----------------------------------------------------------


def test_deployment_options_follow_the_manifest_and_flags_override_it() -> None:
    config = ServingConfig(max_batch_size=16, max_queue_size=100, instances=2, threads=2)
    options = deployment_options(config, Scale())
    # The batcher holds 100 waiting + 2 batches of 16: Ray lets twice that reach a replica.
    assert options["max_ongoing_requests"] == 2 * (100 + 32)
    assert options["max_queued_requests"] == 100
    assert options["num_replicas"] == 1 and options["ray_actor_options"] == {"num_cpus": 4.0}
    scaled = ServingConfig(replicas=3, replica_cpus=0.5, autoscaling={"max_replicas": 5})
    options = deployment_options(scaled, Scale())
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 5,
        "target_ongoing_requests": 16,  # one full batch per instance
    }
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    flags = deployment_options(scaled, Scale(replicas=2, replica_cpus=1))
    assert flags["num_replicas"] == 2 and "autoscaling_config" not in flags
    assert flags["ray_actor_options"] == {"num_cpus": 1}
    bounds = deployment_options(ServingConfig(), Scale(autoscale=parse_autoscale("2,6")))
    assert bounds["autoscaling_config"]["min_replicas"] == 2
    assert bounds["autoscaling_config"]["max_replicas"] == 6


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Scale(replicas=2, autoscale=(1, 2)), "exclude each other"),
        (lambda: Scale(autoscale=(3, 2)), "MIN <= MAX"),
        (lambda: parse_autoscale("4"), "MIN,MAX"),
        (lambda: Scale(replica_cpus=0), "positive"),
        (lambda: ServingConfig(autoscaling={"min_replicas": 3, "max_replicas": 2}), "exceeds"),
    ],
)
def test_bad_scale_settings_say_what_to_fix(make: Any, message: str) -> None:
    with pytest.raises((InputError, ValueError), match=message):
        make()


def test_a_stateful_model_runs_on_one_replica_only() -> None:
    sequence = {"state": {"input": "state", "output": "stateN"}}
    assert deployment_options(ServingConfig(sequence=sequence), Scale())["num_replicas"] == 1
    with pytest.raises(InputError, match="on 1 replica, not 2"):
        deployment_options(ServingConfig(sequence=sequence), Scale(replicas=2))
    with pytest.raises(InputError, match="on 1 replica, not 4"):
        deployment_options(ServingConfig(sequence=sequence), Scale(autoscale=(1, 4)))


def test_the_newest_manifest_decides_how_a_model_scales(packages: Path, tmp_path: Path) -> None:
    add_version(packages, tmp_path, "tiny", 1, serving={"replicas": 5})
    add_version(packages, tmp_path, "tiny", 2, serving={"replicas": 2, "replica_cpus": 0.25})
    config = model_config(find_layout(tmp_path), "tiny")
    assert (config.replicas, config.replica_cpus) == (2, 0.25)


def test_metrics_of_replicas_merge_into_one_exposition_labelled_by_replica() -> None:
    text = (
        b"# HELP shipyard_requests_total Requests\n# TYPE shipyard_requests_total counter\n"
        b'shipyard_requests_total{model="m",status="200"} 3.0\n'
        b"# HELP shipyard_inflight_requests In flight\n# TYPE shipyard_inflight_requests gauge\n"
        b"shipyard_inflight_requests 1.0\n"
    )
    merged = merge([("a", text), ("b", text.replace(b"3.0", b"4.0"))]).decode()
    lines = merged.splitlines()
    assert lines.count("# TYPE shipyard_requests_total counter") == 1
    assert 'shipyard_requests_total{replica="a",model="m",status="200"} 3.0' in lines
    assert 'shipyard_requests_total{replica="b",model="m",status="200"} 4.0' in lines
    assert 'shipyard_inflight_requests{replica="b"} 1.0' in lines
    # A family's samples follow its own TYPE line, as the text format requires.
    assert lines.index("# TYPE shipyard_inflight_requests gauge") > lines.index(
        'shipyard_requests_total{replica="b",model="m",status="200"} 4.0'
    )


# -- on a cluster ----------------------------------------------------------------------------


def _replica_processes(model: str) -> list[psutil.Process]:
    title = f"ray::ServeReplica:{model}:{model}"
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if title in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def _serving(url: str, model: str) -> set[str]:
    """The replicas whose /metrics count answers of ``model``."""
    text = httpx.get(url, timeout=30).text
    return {
        line.split('replica="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("shipyard_requests_total{") and f'model="{model}"' in line
    }


class Load:
    """Clients sending BODY to ``url`` in a background thread until stopped; every
    answer recorded as (monotonic time, status or the exception's name)."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url, self.concurrency = url, concurrency
        self.results: list[tuple[float, int | str]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            try:
                status: int | str = (await http.post(self.url, json=BODY)).status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            self.results.append((time.monotonic(), status))

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            await asyncio.gather(*(self._client(http) for _ in range(self.concurrency)))

    def ok_since(self, moment: float) -> int:
        return sum(1 for at, status in list(self.results) if at > moment and status == 200)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


@pytest.mark.slow
def test_a_killed_replica_fails_only_its_requests_and_ray_replaces_it(
    ray_server: Any, packages: Path
) -> None:
    before = {p.pid for p in _replica_processes("twin")}
    assert len(before) == 2, "twin runs two replicas"
    url = f"{ray_server.url}/v2/models/twin/infer"
    concurrency = 8
    with Load(url, concurrency) as load:
        wait_for(lambda: load.ok_since(0) >= 200, timeout=60, what="requests to succeed")
        victim = psutil.Process(min(before))
        killed_at = time.monotonic()
        victim.kill()  # SIGKILL: a crash, not a graceful stop

        def replaced() -> bool:
            now = {p.pid for p in _replica_processes("twin")}
            return len(now) == 2 and victim.pid not in now

        wait_for(replaced, timeout=120, what="Ray to start a new replica")
        replaced_at = time.monotonic()
        # Back in service: both live replicas (one of them new) report answers to twin.
        metrics = f"{ray_server.url}/metrics"
        wait_for(lambda: len(_serving(metrics, "twin")) == 2, timeout=120, what="two serving")
        wait_for(lambda: load.ok_since(replaced_at) >= 200, timeout=60, what="requests after")
    failed = [(at, status) for at, status in load.results if status != 200]
    # At most the requests in flight on the killed replica fail: never more than the clients.
    assert len(failed) <= concurrency, failed
    assert all(at >= killed_at for at, _ in failed), "nothing failed before the kill"
    assert load.ok_since(killed_at) > 0 and load.ok_since(replaced_at) >= 200
    answer = httpx.post(url, json=BODY, timeout=30).json()
    logits = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(1, 10)
    np.testing.assert_allclose(logits, reference(packages, "tiny", 1, X), rtol=1e-6, atol=1e-6)


def _serve(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    """``shipyard serve ... --engine ray`` in its own process group (as a terminal runs it);
    its stdout lines collected, and an event set once it prints where it serves."""
    command = [sys.executable, "-m", "shipyard", "serve", *args, "--engine", "ray"]
    # Not the session cluster's RAY_* settings: the command starts a cluster of its own.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    clean |= {"PYTHONPATH": str(REPO / "src"), **(env or {})}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "serving on" in line:
                serving.set()

    threading.Thread(target=read, daemon=True).start()
    return process, lines, serving


def _stopped_cleanly(process: subprocess.Popen[str], family: list[psutil.Process]) -> None:
    assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    alive = []
    for member in family:
        try:
            if member.status() != psutil.STATUS_ZOMBIE:
                alive.append((member.pid, member.cmdline()[:2]))
        except psutil.NoSuchProcess:
            continue
    assert alive == [], f"processes left behind: {alive}"


def _port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_serve_command_on_ray_serves_a_renamed_package_and_stops_on_sigterm(
    packages: Path,
) -> None:
    port = _port()
    process, lines, serving = _serve(
        "--model-dir", str(packages / "tiny" / "2"), "--model-name", "digits-classifier",
        "--port", str(port), "--replicas", "2", env={"SHIPYARD_SERVE_TOKEN": "s3cret"},
    )  # fmt: skip
    try:
        assert serving.wait(timeout=180), "".join(lines) + (process.stderr.read() or "")
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
        assert len(_replica_processes("digits-classifier")) == 2
        url = f"http://127.0.0.1:{port}"
        infer = f"{url}/v2/models/digits-classifier/infer"
        denied = httpx.post(infer, json=BODY, timeout=30)
        assert denied.status_code == 401 and "token" in denied.json()["error"]
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401  # the front too
        user = {"Authorization": "Bearer s3cret"}
        answer = httpx.post(infer, json=BODY, headers=user, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == "2"
        logits = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(1, 10)
        np.testing.assert_allclose(logits, reference(packages, "tiny", 2, X), atol=1e-6)
        assert httpx.get(f"{url}/v2/models/tiny", headers=user, timeout=30).status_code == 404
        process.send_signal(signal.SIGTERM)
        _stopped_cleanly(process, family)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    table = " ".join("".join(lines).split())  # the title may wrap
    assert "digits-classifier" in table and f"serving on http://127.0.0.1:{port}" in table
    assert "local one-node cluster, haproxy ingress" in table


@pytest.mark.slow
def test_serve_command_on_ray_stops_on_ctrl_c_with_no_process_left(packages: Path) -> None:
    port = _port()
    process, lines, serving = _serve(str(packages), "--port", str(port), "--ray-ingress", "proxy")
    try:
        assert serving.wait(timeout=180), "".join(lines) + (process.stderr.read() or "")
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v2/health/ready", timeout=30).status_code == 200
        response = httpx.post(f"{url}/v2/models/rows/infer", timeout=30, json={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 6]}]
        })  # fmt: skip
        assert response.json()["outputs"][0]["data"] == [3.0, 6.0]
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        _stopped_cleanly(process, family)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "proxy ingress" in " ".join("".join(lines).split())


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_the_command_with_its_reason(
    packages: Path, tmp_path: Path
) -> None:
    shutil.copytree(packages / "tiny" / "1", tmp_path / "broken" / "1")
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", str(tmp_path), "--engine", "ray",
         "--port", str(_port())],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error: model 'broken' did not deploy on Ray: "), error
    assert "no version that loads" in error and "model.onnx" in error, error
    assert time.monotonic() - started < 240
    leftover = [p.pid for p in psutil.process_iter(["cmdline"]) if "ServeReplica:broken" in
                " ".join(p.info["cmdline"] or [])]  # fmt: skip
    assert leftover == []
