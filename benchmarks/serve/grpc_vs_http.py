"""gRPC vs HTTP (binary tensor extension) on one shipyard server process, interleaved.

Builds the digits CNN package (as benchmarks/serve/load.py), starts one server that serves HTTP
and gRPC (run_server(..., grpc_port=...)) in its own process, then alternates HTTP and gRPC
phases at each concurrency, `--rounds` times, each phase `--seconds` after a short warm-up.
Both clients send pre-encoded batch-1 requests: HTTP through load.py's minimal keep-alive client
(one connection per worker), gRPC through one grpc.aio channel with pre-serialized
ModelInferRequest bytes (raw_input_contents; the answer in raw_output_contents).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve/grpc_vs_http.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import load  # benchmarks/serve/load.py: the script's folder is on sys.path
import numpy as np
import psutil

from shipyard.hardware import hardware_fingerprint
from shipyard.serve.grpc import inference_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(repository: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http, rpc = free_port(), free_port()
    code = (
        "import sys; from shipyard.serve import run_server; "
        "run_server(sys.argv[1], port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), "
        "log_level='warning')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(repository), str(http), str(rpc)], env=env
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready") as reply:
                if reply.status == 200:
                    return process, http, rpc
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise TimeoutError("the server did not become ready within 60 s")


def grpc_request() -> bytes:
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    return request.SerializeToString()


async def grpc_drive(port: int, request: bytes, concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out

        async def worker(stop: float) -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    await call(request, timeout=30)
                except grpc.RpcError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3
    return {
        "requests": len(latencies),
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def phase(kind: str, ports: dict[str, int], requests: dict[str, bytes], c: int, s: float) -> dict:
    if kind == "http":
        return asyncio.run(load.drive(ports["http"], requests["http"], c, s))
    return asyncio.run(grpc_drive(ports["grpc"], requests["grpc"], c, s))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    serving = {"max_batch_size": 16, "max_queue_delay_ms": 0.0, "instances": 1, "threads": 1}
    folder = Path(tempfile.mkdtemp(prefix="shipyard-grpc-bench-"))
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        load.build_repository(folder, serving)
        process, http, rpc = start(folder)
        server = psutil.Process(process.pid)
        ports = {"http": http, "grpc": rpc}
        requests = {"http": load.request_bytes(http, binary=True), "grpc": grpc_request()}
        try:
            for round_ in range(args.rounds):
                for c in [int(v) for v in args.concurrency.split(",")]:
                    order = ("http", "grpc") if round_ % 2 == 0 else ("grpc", "http")
                    for kind in order:
                        phase(kind, ports, requests, c, args.warmup)
                        before_batches, cpu = load.batch_stats(http), server.cpu_times()
                        row = phase(kind, ports, requests, c, args.seconds)
                        after_batches, cpu_after = load.batch_stats(http), server.cpu_times()
                        batches = after_batches[0] - before_batches[0]
                        row["mean_batch"] = (
                            (after_batches[1] - before_batches[1]) / batches if batches else 0.0
                        )
                        spent = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
                        row["server_cpu_us"] = spent / max(row["requests"], 1) * 1e6
                        rows.setdefault((kind, c), []).append(row)
                        print(
                            f"round {round_} {kind:>4} c={c:>2}: {row['req_per_s']:7.0f} req/s "
                            f"p50 {row['p50_ms']:5.2f} p99 {row['p99_ms']:6.2f} ms "
                            f"batch {row['mean_batch']:5.2f} server CPU "
                            f"{row['server_cpu_us']:4.0f} µs/req errors {row['errors']}",
                            flush=True,
                        )
        finally:
            process.terminate()
            process.wait(timeout=60)
        print("\nmedian over rounds:")
        print("| protocol | c | req/s | p50 ms | p99 ms | mean batch | server CPU µs/req |")
        print("|---|---|---|---|---|---|---|")
        for (kind, c), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "errors"}
            print(
                f"| {'HTTP binary' if kind == 'http' else 'gRPC raw'} | {c} | "
                f"{med['req_per_s']:,.0f} | {med['p50_ms']:.2f} | {med['p99_ms']:.2f} | "
                f"{med['mean_batch']:.1f} | {med['server_cpu_us']:.0f} |"
            )
        fingerprint = hardware_fingerprint()
        print(
            f"{fingerprint.get('cpu')}, {fingerprint.get('logical_cores')} cores; "
            f"load average {os.getloadavg()}; serving {serving}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
