"""Our V2 server against the Python serving peers, on the same model file and the same load.

For each model (the digits CNN and ResNet-18, random weights) it builds the package once with
shipyard, then serves that package's model.onnx with ``python -m shipyard serve`` and with each
peer, one server at a time, and drives each with load.py's keep-alive client: batch-1 V2 JSON
requests at each concurrency for ``--seconds`` after a warm-up. Every server gets the same
settings: at most 16 requests per batch, one model instance/replica/worker, ONNX Runtime with 1
intra-op thread. Before loading a server it checks that its logits match in-process ONNX Runtime
on 8 different inputs sent at once (so through its batcher) and stops if they do not.

Peers (each in its own virtual environment under ``benchmarks/serve/.peers/``, created with pip
on first use; only onnxruntime, numpy and the server, no torch):

- mlserver: MLServer's V2 JSON endpoint, a custom ``MLModel`` on ONNX Runtime
  (``peers/mlserver_model.py``), adaptive batching ``max_batch_size``/``max_batch_time``.
- litserve: a ``LitAPI`` (``peers/litserve_server.py``) that decodes and encodes V2 JSON,
  LitServe's ``max_batch_size``/``batch_timeout``.
- ray: a Ray Serve deployment (``peers/ray_server.py``) that decodes and encodes V2 JSON,
  ``@serve.batch(max_batch_size, batch_wait_timeout_s)``.

The same run measures ONNX Runtime in-process at batch 1 and 16 (the ceiling) and its p50
latency at batch 1, and checks the targets: at concurrency 32, at least 1.5x the best peer's
throughput with a p99 no worse; at least 85% of the in-process ceiling for ResNet-18; at most
1 ms of added p50 latency at concurrency 1 for the digits CNN. Usage::

    python benchmarks/serve/peers.py [--models digits,resnet18] [--peers mlserver,litserve,ray]
        [--concurrency 1,8,32,64] [--seconds 8] [--peer-delay-ms 5] [--binary] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import shipyard
from shipyard.hardware import hardware_fingerprint
from shipyard.recipe import parse_recipe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from load import RECIPE as DIGITS_RECIPE  # noqa: E402
from load import batch_stats, ceiling, drive, read_response  # noqa: E402
from load import request_bytes as load_request_bytes  # noqa: E402
from wrk import drive_wrk  # noqa: E402

PEER_CODE = HERE / "peers"
VENVS = HERE / ".peers"
MAX_BATCH = 16
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

RESNET_RECIPE = """\
name: resnet18
version: 1
model: {source: "shipyard.examples.resnet:resnet18"}
signature:
  inputs: [{name: input, dtype: float32, shape: [batch, 3, 224, 224]}]
  outputs: [{name: logits, dtype: float32, shape: [batch, 1000]}]
validate: {samples: 4, batch_size: 4}
"""


@dataclass(frozen=True)
class Model:
    name: str
    recipe: str
    input: str
    sample: tuple[int, ...]  # one request's input shape (batch 1)
    output: str


MODELS = {
    "digits": Model("digits", DIGITS_RECIPE, "x", (1, 1, 8, 8), "logits"),
    "resnet18": Model("resnet18", RESNET_RECIPE, "input", (1, 3, 224, 224), "logits"),
}


@dataclass(frozen=True)
class Peer:
    name: str
    package: str  # the distribution whose version is the peer's version
    requirements: tuple[str, ...]
    shown: tuple[str, ...] = ()  # further distributions whose versions are recorded
    # installed after the requirements with --no-deps (a peer whose declared dependencies
    # include something it never uses here, e.g. mlserver-huggingface's TensorFlow)
    no_deps: tuple[str, ...] = ()


# The versions this benchmark was written and checked with; pip installs them into the peer's
# own environment (onnxruntime pinned to ours so every server runs the same kernels).
PEERS = {
    "mlserver": Peer(
        "mlserver",
        "mlserver",
        # MLServer 1.7 needs fastapi < 0.116; its worker dies with uvloop >= 0.22.
        ("mlserver==1.7.1", "fastapi<0.116", "uvloop<0.22"),
        ("fastapi", "uvicorn", "uvloop", "pydantic"),
    ),
    "litserve": Peer("litserve", "litserve", ("litserve==0.2.19",), ("fastapi", "uvicorn")),
    "ray": Peer("ray", "ray", ("ray[serve]==2.60.0",), ("fastapi", "uvicorn", "starlette")),
    # The loop a user writes in ten minutes (peers/fastapi_server.py): no batching.
    "fastapi": Peer("fastapi", "fastapi", ("fastapi", "uvicorn[standard]"), ("uvicorn",)),
}


# -- peer environments -------------------------------------------------------------------------


def requirements(peer: Peer) -> list[str]:
    ours = importlib.metadata.version("onnxruntime")
    return [*peer.requirements, f"onnxruntime=={ours}", "numpy"]


def ensure_venv(peer: Peer) -> Path:
    """The peer's environment under .peers/, created (venv + pip) when missing or outdated."""
    folder = VENVS / peer.name
    python = folder / "bin" / "python"
    stamp = folder / "shipyard-requirements.txt"
    wanted = "\n".join(requirements(peer)) + "\n"
    wanted += "".join(f"{name} --no-deps\n" for name in peer.no_deps)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating {folder}: pip install {' '.join(wanted.split())} ...", flush=True)
    started = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    steps = [requirements(peer), *([["--no-deps", *peer.no_deps]] if peer.no_deps else [])]
    for step in steps:
        result = subprocess.run([*pip, *step], capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"pip install for {peer.name} failed:\n{result.stderr[-4000:]}")
    stamp.write_text(wanted)
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    return python


