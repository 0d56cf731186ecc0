"""Our Ray engine beside the single-process server and plain Ray Serve, on the digits CNN and
ResNet-18.

One run builds each model's package (random weights), then serves it, one server at a time:

- ``ours``: ``shipyard serve`` (one process);
- ``ray r=1`` / ``ray r=2``: ``shipyard serve --engine ray --replicas N`` (a local one-node
  cluster, Ray's HAProxy ingress, each replica the single-process app with its batcher);
- ``ray r=1, proxy``: the same through Ray's Python HTTP proxy (``--ray-ingress proxy``);
- ``ray serve``: plain Ray Serve, peers.py's peer (``peers/ray_server.py``: its own V2 JSON
  handler, ``@serve.batch(16, 5 ms)``, 1 replica), run with this interpreter (the ``ray``
  extra pins the same Ray 2.60.0 as the peer's own environment).

Each is checked for correct logits first (8 concurrent inputs), then driven by wrk
(``--client ours``: load.py's keep-alive client): batch-1 V2 JSON requests at each
concurrency for ``--seconds`` after a warm-up, recording req/s, p50/p99 and the server's
CPU per request (its whole process tree: for Ray, every Ray process it started). Load
averages before and after go with the table: other processes share this machine. Usage::

    OMP_NUM_THREADS=1 python benchmarks/serve/ray_engine.py [--concurrency 1,8,32]
        [--seconds 8] [--servers ours,ray1,ray2,proxy1,rayserve] [--models digits,resnet18]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers import (  # noqa: E402
    MAX_BATCH,
    MODELS,
    VENVS,
    Launch,
    check_outputs,
    free_port,
    launch_ours,
    launch_peer,
    level,
    load_levels,
    request_bytes,
    running,
)

import shipyard  # noqa: E402
from shipyard.hardware import hardware_fingerprint  # noqa: E402
from shipyard.recipe import parse_recipe  # noqa: E402

SERVERS = {
    "ours": "ours (one process)",
    "ray1": "ray engine r=1",
    "ray2": "ray engine r=2",
    "proxy1": "ray engine r=1, proxy",
    "rayserve": "plain Ray Serve 2.60",
}
# This checkout's Shipyard, not an installed one (peers.py's `running` sets PYTHONPATH).
SOURCE = {"PYTHONPATH": f"{HERE.parents[1] / 'src'}{os.pathsep}{HERE / 'peers'}"}


def launch_engine(repository: Path, port: int, replicas: int, ingress: str) -> Launch:
    command = [sys.executable, "-m", "shipyard", "serve", str(repository), "--engine", "ray"]
    command += ["--replicas", str(replicas), "--ray-ingress", ingress, "--port", str(port)]
    return Launch(
        command,
        f"http://127.0.0.1:{port}/v2/health/ready",
        env=SOURCE,
        ready_line="serving on",  # the startup table: every replica is up
    )


def measure(
    name: str, chosen: list[str], serving: dict[str, Any], args: Any
) -> list[dict[str, Any]]:
    """Build ``name``'s package (random weights) and drive each chosen server with it."""
    model = MODELS[name]
    folder = Path(tempfile.mkdtemp(prefix="shipyard-ray-bench-"))
    results: list[dict[str, Any]] = []
    try:
        built = shipyard.build(parse_recipe(model.recipe), folder / "repo", run_bench=False)
        manifest_path = built.package_dir / "shipyard.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["serving"] = serving
        manifest_path.write_text(json.dumps(manifest))
        artifact = shipyard.load_package(built.package_dir).artifacts[0]
        import numpy as np

        x = np.random.default_rng(0).standard_normal(model.sample).astype(np.float32)
        with shipyard.open_session(artifact, threads=1) as session:
            for who in chosen:
                port, workdir = free_port(), Path(tempfile.mkdtemp(dir=folder))
                if who == "ours":
                    launch = launch_ours(folder / "repo", port)
                    launch.env.update(SOURCE)
                elif who == "rayserve":
                    delay = args.peer_delay_ms / 1e3
                    onnx = artifact.path
                    assert onnx is not None
                    launch = launch_peer(
                        "ray", Path(sys.executable), onnx, model.name, port, delay, workdir
                    )
                else:
                    ingress = "proxy" if who.startswith("proxy") else "haproxy"
                    launch = launch_engine(folder / "repo", port, int(who[-1]), ingress)
                log = VENVS / "logs" / f"ray-engine-{name}-{who}.log"
                print(f"{name}: starting {SERVERS[who]} (log {log})", flush=True)
                ready = time.monotonic()
                with running(launch, workdir, log) as process:
                    ready_s = time.monotonic() - ready
                    check_outputs(port, model, session, who)
                    request = request_bytes(port, model, x)
                    levels = load_levels(SERVERS[who], process, port, request, args)
                    results.append(
                        {"model": name, "server": who, "ready_s": ready_s, "levels": levels}
                    )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def table(name: str, results: list[dict[str, Any]], args: Any) -> None:
    """``name``'s rows: req/s (p50 / p99) per level, CPU per request, the ratio to Ray Serve."""
    print(f"\n{name}, batch-1 V2 JSON requests; req/s (p50 / p99 ms); {args.seconds} s per level")
    print(f"{'server':<24}" + "".join(f"{'c=' + str(c):>26}" for c in args.levels))
    for entry in results:
        cells = []
        for c in args.levels:
            row = level(entry, c)
            cell = (
                "failed"
                if row is None
                else (
                    f"{row['req_per_s']:,.0f} ({row['p50_ms']:.1f} / {row['p99_ms']:.1f})"
                    + ("!" if row["errors"] else "")
                )
            )
            cells.append(f"{cell:>26}")
        print(f"{SERVERS[entry['server']]:<24}" + "".join(cells))
    for entry in results:
        cpu = [level(entry, c) for c in args.levels]
        print(
            f"  {SERVERS[entry['server']]}: ready in {entry['ready_s']:.1f} s; server CPU µs/req "
            + ", ".join(f"c={r['concurrency']}: {r['server_cpu_us']:.0f}" for r in cpu if r)
        )
    by_name = {e["server"]: e for e in results}
    top = max(args.levels)
    if "rayserve" in by_name:
        peer = level(by_name["rayserve"], top)
        for who in ("ray1", "ray2", "proxy1"):
            mine = level(by_name[who], top) if who in by_name else None
            if mine and peer:
                ratio = mine["req_per_s"] / peer["req_per_s"]
                target = " (target >= 3x)" if name == "digits" else ""
                print(f"  c={top}: {SERVERS[who]} = {ratio:.2f}x plain Ray Serve{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,resnet18")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--peer-delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--client", choices=("wrk", "ours"), default="wrk", help="as peers.py's --client"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    chosen = [s for s in args.servers.split(",") if s]
    names = [m for m in args.models.split(",") if m]
    serving = {"max_batch_size": MAX_BATCH, "max_queue_delay_ms": 0.0, "timeout_ms": 600_000}
    load_before, started = os.getloadavg(), time.monotonic()
    (VENVS / "logs").mkdir(parents=True, exist_ok=True)
    results = {name: measure(name, chosen, serving, args) for name in names}
    load_after = os.getloadavg()
    for name, rows in results.items():
        table(name, rows, args)
    fingerprint = hardware_fingerprint()
    print(
        f"{fingerprint.get('cpu')}, {fingerprint.get('logical_cores')} cores; load average "
        f"before {load_before}, after {load_after}; {time.monotonic() - started:.0f} s; "
        f"serving {serving}"
    )
    if args.json:
        report = {
            "results": [row for rows in results.values() for row in rows],
            "fingerprint": fingerprint,
            "load_average": {"before": load_before, "after": load_after},
            "serving": serving,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
