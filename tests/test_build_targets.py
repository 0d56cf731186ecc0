"""A recipe that builds ONNX and OpenVINO artifacts side by side, validated and benchmarked."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

import shipyard
from shipyard.package import load_package
from shipyard.recipe import load_recipe, parse_recipe

pytestmark = pytest.mark.skipif(find_spec("openvino") is None, reason="needs the 'openvino' extra")

RECIPE = """\
name: targets
model: {source: tests.conftest:small_net}
signature:
  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]
passes:
  - export: {}
  - convert_openvino: {}
validate: {gates: {atol: 1.0e-4}, samples: 32}
bench: {batch_sizes: [1, 4], runs: 5, warmup: 1}
"""


def test_recipe_builds_onnx_and_openvino_validated_and_benched(tmp_path: Path) -> None:
    result = shipyard.build(parse_recipe(RECIPE), tmp_path)
    names = [a.name for a in result.artifacts]
    assert names == ["onnx", "openvino-fp32"]
    assert [(r.candidate, r.passed) for r in result.validation] == [(n, True) for n in names]
    assert {r.name: r.backend for r in result.benchmark.results} == {  # type: ignore[union-attr]
        "torch": "torch",
        "onnx": "onnxruntime",
        "openvino-fp32": "openvino",
    }
    entries = {a["name"]: a for a in result.manifest["artifacts"]}
    assert entries["openvino-fp32"]["backend"] == "openvino"
    # Both IR files are in the package and covered by its hashes; it reads back and runs.
    files = result.manifest["files"]
    assert {"model.openvino.xml", "model.openvino.bin"} <= set(files)
    package = load_package(result.package_dir)
    openvino = next(a for a in package.artifacts if a.format == "openvino")
    with shipyard.open_session(openvino, threads=1) as session:
        out = session.run(package.signature.example_inputs(batch=3))
    assert list(out) == package.signature.output_names and out["output"].shape == (3, 10)


@pytest.mark.skipif(find_spec("litert_torch") is None, reason="needs the 'tflite' extra")
def test_digits_targets_recipe_builds_fp32_and_int8_for_every_cpu_target(tmp_path: Path) -> None:
    recipe = load_recipe(Path(__file__).parents[1] / "examples" / "digits" / "targets.yaml")
    recipe.bench = recipe.bench.model_copy(update={"runs": 5, "warmup": 1, "max_seconds": 2})
    result = shipyard.build(recipe, tmp_path)
    backends = {a["name"]: a["backend"] for a in result.manifest["artifacts"]}
    assert backends == {
        "onnx": "onnxruntime",
        "onnx-int8": "onnxruntime",
        "openvino-fp32": "openvino",
        "openvino-int8": "openvino",
        "tflite-fp32": "litert",
        "tflite-int8": "litert",
    }
    reports = {r.candidate: r for r in result.validation}
    assert list(reports) == list(backends)  # every artifact validated, so the loop checks all
    for name, report in reports.items():
        gates = {g.gate for g in report.gates} - {"nonfinite"}
        if "int8" in name:
            # The step's own gates: agreement and accuracy, not fp32 parity.
            assert gates == {"min_top1_agreement", "max_accuracy_drop"}, name
        else:
            assert gates == {"atol", "min_top1_agreement", "max_accuracy_drop"}, name
            assert report.outputs[0].max_abs < 1e-4, name
        assert report.passed, name
    # One benchmark table holds every artifact, the torch baseline first.
    benched = [r.name for r in result.benchmark.results]  # type: ignore[union-attr]
    assert benched == ["torch", *backends]
    tflite = next(a for a in result.manifest["artifacts"] if a["name"] == "tflite-int8")
    io = tflite["provenance"][-1]["notes"]["io"]["inputs"][0]
    assert io["dtype"] == "int8" and io["scale"] > 0 and "zero_point" in io


@pytest.mark.slow
@pytest.mark.skipif(find_spec("litert_torch") is None, reason="needs the 'tflite' extra")
def test_resnet18_targets_recipe_builds_fp32_and_int8_for_every_cpu_target(
    tmp_path: Path,
) -> None:
    recipe = load_recipe(Path(__file__).parents[1] / "examples" / "resnet18" / "targets.yaml")
    recipe.bench = recipe.bench.model_copy(update={"runs": 2, "warmup": 1, "batch_sizes": [1]})
    result = shipyard.build(recipe, tmp_path)
    names = [a.name for a in result.artifacts]
    assert names == [
        "onnx",
        "onnx-int8",
        "openvino-fp32",
        "openvino-int8",
        "tflite-fp32",
        "tflite-int8",
    ]
    assert [r.candidate for r in result.validation] == names
    for report in result.validation:
        assert report.passed, report.candidate
        if "int8" not in report.candidate:
            assert report.outputs[0].max_abs < 1e-4, report.candidate
    assert [r.name for r in result.benchmark.results] == ["torch", *names]  # type: ignore[union-attr]
