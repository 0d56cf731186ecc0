"""`shipyard serve --workers 2`: two processes on one port, each with its own sessions, one
/metrics that adds them up, repository operations that reach every worker, and a stop that
leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc

from tests.serve.conftest import add_version, metric, wait_for
from tests.serve.test_command import BODY, REPO, _free_port, _serve, _wait_ready


@pytest.fixture(scope="module")
def workers(
    packages: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int, psutil.Process]]:
    root = tmp_path_factory.mktemp("workers")
    add_version(packages, root, "tiny", 1)
    port, grpc_port = _free_port(), _free_port()
    process = _serve(
        str(root), "--port", str(port), "--grpc-port", str(grpc_port), "--workers", "2"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url)
        yield url, grpc_port, psutil.Process(process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=60)


def _fresh(url: str) -> int:
    """One request on a new connection (so that the kernel may hand it to either worker)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post("/v2/models/tiny/infer", json=BODY).status_code


def test_both_workers_serve_and_metrics_add_up(workers: tuple[str, int, psutil.Process]) -> None:
    url, _, parent = workers
    children = parent.children(recursive=True)
    busy = {p.pid: sum(p.cpu_times()[:2]) for p in children}
    before = metric(httpx.get(f"{url}/metrics").text, "shipyard_requests_total", status="200")
    assert all(_fresh(url) == 200 for _ in range(200))
    after = metric(httpx.get(f"{url}/metrics").text, "shipyard_requests_total", status="200")
    assert after - before == 200  # one scrape of one worker counts both workers' requests
    used = [sum(p.cpu_times()[:2]) - busy[p.pid] for p in children if p.is_running()]
    assert sum(u > 0.015 for u in used) >= 2, used  # two processes did work (idle: ~0)


def test_an_unload_asked_of_one_worker_reaches_every_worker(
    workers: tuple[str, int, psutil.Process],
) -> None:
    """A load or unload answers once every worker did it: the very next requests, on new
    connections that the kernel spreads over both workers, all see it."""
    url, grpc_port, _ = workers
    assert httpx.post(f"{url}/v2/repository/models/tiny/unload", timeout=60).status_code == 200
    assert [_fresh(url) for _ in range(20)] == [503] * 20  # not loaded, on every worker
    assert httpx.post(f"{url}/v2/repository/models/tiny/load", timeout=60).status_code == 200
    assert [_fresh(url) for _ in range(20)] == [200] * 20
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    client.unload_model("tiny")
    assert [_fresh(url) for _ in range(20)] == [503] * 20  # not loaded, on every worker
    client.load_model("tiny")
    assert [_fresh(url) for _ in range(20)] == [200] * 20


def test_grpc_shares_the_port_too(workers: tuple[str, int, psutil.Process]) -> None:
    _, grpc_port, _ = workers
    x = np.zeros((1, 1, 8, 8), np.float32)
    for _ in range(20):
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensor = triton_grpc.InferInput("x", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(x)
        assert client.infer("tiny", [tensor]).as_numpy("logits").shape == (1, 10)
        client.close()


def test_sigterm_stops_every_worker(packages: Path, tmp_path: Path) -> None:
    add_version(packages, tmp_path, "tiny", 1)
    port = _free_port()
    process = _serve(str(tmp_path), "--port", str(port), "--workers", "2")
    _wait_ready(process, f"http://127.0.0.1:{port}")
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 2
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, "a worker outlived the server"
        time.sleep(0.05)


def test_ctrl_c_from_a_terminal_drains_every_worker_quietly(packages: Path, tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group: the workers leave it,
    so each drains once (forwarded by the parent) instead of stopping at a second signal with
    tracebacks; and a worker whose parent is killed stops too."""
    add_version(packages, tmp_path, "tiny", 1)
    port = _free_port()
    command = [sys.executable, "-m", "shipyard", "serve", str(tmp_path), "--port", str(port)]
    process = subprocess.Popen(  # its own process group, as a shell gives a command
        [*command, "--workers", "2", "--log-level", "warning"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    group = os.getpgid(process.pid)

    def detached() -> bool:  # each worker leaves the group first thing, as it starts
        workers = [c for c in psutil.Process(process.pid).children() if _is_worker(c)]
        return len(workers) == 2 and all(_group(c.pid) not in (None, group) for c in workers)

    try:
        _wait_ready(process, f"http://127.0.0.1:{port}")
        wait_for(detached, timeout=60, what="both workers in process groups of their own")
        os.killpg(group, signal.SIGINT)  # what a terminal does on Ctrl-C
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # a failure above: leave no server behind
            os.killpg(group, signal.SIGKILL)
            process.communicate(timeout=60)
    assert process.returncode == 0
    assert "Traceback" not in stderr, stderr


def _is_worker(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "spawn_main" in " ".join(process.cmdline())
    return False


def _group(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return os.getpgid(pid)
    return None


def test_a_worker_stops_when_its_parent_is_killed(packages: Path, tmp_path: Path) -> None:
    add_version(packages, tmp_path, "tiny", 1)
    port = _free_port()
    process = _serve(str(tmp_path), "--port", str(port), "--workers", "2")
    _wait_ready(process, f"http://127.0.0.1:{port}")
    workers = [c for c in psutil.Process(process.pid).children() if _is_worker(c)]
    process.kill()
    process.communicate(timeout=60)
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, "a worker outlived its killed parent"


def test_auto_chooses_one_worker_per_core_or_one_process_and_says_why(
    packages: Path, tmp_path: Path
) -> None:
    from shipyard.hardware import usable_cores
    from shipyard.serve.worker_count import choose_workers

    cores = usable_cores()
    add_version(packages, tmp_path / "small", "tiny", 1)
    count, why = choose_workers(tmp_path / "small")
    if cores >= 2:
        assert (count, why) == (cores, "auto: one per usable core")
    else:
        assert (count, why) == (1, "auto: one usable core")
    wide = {"instances": max(cores, 2), "threads": 1}
    add_version(packages, tmp_path / "wide", "tiny", 1, serving=wide)
    count, why = choose_workers(tmp_path / "wide")
    assert count == 1
    assert why in (
        f"auto: every model's instances × threads already use the {cores} cores",
        "auto: one usable core",
    )


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_workers_value_is_one_line(value: str, tmp_path: Path) -> None:
    process = _serve(str(tmp_path), "--workers", value)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert stderr.strip().splitlines() == [
        f"error: --workers {value}: give auto or a whole number of worker processes (1 or more)"
    ]
