from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import shipyard
from shipyard.artifact import sha256_file
from shipyard.errors import GateError, PackageError, PassError, RecipeError
from shipyard.events import Stage, StepEvent
from shipyard.package import load_package
from shipyard.recipe import default_recipe_path, load_recipe, parse_recipe

TINY = """\
name: tiny
version: 3
model: {{source: tests.conftest:small_net}}
signature:
  inputs: [{{name: x, dtype: float32, shape: [batch, 1, 8, 8]}}]
validate:
  gates: {{atol: {atol}}}
  samples: 16
bench: {{batch_sizes: [1, 2], runs: 5, warmup: 1}}
"""


def test_digits_example_builds_a_validated_package(
    tmp_path: Path, digits_model: torch.nn.Module
) -> None:
    recipe = load_recipe(default_recipe_path())
    recipe.bench.runs, recipe.bench.max_seconds = 20, 2.0
    result = shipyard.build(recipe, tmp_path)
    folder = tmp_path / "digits" / "1"
    assert result.package_dir == folder
    manifest = json.loads((folder / "shipyard.json").read_text())
    # The acceptance numbers, measured on the real held-out split.
    report = manifest["validation"][0]
    assert report["samples"] == 450
    assert report["outputs"][0]["max_abs"] < 1e-4
    assert report["outputs"][0]["top1_agreement"] == 1.0
    assert report["accuracy_candidate"] >= 0.95 and report["passed"]
    # Provenance: recipe, pass chain with configs, library versions, hashes of every file.
    assert manifest["provenance"]["recipe"]["name"] == "digits"
    assert manifest["artifacts"][0]["provenance"][0]["pass"] == "export"
    assert manifest["artifacts"][0]["provenance"][0]["config"]["opset"] == 18
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(manifest["provenance"]["versions"])
    assert manifest["files"]["model.onnx"] == sha256_file(folder / "model.onnx")
    # Benchmark and hardware fingerprint.
    bench = manifest["benchmark"]
    assert {r["name"] for r in bench["results"]} == {"torch", "onnx"}
    assert manifest["hardware"]["cpu"] and "isa" in manifest["hardware"]
    # The package reads back and its artifact runs.
    package = load_package(folder)
    session = shipyard.open_session(package.artifacts[0], threads=1)
    assert session.run(package.signature.example_inputs(batch=3))["logits"].shape == (3, 10)
    assert not [p for p in (tmp_path / "digits").iterdir() if p.name.startswith(".")]


def test_existing_version_is_refused_then_overwritten(tmp_path: Path) -> None:
    recipe = parse_recipe(TINY.format(atol=1e-4))
    shipyard.build(recipe, tmp_path, run_bench=False)
    with pytest.raises(PackageError, match="already exists"):
        shipyard.build(recipe, tmp_path, run_bench=False)
    result = shipyard.build(recipe, tmp_path, overwrite=True)
    assert result.benchmark is not None and result.manifest["version"] == 3


def test_failed_gate_leaves_no_version_folder(tmp_path: Path) -> None:
    recipe = parse_recipe(TINY.format(atol=0.0))  # ONNX differs from torch by ~1e-7
    with pytest.raises(GateError, match="validation of 'onnx' failed: atol") as error:
        shipyard.build(recipe, tmp_path)
    assert error.value.report is not None
    assert list(tmp_path.iterdir()) == []  # not even the empty model folder


def test_unwritable_output_fails_before_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(PackageError, match="cannot create output folder"):
        shipyard.build(parse_recipe(TINY.format(atol=1e-4)), tmp_path / "file" / "repo")


BRANCHED = """\
name: branched
model: {source: tests.conftest:small_net}
signature:
  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]
data: {calibration: tests.conftest:small_calibration}
passes:
  - export: {}
  - quantize: {mode: static}
    gates: {min_cosine: 0.9}
  - export: {name: onnx-again, filename: again.onnx}
    from: torch
validate: {gates: {atol: 1.0e-4}, samples: 16}
"""


