"""Nothing lost under load: SIGTERM while 64 HTTP and 8 gRPC clients send. Every request the
server accepted is answered, later ones are refused (503 / UNAVAILABLE, or a refused
connection once the port is closed), none is cut off, and the process exits in time."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import wait_for
from tests.serve.test_command import BODY, _free_port, _serve, _wait_ready

HTTP_CLIENTS, GRPC_CLIENTS = 64, 8
X = np.zeros((2, 1, 8, 8), np.float32)


class Tally:
    """Per-outcome counts, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.answered_by: Counter[int] = Counter()
        self.problems: list[str] = []

    def add(self, client: int, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.counts[outcome] += 1
            if outcome == "answered":
                self.answered_by[client] += 1
            if outcome == "cut off":
                self.problems.append(detail)


def _http_client(url: str, index: int, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while True:
            try:
                response = client.post("/v2/models/tiny/infer", json=BODY)
            except httpx.ConnectError:  # the port is closed: refused before anything was sent
                tally.add(index, "refused")
                return
            except httpx.HTTPError as error:  # sent, and the connection died under it
                tally.add(index, "cut off", f"http {index}: {error!r}")
                return
            if response.status_code == 200:
                tally.add(index, "answered")
                continue
            if response.status_code == 503 and "shutting down" in response.json()["error"]:
                tally.add(index, "refused")
                return
            tally.add(index, "cut off", f"http {index}: {response.status_code} {response.text}")
            return


def _grpc_client(port: int, index: int, tally: Tally) -> None:
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = [triton_grpc.InferInput("x", list(X.shape), "FP32")]
    inputs[0].set_data_from_numpy(X)
    while True:
        try:
            client.infer("tiny", inputs, client_timeout=60)
        except InferenceServerException as error:
            if error.status() == "StatusCode.UNAVAILABLE":
                tally.add(index, "refused")
            else:
                tally.add(index, "cut off", f"grpc {index}: {error}")
            return
        tally.add(index, "answered")


def test_sigterm_under_load_answers_what_it_accepted(packages: Path) -> None:
    port, grpc_port = _free_port(), _free_port()
    process = _serve(
        str(packages / "tiny" / "1"), "--port", str(port), "--grpc-port", str(grpc_port)
    )
    url = f"http://127.0.0.1:{port}"
    _wait_ready(process, url)
    tally = Tally()
    threads = [
        threading.Thread(target=_http_client, args=(url, i, tally)) for i in range(HTTP_CLIENTS)
    ] + [
        threading.Thread(target=_grpc_client, args=(grpc_port, HTTP_CLIENTS + i, tally))
        for i in range(GRPC_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    # Every client is sending before the signal.
    wait_for(
        lambda: len(tally.answered_by) == len(threads), timeout=60, what="every client answered"
    )
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    process.communicate(timeout=60)
    exited = time.monotonic() - signalled
    assert process.returncode in (0, -signal.SIGTERM), process.returncode
    assert exited < 30, f"exited {exited:.1f} s after SIGTERM (drain timeout 30 s)"
    counts = tally.counts
    assert tally.problems == [], tally.problems[:5]
    assert counts["refused"] == len(threads)  # each client's last request, and only that one
    sent = counts["answered"] + counts["refused"] + counts["cut off"]
    assert sent == sum(tally.answered_by.values()) + len(threads)
    print(f"drain: {dict(counts)} in {exited:.2f} s")
