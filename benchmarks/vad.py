"""Silero VAD served to real-time audio streams: how many concurrent 16 kHz streams the server
carries with p99 chunk latency within 20 ms, over HTTP and over gRPC streaming; and what each
packaged artifact costs in F1 and bytes. One run.

This script builds ``examples/vad/recipe.yaml`` (fp32 ONNX, int8 LSTM, OpenVINO; each
validated chunk by chunk against the pyannote.audio sample's speaker turns, and benchmarked)
into a temporary repository, then:

1. measures the ceiling: the served ONNX file in-process (ONNX Runtime, 1 thread) stepping
   1, 32 and 64 sequences per call through the same Stepper the server uses (gather the
   states, run, scatter), as chunks per second and real-time streams (31.25 chunks/s each);
2. starts ``python -m shipyard serve`` in its own process (HTTP and gRPC; the recipe's
   serving settings: 1 instance, 1 thread, up to 64 sequences per call, no queue delay);
3. for each transport and each stream count N: N streams, each sending a 512-sample chunk
   (32 ms of the sample, from its own offset) every 32 ms of wall time, with
   ``sequence_start`` on its first and ``sequence_end`` on its last; a chunk's latency runs
   from the moment it was due to the moment its answer arrived, so a stream that falls behind
   is charged for it. HTTP: one keep-alive connection per stream, a minimal asyncio client
   with pre-encoded binary requests (tritonclient's per-request CPU would measure the client);
   gRPC: one ``ModelStreamInfer`` call per stream on one channel (grpc.aio). The transports
   alternate at each N; a transport leaves the sweep at the first N whose p99 exceeds
   ``--p99-ms`` (or that has errors).

The client runs on the same machine as the server (and here, other people's jobs): load
averages are printed beside every level, with the hardware fingerprint. Usage::

    OMP_NUM_THREADS=1 python benchmarks/vad.py [--streams 25,50,100,150,200,300]
        [--seconds 10] [--p99-ms 20] [--json out.json]
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

import grpc
import numpy as np
import psutil

import shipyard
from shipyard.hardware import hardware_fingerprint
from shipyard.recipe import load_recipe
from shipyard.serve.grpc import inference_pb2 as pb
from shipyard.serve.grpc import inference_pb2_grpc as pb_grpc
from shipyard.serving import ServingConfig
from shipyard.stateful import Stepper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "serve"))
from load import read_response  # noqa: E402  (benchmarks/serve/load.py)

RECIPE = HERE.parent / "examples" / "vad" / "recipe.yaml"
PERIOD = 512 / 16_000  # seconds of audio per chunk: a real-time stream sends one this often


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def artifacts(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each packaged artifact (and the torch reference): F1, its drop, bytes, p50."""
    return [
        {
            "artifact": row["name"],
            "bytes": row["bytes"],
            "f1": row.get("f1"),
            "f1_drop": row.get("f1_drop"),
            "max_abs": row.get("max_abs"),
            "p50_ms": {batch: stats["p50_ms"] for batch, stats in row["latency"].items()},
        }
        for row in manifest["candidates"]
    ]


def ceiling(package: Path, seconds: float) -> dict[int, float]:
    """Chunks per second in-process at 1, 32 and 64 sequences per call (1 thread)."""
    loaded = shipyard.load_package(package)
    artifact = next(a for a in loaded.artifacts if a.name == loaded.manifest["default_artifact"])
    config = ServingConfig.from_manifest(loaded.manifest).sequence
    assert config is not None
    stepper = Stepper(artifact.signature, config)
    chunk = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32) * 0.1
    out = {}
    with shipyard.open_session(artifact, threads=1) as session:
        for width in (1, 32, 64):
            carries = [stepper.start() for _ in range(width)]
            steps, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                feeds = stepper.feeds([{"input": chunk}] * width, carries)
                carries, _ = stepper.advance(feeds, session.run(feeds))
                steps += 1
            out[width] = steps * width / (time.perf_counter() - started)
    return out


