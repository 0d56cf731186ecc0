"""Batching inside a Ray engine replica: the repository's own batcher or Ray's ``@serve.batch``.

Both run on one local cluster (HAProxy ingress), one replica each, serving the same digits
package through the same app (dispatch, codec, metrics): ``/v2/models/digits`` with our
batcher (``serve --engine ray`` as shipped), ``/v2/models/digits-sb`` with each version's
batcher replaced by ``@serve.batch(max_batch_size, batch_wait_timeout_s)`` from the same
serving settings, running the batch on one session in a worker thread (so the next batch forms
while one runs, as ours does). Levels alternate between the two (``--rounds`` each) so that
machine noise hits both alike. Run from the checkout::

    OMP_NUM_THREADS=1 PYTHONPATH=src:benchmarks/serve python benchmarks/serve/ray_batching.py
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from load import RECIPE, drive, request_bytes
from ray import serve

import shipyard
from shipyard.recipe import parse_recipe
from shipyard.serve import create_app
from shipyard.serve.layout import find_layout, served_as
from shipyard.serve.ray.deployment import QUIET, FullPath


class ServeBatch:
    """``Batcher.infer``'s contract on ``@serve.batch``: one session, batches in a thread."""

    def __init__(self, version: Any) -> None:
        self.signature = version.signature
        self.max_batch_size = version.batcher.max_batch_size
        self.names = self.signature.input_names
        self.session = shipyard.open_session(version.artifact, threads=1)
        self.pool = concurrent.futures.ThreadPoolExecutor(1)
        config = version.config

        @serve.batch(
            max_batch_size=config.max_batch_size,
            batch_wait_timeout_s=config.max_queue_delay_ms / 1e3,
        )
        async def run(feeds: list[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
            joined = {n: np.concatenate([f[n] for f in feeds]) for n in self.names}
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(self.pool, self.session.run, joined)
            parts, start = [], 0
            for f in feeds:
                rows = f[self.names[0]].shape[0]
                parts.append({k: v[start : start + rows] for k, v in outputs.items()})
                start += rows
            return parts

        self.run = run

    async def infer(self, feeds: Mapping[str, np.ndarray], timeout: float | None = None) -> Any:
        self.signature.check_inputs(feeds)
        return await self.run(feeds)


@serve.ingress()
class ServeBatchReplica:
    def __init__(self, folder: str, name: str) -> None:
        self.folder, self.name = folder, name

    async def __serve_build_asgi_app__(self) -> FullPath:
        app = create_app(served_as(find_layout(self.folder), self.name))
        await app.server.start_loading()
        for row in app.server.repository.rows():
            if row.served is not None:
                row.served.batcher = ServeBatch(row.served)
        return FullPath(app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from ray.serve.api import RunTarget

    from shipyard.serve.ray.cluster import Cluster, free_port, haproxy_routes, wait_until
    from shipyard.serve.ray.deployment import model_app

    folder = Path(tempfile.mkdtemp(prefix="shipyard-ray-batching-"))
    load_before = os.getloadavg()
    cluster = Cluster(num_cpus=4, ingress="haproxy")
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "serve.batch": []}
    try:
        built = shipyard.build(parse_recipe(RECIPE), folder, run_bench=False)
        manifest = json.loads((built.package_dir / "shipyard.json").read_text())
        manifest["serving"] = {"max_batch_size": 16, "max_queue_delay_ms": 0.0}
        (built.package_dir / "shipyard.json").write_text(json.dumps(manifest))
        package = str(built.package_dir)
        cluster.start()
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET)
        ours = model_app({"folder": package, "deployment": {"max_ongoing_requests": 2 * 272}})
        batch = serve.deployment(
            name="digits-sb", logging_config=QUIET, max_ongoing_requests=2 * 272
        )(ServeBatchReplica).bind(package, "digits-sb")
        serve.run_many(
            [
                RunTarget(ours, name="digits", route_prefix="/v2/models/digits"),
                RunTarget(batch, name="digits-sb", route_prefix="/v2/models/digits-sb"),
            ]
        )
        # HAProxy's last reload after the replicas started closes idle client connections.
        wanted = {"digits": 1, "digits-sb": 1}
        wait_until(lambda: haproxy_routes(cluster, wanted), 60, "HAProxy to route")
        x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
        requests = {
            "ours": request_bytes(port, False, "digits", x),
            "serve.batch": request_bytes(port, False, "digits-sb", x),
        }
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for _ in range(args.rounds):
                for who, request in requests.items():
                    asyncio.run(drive(port, request, concurrency, 1.0))
                    row = asyncio.run(drive(port, request, concurrency, args.seconds))
                    results[who].append(row)
                    print(
                        f"{who:<12} c={concurrency:>3}: {row['req_per_s']:8.0f} req/s  p50 "
                        f"{row['p50_ms']:6.2f}  p99 {row['p99_ms']:7.2f} ms  errors "
                        f"{row['errors']}",
                        flush=True,
                    )
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"load average before {load_before}, after {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
