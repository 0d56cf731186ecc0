"""The README's example outputs, produced by the code: ``--write`` regenerates them,
``--check`` (run by the test suite) fails when the README no longer shows what the code does.

Each generated block in README.md sits between two markers::

    <!-- example: NAME MODE -->
    ```text
    ...
    ```
    <!-- /example -->

MODE says how ``--check`` compares: ``exact`` (same text), ``close`` (same text, numbers
within 2% or 0.05: other CPUs round differently), ``shape`` (same text with every number
masked: timings). Commands run with the built-in digits example in a temporary folder, so
paths in the output are the ones a reader types.

    python scripts/readme_examples.py --write     # after changing what a command prints
    python scripts/readme_examples.py --check     # what tests/test_readme.py runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BLOCK = re.compile(
    r"(<!-- example: (?P<name>[\w-]+) (?P<mode>exact|close|shape) -->\n```text\n)"
    r"(?P<body>(?:(?!<!-- ).)*?)(\n?```\n<!-- /example -->)",
    re.S,
)
NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")
WIDTH = "120"  # the README's tables are rendered at this width


class Examples:
    """Runs the commands once, in order, in one temporary folder; each method is a block."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # A cache of its own: the digits CNN trains on the first build, every time, so the
        # output is the same whatever the reader's (or the test suite's) cache holds.
        self.env = {
            **os.environ,
            "COLUMNS": WIDTH,
            "PYTHONPATH": str(REPO / "src"),
            "SHIPYARD_CACHE_DIR": str(folder / ".cache"),
        }

    def shipyard(self, *args: str, expect: int = 0) -> str:
        """``$ shipyard ARGS`` and what it printed (stdout, then stderr)."""
        run = subprocess.run(
            [sys.executable, "-m", "shipyard", *args],
            cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if run.returncode != expect:
            raise SystemExit(f"shipyard {' '.join(args)} exited {run.returncode}:\n{run.stderr}")
        shown = " ".join(f'"{a}"' if " " in a or "[" in a else a for a in args)
        printed = f"{run.stdout}{run.stderr}".replace(f"{self.folder}/", "")
        return f"$ shipyard {shown}\n{printed}".rstrip()

    def build(self) -> str:
        return self.shipyard("build", "-o", "out")

    def inspect(self) -> str:
        return self.shipyard("inspect", "out/digits/1")

    def quantize(self) -> str:
        return self.shipyard(
            "quantize", "out/digits/1/model.onnx", "-o", "model.int8.onnx",
            "--preset", "static_qdq_u8s8", "--data", "shipyard.examples.digits:calibration",
            "--validate-data", "shipyard.examples.digits:validation",
            "--max-accuracy-drop", "0.005",
        )  # fmt: skip

    def compare(self) -> str:
        return self.shipyard("compare", "out/digits/1/model.onnx", "model.int8.onnx")

    def errors(self) -> str:
        lines = [
            self.shipyard("build", "-o", "out", expect=2),
            self.shipyard("optimize", "-o", "out", "--budget", "2", expect=2),
        ]
        return "\n".join(lines)

    def serve(self) -> str:
        """``shipyard serve out`` and the README's curl line against it, then Ctrl-C."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        request = self.folder / "request.json"
        subprocess.run(
            [sys.executable, "-m", "shipyard.examples.digits.request", str(request)],
            env=self.env, check=True,
        )  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "shipyard", "serve", "out", "--port", str(port)],
            cwd=self.folder, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("shipyard serve did not become ready") from None
                    time.sleep(0.2)
            post = urllib.request.Request(
                f"{base}/v2/models/digits/infer",
                data=request.read_bytes(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(post, timeout=30) as answer:
                body = json.loads(answer.read())
        finally:
            server.send_signal(signal.SIGINT)
            table, _ = server.communicate(timeout=60)
        for output in body["outputs"]:
            output["data"] = [round(v, 2) for v in output["data"]]
        curl = (
            "$ curl -s -X POST http://127.0.0.1:8000/v2/models/digits/infer "
            "-H 'Content-Type: application/json' -d @request.json\n"
            + json.dumps(body, separators=(",", ":"))
        )
        table = table.replace(f":{port}", ":8000").replace(f"{self.folder}/", "")
        # How many processes serve depends on the machine's cores: shown as on a 2-core one.
        table = re.sub(
            r"; (\d+ worker processes|one process) \(auto: [^)]*\)",
            "; 2 worker processes (auto: one per usable core)",
            table,
        )
        started = "$ shipyard serve out\n" + table.rstrip()
        return f"{started}\n\n{curl}"

    def images(self) -> str:
        """EfficientNet-Lite0 (the example's model, processing and labels; fp32 ONNX only)
        served, and a photo sent as the request body."""
        recipe = (REPO / "examples/efficientnet/recipe.yaml").read_text().split("data:")[0]
        recipe += "passes: [{export: {opset: 18}}]\nvalidate: {samples: 2}\n"
        (self.folder / "efficientnet.yaml").write_text(recipe)
        self.shipyard("build", "efficientnet.yaml", "-o", "models", "--no-bench")
        from shipyard.examples.efficientnet.data import photo_path

        (self.folder / "cat.png").write_bytes(photo_path("chelsea").read_bytes())

        def ask(base: str) -> str:
            post = urllib.request.Request(
                f"{base}/v2/models/efficientnet-lite0/infer",
                data=(self.folder / "cat.png").read_bytes(),
                headers={"Content-Type": "image/png"},
            )
            with urllib.request.urlopen(post, timeout=60) as answer:
                body = json.loads(answer.read())
            output = body["outputs"][0]
            output["data"] = [
                f"{float(v.split(':')[0]):.2f}:{v.split(':', 1)[1]}" for v in output["data"]
            ]
            return json.dumps(body, separators=(",", ":"))

        answer = _serve_once(self.env, self.folder, "models", ask)
        curl = (
            "$ curl -s --data-binary @cat.png -H 'Content-Type: image/png' "
            "http://127.0.0.1:8000/v2/models/efficientnet-lite0/infer"
        )
        return f"{curl}\n{answer}"


def _serve_once(env: dict[str, str], folder: Path, repository: str, ask: Any) -> str:
    """Start ``shipyard serve repository`` on a free port, return ``ask(base_url)``, stop."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "shipyard", "serve", repository, "--port", str(port)],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("shipyard serve did not become ready") from None
                time.sleep(0.2)
        return str(ask(base))
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)


def _numbers_close(a: str, b: str) -> bool:
    try:
        x, y = (float(s.replace(",", "")) for s in (a, b))
    except ValueError:  # not one number: an address, a version (127.0.0.1, 2.13.0)
        return a == b
    return abs(x - y) <= max(0.05, 0.02 * max(abs(x), abs(y)))


# Table columns widen with their numbers, and wrapped lines break elsewhere: in the masked
# modes, runs of spaces (line breaks included) and of one box-drawing character count once.
_SPACE = re.compile(r"\s+")
_RULE = re.compile(r"([─━═│┃])\1+")


def _masked(text: str) -> str:
    return _RULE.sub(r"\1", _SPACE.sub(" ", NUMBER.sub("#", text)))


def matches(mode: str, shown: str, produced: str) -> bool:
    if mode == "exact":
        return shown == produced
    masked = (_masked(shown), _masked(produced))
    if masked[0] != masked[1]:
        return False
    if mode == "shape":
        return True
    pairs = zip(NUMBER.findall(shown), NUMBER.findall(produced), strict=True)
    return all(_numbers_close(a, b) for a, b in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's blocks")
    parser.add_argument("--check", action="store_true", help="exit 1 when a block is stale")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    blocks = list(BLOCK.finditer(text))
    with tempfile.TemporaryDirectory() as folder:
        examples = Examples(Path(folder))
        produced: dict[str, str] = {}
        for name in dict.fromkeys(m["name"] for m in blocks):  # in README order, once each
            make: Callable[[], str] | None = getattr(examples, name, None)
            if make is None:
                raise SystemExit(f"README.md names an unknown example {name!r}")
            # rich pads titles and captions with spaces: trailing blanks carry nothing
            produced[name] = "\n".join(line.rstrip() for line in make().splitlines())
    stale = [m["name"] for m in blocks if not matches(m["mode"], m["body"], produced[m["name"]])]
    if args.write:
        text = BLOCK.sub(lambda m: f"{m[1]}{produced[m['name']]}\n```\n<!-- /example -->", text)
        README.write_text(text, encoding="utf-8")
        print(f"wrote {len(blocks)} example blocks ({', '.join(stale) or 'none'} changed)")
        return 0
    for name in stale:
        print(f"README.md: example '{name}' no longer matches what the code prints:\n")
        print(produced[name] + "\n")
    if stale:
        print("regenerate with: .venv/bin/python scripts/readme_examples.py --write")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
