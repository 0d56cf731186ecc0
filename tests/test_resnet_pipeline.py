"""The brief's example, ResNet-18: export, validation and bench, with and without torchvision."""

from __future__ import annotations

from pathlib import Path

import pytest

import shipyard
from shipyard.recipe import load_recipe
from tests.conftest import REPO

RECIPE = REPO / "examples" / "resnet18" / "recipe.yaml"


def _torchvision_problem() -> str | None:
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # PyPI torchvision fails to import beside the CPU torch build
        return f"needs torchvision (the 'vision' extra): {type(error).__name__}: {error}"
    return None


def _fast(recipe: shipyard.Recipe) -> shipyard.Recipe:
    recipe.validate_.samples = 8
    recipe.bench.runs, recipe.bench.warmup, recipe.bench.max_seconds = 3, 1, 10.0
    return recipe


@pytest.mark.slow
def test_resnet18_without_torchvision_builds(tmp_path: Path) -> None:
    recipe = _fast(load_recipe(RECIPE))
    recipe.model.source, recipe.model.kwargs = "shipyard.examples.resnet:resnet18", {}
    result = shipyard.build(recipe, tmp_path)
    report = result.validation[0]
    assert report.passed and report.outputs[0].cosine > 0.99
    prune = result.artifacts[0].provenance[0]
    assert prune.name == "prune" and prune.notes["sparsity"] == {"Conv2d": 0.2}
    assert prune.notes["compressed_bytes_after"] < prune.notes["compressed_bytes_before"]
    assert result.artifacts[0].signature.inputs[0].shape == ("batch", 3, 224, 224)
    assert {r.name for r in result.benchmark.results} == {"torch", "onnx"}  # type: ignore[union-attr]
    assert result.benchmark.results[1].at(8).samples_per_s > 0  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.skipif(_torchvision_problem() is not None, reason=str(_torchvision_problem()))
def test_seed_recipe_with_torchvision(tmp_path: Path) -> None:
    result = shipyard.build(_fast(load_recipe(RECIPE)), tmp_path)
    assert result.validation[0].passed
