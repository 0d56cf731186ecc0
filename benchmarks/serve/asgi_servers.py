"""One Shipyard app under several HTTP servers, same load: is uvicorn the server to keep?

Builds the digits CNN package as load.py does (random weights; ``max_batch_size`` 16,
``max_queue_delay_ms`` 0, 1 instance, 1 thread), writes a small factory module into the
temporary folder (``create()`` returns ``shipyard.serve.create_app`` over the repository named
by ``SHIPYARD_REPOSITORY``), and serves that same ASGI app under:

- ``shipyard``: uvicorn as Shipyard runs it (``python -m shipyard serve``: httptools with the
  header deadline, ``limit_concurrency``, the draining ``uvicorn.Server``);
- ``uvicorn``: plain ``uvicorn --factory`` (uvloop, httptools, no access log);
- ``granian``: ``granian --interface asgi --factory`` (1 worker, uvloop, no websockets);
- ``hypercorn``: ``hypercorn --worker-class uvloop`` (the other maintained ASGI server with
  HTTP/2 and HTTP/1.1; pure Python on h11).

With ``--empty`` (default) it also serves a handler that reads the body and answers a fixed
JSON body, as ASGI under uvicorn and granian and as RSGI (granian's native interface) under
granian: the most a server change (or an RSGI port) can save per request, with no model, no
batcher and no codec in the way.

granian and hypercorn are not Shipyard dependencies: they go into their own virtual
environment, ``benchmarks/serve/.peers/asgi-servers`` (git-ignored, created with pip on first
use, a few seconds), whose ``.pth`` file adds this interpreter's site-packages, so every
server runs the same Shipyard, Starlette, numpy, ONNX Runtime and uvloop.

Every server is started once and checked (8 different inputs at once must match in-process
ONNX Runtime, as peers.py checks); the app servers then answer tritonclient.http (server and
model metadata, config, readiness, one JSON and one binary-tensor inference compared with ONNX
Runtime). Load: wrk (wrk.py's ``drive_wrk``), batch-1 V2 JSON requests (load.py's bytes), a
warm-up then ``--seconds`` per level, levels and servers interleaved: in each round, for each
concurrency, every server in turn, in an order that changes from round to round. Reported per
server and level: the median over rounds of req/s, p50 and p99 ms, the server's CPU per request
(psutil, its whole process tree), the mean batch the app formed (its /metrics), the min-max
of req/s, errors; with the hardware fingerprint and the load average at every measurement. Usage::

    OMP_NUM_THREADS=1 python benchmarks/serve/asgi_servers.py [--concurrency 1,32,64]
        [--seconds 3] [--rounds 3] [--servers shipyard,uvicorn,granian,hypercorn]
        [--no-empty] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import shipyard
from shipyard.hardware import hardware_fingerprint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from load import batch_stats, build_repository, request_bytes  # noqa: E402
from peers import (  # noqa: E402
    MODELS,
    VENVS,
    Launch,
    check_outputs,
    cpu_seconds,
    free_port,
    running,
    tree,
)
from wrk import drive_wrk  # noqa: E402

SERVING = {"max_batch_size": 16, "max_queue_delay_ms": 0, "instances": 1, "threads": 1}
# The versions this benchmark was written and checked with.
REQUIREMENTS = ("granian==2.8.9", "hypercorn==0.18.0")
ENV = VENVS / "asgi-servers"

FACTORY = '''\
"""Shipyard's V2 app for servers that import an app (written by asgi_servers.py)."""

import json
import os

from shipyard.serve import create_app


def create():
    return create_app(os.environ["SHIPYARD_REPOSITORY"])


# A handler that reads the body and answers a digits-sized V2 response: the server alone.
BODY = json.dumps({
    "model_name": "digits", "model_version": "1",
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}],
}).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def empty_asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def empty_rsgi(scope, protocol):
    await protocol()
    protocol.response_bytes(200, [(k.decode(), v.decode()) for k, v in HEADERS], BODY)