def start_server(repository: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "shipyard", "serve", str(repository), "--port", str(ports[0])]
    command += ["--grpc-port", str(ports[1]), "--log-level", "warning", "--workers", "1"]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready") as reply:
                if reply.status == 200:
                    return process, ports[0], ports[1]
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise TimeoutError("the server did not become ready within 60 s")


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("shipyard_batch_size_count", "shipyard_batch_size_sum"):
            if line.startswith(name + "{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values


def _http_request(port: int, key: int, chunk: np.ndarray, start: bool, end: bool) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 512]}
    tensor["parameters"] = {"binary_data_size": chunk.nbytes}
    parameters = {"sequence_id": key, "sequence_start": start, "sequence_end": end}
    parameters["binary_data_output"] = True
    header = json.dumps({"inputs": [tensor], "parameters": parameters})
    body = header.encode() + chunk.tobytes()
    head = (
        f"POST /v2/models/vad/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _pace(due: float) -> None:
    wait = due - time.perf_counter()
    if wait > 0:
        await asyncio.sleep(wait)


async def http_stream(
    port: int, key: int, chunks: np.ndarray, first: float, stop: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    last = int((stop - first) / PERIOD)
    try:
        for index in range(last + 1):
            due = first + index * PERIOD
            await _pace(due)
            chunk = chunks[index % len(chunks)][None]
            writer.write(_http_request(port, key, chunk, index == 0, index == last))
            head, _ = await read_response(reader)
            out["latencies"].append(time.perf_counter() - due)
            out["errors"] += not head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def grpc_stream(
    stub: Any, key: int, chunks: np.ndarray, first: float, stop: float, out: dict[str, Any]
) -> None:
    last = int((stop - first) / PERIOD)
    due: dict[str, float] = {}

    async def requests() -> Any:
        for index in range(last + 1):
            due[str(index)] = first + index * PERIOD
            await _pace(due[str(index)])
            request = pb.ModelInferRequest(model_name="vad", id=str(index))
            request.inputs.add(name="input", datatype="FP32", shape=[1, 512])
            request.raw_input_contents.append(chunks[index % len(chunks)].tobytes())
            request.parameters["sequence_id"].int64_param = key
            request.parameters["sequence_start"].bool_param = index == 0
            request.parameters["sequence_end"].bool_param = index == last
            yield request

    async for reply in stub.ModelStreamInfer(requests()):
        out["latencies"].append(time.perf_counter() - due[reply.infer_response.id])
        out["errors"] += bool(reply.error_message)


async def level(
    transport: str, ports: tuple[int, int], streams: int, seconds: float, audio: np.ndarray
) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "errors": 0}
    begin = time.perf_counter() + 0.2
    stop = begin + seconds
    offsets = np.linspace(0, len(audio) - 1, streams, endpoint=False).astype(int)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    tasks = []
    for index in range(streams):
        key = streams * 1000 + index + 1
        chunks = np.roll(audio, -offsets[index], axis=0)
        first = begin + PERIOD * index / streams  # the streams' chunks spread over 32 ms
        if transport == "http":
            tasks.append(http_stream(ports[0], key, chunks, first, stop, out))
        else:
            tasks.append(grpc_stream(stub, key, chunks, first, stop, out))
    await asyncio.gather(*tasks)
    await channel.close()
    ms = np.asarray(out["latencies"]) * 1e3
    return {
        "transport": transport,
        "streams": streams,
        "chunks": len(ms),
        "chunks_per_s": len(ms) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "errors": out["errors"],
    }


def sweep(
    ports: tuple[int, int], server: psutil.Process, counts: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    from shipyard.examples.vad import sample_audio
    from shipyard.processing.audio import frames

    audio = frames(sample_audio(), 512)
    rows = []
    active = ["http", "grpc"]
    for transport in active:
        asyncio.run(level(transport, ports, min(counts), 2.0, audio))  # warm-up
    for streams in counts:  # the two transports alternate: a busy spell hits both alike
        for transport in list(active):
            before, cpu, load0 = metrics(ports[0]), server.cpu_times(), loadavg()
            client_cpu = time.process_time()
            row = asyncio.run(level(transport, ports, streams, args.seconds, audio))
            client_cpu = time.process_time() - client_cpu
            after, cpu_after = metrics(ports[0]), server.cpu_times()
            calls = after["shipyard_batch_size_count"] - before["shipyard_batch_size_count"]
            steps = after["shipyard_batch_size_sum"] - before["shipyard_batch_size_sum"]
            spent = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
            row.update(
                mean_batch=steps / calls if calls else 0.0,
                server_us_per_chunk=spent / max(row["chunks"], 1) * 1e6,
                server_cores=spent / args.seconds,
                client_cores=client_cpu / args.seconds,
                loadavg=[load0, loadavg()],
            )
            rows.append(row)
            print_level(row)
            if row["p99_ms"] > args.p99_ms or row["errors"]:
                active.remove(transport)
        if not active:
            break
    return rows


def print_level(row: dict[str, Any]) -> None:
    print(
        f"{row['transport']:>4} N={row['streams']:>4}: {row['chunks_per_s']:7.0f} chunks/s, "
        f"p50 {row['p50_ms']:6.2f} ms, p99 {row['p99_ms']:6.2f} ms, max {row['max_ms']:7.1f} ms, "
        f"mean batch {row['mean_batch']:5.1f}, server {row['server_cores']:.2f} cores "
        f"({row['server_us_per_chunk']:.0f} µs/chunk), client "
        f"{row['client_cores']:.2f} cores, errors {row['errors']}, loadavg "
        f"{row['loadavg'][0]} -> {row['loadavg'][1]}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="25,50,100,150,200,300,400")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--p99-ms", type=float, default=20.0)
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(c) for c in args.streams.split(",")]
    started, load_start = time.perf_counter(), loadavg()
    folder = Path(tempfile.mkdtemp(prefix="shipyard-vad-"))
    try:
        result = shipyard.build(load_recipe(RECIPE), folder / "repository")
        table = artifacts(result.manifest)
        roof = ceiling(result.package_dir, args.ceiling_seconds)
        process, http_port, grpc_port = start_server(folder / "repository")
        try:
            rows = sweep((http_port, grpc_port), psutil.Process(process.pid), counts, args)
        finally:
            process.terminate()
            process.wait(timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    best = {
        transport: max(
            (r["streams"] for r in rows if r["transport"] == transport
             and r["p99_ms"] <= args.p99_ms and not r["errors"]),
            default=0,
        )
        for transport in ("http", "grpc")
    }  # fmt: skip
    report = {
        "artifacts": table,
        "ceiling_chunks_per_s": roof,
        "levels": rows,
        "max_streams_within_p99": best,
        "p99_limit_ms": args.p99_ms,
        "serving": result.manifest["serving"],
        "loadavg": {"start": load_start, "end": loadavg()},
        "fingerprint": hardware_fingerprint(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def print_report(report: dict[str, Any]) -> None:
    print(f"{'artifact':<16} {'bytes':>10} {'F1':>7} {'F1 drop':>8} {'max abs':>9} p50 ms (batch)")
    for row in report["artifacts"]:
        f1 = "" if row["f1"] is None else f"{row['f1']:.4f}"
        drop = "" if row["f1_drop"] is None else f"{row['f1_drop']:+.4f}"
        p50 = ", ".join(f"{v:.3f} ({b})" for b, v in row["p50_ms"].items())
        print(
            f"{row['artifact']:<16} {row['bytes']:>10,} {f1:>7} {drop:>8} "
            f"{row['max_abs'] or 0:>9.2g} {p50}"
        )
    for width, rate in report["ceiling_chunks_per_s"].items():
        print(
            f"in-process, {width:>2} sequences per call: {rate:8,.0f} chunks/s = "
            f"{rate * PERIOD:6,.0f} real-time streams (1 thread)"
        )
    limit = report["p99_limit_ms"]
    for transport, streams in report["max_streams_within_p99"].items():
        print(f"{transport}: {streams} concurrent real-time streams with p99 <= {limit:g} ms")
    fingerprint = report["fingerprint"]
    print(
        f"{fingerprint.get('cpu')}, {fingerprint.get('usable_cores')} usable cores, isa "
        f"{','.join(fingerprint.get('isa') or [])}; load average {report['loadavg']}; "
        f"{report['wall_s']} s"
    )


if __name__ == "__main__":
    main()