def test_steps_branch_with_from_and_carry_their_own_gates(tmp_path: Path) -> None:
    result = shipyard.build(parse_recipe(BRANCHED), tmp_path, run_bench=False)
    names = [a.name for a in result.artifacts]
    assert names == ["onnx", "onnx-int8-static-qdq-u8s8", "onnx-again"]
    gates = {r.candidate: {g.gate for g in r.gates} - {"nonfinite"} for r in result.validation}
    # The int8 artifact is judged by its step's gates; the others by validate: gates:.
    assert gates == {
        "onnx": {"atol"},
        "onnx-int8-static-qdq-u8s8": {"min_cosine"},
        "onnx-again": {"atol"},
    }
    # from: torch started the third step from the model, not from the quantized file.
    again = result.artifacts[2]
    assert [r.name for r in again.provenance] == ["export"]
    recipe = load_package(result.package_dir).manifest["provenance"]["recipe"]
    assert recipe["passes"][2]["from"] == "torch"
    assert recipe["passes"][1]["gates"] == {"min_cosine": 0.9}


def test_from_an_unknown_artifact_names_the_known_ones(tmp_path: Path) -> None:
    text = BRANCHED.replace("from: torch", "from: onnx-int8")
    with pytest.raises(RecipeError, match=r"from: 'onnx-int8' is not an artifact made before"):
        shipyard.build(parse_recipe(text), tmp_path, run_bench=False)
    assert list(tmp_path.iterdir()) == []


def test_two_file_artifacts_with_one_name_are_refused(tmp_path: Path) -> None:
    text = BRANCHED.replace("{name: onnx-again, filename: again.onnx}", "{filename: again.onnx}")
    with pytest.raises(RecipeError, match="second artifact named 'onnx'"):
        shipyard.build(parse_recipe(text), tmp_path, run_bench=False)


def test_a_step_never_overwrites_an_earlier_steps_file(tmp_path: Path) -> None:
    text = BRANCHED.replace("{name: onnx-again, filename: again.onnx}", "{name: onnx-again}")
    with pytest.raises(PassError, match="export: model.onnx was already written"):
        shipyard.build(parse_recipe(text), tmp_path, run_bench=False)
    assert list(tmp_path.iterdir()) == []


def test_gates_on_a_torch_step_are_refused(tmp_path: Path) -> None:
    prune = "  - prune: {method: l1_unstructured, amount: 0.2}\n    gates: {atol: 1.0}\n"
    text = BRANCHED.replace("  - export: {}\n", prune + "  - export: {}\n")
    events: list[StepEvent] = []
    with pytest.raises(RecipeError, match="passes.0.prune: gates: .* makes a torch module"):
        shipyard.build(parse_recipe(text), tmp_path, run_bench=False, on_step=events.append)
    # Refused from the registry's word, before the pass spends any time.
    assert events and not [e for e in events if e.stage is Stage.PASS]


def test_the_served_artifact_is_the_fastest_that_passed(tmp_path: Path) -> None:
    recipe = parse_recipe(BRANCHED + "bench: {batch_sizes: [2, 4], runs: 5, warmup: 1}\n")
    manifest = shipyard.build(recipe, tmp_path).manifest
    p50 = {r["name"]: r["latency"][0]["p50_ms"] for r in manifest["benchmark"]["results"]}
    made = ["onnx", "onnx-int8-static-qdq-u8s8", "onnx-again"]
    fastest = min(made, key=p50.__getitem__)  # at batch 2, the smallest benchmarked
    assert manifest["default_artifact"] == fastest
    assert manifest["default_artifact_reason"].startswith("fastest at batch 2 here")
    assert manifest["default_artifact_reason"].endswith("of the 3 that passed")


def test_serve_artifact_names_the_served_one_and_must_exist(tmp_path: Path) -> None:
    named = parse_recipe(BRANCHED + "serve: {artifact: onnx-again}\n")
    manifest = shipyard.build(named, tmp_path, run_bench=False).manifest
    assert manifest["default_artifact"] == "onnx-again"
    assert manifest["default_artifact_reason"] == "named by the recipe's serve: artifact:"
    unknown = parse_recipe(
        BRANCHED.replace("name: branched", "name: other") + "serve: {artifact: nope}\n"
    )
    with pytest.raises(
        RecipeError, match=r"serve: artifact: 'nope' is not an artifact of this build"
    ):
        shipyard.build(unknown, tmp_path, run_bench=False)
    assert not (tmp_path / "other").exists()
