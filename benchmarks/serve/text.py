"""Texts in, embeddings out, through the server: ours against MLServer's HuggingFace runtime on
the same all-MiniLM-L6-v2 folder, at each concurrency, in one run.

Builds ``examples/minilm/recipe.yaml`` (fp32 and int8 ONNX, tokenizer in the package) into a
temporary repository (batches up to 32 texts, 1 instance, 1 thread), then, one server at a
time, drives it with wrk (one thread, every status checked; ``--client ours``: images.py's
asyncio keep-alive client), one real text per request (held-out Rotten Tomatoes snippets,
median 27 tokens, 256 of them in turn), V2 JSON, 2 s of warm-up then ``--seconds`` per level:

- ours-int8 and ours-fp32: ``shipyard serve`` (the package's int8 artifact, then its fp32
  one), input ``text`` BYTES, answered with the 384-float ``sentence_embedding``;
- mlserver-hf: MLServer 1.7 with ``mlserver-huggingface`` (its own environment under
  ``.peers/``, created here with pip: PyTorch CPU, transformers 4.41, optimum; not TensorFlow,
  which the runtime imports but a PyTorch pipeline never uses, see peers/hf_compat), task
  ``feature-extraction`` on the same folder, adaptive batching 32 / 5 ms, PyTorch with 1 thread
  (``OMP_NUM_THREADS=1``), input ``array_inputs`` (``content_type: str``; with ``args`` a
  merged batch loses all but its first text). Its pipeline returns every token's vector (the
  runtime has no pooling): a client mean-pools and normalises them itself. The runtime runs
  its pipeline with batch size 1 whatever ``max_batch_size`` says (it takes BERT's pad id 0
  for a missing one and logs "setting batch size to 1"): a merged batch is embedded text by
  text, unpadded. ``--peer-workers`` lists its ``parallel_workers`` settings, one run each
  (1: MLServer's default, a worker process; 0: inference in the server process, where
  ``predict`` blocks the event loop).

Before the load, every server answers 8 texts sent at once (so through its batcher); each
answer must match sentence-transformers' ``encode`` (cosine >= 0.98; the peer's after
pooling). Per level it records texts/s, p50/p99, the server's CPU per text (its whole process
tree), the cores the rest of the machine kept busy meanwhile (``other_cores``: a CI job on the
same machine shows up there), the load average and hardware fingerprint after the level and,
for ours, the mean batch formed. The same run measures the in-process ceiling: the package's
tokenizer + int8 ONNX Runtime at 32 texts a call. Target: ours at least 2x the peer's best
throughput at concurrency 32, with a lower p99. Prints the markdown table of
``benchmarks/serve/README.md``. Usage::

    python benchmarks/serve/text.py [--concurrency 1,8,32] [--seconds 10] [--peer-workers 1,0]
        [--no-peer] [--json out.json]
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
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402
from images import drive  # noqa: E402
from load import batch_stats  # noqa: E402
from wrk import drive_wrk  # noqa: E402

import shipyard  # noqa: E402
from shipyard.hardware import hardware_fingerprint  # noqa: E402
from shipyard.processing import Preprocess, TextTokenizer  # noqa: E402

RECIPE = HERE.parents[1] / "examples/minilm/recipe.yaml"
MAX_BATCH = 32
MLSERVER_HF = peers.Peer(
    "mlserver-hf",
    "mlserver-huggingface",
    # torch pinned to the CPU build (a local wheel here) so pip never pulls the multi-GB CUDA
    # one; mlserver-huggingface 1.7.1 imports transformers' Conversation, gone since 4.42, and
    # optimum 1.x's pipelines (their ONNX exporter needs peers/hf_compat with torch 2.13).
    ("torch==2.13.0+cpu", "mlserver==1.7.1", "transformers==4.41.2", "tokenizers==0.19.1",
     "optimum[onnxruntime]==1.27.0", "fastapi<0.116", "uvloop<0.22", "pillow"),
    ("mlserver", "transformers", "torch", "tokenizers", "optimum"),
    # Its declared dependencies add TensorFlow and tf-keras, for one import the PyTorch
    # pipeline never uses: installed without them (peers/hf_compat stands in for the import).
    no_deps=("mlserver-huggingface==1.7.1",),
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
    # "array_inputs", not "args": the runtime calls pipeline(*args), so when adaptive batching
    # merges 8 requests' "args" the pipeline gets 8 positional arguments, embeds the first
    # and ignores the rest (7 answers come back empty); "array_inputs" is passed as one list.
    tensor = {"name": "array_inputs", "datatype": "BYTES", "shape": [1], "data": [text]}
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


def measure(
    process: Any, port: int, requests: list[bytes], args: Any, ours: bool
) -> list[dict[str, Any]]:
    """wrk (or images.py's asyncio client), cycling through ``requests``, at each level after
    a 2 s warm-up. Per level also: the server's CPU per text (its whole process tree), the
    client's, the cores the rest of the machine kept busy meanwhile (``other_cores``: another
    job on the machine shows up there), the load average and hardware fingerprint after the
    level and, for ours, the mean batch the server formed."""
    family = peers.tree(psutil.Process(process.pid))
    out = []
    for concurrency in args.levels:
        limit = args.seconds + 300  # a stuck server fails the run instead of hanging it
        asyncio.run(asyncio.wait_for(drive(port, requests, concurrency, 2.0), limit))
        server, client = peers.cpu_seconds(family), time.process_time()
        machine, batches = psutil.cpu_times(), batch_stats(port) if ours else None
        started = time.perf_counter()
        if args.client == "wrk":  # every text in turn; wrk counts the answers other than 2xx
            row = drive_wrk(port, requests, concurrency, args.seconds)
            row["texts_per_s"], count = row.pop("req_per_s"), row["requests"]
            row["statuses"] = {"200": count - row["non_2xx"], "other": row["non_2xx"]}
            if row["errors"] - row["non_2xx"]:
                row["statuses"]["socket errors"] = row["errors"] - row["non_2xx"]
            row["statuses"] = {k: v for k, v in row["statuses"].items() if v}
        else:
            row = asyncio.run(
                asyncio.wait_for(drive(port, requests, concurrency, args.seconds), limit)
            )
            row["texts_per_s"], count = row.pop("images_per_s"), sum(row["statuses"].values())
        wall, after = time.perf_counter() - started, psutil.cpu_times()
        server = peers.cpu_seconds(family) - server
        client = time.process_time() - client
        if args.client == "wrk":
            client = row["client_cpu_us"] * count / 1e6
        busy = sum(getattr(after, k) - getattr(machine, k) for k in ("user", "system", "nice"))
        row["server_cpu_us"] = server / count * 1e6
        row["client_cpu_us"] = client / count * 1e6
        row["other_cores"] = (busy - server - client) / wall
        row["loadavg"] = os.getloadavg()
        row["fingerprint"] = hardware_fingerprint()
        if batches is not None:
            now = batch_stats(port)
            row["mean_batch"] = (now[1] - batches[1]) / max(now[0] - batches[0], 1)
        if set(row["statuses"]) != {"200"}:
            raise RuntimeError(f"answers other than 200 at c={concurrency}: {row['statuses']}")
        print(f"  c={concurrency:>3}: {row['texts_per_s']:7.1f} texts/s  p50 {row['p50_ms']:7.1f}"
              f"  p99 {row['p99_ms']:7.1f} ms  server CPU {row['server_cpu_us']:6.0f} µs/text"
              f"  other cores {row['other_cores']:.2f}  load {row['loadavg'][0]:.2f}"
              + (f"  mean batch {row['mean_batch']:.1f}" if "mean_batch" in row else ""),
              flush=True)  # fmt: skip
        out.append(row)
    return out


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
        print(f"ours {artifact}", flush=True)
        with peers.running(launch, work, log) as process:
            cosine = check(port, ours_request, ours_embedding, sample[:8], want, f"ours {artifact}")
            print(f"  8 texts at once match encode's: min cosine {cosine:.4f}", flush=True)
            requests = [ours_request(port, t) for t in sample]
            out[artifact] = {
                "min_cosine": cosine,
                "levels": measure(process, port, requests, args, True),
            }
    return out


def run_peer(work: Path, sample: list[str], want: np.ndarray, args: Any, workers: int) -> dict:
    from shipyard.examples.minilm import model_folder

    python = peers.ensure_venv(MLSERVER_HF)
    port, folder = peers.free_port(), work / f"mlserver-{workers}"
    folder.mkdir()
    launch = peers.launch_peer("mlserver", python, Path("unused"), "minilm", port, 0.005, folder)
    settings = json.loads((folder / "settings.json").read_text())
    settings["parallel_workers"] = workers
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
    log = work / f"mlserver-hf-{workers}.log"
    print(f"mlserver-hf, parallel_workers {workers}", flush=True)
    with peers.running(launch, folder, log) as process:
        cosine = check(port, peer_request, peer_embedding, sample[:8], want, "mlserver-hf")
        print(f"  8 texts at once match encode's: min cosine {cosine:.4f}", flush=True)
        requests = [peer_request(port, t) for t in sample]
        result = {"parallel_workers": workers, "min_cosine": cosine}
        result["levels"] = measure(process, port, requests, args, False)
        result["versions"] = peers.peer_versions(MLSERVER_HF, python)
    return result


def table(result: dict[str, Any]) -> str:
    """The markdown table of the run (benchmarks/serve/README.md's)."""
    out = ["| server | c | texts/s | p50 ms | p99 ms | server CPU µs/text | other cores | load "
           "avg |", "|---|--:|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    named = [("ours int8", result["ours"]["onnx-int8"]), ("ours fp32", result["ours"]["onnx"])]
    for peer in result.get("mlserver_hf", []):
        named.append((f"MLServer HF, parallel_workers {peer['parallel_workers']}", peer))
    for name, entry in named:
        for row in entry["levels"]:
            out.append(f"| {name} | {row['concurrency']} | {row['texts_per_s']:.0f} | "
                       f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['server_cpu_us']:.0f} | "
                       f"{row['other_cores']:.2f} | {row['loadavg'][0]:.2f} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--peer-workers", default="1,0", help="MLServer parallel_workers")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument(
        "--client",
        choices=("wrk", "ours"),
        default="wrk",
        help="load generator: wrk (every text in turn, every status checked) or images.py's",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.update(OFFLINE)
    from sentence_transformers import SentenceTransformer

    from shipyard.examples.minilm import model_folder

    sample = texts()
    want = SentenceTransformer(str(model_folder()), device="cpu").encode(sample[:8])
    result: dict[str, Any] = {"fingerprint": hardware_fingerprint(), "args": sys.argv[1:]}
    result["loadavg_start"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        package = build(work / "repository")
        result["ceiling_texts_per_s"] = ceiling(package, sample, args.seconds)
        print(f"ceiling (int8, in process): {result['ceiling_texts_per_s']:.0f} texts/s")
        result["ours"] = run_ours(work, package, sample, want, args)
        if not args.no_peer:
            workers = [int(w) for w in args.peer_workers.split(",")]
            result["mlserver_hf"] = [run_peer(work, sample, want, args, w) for w in workers]
    result["loadavg_end"] = os.getloadavg()
    print(table(result))
    top = max(args.levels)
    ours = {r["concurrency"]: r for r in result["ours"]["onnx-int8"]["levels"]}[top]
    if "mlserver_hf" in result:
        tops = [{r["concurrency"]: r for r in p["levels"]}[top] for p in result["mlserver_hf"]]
        peer = max(tops, key=lambda r: r["texts_per_s"])
        ratio = ours["texts_per_s"] / peer["texts_per_s"]
        met = ratio >= 2 and ours["p99_ms"] < peer["p99_ms"]
        result["ours_vs_peer"] = {"ratio": ratio, "met": met}
        print(f"c={top}: ours int8 {ours['texts_per_s']:.0f} texts/s (p99 {ours['p99_ms']:.0f} "
              f"ms) = {ratio:.2f}x MLServer HF's best {peer['texts_per_s']:.0f} texts/s (p99 "
              f"{peer['p99_ms']:.0f} ms); target >= 2x with a lower p99: "
              f"{'met' if met else 'NOT met'}")  # fmt: skip
    print(f"loadavg {result['loadavg_start']} -> {result['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
