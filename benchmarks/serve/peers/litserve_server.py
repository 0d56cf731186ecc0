"""LitServe peer: V2 JSON in and out on /v2/models/{model}/infer, LitServe's own batching.

Usage: python litserve_server.py MODEL.onnx NAME PORT MAX_BATCH TIMEOUT_S [--fast-queue]

peers.py runs it without ``--fast-queue`` (LitServe's ZeroMQ queue): with it, the digits CNN was
no faster here (c=32: 777 vs 858 req/s, one run each).
"""

from __future__ import annotations

import sys

import litserve as ls
import numpy as np
from v2 import decode, encode, open_session


class OnnxAPI(ls.LitAPI):
    def __init__(self, path: str, name: str, max_batch_size: int, timeout: float) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=timeout,
            api_path=f"/v2/models/{name}/infer",
        )
        self.path, self.name = path, name

    def setup(self, device: str) -> None:
        self.session = open_session(self.path)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input = self.session.get_inputs()[0].name

    def decode_request(self, request: dict) -> np.ndarray:
        return decode(request)[self.input]

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        # One inference worker runs one batch at a time, so unbatch() gets this batch's sizes.
        self.sizes = [len(x) for x in inputs]
        return np.concatenate(inputs)

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.outputs, {self.input: x})

    def unbatch(self, output: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        bounds = np.cumsum(self.sizes)[:-1]
        parts = [np.split(value, bounds) for value in output]
        return [dict(zip(self.outputs, values, strict=True)) for values in zip(*parts, strict=True)]

    def encode_response(self, output: dict[str, np.ndarray] | list[np.ndarray]) -> dict:
        if not isinstance(output, dict):  # a batch of 1 bypasses batch()/unbatch()
            output = dict(zip(self.outputs, output, strict=True))
        return encode(self.name, output)


def main() -> None:
    path, name, port, max_batch, timeout = sys.argv[1:6]
    api = OnnxAPI(path, name, int(max_batch), float(timeout))
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        timeout=False,
        fast_queue="--fast-queue" in sys.argv,
    )
    server.run(
        host="127.0.0.1",
        port=int(port),
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