def peer_versions(peer: Peer, python: Path) -> dict[str, str]:
    names = [peer.package, "onnxruntime", "numpy", *peer.shown]
    script = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run([str(python), "-c", script, *names], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-500:]}


# -- server processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Launch:
    """How to start one server: command, extra environment, the URL that says it is ready."""

    command: list[str]
    ready_url: str
    env: dict[str, str] = field(default_factory=dict)
    ready_check: Callable[[bytes], bool] = lambda body: True
    ready_line: str | None = None  # also wait for this line in the server's output


def tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def running(launch: Launch, cwd: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server in its own process group; on exit stop it and everything it started."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PEER_CODE), **launch.env}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            launch.command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        family: dict[int, psutil.Process] = {}
        try:
            wait_ready(launch, process, log_path)
            family.update((p.pid, p) for p in tree(psutil.Process(process.pid)))
            yield process
        finally:
            if process.poll() is None:
                family.update((p.pid, p) for p in tree(psutil.Process(process.pid)))
            stop(process, list(family.values()))


def stop(process: subprocess.Popen[bytes], family: list[psutil.Process]) -> None:
    """SIGINT the server (each one's graceful shutdown stops what it started; Ray's driver
    answers SIGTERM with a crash report instead), then SIGKILL its process group and every
    process it had started that is still alive."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    alive = [p for p in family if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    _, left = psutil.wait_procs(alive, timeout=10)
    if process.poll() is None:
        process.kill()
        process.wait()
    if left:
        print(f"warning: processes still alive after kill: {[p.pid for p in left]}", flush=True)


def wait_ready(launch: Launch, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{launch.command[:3]} exited with {process.returncode}:\n{tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(launch.ready_url, timeout=5) as reply:
                up = reply.status == 200 and launch.ready_check(reply.read())
            if up and (launch.ready_line is None or launch.ready_line in tail(log_path, 10**6)):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"not ready within 180 s ({launch.ready_url}):\n{tail(log_path)}")


def launch_ours(repository: Path, port: int, *extra: str) -> Launch:
    import shipyard

    command = [sys.executable, "-m", "shipyard", "serve", str(repository), "--port", str(port)]
    # The server runs the shipyard this script imported (PYTHONPATH=src in a worktree), not
    # whichever the interpreter would find from the server's working folder.
    code = f"{Path(shipyard.__file__).resolve().parents[1]}{os.pathsep}{PEER_CODE}"
    if "--workers" not in extra:  # one process unless a row asks for more (default: auto)
        extra = ("--workers", "1", *extra)
    return Launch(
        [*command, "--log-level", "warning", *extra],
        f"http://127.0.0.1:{port}/v2/health/ready",
        env={"PYTHONPATH": code},
    )


def our_variants(args: argparse.Namespace, repo: Path, onnx: Path, model: str) -> dict[str, Any]:
    """Our server as run: plain; ``--workers N`` processes; every core in one process
    (the ONNX file served with ``instances`` = cores, as a ResNet-size model wants)."""
    variants: dict[str, Any] = {"ours": lambda port: launch_ours(repo, port)}
    if args.workers > 1:
        variants[f"ours --workers {args.workers}"] = lambda port: launch_ours(
            repo, port, "--workers", str(args.workers)
        )
    if args.all_cores:
        knobs = ("--instances", str(CORES), "--threads", "1", "--name", model)
        batching = ("--max-batch-size", str(MAX_BATCH), "--max-queue-delay-ms", str(args.delay_ms))
        variants[f"ours {CORES} instances"] = lambda port: launch_ours(
            onnx, port, *knobs, *batching
        )
    return variants


def launch_peer(
    peer: str, python: Path, onnx: Path, model: str, port: int, delay_s: float, workdir: Path
) -> Launch:
    url = f"http://127.0.0.1:{port}"
    args = [str(onnx), model, str(port), str(MAX_BATCH), str(delay_s)]
    if peer == "mlserver":
        settings = {
            "host": "127.0.0.1",
            "http_port": port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "debug": False,
            # Inference in the server process: as fast as 1 worker process, or faster, here.
            "parallel_workers": 0,
        }
        (workdir / "settings.json").write_text(json.dumps(settings))
        (workdir / model).mkdir(exist_ok=True)
        model_settings = {
            "name": model,
            "implementation": "mlserver_model.OnnxModel",
            "max_batch_size": MAX_BATCH,
            "max_batch_time": delay_s,
            "parameters": {"uri": str(onnx)},
        }
        (workdir / model / "model-settings.json").write_text(json.dumps(model_settings))
        mlserver = str(python.parent / "mlserver")
        return Launch([mlserver, "start", str(workdir)], f"{url}/v2/models/{model}/ready")
    if peer == "fastapi":
        script = str(PEER_CODE / "fastapi_server.py")
        return Launch([str(python), script, *args], f"{url}/v2/health/ready")
    if peer == "litserve":
        script = str(PEER_CODE / "litserve_server.py")
        return Launch([str(python), script, *args], f"{url}/health")
    if peer == "ray":
        route = f"/v2/models/{model}/infer"
        return Launch(
            [str(python), str(PEER_CODE / "ray_server.py"), *args],
            f"{url}/-/routes",
            # Makes every Ray listener bind 127.0.0.1 (the node IP alone does not).
            env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"},
            ready_check=lambda body: route in json.loads(body),
            # The route shows up before the replica exists; the script says when serve.run is done.
            ready_line="shipyard-peer-ready",
        )
    raise ValueError(f"unknown peer {peer!r}; known: {sorted(PEERS)}")


# -- requests ----------------------------------------------------------------------------------


def request_bytes(port: int, model: Model, x: np.ndarray, binary: bool = False) -> bytes:
    """One V2 inference request for ``model`` (load.py's), JSON or binary tensor extension."""
    return load_request_bytes(port, binary, model.name, x, model.input)


async def exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send one request on a fresh connection; the response's head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await read_response(reader)
    finally:
        writer.close()


def check_outputs(port: int, model: Model, session: Any, who: str, rounds: int = 2) -> None:
    """Send 8 different inputs at once (so they meet in the batcher), twice; each response's
    output must match in-process ONNX Runtime on that input. Raises on any mismatch."""
    rng = np.random.default_rng(1)
    for _ in range(rounds):
        xs = [rng.standard_normal(model.sample).astype(np.float32) for _ in range(8)]

        async def send_all(xs: list[np.ndarray] = xs) -> list[tuple[bytes, bytes]]:
            requests = [request_bytes(port, model, x) for x in xs]
            return await asyncio.gather(*(exchange(port, r) for r in requests))

        replies = asyncio.run(asyncio.wait_for(send_all(), timeout=300))
        for x, (head, body) in zip(xs, replies, strict=True):
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{who} answered {head[:40]!r}: {body[:500]!r}")
            if b"content-length:" not in head.lower():  # load.py's client needs it
                raise RuntimeError(f"{who} answered without Content-Length: {head!r}")
            outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
            if model.output not in outputs:
                raise RuntimeError(f"{who} returned no {model.output!r}: {sorted(outputs)}")
            tensor = outputs[model.output]
            got = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            want = session.run({model.input: x})[model.output]
            error = float(np.max(np.abs(got - want))) if got.shape == want.shape else np.inf
            if not error <= 1e-4 * max(1.0, float(np.max(np.abs(want)))):
                raise RuntimeError(
                    f"{who} returned wrong {model.output} for {model.name}: shape "
                    f"{got.shape} vs {want.shape}, max abs error {error:.3g}"
                )


# -- measurements ------------------------------------------------------------------------------


def all_cores_ceiling(package: Path, seconds: float) -> float:
    """In-process samples/s with every core: one session per core, each in its own thread,
    batches of MAX_BATCH (what ``instances`` = cores can reach at best)."""
    artifact = shipyard.load_package(package).artifacts[0]
    feeds = artifact.signature.example_inputs(batch=MAX_BATCH)
    done = [0] * CORES
    start = threading.Barrier(CORES + 1)

    def worker(index: int) -> None:
        with shipyard.open_session(artifact, threads=1) as session:
            for _ in range(3):
                session.run(feeds)
            start.wait()
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:
                session.run(feeds)
                done[index] += MAX_BATCH

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CORES)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - began)


