"""Load test of the V2 server on the digits CNN, with the in-process ONNX Runtime ceiling.

Builds the digits CNN package (random weights: latency does not depend on them) into a
temporary repository with the serving settings given here, starts ``python -m shipyard serve``
in its own process, and drives it from this process at each concurrency for ``--seconds``
(after a warm-up): requests/s, latency p50/p90/p99, the mean batch the server formed (from its
/metrics), the server's CPU time per request (all its threads; steadier than req/s when other
processes share the machine) and errors. In the same run it measures ONNX Runtime
in-process at batch 1 and at ``--max-batch-size``: the ceiling no server here can pass.

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams sending pre-encoded
requests: httpx costs several hundred microseconds of CPU per request, which on a small machine
would measure the client instead of the server. Usage::

    python benchmarks/serve/load.py [--concurrency 1,8,32,64] [--seconds 10] [--binary]
        [--max-batch-size 16] [--delay-ms 0] [--instances 1] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import shipyard
from shipyard.hardware import hardware_fingerprint
from shipyard.recipe import parse_recipe

RECIPE = """\
name: digits
version: 1
model: {source: "shipyard.examples.digits:build_model"}
signature:
  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]
  outputs: [{name: logits, dtype: float32, shape: [batch, 10]}]
validate: {samples: 8}
"""


def build_repository(folder: Path, serving: dict[str, Any]) -> Path:
    result = shipyard.build(parse_recipe(RECIPE), folder, run_bench=False)
    manifest_path = result.package_dir / "shipyard.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["serving"] = serving
    manifest_path.write_text(json.dumps(manifest))
    return result.package_dir


def ceiling(package: Path, batch_sizes: list[int], seconds: float) -> dict[int, float]:
    """In-process ONNX Runtime samples/s at each batch size (1 thread, same inputs)."""
    artifact = shipyard.load_package(package).artifacts[0]
    out = {}
    with shipyard.open_session(artifact, threads=1) as session:
        for batch in batch_sizes:
            feeds = artifact.signature.example_inputs(batch=batch)
            for _ in range(20):
                session.run(feeds)
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                session.run(feeds)
                runs += 1
            out[batch] = runs * batch / (time.perf_counter() - started)
    return out


def request_bytes(
    port: int,
    binary: bool,
    model: str = "digits",
    x: np.ndarray | None = None,
    input_name: str = "x",
) -> bytes:
    """One V2 inference request (HTTP/1.1, keep-alive), JSON or binary tensor extension;
    ``x`` defaults to one random digits-sized image."""
    if x is None:
        x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    tensor: dict[str, Any] = {"name": input_name, "datatype": "FP32", "shape": list(x.shape)}
    headers = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if binary:
        tensor["parameters"] = {"binary_data_size": x.nbytes}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
        body = header.encode() + x.tobytes()
        headers += f"Inference-Header-Content-Length: {len(header)}\r\n"
    else:
        tensor["data"] = x.ravel().tolist()
        body = json.dumps({"inputs": [tensor]}).encode()
    headers += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return headers.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response off a keep-alive connection: its head and its body (read by
    Content-Length; none: empty)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def _worker(port: int, request: bytes, stop: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            writer.write(request)
            head, _ = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
    finally:
        writer.close()
    return errors


async def drive(port: int, request: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    started = time.perf_counter()
    errors = await asyncio.gather(
        *(_worker(port, request, stop, latencies) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": int(sum(errors)),
    }


def batch_stats(port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("shipyard_batch_size_count", "shipyard_batch_size_sum"):
            if line.startswith(name + "{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values.get("shipyard_batch_size_count", 0.0), values.get("shipyard_batch_size_sum", 0.0)


def start_server(repository: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "shipyard", "serve", str(repository), "--port", str(port)]
    # One process (the default, --workers auto, starts one per core).
    process = subprocess.Popen([*command, "--log-level", "warning", "--workers", "1"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready") as reply:
                if reply.status == 200:
                    return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise TimeoutError("the server did not become ready within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--binary", action="store_true", help="binary tensor extension")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    serving = {
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_ms": args.delay_ms,
        "instances": args.instances,
        "threads": args.threads,
    }
    folder = Path(tempfile.mkdtemp(prefix="shipyard-load-"))
    try:
        package = build_repository(folder, serving)
        roof = ceiling(package, sorted({1, max(args.max_batch_size, 1)}), seconds=3.0)
        process, port = start_server(folder)
        server = psutil.Process(process.pid)
        rows = []
        try:
            request = request_bytes(port, args.binary)
            for concurrency in [int(c) for c in args.concurrency.split(",")]:
                asyncio.run(drive(port, request, concurrency, args.warmup))
                before, cpu = batch_stats(port), server.cpu_times()
                row = asyncio.run(drive(port, request, concurrency, args.seconds))
                after, cpu_after = batch_stats(port), server.cpu_times()
                batches = after[0] - before[0]
                row["mean_batch"] = (after[1] - before[1]) / batches if batches else 0.0
                # Server CPU per request (all its threads): steadier than req/s on a busy host.
                spent = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
                row["server_cpu_us"] = spent / max(row["requests"], 1) * 1e6
                rows.append(row)
                print(
                    f"c={concurrency:>3}: {row['req_per_s']:8.0f} req/s  p50 {row['p50_ms']:6.2f}"
                    f"  p90 {row['p90_ms']:6.2f}  p99 {row['p99_ms']:7.2f} ms  mean batch "
                    f"{row['mean_batch']:5.2f}  server CPU {row['server_cpu_us']:4.0f} µs/req  "
                    f"errors {row['errors']}",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(timeout=60)
        for batch, rate in roof.items():
            print(f"in-process ONNX Runtime, batch {batch:>2}: {rate:8.0f} samples/s (1 thread)")
        fingerprint = hardware_fingerprint()
        print(
            f"{fingerprint.get('cpu')}, {fingerprint.get('logical_cores')} cores; load average "
            f"{os.getloadavg()}; encoding {'binary' if args.binary else 'JSON'}; serving {serving}"
        )
        if args.json:
            report = {
                "serving": serving,
                "binary": args.binary,
                "results": rows,
                "ceiling_samples_per_s": roof,
                "fingerprint": fingerprint,
                "load_average": os.getloadavg(),
            }
            args.json.write_text(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
