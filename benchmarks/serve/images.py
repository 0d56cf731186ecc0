"""Encoded images end to end: JPEG in, the top classes out, against the in-process ceiling
and MLServer with the same pre-processing in a custom runtime, in one run.

Builds EfficientNet-Lite0 (real weights, the ``pretrained`` extra) as fp32 ONNX with the
example's ``preprocess:``/``postprocess:``, then, one after another:

- ceiling: in this process, decode + pre-process (``shipyard.processing``) + ONNX Runtime
  (1 thread per session), with as many worker threads as the machine has cores, each with
  its own session: what the machine does without HTTP;
- ours: ``shipyard serve`` (max batch 16, ``instances`` = cores, 1 thread each) driven with
  raw JPEG bodies (``Content-Type: image/jpeg``, answered with the top-5 labels) at each
  concurrency by wrk (one photo, China 640x427; ``--client ours``: load.py-style asyncio
  client cycling through all photos);
- ours --workers N (default: cores): the same with N server processes, 1 instance each;
- mlserver: MLServer 1.7 (its own environment under ``.peers/``) with a custom runtime that
  decodes base64 BYTES with Pillow and pre-processes the same way, adaptive batching 16/5 ms,
  driven with V2 JSON requests carrying the same JPEG as base64.

Every response's status is checked. Images: the bundled photos re-encoded as JPEG at their
size (China 640x427 ...). Usage::

    python benchmarks/serve/images.py [--concurrency 1,32] [--seconds 10] [--workers 2]
        [--client wrk|ours] [--no-peer] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402
from load import read_response  # noqa: E402
from wrk import drive_wrk  # noqa: E402

import shipyard  # noqa: E402
from shipyard.hardware import hardware_fingerprint  # noqa: E402
from shipyard.processing import ImagePreprocess, preprocess  # noqa: E402
from shipyard.recipe import parse_recipe  # noqa: E402

RECIPE = (HERE.parents[1] / "examples/efficientnet/recipe.yaml").read_text()
PHOTOS = ("china", "grace_hopper", "chelsea", "coffee", "astronaut", "rocket")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
MLSERVER_IMAGES = peers.Peer(
    "mlserver-images",
    "mlserver",
    ("mlserver==1.7.1", "fastapi<0.116", "uvloop<0.22", "pillow"),
    ("fastapi", "uvicorn", "pillow"),
)


def jpegs() -> list[bytes]:
    from shipyard.examples.efficientnet.data import photo

    out = []
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(photo(name)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def build(folder: Path) -> Path:
    head = RECIPE.split("data:")[0]
    text = head + "passes: [{export: {opset: 18}}]\nvalidate: {samples: 2}\n"
    text += f"serve: {{max_batch_size: 16, instances: {CORES}, threads: 1}}\n"
    return shipyard.build(parse_recipe(text), folder, run_bench=False).package_dir


def ceiling(package: Path, images: list[bytes], seconds: float) -> float:
    """Images/s in-process: CORES threads, each decode + pre-process + its own session."""
    manifest = shipyard.load_package(package).manifest
    config = ImagePreprocess.model_validate(manifest["preprocess"]["image"])
    artifact = shipyard.load_package(package).artifacts[0]
    done = [0] * CORES
    stop = time.perf_counter() + seconds + 2

    def worker(index: int) -> None:
        with shipyard.open_session(artifact, threads=1) as session:
            started = time.perf_counter()
            i = 0
            while time.perf_counter() < stop:
                session.run({"input": preprocess([images[i % len(images)]], config)})
                i += 1
                if time.perf_counter() - started > 2:  # after a 2 s warm-up
                    done[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CORES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def image_request(port: int, model: str, image: bytes) -> bytes:
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {len(image)}\r\n\r\n"
    )
    return head.encode() + image


def base64_request(port: int, model: str, image: bytes) -> bytes:
    body = json.dumps({
        "inputs": [{
            "name": "input", "datatype": "BYTES", "shape": [1],
            "parameters": {"content_type": "base64"}, "data": [base64.b64encode(image).decode()],
        }]
    }).encode()  # fmt: skip
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def drive(port: int, requests: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stop = time.perf_counter() + seconds
        i = offset
        try:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                writer.write(requests[i % len(requests)])
                head, _ = await read_response(reader)
                status = head.split(b" ", 2)[1].decode()
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(time.perf_counter() - started)
                i += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "images_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "statuses": statuses,
    }


def load(
    port: int, requests: list[bytes], levels: list[int], seconds: float, client: str = "wrk"
) -> list[dict]:
    asyncio.run(drive(port, requests, 4, 2.0))  # warm-up
    if client == "ours":
        return [asyncio.run(drive(port, requests, c, seconds)) for c in levels]
    rows = []
    for concurrency in levels:
        row = drive_wrk(port, requests[0], concurrency, seconds)
        row["images_per_s"] = row.pop("req_per_s")
        print(
            f"  c={concurrency}: {row['images_per_s']:.1f} images/s, p50 {row['p50_ms']:.1f} "
            f"p99 {row['p99_ms']:.1f} ms, errors {row['errors']}, client "
            f"{row['client_cpu_us']:.0f} µs/req",
            flush=True,
        )
        rows.append(row)
    return rows


def serve_ours(work: Path, levels: list[int], args: argparse.Namespace, *extra: str) -> list:
    port = peers.free_port()
    launch = peers.launch_ours(work / "repository", port, *extra)
    log = work / f"ours{len(extra)}.log"
    with peers.running(launch, work, log) as process:
        peers.wait_ready(launch, process, log)
        model = next((work / "repository").iterdir()).name
        requests = [image_request(port, model, image) for image in jpegs()]
        return load(port, requests, levels, args.seconds, args.client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--workers", type=int, default=CORES, help="also: --workers N (1: not)")
    parser.add_argument("--client", choices=("wrk", "ours"), default="wrk")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    images = jpegs()
    result: dict[str, Any] = {"fingerprint": hardware_fingerprint(), "cores": CORES}
    result["loadavg_start"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        package = build(work / "repository")
        sent = images[:1] if args.client == "wrk" else images  # wrk sends one photo
        result["ceiling_images_per_s"] = ceiling(package, sent, args.seconds)
        print(f"ceiling: {result['ceiling_images_per_s']:.1f} images/s", flush=True)
        print("ours", flush=True)
        result["ours"] = serve_ours(work, levels, args)
        if args.workers > 1:
            manifest_path = package / "shipyard.json"
            manifest = json.loads(manifest_path.read_text())
            manifest["serving"] = {**manifest.get("serving", {}), "instances": 1}
            manifest_path.write_text(json.dumps(manifest))  # "serving" is editable in place
            print(f"ours --workers {args.workers}, 1 instance each", flush=True)
            result["ours_workers"] = serve_ours(work, levels, args, "--workers", str(args.workers))
        if not args.no_peer:
            python = peers.ensure_venv(MLSERVER_IMAGES)
            port = peers.free_port()
            onnx = package / "model.onnx"
            peer_dir = work / "mlserver"
            peer_dir.mkdir()
            launch = peers.launch_peer("mlserver", python, onnx, "images", port, 0.005, peer_dir)
            settings = json.loads((peer_dir / "images" / "model-settings.json").read_text())
            settings["implementation"] = "mlserver_image_model.ImageModel"
            (peer_dir / "images" / "model-settings.json").write_text(json.dumps(settings))
            log = work / "mlserver.log"
            with peers.running(launch, peer_dir, log) as process:
                peers.wait_ready(launch, process, log)
                print("mlserver (base64 BYTES, custom runtime)", flush=True)
                requests = [base64_request(port, "images", image) for image in images]
                result["mlserver"] = load(port, requests, levels, args.seconds, args.client)
                result["mlserver_versions"] = peers.peer_versions(MLSERVER_IMAGES, python)
    result["loadavg_end"] = os.getloadavg()
    print(f"load average: start {result['loadavg_start']}, end {result['loadavg_end']}")
    runs = [result["ours"], *([result["ours_workers"]] if "ours_workers" in result else [])]
    tops = [{level["concurrency"]: level for level in run} for run in runs]
    top = max(tops, key=lambda t: t[max(t)]["images_per_s"])
    best = top[max(top)]
    result["best"] = "ours" if top is tops[0] else f"ours --workers {args.workers}"
    result["ours_vs_ceiling"] = best["images_per_s"] / result["ceiling_images_per_s"]
    print(f"c={best['concurrency']}: {result['best']} {best['images_per_s']:.1f} images/s = "
          f"{result['ours_vs_ceiling']:.2f}x the ceiling", flush=True)  # fmt: skip
    if "mlserver" in result:
        peer = {level["concurrency"]: level for level in result["mlserver"]}[max(top)]
        result["ours_vs_mlserver"] = best["images_per_s"] / peer["images_per_s"]
        print(f"  = {result['ours_vs_mlserver']:.2f}x MLServer ({peer['images_per_s']:.1f}; "
              f"p99 {best['p99_ms']:.0f} vs {peer['p99_ms']:.0f} ms)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
