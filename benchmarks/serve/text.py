"""Texts in, embeddings out, through the server: ours against MLServer's HuggingFace runtime on
the same all-MiniLM-L6-v2 folder, at each concurrency, in one run.

Builds ``examples/minilm/recipe.yaml`` (fp32 and int8 ONNX, tokenizer in the package) into a
temporary repository (batches up to 32 texts, 1 instance, 1 thread), then, one server at a
time, driven by images.py's keep-alive client with one real text per request (held-out Rotten
Tomatoes snippets, median 27 tokens), V2 JSON:

- ours-int8 and ours-fp32: ``shipyard serve`` (the package's int8 artifact, then its fp32
  one), input ``text`` BYTES, answered with the 384-float ``sentence_embedding``;
- mlserver-hf: MLServer 1.7 with ``mlserver-huggingface`` (its own environment under
  ``.peers/``: transformers, PyTorch CPU, TensorFlow), task ``feature-extraction`` on the same
  folder, adaptive batching 32 / 5 ms, PyTorch with 1 thread (``OMP_NUM_THREADS=1``), input
  ``args`` (``content_type: str``). Its pipeline returns every token's vector (the runtime has
  no pooling): a client mean-pools and normalises them itself. ``--peer-workers`` sets its
  ``parallel_workers`` (0: inference in the server process; its ``predict`` blocks the loop).

Before the load, every server answers 8 texts sent at once; each answer must match
sentence-transformers' ``encode`` (cosine >= 0.98; the peer's after pooling). The same run
measures the in-process ceiling: the package's tokenizer + int8 ONNX Runtime at 32 texts.
Target: ours at least 2x the peer's throughput at concurrency 32, with a lower p99. Usage::

    python benchmarks/serve/text.py [--concurrency 1,8,32] [--seconds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402
from images import load  # noqa: E402

import shipyard  # noqa: E402
from shipyard.hardware import hardware_fingerprint  # noqa: E402
from shipyard.processing import Preprocess, TextTokenizer  # noqa: E402

RECIPE = HERE.parents[1] / "examples/minilm/recipe.yaml"
MAX_BATCH = 32
MLSERVER_HF = peers.Peer(
    "mlserver-hf",
    "mlserver-huggingface",
    # PyTorch's CPU build (a local wheel here) keeps pip from pulling the multi-GB CUDA one;
    # mlserver-huggingface 1.7.1 imports transformers' Conversation, gone since 4.42; and
    # optimum's exporter, which needs peers/hf_compat with torch 2.13 (see its docstring).
    ("mlserver==1.7.1", "mlserver-huggingface==1.7.1", "torch==2.13.0+cpu", "transformers<4.42",
     "fastapi<0.116", "uvloop<0.22"),
    ("mlserver", "transformers", "torch", "tokenizers"),
)  # fmt: skip
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def texts() -> list[str]:
    from shipyard.examples.rotten_tomatoes import split

    return [s.text for s in split()[1][:256]]


def build(repository: Path) -> Path:
    package = shipyard.build(RECIPE, repository, run_bench=False).package_dir
    manifest_path = package / "shipyard.json"
    manifest = json.loads(manifest_path.read_text())  # serving is outside the digest
    manifest["serving"].update(max_batch_size=MAX_BATCH, instances=1, threads=1)
    manifest_path.write_text(json.dumps(manifest))
    return package


def serve_artifact(package: Path, artifact: str) -> None:
    manifest_path = package / "shipyard.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["serving"]["artifact"] = artifact
    manifest_path.write_text(json.dumps(manifest))


def http(port: int, model: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def ours_request(port: int, text: str) -> bytes:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    return http(port, "minilm", body)


def peer_request(port: int, text: str) -> bytes:
    tensor = {"name": "args", "datatype": "BYTES", "shape": [1], "data": [text]}
    tensor["parameters"] = {"content_type": "str"}
    return http(port, "minilm", {"inputs": [tensor]})


def ours_embedding(body: bytes) -> np.ndarray:
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    return np.asarray(outputs["sentence_embedding"]["data"], dtype=np.float64)


def peer_embedding(body: bytes) -> np.ndarray:
    """The peer's token vectors of one text, mean-pooled and normalised (what encode does)."""
    (output,) = json.loads(body)["outputs"]
    if not output.get("data"):
        raise RuntimeError(f"no data: {body[:600]!r}")
    tokens = np.asarray(json.loads(output["data"][0]), dtype=np.float64).reshape(-1, 384)
    pooled = tokens.mean(axis=0)
    return pooled / np.linalg.norm(pooled)


def check(port: int, make: Any, read: Any, sample: list[str], want: np.ndarray, who: str) -> float:
    """Send ``sample`` at once; the smallest cosine of the answers with ``want``."""

    async def send() -> list[tuple[bytes, bytes]]:
        return await asyncio.gather(*(peers.exchange(port, make(port, t)) for t in sample))

    cosines = []
    for (head, body), expected in zip(asyncio.run(send()), want, strict=True):
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{who} answered {head[:40]!r}: {body[:300]!r}")
        got = read(body)
        cosines.append(float(got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)))
    if min(cosines) < 0.98:
        raise RuntimeError(f"{who}: embeddings differ from encode's (cosine {min(cosines):.4f})")
    return min(cosines)


