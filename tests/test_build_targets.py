"""A recipe that builds ONNX and OpenVINO artifacts side by side, validated and benchmarked."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

import shipyard
from shipyard.package import load_package
from shipyard.recipe import parse_recipe

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
    assert all(report.passed for report in result.validation)
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
