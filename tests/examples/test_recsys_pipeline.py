"""The recommender recipe end to end: build (export, validate on AUC, bench, package), the
optimization search over embedding-table storage, and `shipyard validate` on the package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import shipyard
from shipyard.artifact import Artifact
from shipyard.recipe import OptimizeSettings, load_recipe
from tests.conftest import RECSYS_RECIPE, REPO
from tests.test_cli import shipyard as run_cli


@pytest.fixture(scope="module")
def built(recsys_torch: Artifact, tmp_path_factory: pytest.TempPathFactory) -> shipyard.BuildResult:
    """The example recipe as it is, benchmark included (fewer runs: a test, not a measurement)."""
    recipe = load_recipe(RECSYS_RECIPE)
    recipe.bench.runs, recipe.bench.max_seconds = 20, 2.0
    return shipyard.build(recipe, tmp_path_factory.mktemp("recsys-build"))


def test_the_example_recipe_is_the_packaged_one() -> None:
    packaged = REPO / "src" / "shipyard" / "examples" / "recsys" / "recipe.yaml"
    assert RECSYS_RECIPE.read_text() == packaged.read_text()


def test_build_validates_on_auc_and_packages(built: shipyard.BuildResult) -> None:
    (report,) = built.validation
    assert report.samples == 20_000 and report.passed
    assert report.auc_reference is not None and report.auc_reference > 0.69
    assert [g.gate for g in report.gates] == ["nonfinite", "atol", "max_auc_drop"]
    manifest = built.manifest
    assert manifest["task"] == "binary" and manifest["default_artifact"] == "onnx"
    assert (built.package_dir / "model.onnx").is_file()
    rows = {row["name"]: row for row in manifest["candidates"]}
    assert rows["onnx"]["auc"] == report.auc_candidate and rows["torch"]["auc_drop"] == 0.0
    assert set(rows["onnx"]["latency"]) == {"1", "256"}
    report_md = (built.package_dir / "report.md").read_text()
    assert f"AUC {report.auc_candidate:.4f}" in report_md


def test_shipyard_validate_reads_the_task_from_the_package(built: shipyard.BuildResult) -> None:
    run = run_cli(
        "validate",
        "shipyard.examples.recsys:trained",
        built.package_dir,
        "--max-auc-drop",
        "0.0001",
        "--samples",
        "5000",
    )
    assert run.returncode == 0, run.stderr
    assert "AUC: trained 0." in run.stdout and "max_auc_drop" in run.stdout
    assert "log-loss" in run.stdout
    refused = run_cli("validate", "shipyard.examples.recsys:trained", built.package_dir,
                      "--task", "ranking")  # fmt: skip
    assert (
        refused.returncode == 2
        and "use one of classification, binary, detection, embedding, other" in refused.stderr
    )


def test_the_search_picks_a_quantized_candidate_within_the_auc_gate(
    recsys_torch: Artifact, tmp_path: Path
) -> None:
    recipe = load_recipe(RECSYS_RECIPE)
    recipe.bench.runs = 50
    settings = (recipe.optimize or OptimizeSettings()).model_copy(
        update={
            "budget": 120.0,
            "quantize": ["dynamic_s8", "dynamic_s8_fp16_embeddings", "dynamic_s8_fp32_embeddings"],
            "prune_levels": [0.5],  # refused for task: binary, with the reason
        }
    )
    result = shipyard.optimize(recipe, tmp_path, settings=settings)
    search = result.manifest["search"]
    assert search["gates"] == {"max_auc_drop": 0.005}
    assert search["planned"] == search["evaluated"] == 4
    assert search["skipped"] == [
        "structured pruning (fine-tuning trains classifiers, not task: binary)"
    ]
    rows = {row["name"]: row for row in result.manifest["candidates"]}
    assert set(rows) == {
        "torch",
        "fp32",
        "dynamic_s8",
        "dynamic_s8_fp16_embeddings",
        "dynamic_s8_fp32_embeddings",
    }
    for name in ("dynamic_s8", "dynamic_s8_fp16_embeddings", "dynamic_s8_fp32_embeddings"):
        assert rows[name]["passed"] and 0 <= rows[name]["auc_drop"] < 0.005, rows[name]
    sizes = [rows[n]["bytes"] for n in ("dynamic_s8", "dynamic_s8_fp16_embeddings", "fp32")]
    assert sizes == sorted(sizes)  # int8 tables < fp16 tables < no quantization at all
    chosen = search["chosen"]
    assert rows[chosen]["chosen"] and rows[chosen]["passed"]
    (report,) = result.validation
    assert report.auc_drop is not None and report.auc_drop < 0.005
    manifest = json.loads((result.package_dir / "shipyard.json").read_text())
    assert manifest["default_artifact"] == chosen
