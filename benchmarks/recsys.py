"""The MovieLens recommender served: rows/s through the V2 server against the in-process
ONNX Runtime ceiling, and what each optimized artifact costs in AUC and bytes. One run.

A recommender's request scores one user against N candidate items (N rows). This script
builds ``examples/recsys/recipe.yaml`` (the trained DLRM, exported to ONNX, validated on the
20,000 held-out ratings) into a temporary repository and then, in one run:

1. quantizes the export three ways (int8 MLPs with int8, float16 and float32 embedding
   tables; plus whole-model float16), validates each against PyTorch on the held-out ratings
   (AUC, its drop, log-loss) and benchmarks them all interleaved at batch 1 and 256;
2. measures the ceiling: the served ONNX file in-process (ONNX Runtime, 1 thread) at each N;
3. starts ``python -m shipyard serve`` in its own process (1 instance, 1 thread, batches up
   to 1,024 rows, no queue delay) and drives it with wrk (``benchmarks/serve/wrk.py``: a C
   client that costs little CPU and checks every status; ``--client ours`` for load.py's
   keep-alive asyncio client): binary-tensor requests of one user against N candidates,
   ``--concurrency`` connections, ``--seconds`` per N; rows/s = requests/s × N, and its ratio
   to the ceiling.

The client runs on the same machine as the server (and here, other people's jobs): the load
averages are printed beside every phase, with the hardware fingerprint. Usage::

    OMP_NUM_THREADS=1 python benchmarks/recsys.py [--counts 1,256] [--concurrency 8]
        [--seconds 10] [--client wrk|ours] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import shipyard
from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.hardware import hardware_fingerprint
from shipyard.passes.quantize import quantize_onnx
from shipyard.passes.quantize_config import PRESETS
from shipyard.recipe import load_recipe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "serve"))
from load import batch_stats, drive, start_server  # noqa: E402
from wrk import drive_wrk  # noqa: E402

RECIPE = HERE.parent / "examples" / "recsys" / "recipe.yaml"
PRESET_NAMES = ("dynamic_s8", "dynamic_s8_fp16_embeddings", "dynamic_s8_fp32_embeddings", "fp16")
DATATYPES = {"int64": "INT64", "float32": "FP32"}
USER = 41  # any user: every request scores this user's row against N items


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def candidates(count: int) -> dict[str, np.ndarray]:
    from shipyard.examples.recsys import candidates as rows

    return rows(USER, np.arange(count) * 1682 // count)


def optimized(package: Path, folder: Path) -> list[dict[str, Any]]:
    """Each preset's artifact: AUC against PyTorch on the held-out ratings, size, latency."""
    from shipyard.examples.recsys import validation

    exported = shipyard.load_package(package).artifacts[0]
    reference = shipyard.load("shipyard.examples.recsys:trained", exported.signature)
    held_out = Dataset(*validation())
    artifacts: list[Artifact] = [exported]
    for name in PRESET_NAMES:
        config = PRESETS[name](name=name)
        artifacts.append(quantize_onnx(exported, folder / f"{name}.onnx", config))
    rows = []
    for artifact in artifacts:
        report = shipyard.validate(reference, artifact, held_out, batch_size=4096, task="binary")
        rows.append(
            {
                "artifact": artifact.name,
                "bytes": artifact.size_bytes,
                "auc": report.auc_candidate,
                "auc_drop": report.auc_drop,
                "log_loss": report.log_loss_candidate,
                "max_abs": max(o.max_abs for o in report.outputs),
            }
        )
    timings = shipyard.bench([reference, *artifacts], batch_sizes=[1, 256], threads=1, runs=300)
    for row in rows:
        result = timings.get(row["artifact"])
        row["p50_ms"] = {b: result.at(b).p50_ms for b in (1, 256)}
    torch_p50 = {b: timings.get(reference.name).at(b).p50_ms for b in (1, 256)}
    rows.insert(0, {"artifact": "torch", "bytes": reference.size_bytes, "p50_ms": torch_p50})
    return rows


