"""What decoding a V2 JSON request costs the server, per way of reading it.

For one batch-1 request of the digits CNN (1x1x8x8 float32) and of ResNet-18 (1x3x224x224,
3.1 MB as JSON), it times three decoders on the same bytes, interleaved (every round runs each
once, rotating which goes first), and prints medians with min/max and each as a ratio to the
standard library:

- ``stdlib``: ``json.loads`` + ``np.asarray`` (the baseline);
- ``orjson``: ``orjson.loads`` + ``np.asarray`` (what the server used before simdjson);
- ``shipyard``: ``shipyard.serve.codec.decode_request`` (simdjson straight into arrays, checks
  included).

Usage: ``.venv/bin/python benchmarks/serve/decode.py [--rounds 50] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from shipyard.hardware import hardware_fingerprint
from shipyard.serve.codec import decode_request

SHAPES = {"digits": (1, 1, 8, 8), "resnet18": (1, 3, 224, 224)}


def body(shape: tuple[int, ...]) -> bytes:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": list(shape), "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def decoders(shape: tuple[int, ...]) -> dict[str, Callable[[bytes], np.ndarray]]:
    def with_numpy(loads: Callable[[bytes], Any]) -> Callable[[bytes], np.ndarray]:
        def decode(raw: bytes) -> np.ndarray:
            tensor = loads(raw)["inputs"][0]
            return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])

        return decode

    return {
        "stdlib": with_numpy(json.loads),
        "orjson": with_numpy(orjson.loads),
        "shipyard": lambda raw: decode_request(raw).inputs["x"],
    }


def measure(shape: tuple[int, ...], rounds: int) -> dict[str, list[float]]:
    raw = body(shape)
    ways = decoders(shape)
    first = {name: decode(raw) for name, decode in ways.items()}  # warm-up, and agreement
    for name, array in first.items():
        np.testing.assert_array_equal(array, first["stdlib"], err_msg=name)
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter_ns()
            ways[name](raw)
            times[name].append((time.perf_counter_ns() - started) / 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    report: dict[str, Any] = {"fingerprint": hardware_fingerprint(), "models": {}}
    for model, shape in SHAPES.items():
        times = measure(shape, args.rounds)
        size = len(body(shape))
        base = float(np.median(times["stdlib"]))
        print(f"{model}: one batch-1 JSON request of {size:,} bytes, {args.rounds} rounds")
        rows = {}
        for name, values in times.items():
            p50 = float(np.median(values))
            rows[name] = {"p50_ms": p50, "min_ms": min(values), "max_ms": max(values)}
            print(
                f"  {name:<9} p50 {p50:9.3f} ms  (min {min(values):.3f}, max {max(values):.3f})"
                f"  {base / p50:6.2f}x stdlib"
            )
        report["models"][model] = {"bytes": size, "decoders": rows}
    report["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    fingerprint = report["fingerprint"]
    print(
        f"{fingerprint.get('cpu')}, {fingerprint.get('usable_cores')} cores; one thread; "
        f"load average {load_before[0]:.2f} -> {report['loadavg']['after'][0]:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
