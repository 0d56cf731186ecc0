"""Ray Serve peer: V2 JSON in and out on /v2/models/{model}/infer, ``@serve.batch`` batching.

Usage: python ray_server.py MODEL.onnx NAME PORT MAX_BATCH TIMEOUT_S

One replica (1 CPU) behind Serve's HTTP proxy on 127.0.0.1:PORT. Prints "shipyard-peer-ready"
once ``serve.run`` returns; on SIGINT/SIGTERM it calls ``serve.shutdown(); ray.shutdown()``,
which stops every process Ray started. The handler returns a ``Response`` with the encoded body:
a returned dict goes out chunked, and the load client reads Content-Length.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response
from v2 import decode, encode, open_session


def deployment(max_batch: int, timeout: float) -> type:
    @serve.deployment(
        num_replicas=1,
        ray_actor_options={"num_cpus": 1},
        # Serve's default (5) would cap the batch at 5: let every client request reach the batcher.
        max_ongoing_requests=1024,
    )
    class OnnxDeployment:
        def __init__(self, path: str, name: str) -> None:
            self.session = open_session(path)
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.input = self.session.get_inputs()[0].name
            self.name = name

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=timeout)
        async def infer(self, inputs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
            values = self.session.run(self.outputs, {self.input: np.concatenate(inputs)})
            bounds = np.cumsum([len(x) for x in inputs])[:-1]
            parts = [np.split(value, bounds) for value in values]
            return [dict(zip(self.outputs, v, strict=True)) for v in zip(*parts, strict=True)]

        async def __call__(self, request: Request) -> Response:
            x = decode(await request.json())[self.input]
            body = json.dumps(encode(self.name, await self.infer(x))).encode()
            return Response(body, media_type="application/json")

    return OnnxDeployment


def main() -> None:
    path, name, port, max_batch, timeout = sys.argv[1:6]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="warning",
        log_to_driver=True,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": int(port)})
    app = deployment(int(max_batch), float(timeout)).bind(path, name)
    serve.run(app, name=name, route_prefix=f"/v2/models/{name}/infer")
    print("shipyard-peer-ready", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