def inprocess_p50_ms(package: Path, seconds: float) -> float:
    """Median latency of one in-process ONNX Runtime call at batch 1 (1 thread)."""
    artifact = shipyard.load_package(package).artifacts[0]
    with shipyard.open_session(artifact, threads=1) as session:
        feeds = artifact.signature.example_inputs(batch=1)
        for _ in range(20):
            session.run(feeds)
        times, stop_at = [], time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            session.run(feeds)
            times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def footprint(process: subprocess.Popen[bytes]) -> dict[str, int]:
    family = tree(psutil.Process(process.pid))
    threads = 0
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            threads += p.num_threads()
    return {"processes": len(family), "threads": threads}


def load_levels(
    who: str,
    process: subprocess.Popen[bytes],
    port: int,
    request: bytes,
    args: argparse.Namespace,
    metrics: bool = False,
) -> list[dict[str, Any]]:
    """load.py's drive() at each concurrency: warm-up, then the measured run."""
    rows = []
    for concurrency in args.levels:
        limit = args.warmup + args.seconds + 600  # a stuck server fails the level, not the run
        try:
            if args.client == "wrk":
                drive_wrk(port, request, concurrency, args.warmup)
            else:
                asyncio.run(asyncio.wait_for(drive(port, request, concurrency, args.warmup), limit))
            family = tree(psutil.Process(process.pid))
            cpu, batches = cpu_seconds(family), batch_stats(port) if metrics else None
            if args.client == "wrk":
                row = drive_wrk(port, request, concurrency, args.seconds)
            else:
                row = asyncio.run(
                    asyncio.wait_for(drive(port, request, concurrency, args.seconds), limit)
                )
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as error:
            print(f"  {who} c={concurrency}: failed ({error!r})", flush=True)
            rows.append({"concurrency": concurrency, "failed": repr(error)})
            continue
        row["server_cpu_us"] = (cpu_seconds(family) - cpu) / max(row["requests"], 1) * 1e6
        if batches is not None:
            after = batch_stats(port)
            formed = after[0] - batches[0]
            row["mean_batch"] = (after[1] - batches[1]) / formed if formed else 0.0
        rows.append(row)
        print(
            f"  {who:<16} c={concurrency:>3}: {row['req_per_s']:8.1f} req/s  p50 "
            f"{row['p50_ms']:8.2f}  p99 {row['p99_ms']:8.2f} ms  server CPU "
            f"{row['server_cpu_us']:6.0f} µs/req  errors {row['errors']}"
            + (
                f"  client {row['client_cpu_us']:.0f} / machine {row['machine_cpu_us']:.0f} µs/req"
                if "client_cpu_us" in row
                else ""
            )
            + (f"  mean batch {row['mean_batch']:.1f}" if "mean_batch" in row else ""),
            flush=True,
        )
    return rows


