"""Soak test: the server's memory and open file descriptors after 10k and after 200k requests.

Serves the digits CNN (``load.py``'s repository) in its own process and sends a mix through
``--connections`` keep-alive connections, reopened every ``--reopen`` requests so connection
setup and teardown are exercised too: JSON, binary tensor extension, and requests that end in
errors (a wrong datatype: 400; an unknown model: 404; a malformed body: 400). RSS and open
file descriptors of the server process are read from /proc (psutil) after a warm-up, after 10k
and after the total; the target is at most 10% growth from 10k to the end. Usage::

    python benchmarks/serve/soak.py [--total 200000] [--connections 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import build_repository, read_response, request_bytes, start_server

from shipyard.hardware import hardware_fingerprint


def mixed_requests(port: int) -> list[tuple[bytes, int]]:
    """(request bytes, expected status): good JSON and binary, and three kinds of error."""
    good_json, good_binary = request_bytes(port, False), request_bytes(port, True)
    wrong_type = good_json.replace(b'"datatype": "FP32"', b'"datatype": "INT8"')
    unknown = request_bytes(port, False, model="nope")
    body = b'{"inputs": [{"name": "x"'
    malformed = (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    return [
        (good_json, 200), (good_binary, 200), (good_json, 200), (good_binary, 200),
        (wrong_type, 400), (unknown, 404), (malformed, 400),
    ]  # fmt: skip


async def _connection(port: int, requests: list[tuple[bytes, int]], count: int, reopen: int,
                      tally: dict[str, int]) -> None:  # fmt: skip
    sent = 0
    while sent < count:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(min(reopen, count - sent)):
                request, expected = requests[sent % len(requests)]
                writer.write(request)
                head, _ = await read_response(reader)
                status = int(head.split(b" ", 2)[1])
                tally["ok" if status == expected else "unexpected"] += 1
                sent += 1
        finally:
            writer.close()
            await writer.wait_closed()


async def send(port: int, total: int, connections: int, reopen: int) -> dict[str, int]:
    tally = {"ok": 0, "unexpected": 0}
    requests = mixed_requests(port)
    share = total // connections
    await asyncio.gather(
        *(_connection(port, requests, share, reopen, tally) for _ in range(connections))
    )
    return tally


def snapshot(process: psutil.Process) -> dict[str, float]:
    """RSS, and the fewest open fds over half a second: the server closes its side of the
    client connections just closed a little later, and those are not a leak."""
    fds = []
    for _ in range(20):
        fds.append(process.num_fds())
        time.sleep(0.025)
    return {"rss_mb": process.memory_info().rss / 2**20, "fds": float(min(fds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--reopen", type=int, default=1_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / "repository"
        build_repository(repository, {"max_batch_size": 16})
        server, port = start_server(repository)
        try:
            process = psutil.Process(server.pid)
            marks: dict[str, Any] = {}
            started = time.perf_counter()
            done = 0
            for label, upto in (("warm-up", 1_000), ("10k", 10_000), ("total", args.total)):
                tally = asyncio.run(send(port, upto - done, args.connections, args.reopen))
                done = upto
                marks[label] = {**snapshot(process), **tally, "requests": done}
                print(f"{label:>8}: {marks[label]}", flush=True)
            seconds = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=60)
    growth = {key: marks["total"][key] / marks["10k"][key] - 1 for key in ("rss_mb", "fds")}
    result = {
        "marks": marks,
        "growth_10k_to_total": growth,
        "seconds": seconds,
        "requests_per_s": args.total / seconds,
        "fingerprint": hardware_fingerprint(),
    }
    print(
        f"RSS {marks['10k']['rss_mb']:.1f} -> {marks['total']['rss_mb']:.1f} MB "
        f"({growth['rss_mb']:+.1%}); fds {marks['10k']['fds']:.0f} -> "
        f"{marks['total']['fds']:.0f} ({growth['fds']:+.1%}); {seconds:.0f} s; "
        f"unexpected statuses: {sum(m['unexpected'] for m in marks.values())}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    target_met = growth["rss_mb"] <= 0.10 and growth["fds"] <= 0.10
    sys.exit(0 if target_met else 1)


if __name__ == "__main__":
    main()
