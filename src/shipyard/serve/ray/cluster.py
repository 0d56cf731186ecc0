"""The Ray cluster a command runs on: an existing one (``address``), or a local one-node
cluster started for the command and stopped with it, leaving no process behind.

A local cluster listens on loopback only as far as Ray allows:
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray's own services on 127.0.0.1 (the node
address alone does not), and usage statistics are off. Its workers import the same Shipyard
as this process (its folder goes first on their ``PYTHONPATH``).

Ingress (``ingress``), for a local cluster:

- ``"haproxy"``: Ray Serve's high-throughput ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, Ray
  2.55+): HAProxy on the HTTP port routes each request straight to a replica's own HTTP
  server. Measured here on the digits CNN, c=32: ~2,100-2,900 req/s against ~320 through Ray's
  Python proxy. Ray binds HAProxy's stats and Prometheus listeners on all interfaces (its
  template has no host setting); we give them free ports.
- ``"proxy"``: Ray Serve's Python HTTP proxy; every listener on loopback.

An existing cluster keeps its own ingress: set these variables where it starts (the KubeRay
manifests of ``shipyard deploy k8s`` do).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from shipyard.errors import InputError, MissingExtraError

logger = logging.getLogger(__name__)

INGRESSES = ("haproxy", "proxy")
# Seconds a replica stays reachable after it is told to stop, so that HAProxy takes it out of
# rotation first (Ray's default, 30, is for cloud load balancers; a local HAProxy needs ~1).
DRAIN_S = 1.0


def require_ray() -> Any:
    """``ray``, or MissingExtraError naming the extra."""
    try:
        import ray
        import ray.serve  # ray[serve], not only ray
    except ImportError as error:
        raise MissingExtraError("the Ray engine", "ray", error.name or "ray") from None
    return ray


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def local_environment(ingress: str) -> dict[str, str]:
    """Environment variables a local cluster starts with (its processes inherit them)."""
    if ingress not in INGRESSES:
        raise InputError(f"unknown Ray ingress {ingress!r}: choose one of {', '.join(INGRESSES)}")
    import shipyard

    source = str(Path(shipyard.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": path,
    }
    if ingress == "proxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"  # also when this process's environment says 1
    else:
        env |= {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
            # HAProxy's per-request log for Ray's HTTP metrics cost 34 us of the ~400 us a
            # digits request takes (its manager parses every line); /metrics counts them.
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        }
    return env


class Cluster:
    """A Ray connection for one command. ``address`` None: a local one-node cluster with
    ``num_cpus`` logical CPUs (None: the machine's), started by :meth:`start`, stopped by
    :meth:`stop`. Otherwise the cluster at ``address`` (``auto``, ``ray://...``), which
    :meth:`stop` only disconnects from. A process already connected to Ray is reused as it is
    (and left connected)."""

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float | None = None,
        ingress: str = "haproxy",
    ) -> None:
        self.address, self.num_cpus, self.ingress = address, num_cpus, ingress
        self.env = local_environment(ingress) if address is None else {}
        self.owned = False  # a local cluster this object started
        self.reused = False
        self._before: dict[str, str | None] = {}  # our environment before start()

    @property
    def local(self) -> bool:
        return self.address is None and not self.reused

    def start(self) -> None:
        ray = require_ray()
        if ray.is_initialized():
            self.reused = True
            return
        # Replica logs stay in Ray's session folder (/tmp/ray/session_latest/logs); a model
        # that fails to load reaches the command through the deployment status.
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        if self.address is not None:
            ray.init(address=self.address, **quiet)
            return
        # The cluster's processes inherit these; our own Serve client reads some, too.
        self._before = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported, and this process
        # chooses the addresses its services bind: set it here too if ray came in earlier.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        cpus = max(self.num_cpus or 0, float(os.cpu_count() or 1))
        ray.init(
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            num_cpus=int(cpus + 0.999),
            **quiet,
        )
        self.owned = True

    def stop(self) -> list[int]:
        """Disconnect; a local cluster is shut down and every process it started is waited
        for (killed after 15 s). Returns the ids of processes that had to be killed."""
        import ray

        if self.reused or not ray.is_initialized():
            return []
        if not self.owned:
            ray.shutdown()
            return []
        family = psutil.Process().children(recursive=True)
        with contextlib.suppress(Exception):  # the controller may be gone already
            from ray import serve

            serve.shutdown()
        ray.shutdown()
        _, alive = psutil.wait_procs(family, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        for key, value in self._before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if alive:
            logger.warning("killed Ray processes left after shutdown: %s", [p.pid for p in alive])
        return [p.pid for p in alive]


def haproxy_routes(cluster: Cluster, wanted: dict[str, int]) -> bool:
    """True when the local cluster's HAProxy routes each application ``wanted`` names to at
    least that many replicas that are UP (its stats page, ``/stats;csv``), and no older
    HAProxy is still running: Ray reloads HAProxy by starting a new process beside the old
    one, both accept connections for about half a second, and the old one then closes
    those it holds (measured: 32 connections answered by nothing at once)."""
    haproxies = [p for p in psutil.Process().children(recursive=True) if _name(p) == "haproxy"]
    if len(haproxies) != 1:
        return False
    port = cluster.env["RAY_SERVE_HAPROXY_STATS_PORT"]
    try:
        text = fetch(f"http://127.0.0.1:{port}/stats;csv")[1].decode()
    except OSError:
        return False
    up: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")  # pxname, svname, ..., status (18th)
        if len(fields) > 17 and fields[1].startswith("SERVE_REPLICA") and fields[17] == "UP":
            up[fields[0]] = up.get(fields[0], 0) + 1
    return all(up.get(f"http-{app}", 0) >= count for app, count in wanted.items())


def _name(process: psutil.Process) -> str | None:
    """``process``'s name, None when it exited since it was listed (psutil then raises
    NoSuchProcess, or FileNotFoundError from /proc when the exit races its read)."""
    try:
        return str(process.name())
    except (psutil.Error, OSError):
        return None


def fetch(url: str, body: bytes | None = None, token: str | None = None) -> tuple[int, bytes]:
    """(status, body) of one HTTP request (POST when ``body`` is given); OSError when the
    server cannot be reached. The standard library's client: httpx is a test dependency."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``condition()`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


__all__ = [
    "INGRESSES",
    "Cluster",
    "fetch",
    "free_port",
    "haproxy_routes",
    "local_environment",
    "require_ray",
    "wait_until",
]
