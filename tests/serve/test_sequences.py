"""Stateful serving end to end: Silero VAD packaged from the silero-vad wheel, served, and
streamed the real 30 s conversation of the pyannote.audio wheel in 512-sample chunks by
tritonclient over HTTP and gRPC streaming; every chunk's probability must equal what silero's
own TorchScript wrapper answers for it in-process. Then the refusals: a chunk of an unknown
sequence, no sequence id, the live-sequence cap, the idle timeout."""

from __future__ import annotations

import json
import queue
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.processing.audio import frames
from shipyard.recipe import load_recipe
from tests.serve.conftest import Server, metric, serving, wait_for

pytestmark = [
    pytest.mark.slow,  # builds the package first (~10 s)
    pytest.mark.skipif(
        find_spec("silero_vad") is None or find_spec("pyannote") is None,
        reason="needs silero-vad (the 'vad' extra) and pyannote.audio==4.0.7 installed --no-deps",
    ),
]
RECIPE = Path(__file__).parents[2] / "examples" / "vad" / "recipe.yaml"
CHUNK = 512


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example recipe's fp32 ONNX step only (validated on the first 10 s: 320 chunks)."""
    recipe = load_recipe(RECIPE)
    recipe.passes = recipe.passes[:1]
    recipe.validate_.samples = 320
    root = tmp_path_factory.mktemp("vad")
    shipyard.build(recipe, root, run_bench=False)
    return root / "vad" / "1"


