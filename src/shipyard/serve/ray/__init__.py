"""The Ray engine: the served folder's models as Ray Serve deployments (scale-out).

``RayServer(path, ...).start()`` deploys every model of a repository (or the one model of a
model or package folder) on a Ray cluster: each model an application of its own with its
replicas, CPUs and autoscaling from its manifest or the flags (:mod:`.settings`), each replica
running the single-process server's app (:mod:`.deployment`), plus the front for the
server-wide endpoints. ``run_ray_server`` is the blocking form ``shipyard serve --engine ray``
uses: it stops on SIGINT/SIGTERM, and a local cluster leaves no process behind
(:mod:`.cluster`). Ray itself is imported only here, on use (the ``ray`` extra).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.serve import MAX_BODY_BYTES
from shipyard.serve.errors import RepositoryError
from shipyard.serve.layout import Layout, find_layout, suggest
from shipyard.serve.ray.cluster import Cluster, fetch, haproxy_routes, wait_until
from shipyard.serve.ray.settings import (
    FRONT,
    Scale,
    cpus_needed,
    deployment_options,
    model_config,
    replica_bounds,
    served_folder,
)

logger = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class ModelRow:
    """One deployed model, as the startup table shows it."""

    model: str
    versions: list[str]  # the versions READY in its first replica
    replicas: str  # "2" or "1–4" (autoscaling)
    running: int  # replicas running when the table was made
    cpus: float  # per replica
    batching: str
    route: str


@dataclass(frozen=True)
class RayStartup:
    """What ``on_loaded`` receives: the served layout, the URL, one row per model, and the
    cluster (local or the address joined) with its ingress."""

    layout: Layout
    url: str
    rows: list[ModelRow]
    cluster: str


class RayServer:
    """The models of ``path`` (a repository, model or package folder, or its Layout) on Ray
    Serve, HTTP on ``host:port``. ``address``: join that cluster (None: a local one-node
    cluster with ``num_cpus`` logical CPUs, at least what the replicas reserve);
    ``ingress``: ``haproxy`` or ``proxy`` (:mod:`.cluster`); ``scale``: flags overriding the
    manifests' replicas/autoscaling/CPUs; the rest as :func:`shipyard.serve.create_app`."""

    def __init__(
        self,
        path: str | Path | Layout,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        address: str | None = None,
        ingress: str = "haproxy",
        scale: Scale | None = None,
        num_cpus: float | None = None,
        auth_token: str | None = None,
        admin_token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        watch_seconds: float | None = None,
        body_timeout: float = 30.0,
        start_timeout: float = 300.0,
    ) -> None:
        self.layout = path if isinstance(path, Layout) else find_layout(path)
        self.models = self.layout.model_names()
        if not self.models:
            raise RepositoryError(f"no model in {self.layout.describe()}; {suggest(self.layout)}")
        scale = scale or Scale()
        self.configs = {m: model_config(self.layout, m) for m in self.models}
        self.plans = {m: deployment_options(c, scale) for m, c in self.configs.items()}
        cpus = None if address else max(num_cpus or 0.0, cpus_needed(self.plans))
        self.cluster = Cluster(address, cpus, ingress)
        self.host, self.port, self.start_timeout = host, port, start_timeout
        self.tokens = {"auth_token": auth_token, "admin_token": admin_token}
        self.app_options = {
            **self.tokens,
            "max_body_bytes": max_body_bytes,
            "watch_seconds": watch_seconds,
            "body_timeout": body_timeout,
        }
        bracketed = f"[{host}]" if ":" in host else host
        self.url = f"http://{bracketed}:{port}"
        # Called once connected to Ray (run_ray_server puts its signal handlers back).
        self.after_connect: Callable[[], None] | None = None

    def start(self) -> RayStartup:
        """Deploy and wait until every model answers; on failure stop what was started."""
        self.cluster.start()
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # our table says it all
        try:
            if self.after_connect is not None:
                self.after_connect()
            self._deploy()
            return self._startup()
        except BaseException:
            self.stop()
            raise

    def _deploy(self) -> None:
        from ray import serve
        from ray.serve.api import RunTarget

        from shipyard.serve.ray.deployment import QUIET, front_app, model_app

        serve.start(http_options={"host": self.host, "port": self.port}, logging_config=QUIET)
        targets = []
        for model, options in self.plans.items():
            folder, name = served_folder(self.layout, model)
            args = {"folder": folder, "name": name, "options": self.app_options}
            app = model_app(args | {"deployment": options})
            targets.append(RunTarget(app, name=model, route_prefix=f"/v2/models/{model}"))
        folder, name = served_folder(self.layout, None)
        front = {"folder": folder, "models": self.models, "options": self.tokens | {"name": name}}
        targets.append(RunTarget(front_app(front), name=FRONT))
        serve.run_many(targets, wait_for_applications_running=False)
        wait_until(self._running, self.start_timeout, "the models' replicas to start")
        wait_until(self._answers, 60, f"{self.url}/v2/health/ready to answer 200")
        if self.cluster.local and self.cluster.ingress == "haproxy":
            wait_until(self._routed, 60, "HAProxy to route to every replica")

    def _running(self) -> bool:
        """True once every application runs; RepositoryError when one failed to deploy."""
        from ray import serve

        apps = serve.status().applications
        for name in [*self.models, FRONT]:
            status = apps.get(name)
            if status is None or status.status in ("DEPLOYING", "NOT_STARTED"):
                return False
            if status.status != "RUNNING":
                raise RepositoryError(f"model '{name}' did not deploy on Ray: {_why(status)}")
        return True

    def _routed(self) -> bool:
        """True once HAProxy routes to each model's replicas itself. Until then requests go
        through Serve's fallback proxy, and the reload that adds the replicas closes the
        idle connections clients hold (a keep-alive client then loses its next request)."""
        wanted = {model: replica_bounds(o)[0] for model, o in self.plans.items()}
        return haproxy_routes(self.cluster, wanted | {FRONT: 1})

    def _answers(self) -> bool:
        try:
            return fetch(f"{self.url}/v2/health/ready")[0] == 200
        except OSError:
            return False

    def _startup(self) -> RayStartup:
        from ray import serve

        apps = serve.status().applications
        token = self.tokens["admin_token"] or self.tokens["auth_token"]
        index = fetch(f"{self.url}/v2/repository/index", b'{"ready": true}', token)[1]
        ready = json.loads(index)
        rows = []
        for model in self.models:
            states = apps[model].deployments[model].replica_states
            options, config = self.plans[model], self.configs[model]
            low, high = replica_bounds(options)
            most, delay = config.max_batch_size, config.max_queue_delay_ms
            rows.append(
                ModelRow(
                    model,
                    [e["version"] for e in ready if e["name"] == model],
                    f"{low}" if low == high else f"{low}–{high}",
                    sum(n for s, n in states.items() if getattr(s, "value", s) == "RUNNING"),
                    options["ray_actor_options"]["num_cpus"],
                    f"up to {most} rows, {delay:g} ms delay" if most else "off",
                    f"/v2/models/{model}",
                )
            )
        where = f"cluster {self.cluster.address}"
        if self.cluster.local:
            where = "local one-node cluster"
        if self.cluster.reused:
            where = "the Ray cluster this process is connected to"
        ingress = f"{self.cluster.ingress} ingress" if self.cluster.local else "its own ingress"
        return RayStartup(self.layout, self.url, rows, f"{where}, {ingress}")

    def stop(self) -> list[int]:
        """Undeploy (every replica drains), disconnect; a local cluster is shut down. Returns
        the ids of Ray processes that had to be killed (none, normally)."""
        import ray

        if ray.is_initialized() and not self.cluster.local:
            from ray import serve

            for name in [*self.models, FRONT]:
                try:
                    serve.delete(name)
                except Exception as error:  # gone already, or the cluster is
                    logger.warning("could not delete application %s: %s", name, error)
        return self.cluster.stop()