def measure_model(
    model: Model, args: argparse.Namespace, pythons: dict[str, Path], folder: Path
) -> dict[str, Any]:
    print(f"\n== {model.name}: building the package", flush=True)
    result = shipyard.build(parse_recipe(model.recipe), folder / "repo", run_bench=False)
    manifest_path = result.package_dir / "shipyard.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["serving"] = args.serving
    manifest_path.write_text(json.dumps(manifest))
    artifact = shipyard.load_package(result.package_dir).artifacts[0]
    onnx = artifact.path
    assert onnx is not None and onnx.suffix == ".onnx", onnx
    onnx_bytes = sum(f.stat().st_size for f in artifact.files())
    roof = ceiling(result.package_dir, [1, MAX_BATCH], seconds=args.ceiling_seconds)
    p50 = inprocess_p50_ms(result.package_dir, seconds=args.ceiling_seconds)
    print(
        f"  in-process ONNX Runtime: {roof[1]:.1f} samples/s at batch 1 (p50 {p50:.3f} ms), "
        f"{roof[MAX_BATCH]:.1f} at batch {MAX_BATCH}",
        flush=True,
    )
    x = np.random.default_rng(0).standard_normal(model.sample).astype(np.float32)
    servers: list[dict[str, Any]] = []
    logs = VENVS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    roof_all = all_cores_ceiling(result.package_dir, seconds=args.ceiling_seconds)
    print(f"  in-process, {CORES} threads at batch {MAX_BATCH}: {roof_all:.1f} samples/s")
    ours = our_variants(args, folder / "repo", onnx, model.name)
    with shipyard.open_session(artifact, threads=1) as session:
        for who in [*ours, *args.peer_list]:
            port = free_port()
            workdir = Path(tempfile.mkdtemp(prefix=f"{who.split()[0]}-", dir=folder))
            if who in ours:
                launch = ours[who](port)
            else:
                launch = launch_peer(
                    who, pythons[who], onnx, model.name, port, args.peer_delay_ms / 1e3, workdir
                )
            log_path = logs / f"{who.replace(' ', '_')}-{model.name}.log"
            print(f"  starting {who} (log {log_path})", flush=True)
            started = time.monotonic()
            with running(launch, workdir, log_path) as process:
                ready_s = time.monotonic() - started
                check_outputs(port, model, session, who)
                shape = footprint(process)
                request = request_bytes(port, model, x)
                entry = {"server": who, "ready_s": ready_s, **shape}
                metrics = who.startswith("ours")
                entry["levels"] = load_levels(who, process, port, request, args, metrics)
                servers.append(entry)
                if who in ours and args.binary:  # the same server, binary tensors
                    binary = request_bytes(port, model, x, binary=True)
                    levels = load_levels(f"{who} (binary)", process, port, binary, args, True)
                    servers.append({"server": f"{who} (binary)", **shape, "levels": levels})
            shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(folder / "repo", ignore_errors=True)
    return {
        "model": model.name,
        "onnx_bytes": onnx_bytes,
        "ceiling_samples_per_s": {str(k): v for k, v in roof.items()},
        "all_cores_ceiling_samples_per_s": roof_all,
        "inprocess_p50_ms": p50,
        "servers": servers,
    }


