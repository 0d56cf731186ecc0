"""The accuracy-aware search on the real digits example, with small budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shipyard.errors import RecipeError
from shipyard.optimize import optimize
from shipyard.package import load_package
from shipyard.passes.finetune import FinetuneConfig
from shipyard.recipe import OptimizeSettings, default_recipe_path, load_recipe, parse_recipe
from shipyard.validate import Gates


def _recipe():  # type: ignore[no-untyped-def]
    recipe = load_recipe(default_recipe_path())
    recipe.bench.runs, recipe.bench.max_seconds = 10, 1.0
    return recipe


def _settings(**overrides: object) -> OptimizeSettings:
    values: dict[str, object] = {
        "prune_levels": [0.5],
        "quantize": ["static_qdq_u8s8", "dynamic_u8"],
        "finetune": FinetuneConfig(epochs=5, distill_from_original=True),
        "budget": "5m",
    }
    return OptimizeSettings(**{**values, **overrides})


def test_search_packages_the_best_passing_candidate(
    tmp_path: Path, digits_model: torch.nn.Module
) -> None:
    result = optimize(_recipe(), tmp_path, settings=_settings(objective="size"))
    search = result.manifest["search"]
    rows = {row["name"]: row for row in result.manifest["candidates"]}
    assert set(rows) == {
        "torch",
        "fp32",
        "static_qdq_u8s8",
        "dynamic_u8",
        "pruned50-fp32",
        "pruned50-static_qdq_u8s8",
        "pruned50-dynamic_u8",
    }
    assert search["evaluated"] == 6 and search["gates"] == {"max_accuracy_drop": 0.005}
    chosen = rows[search["chosen"]]
    assert chosen["chosen"] and chosen["passed"]
    # objective "size": no passing candidate is smaller than the chosen one
    assert all(r["bytes"] >= chosen["bytes"] for r in rows.values() if r["passed"])
    # The gate: int8 static QDQ loses at most 0.5 points on the held-out digits.
    assert rows["static_qdq_u8s8"]["accuracy_drop"] <= 0.005
    assert rows["static_qdq_u8s8"]["bytes"] * 3.5 < rows["fp32"]["bytes"]
    assert rows["pruned50-static_qdq_u8s8"]["bytes"] * 6.5 < rows["fp32"]["bytes"]
    # The package holds one model, which loads and verifies.
    package = load_package(result.package_dir)
    assert [a.path.name for a in package.artifacts] == ["model.onnx"]  # type: ignore[union-attr]
    assert package.manifest["default_artifact"] == search["chosen"]
    assert (result.package_dir / "report-latency-accuracy.png").exists()
    assert not (result.package_dir / "candidates").exists()


def test_nothing_passing_keeps_the_closest_and_says_by_how_much(tmp_path: Path) -> None:
    settings = _settings(prune_levels=[], quantize=["dynamic_u8"], gates=Gates(atol=0.0))
    result = optimize(_recipe(), tmp_path, settings=settings)
    search = result.manifest["search"]
    assert search["passed"] == 0
    assert "no candidate passed the gates; kept the closest" in search["verdict"]
    assert search["chosen"] == "fp32"  # its error is ~1e-5, the int8 one ~0.1
    assert json.loads((result.package_dir / "shipyard.json").read_text())["search"]["passed"] == 0


def test_budget_stops_the_search_and_keeps_what_was_evaluated(tmp_path: Path) -> None:
    # A budget spent before the search starts, on any machine: the model exported as it is
    # is still evaluated (a package needs one artifact); every other candidate is skipped.
    result = optimize(_recipe(), tmp_path, settings=_settings(budget=1e-9))
    search = result.manifest["search"]
    assert search["evaluated"] == 1 and result.manifest["default_artifact"] == "fp32"
    assert search["planned"] == 6 and search["skipped_for_budget"] == 5
    assert any("budget spent" in item for item in search["skipped"])


def test_optimize_auto_and_bad_settings_in_recipes() -> None:
    base = "name: r\nmodel: {source: a.b:c}\n"
    assert parse_recipe(base + "optimize: auto\n").optimize == OptimizeSettings()
    assert parse_recipe(base + "optimize: {budget: 90s}\n").optimize.budget == 90  # type: ignore[union-attr]
    with pytest.raises(RecipeError, match="r.yaml:4: optimize.quantize: .*unknown quantization"):
        parse_recipe(base + "optimize:\n  quantize: [int4]\n", source="r.yaml")
    with pytest.raises(RecipeError, match="duration 'soon'"):
        parse_recipe(base + "optimize: {budget: soon}\n")
    with pytest.raises(RecipeError, match="prune_levels are fractions"):
        parse_recipe(base + "optimize: {prune_levels: [50]}\n")