def _why(status: Any) -> str:
    """The reason an application failed, from its deployments' messages: the last line of
    a replica's traceback (our errors say what to do), else the application's message."""
    for deployment in status.deployments.values():
        lines = [line.strip() for line in str(deployment.message).splitlines() if line.strip()]
        if lines:
            return lines[-1][-2000:]
    return " ".join(str(status.message).split())[-2000:]


def run_ray_server(
    server: RayServer, on_loaded: Callable[[RayStartup], None] | None = None
) -> None:
    """Start ``server``, call ``on_loaded``, serve until SIGINT/SIGTERM, then stop it.

    Both signals interrupt the main thread (deploying or serving) as Ctrl-C does, also while
    Ray starts (``ray.init`` installs handlers of its own: SIGTERM would end this process
    with a crash report and no shutdown); a second one while stopping is ignored.
    """

    def interrupt(signum: int, frame: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    def install() -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, interrupt)

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    install()
    server.after_connect = install
    try:
        startup = server.start()  # interrupted: it stops what it started, and re-raises
        if on_loaded is not None:
            on_loaded(startup)
        threading.Event().wait()  # until a signal interrupts it
    except KeyboardInterrupt:
        pass
    finally:
        try:
            server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


__all__ = ["ModelRow", "RayServer", "RayStartup", "Scale", "run_ray_server"]