'''


def ensure_env() -> Path:
    """The servers' environment: venv + pip, and a .pth that adds our site-packages."""
    python = ENV / "bin" / "python"
    stamp = ENV / "shipyard-requirements.txt"
    host = sysconfig.get_paths()["purelib"]
    wanted = "\n".join([*REQUIREMENTS, f"host site-packages: {host}"]) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating {ENV}: pip install {' '.join(REQUIREMENTS)} ...", flush=True)
    shutil.rmtree(ENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(ENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = subprocess.run([*pip, *REQUIREMENTS], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"pip install {' '.join(REQUIREMENTS)} failed:\n{result.stderr[-4000:]}")
    script = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    # After the venv's own packages: Shipyard's dependencies, the same files as ours.
    line = f"import site; site.addsitedir({host!r})\n"
    (Path(own.stdout.strip()) / "zz-shipyard-host.pth").write_text(line)
    stamp.write_text(wanted)
    return python


def versions(python: Path) -> dict[str, str]:
    names = ["granian", "hypercorn", "uvicorn", "uvloop", "httptools", "starlette"]
    script = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run([str(python), "-c", script, *names], capture_output=True, text=True)
    found = json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-300:]}
    return {"shipyard": shipyard.__version__, **found}


def launches(python: Path, repository: Path, workdir: Path) -> dict[str, Callable[[int], Launch]]:
    """How to start each server on a port; the factory module is in ``workdir``."""
    bin_ = python.parent
    env = {
        # Our source first (this checkout), then the factory module.
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(workdir)]),
        "SHIPYARD_REPOSITORY": str(repository),
    }

    def ready(port: int) -> str:
        return f"http://127.0.0.1:{port}/v2/health/ready"

    def granian(target: str, interface: str = "asgi", *extra: str) -> Callable[[int], Launch]:
        return lambda port: Launch(
            [str(bin_ / "granian"), "--interface", interface, *extra, "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--loop", "uvloop", "--no-ws",
             "--log-level", "warning", target],
            ready(port), env,
        )  # fmt: skip

    def uvicorn(target: str, *extra: str) -> Callable[[int], Launch]:
        return lambda port: Launch(
            [sys.executable, "-m", "uvicorn", *extra, "--host", "127.0.0.1", "--port",
             str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
             "--log-level", "warning", target],
            ready(port), env,
        )  # fmt: skip

    def command(*argv: str) -> Callable[[int], Launch]:
        """``argv`` with ``{port}`` filled in."""
        return lambda port: Launch([a.format(port=port) for a in argv], ready(port), env)

    return {
        "shipyard": command(
            sys.executable,
            "-m",
            "shipyard",
            "serve",
            str(repository),
            "--port",
            "{port}",
            "--log-level",
            "warning",
        ),
        "uvicorn": uvicorn("factory:create", "--factory"),
        "granian": granian("factory:create", "asgi", "--factory"),
        "hypercorn": command(
            str(bin_ / "hypercorn"),
            "--worker-class",
            "uvloop",
            "--bind",
            "127.0.0.1:{port}",
            "--log-level",
            "warning",
            "factory:create()",  # hypercorn evaluates the call
        ),
        "empty ASGI, uvicorn": uvicorn("factory:empty_asgi"),
        "empty ASGI, granian": granian("factory:empty_asgi"),
        "empty RSGI, granian": granian("factory:empty_rsgi", "rsgi"),
    }


def triton_checks(port: int, session: Any) -> list[dict[str, Any]]:
    """tritonclient.http against the server: metadata, readiness, config, and an inference
    with JSON tensors and one with binary tensors, each compared with ONNX Runtime."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    x = np.random.default_rng(7).standard_normal((1, 1, 8, 8)).astype(np.float32)
    want = session.run({"x": x})["logits"]
    out: list[dict[str, Any]] = []

    def check(name: str, run: Callable[[], Any]) -> None:
        try:
            detail = run()
            out.append({"check": name, "ok": True, "detail": detail})
        except Exception as error:  # report every failure, keep checking
            out.append({"check": name, "ok": False, "detail": repr(error)[:300]})

    def expect(condition: bool, detail: Any) -> Any:
        if not condition:
            raise AssertionError(detail)
        return detail

    def infer(binary: bool) -> Any:
        given = triton.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=binary)
        asked = triton.InferRequestedOutput("logits", binary_data=binary)
        result = client.infer("digits", [given], outputs=[asked])
        got = result.as_numpy("logits")
        error = float(np.max(np.abs(got - want)))
        return expect(error <= 1e-5, f"shape {list(got.shape)}, max abs error {error:.2g}")

    def live() -> Any:
        return expect(client.is_server_live() and client.is_server_ready(), "live, ready")

    def server_metadata() -> Any:
        extensions = client.get_server_metadata()["extensions"]
        return expect("binary_tensor_data" in extensions, f"extensions {extensions}")

    def model_metadata() -> Any:
        meta = client.get_model_metadata("digits")
        tensors = meta["inputs"][0], meta["outputs"][0]
        shown = [(t["name"], t["datatype"], t["shape"]) for t in tensors]
        return expect(shown == [("x", "FP32", [-1, 1, 8, 8]), ("logits", "FP32", [-1, 10])], shown)

    def config() -> Any:
        batch = client.get_model_config("digits").get("max_batch_size")
        return expect(batch == SERVING["max_batch_size"], f"max_batch_size {batch}")

    check("server live and ready", live)
    check("server metadata", server_metadata)
    check("model ready", lambda: expect(client.is_model_ready("digits"), "ready"))
    check("model metadata", model_metadata)
    check("model config", config)
    check("infer, JSON tensors", lambda: infer(False))
    check("infer, binary tensors", lambda: infer(True))
    client.close()
    return out


def measure(
    port: int, family: list[Any], concurrency: int, args: argparse.Namespace, empty: bool
) -> dict[str, Any]:
    request = request_bytes(port, binary=False)
    drive_wrk(port, request, concurrency, args.warmup)
    batches = None if empty else batch_stats(port)  # the empty handlers have no /metrics
    cpu = cpu_seconds(family)
    row = drive_wrk(port, request, concurrency, args.seconds)
    row["server_cpu_us"] = (cpu_seconds(family) - cpu) / max(row["requests"], 1) * 1e6
    row["load_average"] = os.getloadavg()
    if batches is not None:
        after = batch_stats(port)
        formed = after[0] - batches[0]
        row["mean_batch"] = (after[1] - batches[1]) / formed if formed else 0.0
    return row


def order(names: list[str], round_: int) -> list[str]:
    """Round 0 as given, round 1 reversed, then rotations (reversed on odd rounds)."""
    shift = round_ // 2 % len(names)
    rotated = names[shift:] + names[:shift]
    return rotated[::-1] if round_ % 2 else rotated


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("req_per_s", "p50_ms", "p99_ms", "server_cpu_us")
    out: dict[str, Any] = {k: statistics.median(r[k] for r in rows) for k in keys}
    out["req_per_s_range"] = (min(r["req_per_s"] for r in rows), max(r["req_per_s"] for r in rows))
    out["errors"] = sum(r["errors"] for r in rows)
    batches = [r["mean_batch"] for r in rows if "mean_batch" in r]
    out["mean_batch"] = statistics.median(batches) if batches else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="shipyard,uvicorn,granian,hypercorn")
    parser.add_argument("--empty", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--concurrency", default="1,32,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="per level, after warm-up")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    apps = [s for s in args.servers.split(",") if s]
    empties = ["empty ASGI, uvicorn", "empty ASGI, granian", "empty RSGI, granian"]
    names = apps + (empties if args.empty else [])
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"signal {signum}"))

    python = ensure_env()
    installed = versions(python)
    print(f"versions: {installed}", flush=True)
    fingerprint = hardware_fingerprint()
    load_before, started = os.getloadavg(), time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="shipyard-asgi-"))
    logs = VENVS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, list[dict[str, Any]]]] = {
        n: {c: [] for c in levels} for n in names
    }
    conformance: dict[str, list[dict[str, Any]]] = {}
    try:
        package = build_repository(folder / "repo", SERVING)
        (folder / "factory.py").write_text(FACTORY)
        known = launches(python, folder / "repo", folder)
        unknown = set(names) - set(known)
        if unknown:
            parser.error(f"unknown servers {sorted(unknown)}; known: {sorted(known)[:4]}")
        artifact = shipyard.load_package(package).artifacts[0]
        with shipyard.open_session(artifact, threads=1) as session, contextlib.ExitStack() as up:
            ports, families = {}, {}
            for name in names:
                port = free_port()
                log_path = logs / f"asgi-{name.replace(' ', '_').replace(',', '')}.log"
                print(f"starting {name} on {port} (log {log_path})", flush=True)
                process = up.enter_context(running(known[name](port), folder, log_path))
                ports[name], families[name] = port, tree(psutil.Process(process.pid))
                if name in apps:
                    check_outputs(port, MODELS["digits"], session, name)
                    conformance[name] = triton_checks(port, session)
                    failed = [c["check"] for c in conformance[name] if not c["ok"]]
                    print(f"  tritonclient.http: {'FAILED ' + str(failed) if failed else 'ok'}")
            for round_ in range(args.rounds):
                for concurrency in levels:
                    for name in order(names, round_):
                        row = measure(
                            ports[name], families[name], concurrency, args, name not in apps
                        )
                        results[name][concurrency].append(row)
                        print(
                            f"round {round_ + 1} c={concurrency:>3} {name:<20} "
                            f"{row['req_per_s']:8.0f} req/s  p50 {row['p50_ms']:6.2f}  p99 "
                            f"{row['p99_ms']:6.2f} ms  server CPU {row['server_cpu_us']:5.0f} "
                            f"µs/req  errors {row['errors']}  load {row['load_average'][0]:.2f}",
                            flush=True,
                        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()
    table = {n: {c: summary(rows) for c, rows in by.items()} for n, by in results.items()}
    print_report(table, levels, apps, conformance)
    loads = [r["load_average"][0] for by in results.values() for rows in by.values() for r in rows]
    print(
        f"\n{fingerprint.get('cpu')}, {fingerprint.get('logical_cores')} cores; load average "
        f"before {load_before}, after {load_after}, 1-min at the measurements "
        f"{min(loads):.2f}-{max(loads):.2f}; {time.monotonic() - started:.0f} s; {args.rounds} "
        f"rounds, {args.seconds} s per level after {args.warmup} s warm-up; wrk 1 thread, batch-1 "
        f"JSON requests; serving {SERVING}; {installed}"
    )
    if args.json:
        report = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "versions": installed,
            "serving": SERVING,
            "summary": {n: {str(c): s for c, s in by.items()} for n, by in table.items()},
            "runs": {n: {str(c): rows for c, rows in by.items()} for n, by in results.items()},
            "conformance": conformance,
            "fingerprint": fingerprint,
            "load_average": {"before": load_before, "after": load_after},
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))


def print_report(
    table: dict[str, dict[int, dict[str, Any]]],
    levels: list[int],
    apps: list[str],
    conformance: dict[str, list[dict[str, Any]]],
) -> None:
    print(
        "\nmedian over rounds: req/s (min-max), p50 / p99 ms, server CPU µs/request, mean "
        "batch; errors"
    )
    print("| server | " + " | ".join(f"c={c}" for c in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for name, by in table.items():
        cells = []
        for c in levels:
            s = by[c]
            low, high = s["req_per_s_range"]
            cells.append(
                f"{s['req_per_s']:,.0f} ({low:,.0f}-{high:,.0f}), {s['p50_ms']:.2f} / "
                f"{s['p99_ms']:.2f}, {s['server_cpu_us']:.0f} µs"
                + (f", batch {s['mean_batch']:.1f}" if s["mean_batch"] is not None else "")
                + (f", {s['errors']} errors" if s["errors"] else "")
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    base = "shipyard" if "shipyard" in table else next(iter(table))
    print(f"\nserver CPU per request relative to {base} (lower is cheaper):")
    for name, by in table.items():
        ratios = [by[c]["server_cpu_us"] / table[base][c]["server_cpu_us"] for c in levels]
        print(
            f"  {name:<22} "
            + "  ".join(f"c={c}: {r:.2f}x" for c, r in zip(levels, ratios, strict=True))
        )
    print("\ntritonclient.http conformance:")
    for name in apps:
        checks = conformance.get(name, [])
        passed = sum(c["ok"] for c in checks)
        print(f"  {name}: {passed}/{len(checks)} passed")
        for c in checks:
            print(f"    {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every server started was stopped")