def _repository(package: Path, root: Path, serving: Any = None, **sequence: Any) -> Path:
    """A repository holding ``package`` with its ``serving`` updated by ``serving`` and its
    ``serving.sequence`` by ``sequence``."""
    target = root / "vad" / "1"
    shutil.copytree(package, target)
    manifest = json.loads((target / "shipyard.json").read_text())
    manifest["serving"].update(serving or {})
    manifest["serving"]["sequence"].update(sequence)
    (target / "shipyard.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def server(package: Path) -> Iterator[Server]:
    with serving(package, grpc_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    """Two different streams: the conversation, and the same from its 10th second on."""
    from shipyard.examples.vad import sample_audio

    audio = sample_audio()
    return {"whole": frames(audio, CHUNK), "from-10s": frames(audio[160_000:], CHUNK)}


def _silero(chunks: np.ndarray) -> np.ndarray:
    """silero's TorchScript wrapper, called the way get_speech_timestamps calls it."""
    import torch

    from shipyard.examples.vad import original

    model = original()
    model.reset_states()
    with torch.no_grad():
        return np.array([model(torch.from_numpy(c)[None], 16_000).item() for c in chunks])


@pytest.fixture(scope="module")
def expected(clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: _silero(chunks) for name, chunks in clips.items()}


def _http_chunk(client: Any, chunk: np.ndarray, **sequence: Any) -> Any:
    tensor = triton_http.InferInput("input", [1, CHUNK], "FP32")
    tensor.set_data_from_numpy(chunk[None], binary_data=True)
    return client.infer("vad", [tensor], **sequence)


def _stream_http(url: str, name: str, chunks: np.ndarray) -> np.ndarray:
    client = triton_http.InferenceServerClient(url.removeprefix("http://"))
    last = len(chunks) - 1
    answers = [
        _http_chunk(client, c, sequence_id=name, sequence_start=i == 0, sequence_end=i == last)
        for i, c in enumerate(chunks)
    ]
    client.close()
    return np.array([answer.as_numpy("probability").item() for answer in answers])


def test_two_http_streams_answer_what_silero_answers_chunk_by_chunk(
    server: Server, clips: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> None:
    with ThreadPoolExecutor(2) as pool:
        running = {n: pool.submit(_stream_http, server.url, n, c) for n, c in clips.items()}
        got = {name: future.result() for name, future in running.items()}
    for name, probabilities in got.items():
        np.testing.assert_allclose(probabilities, expected[name], atol=1e-5, err_msg=name)
        assert (probabilities >= 0.5).mean() > 0.6  # a conversation: mostly speech
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric(metrics, "shipyard_live_sequences", model="vad") == 0  # both ended


@pytest.fixture(scope="module")
def waiting_server(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The package with max_queue_delay_ms 20: a ready chunk waits for the other sequences'."""
    root = _repository(package, tmp_path_factory.mktemp("wait"), {"max_queue_delay_ms": 20})
    with serving(root, grpc_port=0) as running:
        yield running


def test_one_grpc_stream_carries_two_sequences_batched_together(
    waiting_server: Server, clips: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> None:
    server = waiting_server
    before = httpx.get(f"{server.url}/metrics").text
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.app.server.grpc_port}")
    client.start_stream(lambda result, error: answers.put((result, error)))
    total = 0
    for index in range(max(len(c) for c in clips.values())):
        for name, chunks in clips.items():  # the two sequences interleaved on one stream
            if index < len(chunks):
                tensor = triton_grpc.InferInput("input", [1, CHUNK], "FP32")
                tensor.set_data_from_numpy(chunks[index][None])
                start, end = index == 0, index == len(chunks) - 1
                client.async_stream_infer(
                    "vad", [tensor], request_id=f"{name}/{index}", sequence_id=name,
                    sequence_start=start, sequence_end=end,
                )  # fmt: skip
                total += 1
    got: dict[str, dict[int, float]] = {name: {} for name in clips}
    for _ in range(total):
        result, error = answers.get(timeout=60)
        assert error is None, error
        name, index = result.get_response().id.split("/")
        got[name][int(index)] = result.as_numpy("probability").item()
    client.stop_stream()
    client.close()
    for name, chunks in clips.items():
        probabilities = np.array([got[name][i] for i in range(len(chunks))])
        np.testing.assert_allclose(probabilities, expected[name], atol=1e-5, err_msg=name)
    after = httpx.get(f"{server.url}/metrics").text
    steps = metric(after, "shipyard_batch_size_sum") - metric(before, "shipyard_batch_size_sum")
    calls = metric(after, "shipyard_batch_size_count") - metric(before, "shipyard_batch_size_count")
    assert steps == total and calls < 0.75 * total  # calls stepped both sequences at once


def test_a_whole_wav_clip_gets_silero_s_speech_segments(
    server: Server, expected: dict[str, np.ndarray]
) -> None:
    import torch
    from silero_vad import get_speech_timestamps

    from shipyard.examples.vad import original, sample_audio, sample_wav

    model = original()
    turns = get_speech_timestamps(torch.from_numpy(sample_audio()), model)
    want = np.array([[t["start"], t["end"]] for t in turns])
    clip = np.array([sample_wav()], dtype=object)
    http = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton_http.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(clip, binary_data=True)
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.app.server.grpc_port}")
    grpc_tensor = triton_grpc.InferInput("input", [1], "BYTES")
    grpc_tensor.set_data_from_numpy(clip)
    for answer in (http.infer("vad", [tensor]), grpc.infer("vad", [grpc_tensor])):
        segments = answer.as_numpy("segments").astype(np.float64)
        assert len(want) >= 3 and segments.shape == want.shape
        np.testing.assert_array_equal(np.round(segments * 16_000), want)
        np.testing.assert_allclose(
            answer.as_numpy("probability")[:, 0], expected["whole"], atol=1e-5
        )
    refused = httpx.post(
        f"{server.url}/v2/models/vad/infer",
        json={"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["RIFF?"]}]},
    )
    assert refused.status_code == 400 and "input 'input'" in refused.json()["error"]
    assert "WAV" in refused.json()["error"]


def test_refusals_name_the_sequence_and_the_server_keeps_serving(
    server: Server, clips: dict[str, np.ndarray]
) -> None:
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    chunk = clips["whole"][0]
    cases = [
        ({"sequence_id": 404}, "no live sequence 404: start it with sequence_start"),
        ({}, "keeps state per sequence: send the parameters sequence_id"),
    ]
    for sequence, message in cases:
        with pytest.raises(InferenceServerException) as caught:
            _http_chunk(client, chunk, **sequence)
        assert caught.value.status() == "400" and message in caught.value.message()
    two = triton_http.InferInput("input", [2, CHUNK], "FP32")
    two.set_data_from_numpy(clips["whole"][:2], binary_data=True)
    with pytest.raises(InferenceServerException, match="one step of its sequence"):
        client.infer("vad", [two], sequence_id=5, sequence_start=True)
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.app.server.grpc_port}")
    tensor = triton_grpc.InferInput("input", [1, CHUNK], "FP32")
    tensor.set_data_from_numpy(chunk[None])
    with pytest.raises(InferenceServerException) as unary:
        grpc.infer("vad", [tensor], sequence_id=404)
    assert unary.value.status() == "StatusCode.INVALID_ARGUMENT"
    # A restarted sequence forgets its state: its first chunk answers as a new stream's.
    first = _http_chunk(client, chunk, sequence_id=6, sequence_start=True)
    _http_chunk(client, clips["whole"][100], sequence_id=6)
    again = _http_chunk(client, chunk, sequence_id=6, sequence_start=True, sequence_end=True)
    assert again.as_numpy("probability") == first.as_numpy("probability")


def test_the_cap_and_the_idle_timeout(
    package: Path, tmp_path: Path, clips: dict[str, np.ndarray]
) -> None:
    root = _repository(package, tmp_path, max_sequences=2, idle_timeout_s=0.3)
    chunk = clips["whole"][0]
    with serving(root) as running:
        client = triton_http.InferenceServerClient(running.url.removeprefix("http://"))
        _http_chunk(client, chunk, sequence_id=1, sequence_start=True)
        _http_chunk(client, chunk, sequence_id=2, sequence_start=True)
        with pytest.raises(InferenceServerException) as full:
            _http_chunk(client, chunk, sequence_id=3, sequence_start=True)
        assert full.value.status() == "503" and "2 sequences are live" in full.value.message()
        _http_chunk(client, chunk, sequence_id=2, sequence_end=True)  # frees a place
        _http_chunk(client, chunk, sequence_id=3, sequence_start=True)

        def live() -> float:
            text = httpx.get(f"{running.url}/metrics").text
            return metric(text, "shipyard_live_sequences", model="vad", version="1")

        assert live() == 2
        wait_for(lambda: live() == 0, timeout=10, what="idle sequences to be dropped")
        with pytest.raises(InferenceServerException, match="no live sequence 1"):
            _http_chunk(client, chunk, sequence_id=1)
        config = client.get_model_config("vad")["sequence_batching"]
        assert config["max_sequence_idle_microseconds"] == 300_000
        assert config["state"][0]["input_name"] == "state"


def test_metadata_shows_what_a_client_sends(server: Server) -> None:
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    metadata = client.get_model_metadata("vad")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 512]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probability", "segments"]


def test_worker_processes_refuse_a_stateful_model(package: Path, tmp_path: Path) -> None:
    """--workers shares the port by connection, so a sequence's chunks could reach a process
    that never saw its start: each worker refuses the version and says why."""
    import signal

    from tests.serve.test_command import _free_port, _serve

    root = _repository(package, tmp_path / "repo")
    port = _free_port()
    process = _serve(str(root), "--port", str(port), "--workers", "2")
    url = f"http://127.0.0.1:{port}"

    seen: list[dict[str, Any]] = []

    def index() -> list[dict[str, Any]] | None:
        if process.poll() is not None:
            raise AssertionError(f"shipyard serve exited: {process.communicate()[1]}")
        try:
            rows = httpx.post(f"{url}/v2/repository/index", json={}, timeout=2).json()
        except httpx.TransportError:
            return None
        # a worker still loading answers UNAVAILABLE "not loaded": wait for the refusal
        if rows and "without --workers" in rows[0].get("reason", ""):
            seen[:] = rows
        return rows if seen else None

    try:
        wait_for(index, timeout=120, what="the stateful version to be refused")
        (row,) = seen
        assert row["state"] == "UNAVAILABLE", row
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def test_the_default_serves_a_stateful_model_from_one_process(
    package: Path, tmp_path: Path
) -> None:
    """--workers auto (the default) chooses one process for a repository with a stateful
    model, says why, and the model serves."""
    import signal

    from shipyard.serve.worker_count import choose_workers
    from tests.serve.test_command import _free_port, _serve, _wait_ready

    root = _repository(package, tmp_path / "repo")
    count, why = choose_workers(root)
    assert count == 1
    assert why == "auto: model 'vad' keeps state per sequence, in one process"
    port = _free_port()
    process = _serve(str(root), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url)
        rows = httpx.post(f"{url}/v2/repository/index", json={}, timeout=10).json()
        assert [(r["name"], r["state"]) for r in rows] == [("vad", "READY")]
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert "keeps state per sequence, in one process" in " ".join(out.split())