def ceiling(package: Path, sample: list[str], seconds: float) -> float:
    """Texts/s in this process: the package's tokenizer + its int8 artifact, 32 texts a call."""
    loaded = shipyard.load_package(package)
    text = Preprocess.model_validate(loaded.manifest["preprocess"]).resolved(package).text
    assert text is not None
    tokenizer = TextTokenizer(text)
    artifact = next(a for a in loaded.artifacts if a.name == "onnx-int8")
    batches = [sample[i : i + MAX_BATCH] for i in range(0, len(sample), MAX_BATCH)]
    done, stop = 0, time.perf_counter() + seconds
    with shipyard.open_session(artifact, threads=1) as session:
        started = time.perf_counter()
        while time.perf_counter() < stop:
            batch = batches[done % len(batches)]
            session.run(tokenizer(batch).feeds)
            done += 1
        return done * MAX_BATCH / (time.perf_counter() - started)


def rows(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """images.py's rows, per text."""
    return [{**{k: v for k, v in r.items() if k != "images_per_s"},
             "texts_per_s": r["images_per_s"]} for r in levels]  # fmt: skip


def run_ours(work: Path, package: Path, sample: list[str], want: np.ndarray, args: Any) -> dict:
    out = {}
    for artifact in ("onnx-int8", "onnx"):
        serve_artifact(package, artifact)
        port = peers.free_port()
        launch = peers.launch_ours(package.parents[1], port)
        # The server runs the shipyard this script imports (a checkout, or the installed one).
        source = str(Path(shipyard.__file__).resolve().parents[1])
        launch.env["PYTHONPATH"] = os.pathsep.join([source, str(peers.PEER_CODE)])
        log = work / f"ours-{artifact}.log"
        with peers.running(launch, work, log) as process:
            peers.wait_ready(launch, process, log)
            check(port, ours_request, ours_embedding, sample[:8], want[:8], f"ours {artifact}")
            requests = [ours_request(port, t) for t in sample]
            out[artifact] = rows(load(port, requests, args.levels, args.seconds))
        print(f"ours {artifact}: {out[artifact]}", flush=True)
    return out


def run_peer(work: Path, sample: list[str], want: np.ndarray, args: Any) -> dict[str, Any]:
    from shipyard.examples.minilm import model_folder

    python = peers.ensure_venv(MLSERVER_HF)
    port, folder = peers.free_port(), work / "mlserver"
    folder.mkdir()
    launch = peers.launch_peer("mlserver", python, Path("unused"), "minilm", port, 0.005, folder)
    settings = json.loads((folder / "settings.json").read_text())
    settings["parallel_workers"] = args.peer_workers
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": "minilm",
        "implementation": "mlserver_huggingface.HuggingFaceRuntime",
        "max_batch_size": MAX_BATCH,
        "max_batch_time": 0.005,
        "parameters": {
            "extra": {"task": "feature-extraction", "pretrained_model": str(model_folder())}
        },
    }
    (folder / "minilm" / "model-settings.json").write_text(json.dumps(model))
    launch.env.update(OFFLINE)
    launch.env["PYTHONPATH"] = os.pathsep.join(
        [str(peers.PEER_CODE / "hf_compat"), str(peers.PEER_CODE)]
    )
    log = work / "mlserver-hf.log"
    with peers.running(launch, folder, log) as process:
        peers.wait_ready(launch, process, log)
        check(port, peer_request, peer_embedding, sample[:8], want[:8], "mlserver-hf")
        requests = [peer_request(port, t) for t in sample]
        result = {"levels": rows(load(port, requests, args.levels, args.seconds))}
        result["versions"] = peers.peer_versions(MLSERVER_HF, python)
    print(f"mlserver-hf: {result['levels']}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--peer-workers", type=int, default=1)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.update(OFFLINE)
    from sentence_transformers import SentenceTransformer

    from shipyard.examples.minilm import model_folder

    sample = texts()
    want = SentenceTransformer(str(model_folder()), device="cpu").encode(sample[:8])
    result: dict[str, Any] = {"fingerprint": hardware_fingerprint()}
    result["loadavg_start"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        package = build(work / "repository")
        result["ceiling_texts_per_s"] = ceiling(package, sample, args.seconds)
        print(f"ceiling (int8, in process): {result['ceiling_texts_per_s']:.0f} texts/s")
        result["ours"] = run_ours(work, package, sample, want, args)
        if not args.no_peer:
            result["mlserver_hf"] = run_peer(work, sample, want, args)
    result["loadavg_end"] = os.getloadavg()
    top = max(args.levels)
    ours = {r["concurrency"]: r for r in result["ours"]["onnx-int8"]}[top]
    if "mlserver_hf" in result:
        peer = {r["concurrency"]: r for r in result["mlserver_hf"]["levels"]}[top]
        ratio = ours["texts_per_s"] / peer["texts_per_s"]
        result["ours_vs_peer"] = ratio
        print(f"c={top}: ours int8 {ours['texts_per_s']:.0f} texts/s (p99 {ours['p99_ms']:.0f} "
              f"ms) = {ratio:.2f}x MLServer HF {peer['texts_per_s']:.0f} texts/s (p99 "
              f"{peer['p99_ms']:.0f} ms); target >= 2x with a lower p99")  # fmt: skip
    print(f"loadavg {result['loadavg_start']} -> {result['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