# -- report ------------------------------------------------------------------------------------


def level(entry: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    for row in entry["levels"]:
        if row["concurrency"] == concurrency and "failed" not in row:
            return row
    return None


def table(result: dict[str, Any], levels: list[int], versions: dict[str, dict[str, str]]) -> str:
    servers = result["servers"]
    ours = servers[0]
    width = 26
    cell = 33
    out = [f"\n{result['model']}: req/s, p50 and p99 ms, ours/row (throughput ratio)"]
    out.append(" " * width + "".join(f"| {'c=' + str(c):^{cell - 2}} " for c in levels))
    sub = f"| {'req/s':>8} {'p50':>8} {'p99':>8} {'ours/x':>6} "
    out.append(f"{'server':<{width}}" + sub * len(levels))
    for entry in servers:
        name = entry["server"]
        if name in versions:
            name += " " + versions[name].get(PEERS[name].package, "?")
        cells = []
        for c in levels:
            row, mine = level(entry, c), level(ours, c)
            if row is None:
                cells.append(f"| {'failed':^{cell - 2}} ")
                continue
            ratio = mine["req_per_s"] / row["req_per_s"] if mine and row["req_per_s"] else 0
            flag = "!" if row["errors"] else " "
            cells.append(
                f"| {row['req_per_s']:8.1f}{flag}{row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
                f"{ratio:5.2f}x "
            )
        out.append(f"{name:<{width}}" + "".join(cells))
    for batch, rate in result["ceiling_samples_per_s"].items():
        cells = []
        for c in levels:
            mine = level(ours, c)
            ratio = mine["req_per_s"] / rate if mine else 0
            p50 = f"{result['inprocess_p50_ms']:8.3f}" if batch == "1" else f"{'-':>8}"
            cells.append(f"| {rate:8.1f} {p50} {'-':>8} {ratio:5.2f}x ")
        out.append(f"{'ORT in-process, batch ' + batch:<{width}}" + "".join(cells))
    out.append("('!' = some requests were answered with an error; ORT rows: samples/s)")
    return "\n".join(line.rstrip() for line in out)


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for result in results:
        model, servers = result["model"], result["servers"]
        ours = level(servers[0], 32)
        measured = [(e["server"], level(e, 32)) for e in servers if e["server"] in PEERS]
        peers = [(name, row) for name, row in measured if row is not None and not row["errors"]]
        what = f"{model}: c=32 throughput >= 1.5x the best peer's, p99 no worse"
        if ours is None or not peers:
            found.append({"target": what, "value": "not measured (needs c=32 and a peer)"})
        else:
            name, best = max(peers, key=lambda item: item[1]["req_per_s"])
            ratio = ours["req_per_s"] / best["req_per_s"]
            met = ratio >= 1.5 and ours["p99_ms"] <= best["p99_ms"] and not ours["errors"]
            value = (
                f"ours {ours['req_per_s']:.1f} req/s = {ratio:.2f}x {name} "
                f"({best['req_per_s']:.1f}); p99 {ours['p99_ms']:.1f} vs {best['p99_ms']:.1f} ms"
            )
            found.append({"target": what, "value": value, "ratio": ratio, "met": met})
        if model == "resnet18":
            roof = result["all_cores_ceiling_samples_per_s"]
            for entry in servers:
                row = level(entry, 32)
                if not entry["server"].startswith("ours") or row is None or row["errors"]:
                    continue
                share = row["req_per_s"] / roof
                found.append(
                    {
                        "target": f"resnet18: {entry['server']} at c=32 >= 0.9x the all-cores "
                        "in-process ceiling",
                        "value": f"{row['req_per_s']:.1f} req/s = {share:.2f}x {roof:.1f}",
                        "ratio": share,
                        "met": share >= 0.9,
                    }
                )
        if model == "digits":
            row = level(servers[0], 1)
            what = "digits: added p50 at c=1 <= 1 ms over in-process ORT"
            if row is None:
                found.append({"target": what, "value": "not measured (needs c=1)"})
            else:
                added = row["p50_ms"] - result["inprocess_p50_ms"]
                value = f"{row['p50_ms']:.3f} - {result['inprocess_p50_ms']:.3f} = {added:.3f} ms"
                found.append({"target": what, "value": value, "added_ms": added, "met": added <= 1})
        found.extend(against_the_loop(model, servers))
    return found


def against_the_loop(model: str, servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 15's targets: c=1 p50 no worse than the FastAPI loop's; c=32 >= 2x its
    throughput and >= 3x MLServer's with a lower p99 than each (our best variant there);
    ``--workers N`` at c=64 >= 1.3x one process."""
    found: list[dict[str, Any]] = []
    named = {e["server"]: e for e in servers}
    ours = [e for e in servers if e["server"].startswith("ours")]
    one = level(servers[0], 1)
    loop = level(named["fastapi"], 1) if "fastapi" in named else None
    if one is not None and loop:
        found.append(
            {
                "target": f"{model}: c=1 p50 <= the FastAPI loop's",
                "value": f"{one['p50_ms']:.3f} vs {loop['p50_ms']:.3f} ms",
                "met": one["p50_ms"] <= loop["p50_ms"],
            }
        )
    rows = [(e["server"], level(e, 32)) for e in ours]
    clean = [(name, row) for name, row in rows if row is not None and not row["errors"]]
    if clean:
        name, best = max(clean, key=lambda item: item[1]["req_per_s"])
        for peer, times in (("fastapi", 2.0), ("mlserver", 3.0)):
            other = level(named[peer], 32) if peer in named else None
            if not other:
                continue
            ratio = best["req_per_s"] / other["req_per_s"]
            found.append(
                {
                    "target": f"{model}: c=32 >= {times:g}x {peer} with a lower p99",
                    "value": f"{name} {best['req_per_s']:.1f} req/s = {ratio:.2f}x "
                    f"({other['req_per_s']:.1f}); p99 {best['p99_ms']:.1f} vs "
                    f"{other['p99_ms']:.1f} ms",
                    "ratio": ratio,
                    "met": ratio >= times and best["p99_ms"] < other["p99_ms"],
                }
            )
    single = level(servers[0], 64)
    for entry in ours:
        many = level(entry, 64)
        if "--workers" not in entry["server"] or single is None or many is None:
            continue
        ratio = many["req_per_s"] / single["req_per_s"]
        found.append(
            {
                "target": f"{model}: {entry['server']} at c=64 >= 1.3x one process",
                "value": f"{many['req_per_s']:.1f} vs {single['req_per_s']:.1f} req/s = "
                f"{ratio:.2f}x (client: wrk, 1 thread, on the same machine)",
                "ratio": ratio,
                "met": ratio >= 1.3 and not many["errors"],
            }
        )
    return found


# -- main --------------------------------------------------------------------------------------


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,resnet18")
    parser.add_argument("--peers", default="mlserver,litserve,ray")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=8.0, help="per level, after warm-up")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="our max_queue_delay_ms")
    parser.add_argument(
        "--peer-delay-ms", type=float, default=5.0, help="the peers' batch wait (they need one)"
    )
    parser.add_argument(
        "--binary",
        action="store_true",
        help="also load each of ours with binary tensors (an extra row each)",
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "ours"),
        default="wrk",
        help="load generator: wrk (C, checks every status; default) or load.py's asyncio client",
    )
    parser.add_argument(
        "--workers", type=int, default=CORES, help="also run ours with --workers N (1: not)"
    )
    parser.add_argument(
        "--all-cores",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run ours with one instance per core (the ONNX file served directly)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    args.peer_list = [p for p in args.peers.split(",") if p]
    models = [MODELS[m] for m in args.models.split(",") if m]
    unknown = set(args.peer_list) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; known: {sorted(PEERS)}")
    # Requests wait in the queue for seconds at c=64 on ResNet-18: no server-side timeout.
    args.serving = {
        "max_batch_size": MAX_BATCH,
        "max_queue_delay_ms": args.delay_ms,
        "instances": 1,
        "threads": 1,
        "timeout_ms": 600_000,
    }
    signal.signal(signal.SIGTERM, interrupt)

    pythons = {peer: ensure_venv(PEERS[peer]) for peer in args.peer_list}
    versions = {peer: peer_versions(PEERS[peer], pythons[peer]) for peer in args.peer_list}
    for peer, installed in versions.items():
        print(f"{peer}: {installed}", flush=True)
    fingerprint = hardware_fingerprint()
    load_before = os.getloadavg()
    started = time.monotonic()
    results = []
    folder = Path(tempfile.mkdtemp(prefix="shipyard-peers-"))
    try:
        for model in models:
            results.append(measure_model(model, args, pythons, folder / model.name))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()
    for result in results:
        print(table(result, args.levels, versions))
    found = targets(results)
    print("\ntargets")
    for item in found:
        met = item.get("met")
        verdict = "-" if met is None else "met" if met else "NOT met"
        print(f"  {item['target']}: {item['value']} -> {verdict}")
    print(
        f"\n{fingerprint.get('cpu')}, {fingerprint.get('logical_cores')} cores; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}; ONNX Runtime 1 intra-op thread in every server; "
        f"load average before {load_before}, after {load_after}; {time.monotonic() - started:.0f}"
        f" s\nours: serving {args.serving}; peers: max batch {MAX_BATCH}, batch wait "
        f"{args.peer_delay_ms} ms, 1 worker/replica; batch-1 JSON requests, {args.seconds} s per"
        f" level after {args.warmup} s warm-up"
    )
    for result in results:
        for entry in result["servers"]:
            print(
                f"  {result['model']} {entry['server']}: {entry['processes']} processes, "
                f"{entry['threads']} threads when ready"
            )
    if args.json:
        report = {
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "versions": {"ours": shipyard.__version__, **versions},
            "results": results,
            "targets": found,
            "fingerprint": fingerprint,
            "load_average": {"before": load_before, "after": load_after},
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every server started was stopped")
