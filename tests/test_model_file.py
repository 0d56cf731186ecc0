"""Bring your own model file: a recipe whose model is an .onnx, .tflite or OpenVINO .xml file
packages that file (built, served by a real server, asked once), branches from it with
``from: source``, and a recipe that would package nothing is refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

import shipyard
from shipyard.artifact import Artifact, sha256_file
from shipyard.errors import ExportError, InputError, PassError, RecipeError
from shipyard.model_file import model_name
from shipyard.package import load_package
from shipyard.passes.convert_openvino import convert_openvino
from shipyard.passes.convert_tflite import convert_tflite
from shipyard.recipe import parse_recipe
from shipyard.sources import load_model, torch_artifact
from tests.conftest import SMALL_SIGNATURE, small_net
from tests.serve.conftest import serving

FILE_RECIPE = """\
name: {name}
model: {{source: "{source}"}}
data: {{validation: "{data}"}}
bench: {{batch_sizes: [1], runs: 5, warmup: 1}}
"""


@pytest.fixture(scope="module")
def model_files(small_onnx: Artifact, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The small CNN as each model file a user may bring, made by Shipyard's own passes."""
    folder = tmp_path_factory.mktemp("brought")
    torch_side = torch_artifact(small_net(), SMALL_SIGNATURE)
    openvino = convert_openvino(small_onnx, folder / "small.xml")
    tflite = convert_tflite(torch_side, folder / "small.tflite")
    assert small_onnx.path is not None and openvino.path and tflite.path
    return {"onnx": small_onnx.path, "openvino": openvino.path, "tflite": tflite.path}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 40)
    path = tmp_path_factory.mktemp("data") / "labelled.npz"
    np.savez(path, x=x, labels=labels)
    return path, x, labels


def _direct(path: Path, x: np.ndarray) -> np.ndarray:
    """The original file's own answer, in process: what the package must give back."""
    with shipyard.open_session(load_model(str(path)), threads=1) as session:
        (output,) = session.run({session.signature.inputs[0].name: x}).values()
    return output


