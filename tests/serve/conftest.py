"""Serving fixtures: real packages built once per session, real uvicorn servers on loopback."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

import shipyard
from shipyard.package import load_package
from shipyard.recipe import parse_recipe
from shipyard.serve import create_app

RECIPE = """\
name: {name}
version: {version}
model: {{source: "{source}", kwargs: {kwargs}}}
signature:
  inputs: [{{name: x, dtype: float32, shape: {shape}, finite: {finite}}}]
  outputs: [{{name: logits, dtype: float32, shape: {out}}}]
passes: [{{export: {{dynamo: false}}}}]
validate: {{samples: 4}}
"""
# The image models forbid NaN/Inf inputs (finite: true); "rows" takes them.
IMAGE = ("[batch, 1, 8, 8]", "[batch, 10]")
# name, version, factory, kwargs, (input shape, output shape)
BUILDS = [
    ("tiny", 1, "tests.conftest:small_net", {}, IMAGE),
    ("tiny", 2, "tests.serve.models:shifted_net", {"shift": 1.0}, IMAGE),
    ("slow", 1, "tests.serve.models:slow_net", {}, IMAGE),
    ("rows", 1, "tests.serve.models:row_mean", {}, ("[batch, seq]", "[batch, 2]")),
]


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/<model>/<version>/`` for every entry of BUILDS, built by shipyard.build."""
    root = tmp_path_factory.mktemp("packages")
    for name, version, source, kwargs, (shape, out) in BUILDS:
        text = RECIPE.format(
            name=name,
            version=version,
            source=source,
            kwargs=json.dumps(kwargs),
            shape=shape,
            out=out,
            finite="true" if (shape, out) == IMAGE else "false",
        )
        shipyard.build(parse_recipe(text), root, run_bench=False)
    return root


def add_version(
    packages: Path,
    repository: Path,
    model: str,
    version: int,
    *,
    source: tuple[str, int] | None = None,
    serving: dict[str, Any] | None = None,
) -> Path:
    """Copy package ``source`` (default ``(model, version)``) to ``repository/model/version``
    and write ``serving`` into its manifest, as a recipe's ``serve:`` section will."""
    from_model, from_version = source or (model, version)
    target = repository / model / str(version)
    shutil.copytree(packages / from_model / str(from_version), target)
    manifest_path = target / "shipyard.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = version
    if serving is not None:
        manifest["serving"] = serving
    manifest_path.write_text(json.dumps(manifest))
    return target


def reference(packages: Path, model: str, version: int, x: np.ndarray) -> np.ndarray:
    """The in-process ONNX Runtime answer for ``x``: what the server must return."""
    package = load_package(packages / model / str(version))
    with shipyard.open_session(package.artifacts[0], threads=1) as session:
        return session.run({"x": x})["logits"]


class Server:
    """A uvicorn server in a background thread on a free loopback port."""

    def __init__(self, repository: Path, **options: Any) -> None:
        self.app = create_app(repository, **options)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the startup loads finished (polling, no fixed sleep)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url) as client:
            while time.monotonic() < deadline:
                try:
                    response = client.get("/v2/health/ready")
                    if response.status_code == 200 or "loading" not in response.text:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        raise TimeoutError(f"server at {self.url} did not finish loading in {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "server did not stop"


@contextlib.contextmanager
def serving(repository: Path, **options: Any) -> Iterator[Server]:
    server = Server(repository, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition()`` until true (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0.0 when absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                return float(value)
    return 0.0


@pytest.fixture(scope="session")
def repository(packages: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared repository: tiny (v1 + v2, both served), policy (latest 1 of 2), slow, rows."""
    root = tmp_path_factory.mktemp("repository")
    batching = {"max_batch_size": 16, "max_queue_delay_ms": 20}
    add_version(packages, root, "tiny", 1)
    add_version(packages, root, "tiny", 2, serving={**batching, "version_policy": {"latest": 2}})
    add_version(packages, root, "policy", 1, source=("tiny", 1))
    add_version(packages, root, "policy", 2, source=("tiny", 2))
    add_version(packages, root, "slow", 1, serving={"max_batch_size": 0, "max_queue_size": 1})
    add_version(packages, root, "rows", 1, serving=batching)
    return root


@pytest.fixture(scope="session")
def process_server(repository: Path) -> Iterator[Server]:
    """One server over the shared repository, for tests that do not change it."""
    with serving(repository) as running:
        yield running


@pytest.fixture(scope="session")
def server(process_server: Server) -> Server:
    """The single-process server over the shared repository (see ``on_each_engine``)."""
    return process_server


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


# -- the Ray engine ---------------------------------------------------------------------------
ENGINES = ["process", pytest.param("ray", marks=pytest.mark.slow)]


@pytest.fixture(scope="session")
def ray_repository(
    repository: Path, packages: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The shared repository plus "twin" (tiny v1 with two replicas), for the Ray engine."""
    root = tmp_path_factory.mktemp("ray-repository")
    for model in repository.iterdir():
        shutil.copytree(model, root / model.name)
    add_version(packages, root, "twin", 1, source=("tiny", 1), serving={"replicas": 2})
    return root


@pytest.fixture(scope="session")
def ray_server(ray_repository: Path) -> Iterator[Any]:
    """The Ray engine over ``ray_repository`` on a local cluster, stopped (every process it
    started gone) at the end of the session."""
    pytest.importorskip("ray.serve", reason="the Ray engine needs the 'ray' extra")
    from shipyard.serve.ray import RayServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Logical CPUs: six replicas of one CPU each share this machine's cores, and a Ray Data
    # run of tests/test_predict.py (which reuses this connection) needs some beside them.
    engine = RayServer(ray_repository, port=port, num_cpus=16)
    engine.start()
    try:
        yield engine
    finally:
        assert engine.stop() == [], "Ray processes outlived the shutdown"


def on_each_engine() -> Any:
    """A ``server`` fixture for one test module: its tests (and ``client``) run against the
    single-process server and against the Ray engine (``[ray]``, marked slow). Use as
    ``server = on_each_engine()`` in the module."""

    @pytest.fixture(scope="session", params=ENGINES, name="server")
    def server(request: pytest.FixtureRequest) -> Any:
        return request.getfixturevalue(f"{request.param}_server")

    return server
