"""wrk as the load generator: a C client that costs little CPU, checks every response's
status, and is not ours (issue: our own client read no response body and measured itself).

``drive_wrk(port, request, concurrency, seconds)`` sends the same request (load.py's bytes:
request line, headers, body), or several in turn, over ``concurrency`` keep-alive connections
from one wrk thread, with ``--latency``; returns load.py's keys (req/s, p50/p99 ms, errors =
non-2xx/3xx answers, connect/read/write errors and timeouts) plus the CPU that wrk itself and
the whole machine used per request. wrk is Debian's package (``apt-get install wrk``);
:func:`ensure_wrk` installs it when missing and apt is there.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psutil

_SCRIPT = """
local bodies = {{}}
for _, name in ipairs({{{bodies}}}) do
  local f = assert(io.open(name, "rb"))
  bodies[#bodies + 1] = f:read("*all")
  f:close()
end
wrk.method = "{method}"
wrk.path = "{path}"
wrk.body = bodies[1]
{headers}
local turn = 0
if #bodies > 1 then
  request = function()
    turn = turn % #bodies + 1
    return wrk.format(nil, nil, nil, bodies[turn])
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SHIPYARD {{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package when missing (as CI's .ci/run may)."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
            check=False, capture_output=True,
        )  # fmt: skip
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed and could not be: apt-get install wrk")
    return found


def _split(request: bytes) -> tuple[str, str, dict[str, str], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.lower() not in ("host", "content-length"):
            headers[key.strip()] = value.strip()
    return method, path, headers, body


def _cpu_busy() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def drive_wrk(
    port: int, request: bytes | list[bytes], concurrency: int, seconds: float
) -> dict[str, Any]:
    """One wrk run; load.py's result keys plus ``client_cpu_us`` and ``machine_cpu_us`` per
    request (user + system CPU of wrk, and of every process on the machine). Several
    ``request``s (same method, path and headers; other bodies) are sent in turn."""
    binary = ensure_wrk()
    requests = request if isinstance(request, list) else [request]
    method, path, headers, _ = _split(requests[0])
    with tempfile.TemporaryDirectory() as folder:
        names = []
        for index, one in enumerate(requests):
            body_file = Path(folder) / f"body{index}"
            body_file.write_bytes(_split(one)[3])
            names.append(f'"{body_file}"')
        lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        script = Path(folder) / "request.lua"
        script.write_text(
            _SCRIPT.format(bodies=", ".join(names), method=method, path=path, headers=lines)
        )
        before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = _cpu_busy()
        run = subprocess.run(
            [binary, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
             "-s", str(script), f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, timeout=seconds + 120,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        machine = _cpu_busy() - busy
        after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in run.stdout.splitlines() if x.startswith("SHIPYARD ")), None)
    if run.returncode or line is None:
        raise OSError(f"wrk failed ({run.returncode}): {run.stderr[-500:]} {run.stdout[-500:]}")
    out = json.loads(line.removeprefix("SHIPYARD "))
    requests = max(out["requests"], 1)
    client = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    errors = out["status"] + out["connect"] + out["read"] + out["write"] + out["timeout"]
    return {
        "concurrency": concurrency,
        "requests": out["requests"],
        "req_per_s": out["requests"] / (out["duration_us"] / 1e6),
        "p50_ms": out["p50_us"] / 1e3,
        "p90_ms": out["p90_us"] / 1e3,
        "p99_ms": out["p99_us"] / 1e3,
        "errors": errors,
        "non_2xx": out["status"],
        "client_cpu_us": client / requests * 1e6,
        "machine_cpu_us": machine / requests * 1e6,
    }
