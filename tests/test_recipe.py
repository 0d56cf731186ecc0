from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.errors import RecipeError
from shipyard.recipe import default_recipe_path, load_recipe, parse_recipe

GOOD = """\
name: tiny
model:
  source: tests.conftest:small_net
signature:
  inputs:
    - {name: x, dtype: float32, shape: [batch, 1, 8, 8]}
passes:
  - export: {opset: 18}
validate:
  gates: {atol: 1.0e-4}
"""


def test_good_recipe_loads_with_defaults() -> None:
    recipe = parse_recipe(GOOD)
    assert recipe.name == "tiny" and recipe.version == 1
    assert [p.name for p in recipe.passes] == ["export"]
    assert recipe.validate_.gates.atol == 1e-4
    assert recipe.bench.batch_sizes == [1, 8]


def test_builtin_recipe_is_valid_and_the_examples_copy_is_the_same_file() -> None:
    recipe = load_recipe(default_recipe_path())
    assert recipe.name == "digits"
    examples_copy = Path(__file__).parent.parent / "examples" / "digits" / "recipe.yaml"
    assert examples_copy.read_text() == default_recipe_path().read_text()


def test_unknown_key_names_field_and_line() -> None:
    text = GOOD.replace("  gates: {atol: 1.0e-4}", "  gates: {atol: 1.0e-4}\n  sampels: 10")
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, source="r.yaml")
    assert "r.yaml:11: validate.sampels: unknown key" in str(error.value)


def test_wrong_type_names_field_and_line() -> None:
    with pytest.raises(RecipeError) as error:
        parse_recipe(GOOD.replace("opset: 18", "opset: eighteen"), source="r.yaml")
    assert "r.yaml:8: passes.0.export.opset:" in str(error.value)
    assert "integer" in str(error.value)


def test_missing_required_field() -> None:
    text = GOOD.replace("model:\n  source: tests.conftest:small_net\n", "")
    with pytest.raises(RecipeError, match=r"model: required field is missing"):
        parse_recipe(text, source="r.yaml")


def test_unknown_pass_is_named() -> None:
    with pytest.raises(RecipeError, match=r"r.yaml:8: passes.0.exprot: unknown key"):
        parse_recipe(GOOD.replace("- export:", "- exprot:"), source="r.yaml")


def test_not_a_mapping_and_bad_yaml() -> None:
    with pytest.raises(RecipeError, match="YAML mapping"):
        parse_recipe("- a\n- b\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe("name: [unclosed\n")


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.yaml"
    path.parent.mkdir()
    path.write_text(GOOD.replace("tests.conftest:small_net", "model.onnx"))
    recipe = load_recipe(path)
    assert recipe.resolve(recipe.model.source) == str(path.parent / "model.onnx")
    assert recipe.resolve("pkg.mod:fn") == "pkg.mod:fn"


RGB = GOOD.replace("shape: [batch, 1, 8, 8]", "shape: [batch, 3, 224, 224]")


def test_preprocess_and_postprocess_sections_load() -> None:
    text = RGB + (
        "preprocess:\n  image: {resize: 256, crop: 224, mean: [0.5, 0.5, 0.5],\n"
        "          std: [0.2, 0.2, 0.2]}\n"
        "postprocess: {labels: labels.txt, top_k: 3}\n"
    )
    recipe = parse_recipe(text, base_dir=Path("/r"))
    assert recipe.preprocess is not None and recipe.preprocess.image is not None
    assert recipe.preprocess.image.crop_size == (224, 224)
    assert recipe.preprocess.image.sample_shape() == (3, 224, 224)
    assert recipe.postprocess is not None and recipe.postprocess.top_k == 3
    assert recipe.postprocess.labels_path(recipe.base_dir) == Path("/r/labels.txt")
    assert recipe.to_dict()["preprocess"]["image"]["resize"] == 256


def test_preprocess_that_cannot_feed_the_input_is_refused() -> None:
    crop = RGB + "preprocess:\n  image: {resize: 256, crop: 256}\n"
    with pytest.raises(RecipeError, match=r"crop 256 in layout NCHW gives \[3, 256, 256\]"):
        parse_recipe(crop, source="r.yaml")
    layout = RGB + "preprocess:\n  image: {resize: 256, crop: 224, layout: NHWC}\n"
    with pytest.raises(RecipeError, match=r"gives \[224, 224, 3\] per image, but input 'x'"):
        parse_recipe(layout, source="r.yaml")
    named = RGB + "preprocess:\n  image: {input: pixels, crop: 224}\n"
    with pytest.raises(RecipeError, match=r"'pixels' is not a model input; inputs: \['x'\]"):
        parse_recipe(named, source="r.yaml")
    typo = RGB + "preprocess:\n  image: {resize: 256,\n    crpo: 224}\n"
    with pytest.raises(RecipeError, match=r"r.yaml:13: preprocess.image.crpo: unknown key"):
        parse_recipe(typo, source="r.yaml")


def test_the_efficientnet_recipe_matches_its_data_loaders() -> None:
    from shipyard.examples.efficientnet import LABELS_FILE, PREPROCESS

    path = Path(__file__).parent.parent / "examples" / "efficientnet" / "recipe.yaml"
    recipe = load_recipe(path)
    assert recipe.preprocess is not None and recipe.preprocess.image == PREPROCESS
    assert recipe.postprocess is not None
    assert recipe.postprocess.labels_path(recipe.base_dir) == LABELS_FILE
    assert recipe.data.examples == "shipyard.examples.efficientnet:examples"