def ceiling(package: Path, counts: list[int], seconds: float) -> dict[int, dict[str, float]]:
    """In-process ONNX Runtime at each N (1 thread, the served file, the same rows): rows per
    second of wall time, and rows per second of this process's CPU time (what the machine's
    other jobs cannot take away)."""
    artifact = shipyard.load_package(package).artifacts[0]
    out = {}
    with shipyard.open_session(artifact, threads=1) as session:
        for count in counts:
            feeds = candidates(count)
            for _ in range(50):
                session.run(feeds)
            runs, started, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < seconds:
                session.run(feeds)
                runs += 1
            wall, spent = time.perf_counter() - started, time.process_time() - cpu
            out[count] = {"rows_per_s": runs * count / wall, "rows_per_cpu_s": runs * count / spent}
    return out


def request_bytes(port: int, inputs: dict[str, np.ndarray]) -> bytes:
    """One keep-alive HTTP/1.1 V2 request with every input as a binary tensor."""
    tensors = [
        {
            "name": name,
            "datatype": DATATYPES[str(array.dtype)],
            "shape": list(array.shape),
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, array in inputs.items()
    ]
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}})
    body = header.encode() + b"".join(np.ascontiguousarray(a).tobytes() for a in inputs.values())
    head = (
        f"POST /v2/models/movielens/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def check_answer(port: int, package: Path) -> float:
    """The server's scores for 16 candidates against in-process ORT's: the largest difference."""
    inputs = candidates(16)
    body = {
        "inputs": [
            {"name": n, "datatype": DATATYPES[str(a.dtype)], "shape": list(a.shape),
             "data": a.ravel().tolist()}
            for n, a in inputs.items()
        ]
    }  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/movielens/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as reply:
        served = np.asarray(json.loads(reply.read())["outputs"][0]["data"])
    with shipyard.open_session(shipyard.load_package(package).artifacts[0]) as session:
        local = session.run(inputs)["probability"]
    return float(np.abs(served - local).max())


def serve_load(
    folder: Path,
    package: Path,
    counts: list[int],
    concurrency: int,
    seconds: float,
    warmup: float,
    client: str = "wrk",
) -> tuple[list[dict[str, Any]], float]:
    def load(request: bytes, duration: float) -> dict[str, Any]:
        if client == "wrk":
            return drive_wrk(port, request, concurrency, duration)
        return asyncio.run(drive(port, request, concurrency, duration))

    process, port = start_server(folder)
    server = psutil.Process(process.pid)
    rows = []
    try:
        max_diff = check_answer(port, package)
        for count in counts:
            request = request_bytes(port, candidates(count))
            load(request, warmup)
            before, cpu, load0 = batch_stats(port), server.cpu_times(), loadavg()
            client_cpu = time.process_time()
            row = load(request, seconds)
            client_cpu = time.process_time() - client_cpu
            if client == "wrk":  # wrk's own CPU, not this process's
                client_cpu = row["client_cpu_us"] * row["requests"] / 1e6
            after, cpu_after = batch_stats(port), server.cpu_times()
            batches = after[0] - before[0]
            spent = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
            requests = max(row["requests"], 1)
            row.update(
                candidates=count,
                rows_per_s=row["req_per_s"] * count,
                rows_per_server_cpu_s=requests * count / spent,
                mean_batch_rows=(after[1] - before[1]) / batches if batches else 0.0,
                server_cpu_us_per_request=spent / requests * 1e6,
                client_cpu_us_per_request=client_cpu / requests * 1e6,
                loadavg=[load0, loadavg()],
            )
            rows.append(row)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return rows, max_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,256", help="candidates per request (N)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--instances", type=int, default=None, help="default: the recipe's")
    parser.add_argument(
        "--client", choices=["wrk", "ours"], default="wrk", help="the load generator"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    started, load_start = time.perf_counter(), loadavg()
    folder = Path(tempfile.mkdtemp(prefix="shipyard-recsys-"))
    try:
        recipe = load_recipe(RECIPE)
        overrides = {"max_batch_size": args.max_batch_size, "instances": args.instances}
        serving = {k: v for k, v in overrides.items() if v is not None}
        recipe.serve = recipe.serve.model_copy(update=serving)
        result = shipyard.build(recipe, folder / "repository", run_bench=False)
        package = result.package_dir
        build_auc = result.validation[0].auc_candidate
        artifacts = optimized(package, folder)
        load_ceiling = loadavg()
        roof = ceiling(package, sorted({*counts, 1024}), args.ceiling_seconds)
        load_after_ceiling = loadavg()
        served, max_diff = serve_load(
            folder / "repository",
            package,
            counts,
            args.concurrency,
            args.seconds,
            args.warmup,
            args.client,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for row in served:
        best = roof[row["candidates"]]
        row["ceiling_rows_per_s"] = best["rows_per_s"]
        row["ratio_to_ceiling"] = row["rows_per_s"] / best["rows_per_s"]
        row["cpu_ratio_to_ceiling"] = row["rows_per_server_cpu_s"] / best["rows_per_cpu_s"]
    report = {
        "held_out_auc": build_auc,
        "artifacts": artifacts,
        "ceiling_rows_per_s": roof,
        "served": served,
        "served_max_abs_vs_in_process": max_diff,
        "concurrency": args.concurrency,
        "client": args.client,
        "serving": recipe.serve.model_dump(mode="json"),
        "seconds": args.seconds,
        "loadavg": {
            "start": load_start,
            "before_ceiling": load_ceiling,
            "after_ceiling": load_after_ceiling,
            "end": loadavg(),
        },
        "fingerprint": hardware_fingerprint(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def print_report(report: dict[str, Any]) -> None:
    print(f"held-out AUC of the ONNX export: {report['held_out_auc']:.4f} (20,000 ratings)")
    print(f"{'artifact':<28} {'bytes':>9} {'AUC':>7} {'drop':>8} {'p50 ms@1':>9} {'@256':>7}")
    for row in report["artifacts"]:
        auc = "" if row.get("auc") is None else f"{row['auc']:.4f}"
        drop = "" if row.get("auc_drop") is None else f"{row['auc_drop']:+.5f}"
        p50 = row["p50_ms"]
        print(
            f"{row['artifact']:<28} {row['bytes']:>9,} {auc:>7} {drop:>8} "
            f"{p50[1]:>9.3f} {p50[256]:>7.3f}"
        )
    print(f"served vs in-process, max abs difference: {report['served_max_abs_vs_in_process']:.2g}")
    settings = report["serving"]
    print(
        f"server: {settings['instances']} instance(s) × {settings['threads']} thread(s), batches "
        f"up to {settings['max_batch_size']} rows, {settings['max_queue_delay_ms']:g} ms delay; "
        f"client: {report.get('client', 'ours')}"
    )
    for row in report["served"]:
        print(
            f"N={row['candidates']:>4} c={report['concurrency']}: {row['rows_per_s']:>10,.0f} "
            f"rows/s ({row['req_per_s']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms, p99 "
            f"{row['p99_ms']:.2f} ms), ceiling {row['ceiling_rows_per_s']:>10,.0f} rows/s, "
            f"ratio {row['ratio_to_ceiling']:.2f} (per CPU second: "
            f"{row['cpu_ratio_to_ceiling']:.2f}); mean batch {row['mean_batch_rows']:.0f} rows; "
            f"CPU per request: server {row['server_cpu_us_per_request']:.0f} µs, client "
            f"{row['client_cpu_us_per_request']:.0f} µs; errors {row['errors']}; loadavg "
            f"{row['loadavg'][0]} -> {row['loadavg'][1]}"
        )
    for count, best in report["ceiling_rows_per_s"].items():
        print(
            f"in-process ONNX Runtime at N={count}: {best['rows_per_s']:,.0f} rows/s, "
            f"{best['rows_per_cpu_s']:,.0f} rows per CPU second"
        )
    fingerprint = report["fingerprint"]
    print(
        f"{fingerprint.get('cpu')}, {fingerprint.get('usable_cores')} usable cores, isa "
        f"{','.join(fingerprint.get('isa') or [])}; load average {report['loadavg']}; "
        f"{report['wall_s']} s"
    )


if __name__ == "__main__":
    main()