@pytest.mark.parametrize("kind", ["onnx", "tflite", "openvino"])
def test_a_model_file_is_packaged_served_and_answers(
    kind: str,
    model_files: dict[str, Path],
    labelled: tuple[Path, np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    source = model_files[kind]
    data, x, labels = labelled
    recipe = parse_recipe(FILE_RECIPE.format(name=f"small-{kind}", source=source, data=data))
    assert recipe.passes == []  # no passes: given, a model file is packaged as it is
    result = shipyard.build(recipe, tmp_path)
    manifest = result.manifest
    (entry,) = manifest["artifacts"]
    assert (entry["name"], entry["format"], entry["file"]) == (kind, kind, source.name)
    assert manifest["default_artifact"] == kind
    copied = [p.name for p in result.artifacts[0].files()]
    assert copied == [source.name] + (["small.bin"] if kind == "openvino" else [])
    for name in copied:  # byte for byte the user's files, and hashed
        assert manifest["files"][name] == sha256_file(source.with_name(name))
    # The file is its own reference: run once on the data, not compared with itself.
    (report,) = manifest["validation"]
    assert report["parity"] is False and report["outputs"] == [] and report["passed"]
    assert report["ran"][0]["shape"] == [40, 10] and report["ran"][0]["nonfinite"] == 0
    expected = float(np.mean(_direct(source, x).argmax(axis=1) == labels))
    assert report["accuracy_candidate"] == pytest.approx(expected)
    (row,) = manifest["candidates"]
    assert row["baseline"] and row["chosen"] and row["accuracy"] == pytest.approx(expected)
    assert [r["name"] for r in manifest["benchmark"]["results"]] == [kind]

    package = load_package(result.package_dir)  # verifies every hash
    signature = package.signature
    probe = x[:3]
    body = {
        "inputs": [
            {
                "name": signature.inputs[0].name,
                "datatype": "FP32",
                "shape": list(probe.shape),
                "data": probe.ravel().tolist(),
            }
        ]
    }
    with serving(result.package_dir) as server:
        answer = httpx.post(f"{server.url}/v2/models/small-{kind}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["name"] == signature.outputs[0].name and output["shape"] == [3, 10]
    served = np.asarray(output["data"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(served, _direct(source, probe), rtol=1e-6, atol=1e-6)


BRANCHED = """\
name: branched
model: {{source: "{source}"}}
passes:
  - quantize: {{mode: fp16}}
  - convert_openvino: {{}}
    from: source
bench: {{enabled: false}}
"""


def test_steps_start_from_the_model_file_with_from_source(
    model_files: dict[str, Path], tmp_path: Path
) -> None:
    result = shipyard.build(parse_recipe(BRANCHED.format(source=model_files["onnx"])), tmp_path)
    names = [a["name"] for a in result.manifest["artifacts"]]
    assert names == ["onnx-fp16", "openvino-fp32"]
    # Passes made files, so those are the package: the source is their reference, not in it.
    assert "small.onnx" not in result.manifest["files"]
    assert [(r.reference, r.parity) for r in result.validation] == [("onnx", True)] * 2
    # convert_openvino started from the source file, not from the fp16 file before it.
    notes = result.manifest["artifacts"][1]["provenance"][-1]["notes"]
    assert notes["converted_from"] == f"onnx (onnx, {model_files['onnx']})"
    assert max(o.max_abs for o in result.validation[1].outputs) < 1e-4


TORCH = """\
name: torch-branches
model: {source: tests.conftest:small_net}
signature: {inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]}
passes:
  - export: {dynamo: false}
  - export: {dynamo: false, name: again, filename: again.onnx}
    from: source
bench: {enabled: false}
"""


def test_from_source_is_the_torch_model_in_a_torch_recipe(tmp_path: Path) -> None:
    result = shipyard.build(parse_recipe(TORCH), tmp_path)
    assert [a.name for a in result.artifacts] == ["onnx", "again"]
    # Exporting "onnx" again would have failed: the second export started from the model.
    assert [r.reference for r in result.validation] == ["torch", "torch"]


NOTHING = """\
name: nothing
model: {source: tests.conftest:small_net}
signature: {inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]}
"""


@pytest.mark.parametrize(
    ("passes", "said"),
    [
        ("passes: []\n", "it has no passes"),
        (
            "passes: [{prune: {method: l1_unstructured, amount: 0.1}}]\n",
            "its passes (prune) make only torch modules",
        ),
    ],
)
def test_a_recipe_that_packages_nothing_is_refused_before_any_work(
    passes: str, said: str, tmp_path: Path
) -> None:
    recipe = parse_recipe(NOTHING + passes)
    with pytest.raises(RecipeError) as error:
        shipyard.build(recipe, tmp_path / "out")
    message = str(error.value)
    assert message.startswith("this recipe would package no artifact: its model ")
    assert (
        said in message and "add a step that makes a file, e.g. passes: [{export: {}}]" in message
    )
    assert not (tmp_path / "out").exists()


def test_gates_on_a_model_file_packaged_as_it_is_are_refused(
    model_files: dict[str, Path], tmp_path: Path
) -> None:
    source = model_files["onnx"]
    text = f'name: gated\nmodel: {{source: "{source}"}}\nvalidate: {{gates: {{atol: 0.001}}}}\n'
    with pytest.raises(
        RecipeError, match="which has nothing to be compared with; remove the gates"
    ):
        shipyard.build(parse_recipe(text), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("step", "error", "said"),
    [
        ("export: {}", ExportError, "is already a model file: in a recipe, drop the export step"),
        ("convert_tflite: {}", PassError, "convert_tflite needs a PyTorch model, but the recipe's"),
    ],
)
def test_torch_steps_on_a_model_file_say_what_to_do(
    step: str, error: type[Exception], said: str, model_files: dict[str, Path], tmp_path: Path
) -> None:
    text = f'name: wrong\nmodel: {{source: "{model_files["onnx"]}"}}\npasses: [{{{step}}}]\n'
    with pytest.raises(error, match=said.replace("(", r"\(")):
        shipyard.build(parse_recipe(text), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_external_data_travels_with_the_onnx_file(small_onnx: Artifact, tmp_path: Path) -> None:
    """A large ONNX file keeps its weights in files it names; the package holds them too."""
    assert small_onnx.path is not None
    (tmp_path / "big" / "weights").mkdir(parents=True)
    big = tmp_path / "big" / "big.onnx"
    model = onnx.load(str(small_onnx.path))
    onnx.save_model(model, str(big), save_as_external_data=True, location="weights/big.bin",
                    size_threshold=256)  # fmt: skip
    result = shipyard.package_file(big, tmp_path / "out", run_bench=False)
    assert set(result.manifest["files"]) == {"big.onnx", "weights/big.bin"}
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    (artifact,) = load_package(result.package_dir).artifacts
    with shipyard.open_session(artifact) as session:
        np.testing.assert_allclose(session.run({"x": x})["logits"], _direct(big, x), atol=1e-6)


def test_package_file_names_the_model_after_the_file(small_onnx: Artifact, tmp_path: Path) -> None:
    assert model_name(Path("my model (2).v1.onnx")) == "my-model-2-.v1"
    assert model_name(Path("_resnet.onnx")) == "resnet"
    assert model_name(Path("x.onnx"), "given") == "given"
    with pytest.raises(InputError, match="cannot make a model name from '___.onnx'"):
        model_name(Path("___.onnx"))
    with pytest.raises(InputError, match="'-bad' is not a valid model name"):
        model_name(Path("x.onnx"), "-bad")
    assert small_onnx.path is not None
    result = shipyard.package_file(
        small_onnx.path, tmp_path, version=2, serving={"max_batch_size": 4}, samples=5,
        run_bench=False,
    )  # fmt: skip
    assert result.package_dir == tmp_path / "small" / "2"
    assert result.manifest["serving"]["max_batch_size"] == 4
    (report,) = result.manifest["validation"]
    assert (report["random_inputs"], report["samples"]) == (True, 5)
