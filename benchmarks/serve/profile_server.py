"""Where a request's CPU goes in the server: py-spy profiles under wrk and gRPC load.

Builds the digits CNN package (as load.py: ``max_batch_size`` 16, ``max_queue_delay_ms`` 0,
1 instance, 1 thread), starts ``python -m shipyard serve REPO --port P --grpc-port G`` in its
own process and runs three phases at ``--concurrency`` (32) against it:

- ``json``: wrk (wrk.py's ``drive_wrk``), batch-1 V2 JSON requests;
- ``binary``: wrk, the binary tensor extension (raw FP32 in, raw logits out);
- ``grpc``: one ``grpc.aio`` channel from this process sending pre-serialized
  ``ModelInferRequest`` bytes (``raw_input_contents``), as grpc_vs_http.py does.

Each phase: a warm-up, a measured window without the profiler (server CPU per request from
psutil, by thread), then the same window again while ``py-spy record --pid SERVER --rate R
--format raw --threads --nonblocking`` samples the server (``--native``: unwind C/C++/Cython
frames too; that pauses the process at every sample, so it halves throughput and the window's
numbers are not comparable; it shows the syscalls, uvloop, grpc's Cython and ONNX Runtime).
py-spy records running threads only (no ``--idle``); with ``--native`` the stacks that wait
(epoll, GIL, locks) are left out by their last frames. Shares of samples become µs/request
through the Python threads' CPU per request measured without the profiler. The event loop's
idle share is the part of the window its thread did not spend on a CPU (psutil).

For each phase it prints: req/s and latency, server CPU µs/request (user and system) with and
without the profiler, each thread's CPU µs/request (psutil; threads that run no Python, such as
gRPC's C-core ``event_engine`` threads, are invisible to py-spy and show only here), the share
of the Python threads' samples by area (each sample goes to the innermost frame of its stack
that belongs to a known area: see ``AREAS``) with their µs/request, and the hottest functions
by self samples. With ``--syscalls`` a last window per phase runs under ``strace -f -c``
and gives the syscalls per request. The raw folded stacks (and strace's tables) stay in
``--out`` (a temporary folder by default): ``flamegraph.pl FILE > FILE.svg`` or speedscope.app
read them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve/profile_server.py [--seconds 8]
        [--phases json,binary,grpc] [--concurrency 32] [--rate 200] [--native] [--syscalls]
        [--out DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc_vs_http  # benchmarks/serve/: the script's folder is on sys.path
import load
import psutil
import wrk

from shipyard.hardware import hardware_fingerprint

SERVING = {"max_batch_size": 16, "max_queue_delay_ms": 0.0, "instances": 1, "threads": 1}

GRPC = "grpc.aio (Python + Cython)"
THREADS = "thread pool hand-off (concurrent.futures, queue)"
# Areas, innermost first wins: (name, substrings of a frame "function (file:line)"). Frames
# of native code (--native) read "function (library)" or "function (file.c:line)".
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("syscalls (socket I/O, epoll)", (
        "write (libc", "writev (libc", "read (libc", "readv (libc", "sendmsg (libc",
        "recvmsg (libc", "epoll_ctl (libc", "epoll_wait (libc", "epoll_pwait (libc",
        "eventfd_write", "__GI___libc_write", "__libc_sendmsg",
    )),
    ("GIL / lock wait", ("pthread_cond_timedwait", "pthread_cond_wait", "take_gil")),
    ("ORT session run", ("onnxruntime", "shipyard/runtimes/")),
    ("numpy", ("numpy/", "_multiarray_umath")),
    ("JSON (orjson, simdjson, json)", ("json/", "orjson", "simdjson", "_json.c")),
    ("protobuf", ("google/protobuf", "_message.", "upb")),
    ("prometheus metrics", ("prometheus_client/",)),
    ("our codec (codec.py, protocol.py, grpc/codec.py)", (
        "shipyard/serve/codec.py", "shipyard/serve/protocol.py", "shipyard/serve/grpc/codec.py",
    )),
    ("our batcher + dispatch", (
        "shipyard/serve/batcher.py", "shipyard/serve/dispatch.py", "shipyard/signature.py",
        "shipyard/serve/images.py", "shipyard/serve/repository.py",
    )),
    ("our endpoints (infer.py, app.py, guard.py, grpc/server.py)", (
        "shipyard/serve/infer.py", "shipyard/serve/app.py", "shipyard/serve/guard.py",
        "shipyard/serve/grpc/server.py",
    )),
    (GRPC, ("grpc/", "cygrpc", "grpc_")),
    ("uvicorn + httptools", ("uvicorn/", "httptools", "parser.c")),
    (THREADS, ("concurrent/futures", "_queuemodule", "queue.py", "threading.py")),
    ("asyncio / uvloop", ("asyncio/", "_asynciomodule", "loop.c", "uvloop", "libuv", "uv_")),
]  # fmt: skip
OTHER = "other (interpreter, unrecognized)"
# A native stack (--native) ending in one of these within its last frames waits: in epoll (the
# loop or gRPC's poller idle), for the GIL, a lock or a queue. Not CPU: left out of the shares.
BLOCKED = "blocked: epoll / GIL / lock wait (not CPU)"
_WAITS = (
    "epoll_wait (libc", "epoll_pwait (libc", "pthread_cond_timedwait", "pthread_cond_wait",
    "sem_wait", "sem_timedwait", "PyThread_acquire_lock", "take_gil", "_queue_SimpleQueue_get",
)  # fmt: skip


def area_of(frames: list[str]) -> str:
    """The area of the innermost frame (leaf first) that belongs to one; BLOCKED for a wait."""
    if any(wait in frame for frame in frames[-4:] for wait in _WAITS):
        return BLOCKED
    for frame in reversed(frames):
        for name, needles in AREAS:
            if any(needle in frame for needle in needles):
                return name
    return OTHER


def strip_line(frame: str) -> str:
    """``f (file.py:12)`` -> ``f (file.py)``."""
    head, _, rest = frame.rpartition(" (")
    if not head:
        return frame
    place = rest.rstrip(")")
    if place.rpartition(":")[2].isdigit():
        place = place.rpartition(":")[0]
    return f"{head} ({place})"


@dataclass
class Profile:
    """Folded py-spy stacks of one phase, per thread."""

    samples: int = 0
    blocked: int = 0  # native stacks waiting (BLOCKED), in `samples` too
    threads: dict[str, int] = field(default_factory=dict)  # "tid name" -> samples
    areas: collections.Counter[str] = field(default_factory=collections.Counter)
    self_functions: collections.Counter[str] = field(default_factory=collections.Counter)
    self_lines: collections.Counter[str] = field(default_factory=collections.Counter)


def parse_folded(path: Path) -> Profile:
    """Read py-spy's raw output (``thread (TID): NAME;frame;...;leaf COUNT`` with --threads)."""
    out = Profile()
    threads: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames.pop(0) if frames and frames[0].startswith("thread (") else "?"
        threads[thread] += n
        out.samples += n
        area = area_of(frames)
        if area in (OTHER, THREADS) and "_poll_wrapper" in thread:  # grpc.aio's poller thread
            area = GRPC
        if area == BLOCKED:
            out.blocked += n
            continue
        out.areas[area] += n
        leaf = frames[-1] if frames else "(no Python frame: native code)"
        out.self_lines[leaf] += n
        out.self_functions[strip_line(leaf)] += n
    out.threads = dict(threads)
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(repository: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """``python -m shipyard serve`` with HTTP and gRPC; returns (process, http, grpc ports)."""
    http, rpc = free_port(), free_port()
    command = [
        sys.executable, "-m", "shipyard", "serve", str(repository), "--port", str(http),
        "--grpc-port", str(rpc), "--log-level", "warning", "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready") as reply:
                if reply.status == 200:
                    return process, http, rpc
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError("the server did not become ready within 90 s")


def thread_times(pid: int) -> dict[int, tuple[str, float, float]]:
    """tid -> (OS thread name, user s, system s) of every thread of ``pid``."""
    out = {}
    for thread in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        out[thread.id] = (name, thread.user_time, thread.system_time)
    return out


@dataclass
class Window:
    """One measured load window: the client's result and the server's CPU."""

    result: dict[str, Any]
    seconds: float
    user: float
    system: float
    threads: dict[int, tuple[str, float]]  # tid -> (name, CPU s)

    @property
    def requests(self) -> int:
        return max(int(self.result["requests"]), 1)

    def per_request(self, cpu_seconds: float) -> float:
        return cpu_seconds / self.requests * 1e6


def measure(pid: int, drive: Callable[[float], dict[str, Any]], seconds: float) -> Window:
    server = psutil.Process(pid)
    before, threads_before = server.cpu_times(), thread_times(pid)
    started = time.perf_counter()
    result = drive(seconds)
    elapsed = time.perf_counter() - started
    after, threads_after = server.cpu_times(), thread_times(pid)
    threads = {}
    for tid, (name, user, system) in threads_after.items():
        _, user0, system0 = threads_before.get(tid, (name, 0.0, 0.0))
        threads[tid] = (name, (user - user0) + (system - system0))
    return Window(result, elapsed, after.user - before.user, after.system - before.system, threads)


def pyspy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def record(pid: int, seconds: int, rate: int, native: bool, out: Path) -> subprocess.Popen[str]:
    """Start py-spy on ``pid`` for ``seconds``; the caller waits for it."""
    command = [
        pyspy(), "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(seconds),
        "--format", "raw", "--threads", "-o", str(out),
    ]  # fmt: skip
    command.append("--native" if native else "--nonblocking")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def count_syscalls(
    pid: int, drive: Callable[[float], dict[str, Any]], seconds: float, out: Path
) -> tuple[dict[str, float], float]:
    """Syscalls per request of every server thread under ``strace -f -c`` (slows the server a
    lot; the counts per request are what matters) and that window's req/s."""
    tracer = shutil.which("strace")
    if tracer is None:
        raise SystemExit("--syscalls needs strace (apt-get install strace)")
    strace = subprocess.Popen(
        [tracer, "-f", "-c", "-p", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached to every thread before the load starts
    result = drive(seconds)
    strace.send_signal(signal.SIGINT)
    strace.wait(timeout=60)
    requests = max(int(result["requests"]), 1)
    calls: dict[str, float] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] != "total" and parts[3].isdigit():
            calls[parts[-1]] = int(parts[3]) / requests
    return calls, result["req_per_s"]


def drivers(http: int, rpc: int, concurrency: int) -> dict[str, Callable[[float], dict[str, Any]]]:
    json_request = load.request_bytes(http, binary=False)
    binary_request = load.request_bytes(http, binary=True)
    grpc_request = grpc_vs_http.grpc_request()

    def grpc_drive(seconds: float) -> dict[str, Any]:
        return asyncio.run(grpc_vs_http.grpc_drive(rpc, grpc_request, concurrency, seconds))

    return {
        "json": lambda s: wrk.drive_wrk(http, json_request, concurrency, s),
        "binary": lambda s: wrk.drive_wrk(http, binary_request, concurrency, s),
        "grpc": grpc_drive,
    }


def name_threads(pid: int, profile: Profile, window: Window) -> dict[int, str]:
    """tid -> a readable name: py-spy's Python thread name, else the OS name."""
    names = {tid: os_name for tid, (os_name, _) in window.threads.items()}
    names[pid] = "MainThread (event loop)"
    for key in profile.threads:  # "thread (TID): NAME"
        inside = key.removeprefix("thread (")
        tid_text, _, rest = inside.partition(")")
        if tid_text.isdigit() and int(tid_text) != pid:
            names[int(tid_text)] = rest.removeprefix(":").strip() or names.get(int(tid_text), "?")
    return names


def run_phase(
    name: str,
    pid: int,
    drive: Callable[[float], dict[str, Any]],
    args: argparse.Namespace,
    out: Path,
) -> dict[str, Any]:
    drive(args.warmup)
    batches = load.batch_stats(args.http_port)
    plain = measure(pid, drive, args.seconds)
    after = load.batch_stats(args.http_port)
    count = after[0] - batches[0]
    plain.result["mean_batch"] = (after[1] - batches[1]) / count if count else 0.0
    folded = out / f"{name}.txt"
    spy = record(pid, int(args.seconds), args.rate, args.native, folded)
    time.sleep(0.3)  # py-spy attaches before the load starts; the load outlasts it
    profiled = measure(pid, drive, args.seconds + 0.6)
    spy_log, _ = spy.communicate(timeout=args.seconds + 60)
    if spy.returncode or not folded.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy_log[-800:]}")
    profile = parse_folded(folded)
    names = name_threads(pid, profile, plain)
    row = summarize(name, pid, plain, profiled, profile, names, folded, spy_log, args)
    if args.syscalls:
        calls, rate = count_syscalls(pid, drive, args.seconds, out / f"{name}.strace")
        row["syscalls_per_req"] = calls
        row["strace_req_per_s"] = rate
    return row


def summarize(
    name: str,
    pid: int,
    plain: Window,
    profiled: Window,
    profile: Profile,
    names: dict[int, str],
    folded: Path,
    spy_log: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    ticks = args.rate * int(args.seconds)
    # Samples of each Python thread, keyed by tid.
    by_tid: dict[int, int] = {}
    for key, n in profile.threads.items():
        tid_text = key.removeprefix("thread (").partition(")")[0]
        if tid_text.isdigit():
            by_tid[int(tid_text)] = by_tid.get(int(tid_text), 0) + n
    # Shares of the CPU samples, in µs of the Python threads' CPU per request without py-spy.
    python_cpu = sum(cpu for tid, (_, cpu) in plain.threads.items() if tid in by_tid)
    python_us = plain.per_request(python_cpu)
    total = max(profile.samples - profile.blocked, 1)
    threads = []
    for tid, (_, cpu) in sorted(plain.threads.items(), key=lambda kv: -kv[1][1]):
        if cpu / plain.seconds < 0.005:
            continue
        threads.append(
            {
                "tid": tid,
                "name": names.get(tid, "?"),
                "cpu_us_per_req": plain.per_request(cpu),
                "busy": cpu / plain.seconds,
                "python": tid in by_tid,
            }
        )
    main_busy = plain.threads.get(pid, ("", 0.0))[1] / plain.seconds
    errors = next((line for line in spy_log.splitlines() if "Samples:" in line), "")
    return {
        "phase": name,
        "requests": plain.result["requests"],
        "req_per_s": plain.result["req_per_s"],
        "p50_ms": plain.result["p50_ms"],
        "p99_ms": plain.result["p99_ms"],
        "errors": plain.result["errors"],
        "mean_batch": plain.result["mean_batch"],
        "cpu_us_per_req": plain.per_request(plain.user + plain.system),
        "user_us_per_req": plain.per_request(plain.user),
        "system_us_per_req": plain.per_request(plain.system),
        "profiled_req_per_s": profiled.result["req_per_s"],
        "profiled_cpu_us_per_req": profiled.per_request(profiled.user + profiled.system),
        "python_threads_cpu_us_per_req": python_us,
        "event_loop_idle": max(0.0, 1.0 - main_busy),
        "threads": threads,
        "samples": profile.samples,
        "blocked_samples": profile.blocked,
        "sampled_busy": {str(tid): n / ticks for tid, n in by_tid.items()},
        "py_spy": errors.strip(),
        "areas": [
            {"area": area, "share": n / total, "us_per_req": n / total * python_us}
            for area, n in profile.areas.most_common()
        ],
        "self": [
            {
                "function": function,
                "share": n / total,
                "us_per_req": n / total * python_us,
                "hottest_line": max(
                    (k for k in profile.self_lines if strip_line(k) == function),
                    key=lambda k: profile.self_lines[k],
                ),
            }
            for function, n in profile.self_functions.most_common(args.top)
        ],
        "folded": str(folded),
    }


def print_phase(row: dict[str, Any]) -> None:
    print(
        f"\n## {row['phase']}: {row['req_per_s']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
        f"p99 {row['p99_ms']:.2f} ms, mean batch {row['mean_batch']:.1f}, errors "
        f"{row['errors']}; server CPU "
        f"{row['cpu_us_per_req']:.0f} µs/req (user {row['user_us_per_req']:.0f}, system "
        f"{row['system_us_per_req']:.0f}); under py-spy {row['profiled_req_per_s']:,.0f} req/s, "
        f"{row['profiled_cpu_us_per_req']:.0f} µs/req; event loop idle "
        f"{row['event_loop_idle']:.0%}; {row['py_spy']}"
        + (f" ({row['blocked_samples']} waiting, left out)" if row["blocked_samples"] else "")
    )
    print("\n| thread | CPU µs/req | busy |")
    print("|---|---|---|")
    for t in row["threads"]:
        name = t["name"] if t["python"] else f"{t['name']} (no Python: not sampled)"
        print(f"| {name} | {t['cpu_us_per_req']:.1f} | {t['busy']:.0%} |")
    print(
        f"\n| area (innermost frame; of the Python threads' "
        f"{row['python_threads_cpu_us_per_req']:.0f} µs/req) | share | µs/req |"
    )
    print("|---|---|---|")
    for a in row["areas"]:
        print(f"| {a['area']} | {a['share']:.1%} | {a['us_per_req']:.1f} |")
    print("\n| self function | share | µs/req | hottest line |")
    print("|---|---|---|---|")
    for s in row["self"]:
        line = s["hottest_line"].rpartition(":")[2].rstrip(")")
        print(f"| {s['function']} | {s['share']:.1%} | {s['us_per_req']:.1f} | {line} |")
    calls = row.get("syscalls_per_req")
    if calls:
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:10]
        print(
            f"\nsyscalls per request (strace -f -c, {row['strace_req_per_s']:,.0f} req/s under "
            f"it), {sum(calls.values()):.1f} in all: "
            + ", ".join(f"{name} {n:.2f}" for name, n in top)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="json,binary,grpc")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (pauses)")
    parser.add_argument(
        "--syscalls", action="store_true", help="also count syscalls per request (strace)"
    )
    parser.add_argument("--top", type=int, default=14, help="self functions listed")
    parser.add_argument("--out", type=Path, default=None, help="folder for the folded stacks")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.seconds = max(1.0, round(args.seconds))  # wrk and py-spy take whole seconds
    out = args.out or Path(tempfile.mkdtemp(prefix="shipyard-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="shipyard-profile-repo-"))
    load_before = os.getloadavg()
    rows = []
    try:
        load.build_repository(folder, SERVING)
        process, http, rpc = start_server(folder)
        try:
            args.http_port = http
            phases = drivers(http, rpc, args.concurrency)
            for name in args.phases.split(","):
                row = run_phase(name, process.pid, phases[name], args, out)
                rows.append(row)
                print_phase(row)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        "\n| phase | req/s | p50 ms | mean batch | server CPU µs/req (user + system) "
        "| under py-spy |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['phase']} | {row['req_per_s']:,.0f} | {row['p50_ms']:.2f} | "
            f"{row['mean_batch']:.1f} | "
            f"{row['cpu_us_per_req']:.0f} ({row['user_us_per_req']:.0f} + "
            f"{row['system_us_per_req']:.0f}) | {row['profiled_req_per_s']:,.0f} req/s, "
            f"{row['profiled_cpu_us_per_req']:.0f} µs/req |"
        )
    fingerprint = hardware_fingerprint()
    load_after = os.getloadavg()
    print(
        f"\n{fingerprint.get('cpu')}, {fingerprint.get('logical_cores')} cores; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; c={args.concurrency}, "
        f"{args.seconds:g} s per window, py-spy {args.rate} Hz "
        f"{'--native' if args.native else '--nonblocking'}; serving {SERVING}; "
        f"folded stacks in {out}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "load_average": [load_before, load_after],
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "fingerprint": fingerprint,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
