"""A build with preprocess:, postprocess: and data: examples: on a tiny RGB model and real
photos: labels travel in the package (hashed), the data follows the recipe's settings, the
manifest and the report hold each example's top-k classes, and mistakes fail before work."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.artifact import sha256_file
from shipyard.build import Steps, build, prepare
from shipyard.errors import DataError, RecipeError
from shipyard.examples.efficientnet import photo
from shipyard.optimize import optimize
from shipyard.package import load_package
from shipyard.passes.export import export_onnx
from shipyard.processing import Preprocess, preprocess
from shipyard.recipe import load_recipe
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import torch_artifact
from tests.test_cli import shipyard

pytestmark = pytest.mark.skipif(
    find_spec("skimage") is None, reason="needs the 'pretrained' extra (scikit-image's photos)"
)

NAMES = ("chelsea", "coffee", "astronaut", "rocket")
CLASSES = [f"class <{i}>" for i in range(5)]  # markup in labels: the report must escape it


def tiny_rgb() -> torch.nn.Module:
    """'tests.test_build_processing:tiny_rgb': 3x16x16 images -> 5 class scores."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 5),
    ).eval()  # fmt: skip


def photos(preprocess: Preprocess | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A data source that takes the recipe's settings: four real photos, named."""
    assert preprocess is not None and preprocess.image is not None, "settings not passed"
    return _batch(preprocess), np.asarray(NAMES)


def _batch(settings: Preprocess) -> np.ndarray:
    assert settings.image is not None
    return preprocess([photo(name) for name in NAMES], settings.image)


RECIPE = """\
name: tiny-rgb
model: {source: tests.test_build_processing:tiny_rgb}
signature:
  inputs: [{name: image, dtype: float32, shape: [batch, 3, 16, 16]}]
  outputs: [{name: scores, dtype: float32, shape: [batch, 5]}]
preprocess:
  image: {resize: 20, crop: 16, mean: [0.5, 0.4, 0.3], std: [0.2, 0.3, 0.4]}
postprocess: {labels: labels.txt, top_k: 3}
data:
  validation: tests.test_build_processing:photos
  examples: tests.test_build_processing:photos
passes:
  - export: {opset: 18}
validate: {gates: {atol: 1.0e-4, min_top5_agreement: 1.0}}
bench: {enabled: false}
"""


def write_recipe(folder: Path, text: str = RECIPE, labels: list[str] = CLASSES) -> Path:
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    path = folder / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_labels_travel_hashed_and_examples_are_answered(tmp_path: Path) -> None:
    result = build(write_recipe(tmp_path), tmp_path / "out")
    package = load_package(result.package_dir)  # verifies every hash, labels.txt included
    manifest = package.manifest
    labels = result.package_dir / "labels.txt"
    assert labels.read_text(encoding="utf-8").splitlines() == CLASSES
    assert manifest["files"]["labels.txt"] == sha256_file(labels)
    assert manifest["postprocess"] == {"labels": "labels.txt", "top_k": 3, "classes": 5}
    image = manifest["preprocess"]["image"]
    assert (image["resize"], image["crop"], image["mean"]) == (20, 16, [0.5, 0.4, 0.3])
    examples = manifest["examples"]
    assert examples["names"] == list(NAMES) and examples["top_k"] == 3
    assert list(examples["predictions"]) == ["torch", "onnx"]
    first = examples["predictions"]["torch"][0]
    assert [c["label"] for c in first] == [CLASSES[c["index"]] for c in first]
    assert sum(c["probability"] for c in first) <= 1.0 and len(first) == 3
    report = (result.package_dir / "report.md").read_text(encoding="utf-8")
    assert "## Examples: top-3 classes" in report and "| chelsea | torch | — |" in report
    assert "class \\<" in report and "class <" not in report  # escaped
    html = (result.package_dir / "report.html").read_text(encoding="utf-8")
    assert "class &lt;" in html and "<li>class <" not in html
    assert "## Agreement with torch" in report and "| onnx | scores | 100.00 % |" in report


def test_the_data_is_made_with_the_recipes_settings(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    assert recipe.preprocess is not None
    _, data = prepare(recipe, tmp_path / "out", False, Steps(None))
    assert np.array_equal(data["validation"].inputs["image"], _batch(recipe.preprocess))
    other = recipe.model_copy(
        update={"preprocess": Preprocess.model_validate({"image": {"resize": 16, "crop": 16}})}
    )
    _, changed = prepare(other, tmp_path / "out", False, Steps(None))
    assert not np.array_equal(
        changed["validation"].inputs["image"], data["validation"].inputs["image"]
    )


def test_labels_that_do_not_fit_the_model_fail_before_work(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, labels=CLASSES[:4])
    with pytest.raises(DataError, match="names 4 classes but output 'scores' has 5"):
        build(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_preprocess_that_cannot_feed_the_model_is_refused(tmp_path: Path) -> None:
    text = RECIPE.replace("resize: 20, crop: 16", "resize: 20, crop: 18")
    with pytest.raises(RecipeError, match=r"crop 18 .* gives \[3, 18, 18\]"):
        build(write_recipe(tmp_path, text), tmp_path / "out")
    # Without a signature in the recipe (read from the ONNX file), the build checks it.
    signature = Signature(
        inputs=(TensorSpec(name="image", shape=("batch", 3, 16, 16)),),
        outputs=(TensorSpec(name="scores", shape=("batch", 5)),),
    )
    export_onnx(torch_artifact(tiny_rgb(), signature), tmp_path / "tiny.onnx")
    lines = text.replace("tests.test_build_processing:tiny_rgb", "tiny.onnx").splitlines()
    unsigned = "\n".join(line for line in lines if "signature" not in line and "puts:" not in line)
    with pytest.raises(RecipeError, match=r"but input 'image' takes \['batch', 3, 16, 16\]"):
        build(write_recipe(tmp_path, unsigned + "\n"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_search_packages_the_processing_too(tmp_path: Path) -> None:
    text = RECIPE + "optimize: {prune_levels: [], quantize: [dynamic_u8], batch_size: 2}\n"
    result = optimize(write_recipe(tmp_path, text), tmp_path / "out")
    manifest = load_package(result.package_dir).manifest
    assert manifest["files"]["labels.txt"] == sha256_file(result.package_dir / "labels.txt")
    assert manifest["postprocess"]["classes"] == 5 and "image" in manifest["preprocess"]
    assert list(manifest["examples"]["predictions"]) == ["torch", result.artifacts[0].name]


def test_the_build_command_prints_agreement_when_gates_judge_it(tmp_path: Path) -> None:
    run = shipyard("build", write_recipe(tmp_path), "-o", tmp_path / "out", "--no-bench")
    assert run.returncode == 0, run.stderr
    assert (
        "agreement [scores]: top-1 100.00%, top-5 100.00%, top-1 where torch is confident "
        "(p >= 0.5): " in run.stdout
    )
    assert "min_top5_agreement [scores]: 1 (limit 1) ok" in run.stdout


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-rgb")
    return build(write_recipe(folder), folder / "out").package_dir


def test_bench_end_to_end_times_the_packages_preprocessing(
    tiny_package: Path, tmp_path: Path
) -> None:
    package = tiny_package
    from shipyard.examples.efficientnet.data import photo_path

    photo_file = tmp_path / "chelsea.png"
    photo_file.write_bytes(photo_path("chelsea").read_bytes())
    args = ("--runs", "3", "--batch-sizes", "1,2", "--json")
    plain = shipyard("bench", package, *args)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["timed"] == "Session.run"
    for extra, what in (((), "a 640x480 JPEG"), (("--image", photo_file), "chelsea.png")):
        run = shipyard("bench", package, "--end-to-end", *extra, *args)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["timed"] == f"decode {what} + pre-process + Session.run"
        assert [s["batch"] for s in report["results"][0]["latency"]] == [1, 2]


def test_bench_end_to_end_refuses_what_it_cannot_decode(tiny_package: Path, tmp_path: Path) -> None:
    package = tiny_package
    (tmp_path / "notes.txt").write_text("not a picture")
    cases = {
        ("--end-to-end", "--image", tmp_path / "notes.txt"): "notes.txt",
        ("--end-to-end", "--image", tmp_path / "missing.jpg"): "cannot read it",
        ("--image", tmp_path / "notes.txt"): "add --end-to-end",
    }
    for extra, message in cases.items():
        run = shipyard("bench", package, *extra, "--runs", "3")
        assert run.returncode != 0 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    onnx = shipyard("bench", package / "model.onnx", "--end-to-end", "--runs", "3")
    assert onnx.returncode != 0 and "preprocess: image section" in onnx.stderr, onnx.stderr


def test_inspect_shows_each_examples_top_class_per_artifact(tiny_package: Path) -> None:
    run = shipyard("inspect", tiny_package)
    assert run.returncode == 0, run.stderr
    assert "top-1 class of each example" in run.stdout
    rows = [line for line in run.stdout.splitlines() if line.startswith("│ chelsea")]
    assert len(rows) == 1 and rows[0].count("class <") == 2, run.stdout  # torch, onnx; no markup
    assert "same top-1 as torch: onnx 4/4" in run.stdout
