"""`shipyard package MODEL_FILE` through the real command: what it writes and prints, and one
line (exit 2, nothing written) for input that is not a model file or a name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shipyard.artifact import Artifact
from shipyard.package import load_package
from tests.test_cli import shipyard as run


def test_package_writes_a_servable_package_from_one_file(
    small_onnx: Artifact, tmp_path: Path
) -> None:
    assert small_onnx.path is not None
    x = np.random.default_rng(0).standard_normal((20, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, labels=np.zeros(20, np.int64))
    repository = tmp_path / "repo"
    args = ("--name", "tiny", "--version", "3", "--max-batch-size", "4", "--instances", "2")
    data = ("--data", tmp_path / "data.npz", "--samples", "10")
    done = run("package", small_onnx.path, "-o", repository, *args, *data)
    assert done.returncode == 0, done.stderr
    folder = repository / "tiny" / "3"
    package = load_package(folder)  # hashes verified
    assert [a.name for a in package.artifacts] == ["onnx"]
    assert package.manifest["serving"]["max_batch_size"] == 4
    assert package.manifest["serving"]["instances"] == 2
    assert package.manifest["benchmark"] is not None
    lines = done.stdout.splitlines()
    assert "packaged onnx as it is -> small.onnx" in lines[2]
    assert "onnx on 10 samples" in done.stdout
    accuracy = package.manifest["validation"][0]["accuracy_candidate"]
    assert f"accuracy: onnx {accuracy:.2%}" in done.stdout
    assert "serves onnx: the only artifact" in done.stdout
    assert lines[-2] == "wrote report.html, report.md, shipyard.json, small.onnx"
    assert lines[-1] == f"serve it: shipyard serve {folder}"
    again = run("package", small_onnx.path, "-o", repository, "--name", "tiny", "--version", "3")
    assert again.returncode == 2 and "already exists: replace it with --overwrite" in again.stderr


def test_package_json_names_the_model_after_the_file(small_onnx: Artifact, tmp_path: Path) -> None:
    assert small_onnx.path is not None
    named = tmp_path / "My Net (v2).onnx"
    shutil.copy(small_onnx.path, named)
    done = run("package", named, "-o", tmp_path / "repo", "--no-bench", "--json")
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert (manifest["name"], manifest["version"], manifest["benchmark"]) == ("My-Net-v2", 1, None)
    assert manifest["artifacts"][0]["file"] == "My Net (v2).onnx"
    assert (tmp_path / "repo" / "My-Net-v2" / "1" / "My Net (v2).onnx").is_file()


@pytest.mark.parametrize(
    ("given", "extra", "said"),
    [
        ("missing.onnx", (), "error: model file {dir}/missing.onnx does not exist"),
        ("net.pt2", (), "is not a model file Shipyard runs as it is (.onnx, .tflite, or an"),
        ("net.bin", (), "net.bin has no net.xml beside it: an OpenVINO model is the .xml"),
        ("small.onnx", ("--name", "no/slash"), "--name 'no/slash' is not a valid model name"),
        ("small.onnx", ("--max-batch-size", "-1"), "--max-batch-size: Input should be greater"),
        ("small.onnx", ("--task", "speech"), "--task 'speech': use one of classification"),
    ],
)
def test_package_refuses_bad_input_in_one_line(
    given: str, extra: tuple[str, ...], said: str, small_onnx: Artifact, tmp_path: Path
) -> None:
    assert small_onnx.path is not None
    shutil.copy(small_onnx.path, tmp_path / "small.onnx")
    for name in ("net.pt2", "net.bin"):
        (tmp_path / name).write_bytes(b"\0")
    done = run("package", tmp_path / given, "-o", tmp_path / "repo", *extra)
    assert done.returncode == 2, done.stdout
    (line,) = done.stderr.strip().splitlines()
    assert said.format(dir=tmp_path) in line
    assert not (tmp_path / "repo").exists()  # nothing half-written
