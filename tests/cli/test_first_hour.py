"""What stopped or misled a new user following the README (the "first hour" issue), each
reproduced through the real ``shipyard`` command."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import shipyard
from shipyard.artifact import Artifact
from shipyard.recipe import parse_recipe
from tests.conftest import REPO
from tests.test_build import TINY
from tests.test_cli import shipyard as run

DIGITS = "shipyard.examples.digits:trained"


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "tiny.yaml"
    path.write_text(TINY.format(atol=1e-4))
    return path


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same recipe built into two repositories: two packages with equal names."""
    root = tmp_path_factory.mktemp("builds")
    recipe = parse_recipe(TINY.format(atol=1e-4))
    first = shipyard.build(recipe, root / "out", run_bench=False).package_dir
    second = shipyard.build(recipe, root / "demo-out", run_bench=False).package_dir
    return first, second


@pytest.fixture(scope="module")
def digits_package(tmp_path_factory: pytest.TempPathFactory, digits_model: torch.nn.Module) -> Path:
    return shipyard.build(None, tmp_path_factory.mktemp("digits"), run_bench=False).package_dir


def test_two_files_with_one_name_get_their_paths_as_labels(
    small_onnx: Artifact, tmp_path: Path
) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(small_onnx.path, tmp_path / folder / "model.onnx")  # type: ignore[arg-type]
    bench = run(
        "bench", tmp_path / "a/model.onnx", tmp_path / "b/model.onnx",
        "--runs", "3", "--batch-sizes", "1",
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert "a/model.onnx" in bench.stdout and "b/model.onnx" in bench.stdout
    compare = run("compare", f"base={tmp_path}/a/model.onnx", f"copy={tmp_path}/b/model.onnx")
    assert compare.returncode == 0, compare.stderr
    assert "against base" in compare.stdout and "copy" in compare.stdout


def test_two_builds_of_one_model_can_be_compared(two_builds: tuple[Path, Path]) -> None:
    first, second = two_builds
    bench = run("bench", first, second, "--runs", "3", "--batch-sizes", "1")
    assert bench.returncode == 0, bench.stderr
    assert "out/tiny/3/onnx" in bench.stdout and "demo-out/tiny/3/onnx" in bench.stdout
    compare = run("compare", first, second, "--atol", "0")
    assert compare.returncode == 0, compare.stderr  # the same export twice: identical outputs


def test_compare_uses_the_packages_own_validation_data(digits_package: Path) -> None:
    # The torch source borrowed the package's signature; the package named its data.
    compare = run("compare", DIGITS, digits_package)
    assert compare.returncode == 0, compare.stderr
    assert "450 samples; on shipyard.examples.digits:validation" in compare.stdout
    assert "99." in compare.stdout  # the accuracy column, from labelled held-out data
    assert "no gates set" in compare.stdout


def test_random_inputs_are_said_in_the_title(small_onnx: Artifact) -> None:
    compare = run("compare", small_onnx.path, f"again={small_onnx.path}")  # type: ignore[arg-type]
    assert compare.returncode == 0, compare.stderr
    assert "random inputs, no data given" in compare.stdout


def test_validate_a_torch_source_against_a_package(digits_package: Path) -> None:
    ok = run(
        "validate", DIGITS, digits_package,
        "--data", "shipyard.examples.digits:validation", "--atol", "1e-4",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "(450 samples)" in ok.stdout and "accuracy:" in ok.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimize", "--budget", "2"], "--budget: duration '2' has no unit: write 2s, 2m or 2h"),
        (["optimize", "--budget", "10x"], "--budget: duration '10x': use a number with s, m"),
        (["optimize", "--objective", "speed"], "--objective: Input should be 'latency'"),
        (["export", DIGITS, "-i", "x:f32[batch,1,8,8]"], "--input 'x:f32[batch,1,8,8]': dtype"),
        (["export", DIGITS, "-i", "x:float32[batch,1,8,8]", "--opset", "3"], "opset"),
    ],
)
def test_bad_values_give_one_readable_line(args: list[str], message: str, tmp_path: Path) -> None:
    output = tmp_path / ("o.onnx" if args[0] == "export" else "out")
    result = run(*args, "-o", output)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "pydantic" not in result.stderr and "internal error" not in result.stderr
    assert message in result.stderr
    assert not output.exists()


def test_bench_refuses_zero_runs_as_bad_input(small_onnx: Artifact) -> None:
    result = run("bench", small_onnx.path, "--runs", "0")  # type: ignore[arg-type]
    assert result.returncode == 2 and "runs must be at least 1" in result.stderr


def test_tables_never_cut_names_when_output_is_not_a_terminal(small_onnx: Artifact) -> None:
    long = "candidate-with-a-name-much-longer-than-an-eighty-column-table-would-allow"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run(
        [sys.executable, "-m", "shipyard", "compare", str(small_onnx.path),
         f"{long}={small_onnx.path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert long in result.stdout and "…" not in result.stdout


def test_an_existing_version_offers_version_and_overwrite(
    tiny_recipe: Path, tmp_path: Path
) -> None:
    assert run("build", tiny_recipe, "-o", tmp_path, "--no-bench").returncode == 0
    again = run("build", tiny_recipe, "-o", tmp_path, "--no-bench")
    assert again.returncode == 2
    assert "--overwrite" in again.stderr and "--version N" in again.stderr
    new = run("build", tiny_recipe, "-o", tmp_path, "--no-bench", "--version", "4")
    assert new.returncode == 0, new.stderr
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["3", "4"]


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_a_missing_extra_stops_the_build_before_any_work(tmp_path: Path) -> None:
    recipe = tmp_path / "trt.yaml"
    recipe.write_text(
        TINY.format(atol=1e-4) + "passes:\n  - export: {}\n  - convert_tensorrt: {}\n"
    )
    result = run("build", recipe, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "needs the 'tensorrt' extra: pip install 'shipyard[tensorrt]'" in result.stderr
    assert "export:" not in result.stdout and "loaded" not in result.stdout
    assert not (tmp_path / "out").exists()


def test_the_budget_says_what_it_skipped_and_what_the_exit_status_means(
    tmp_path: Path, digits_model: torch.nn.Module
) -> None:
    result = run("optimize", "-o", tmp_path, "--budget", "0.001s", "--no-prune")
    assert result.returncode == 0, result.stderr
    assert "evaluated 1 of 8 planned candidates; 7 skipped: the budget of 0.001 s" in result.stdout
    assert "exit status 0: fp32 passed its gates" in result.stdout


def test_help_shows_no_type_tags_on_plain_flags() -> None:
    for args in (["--help"], ["build", "--help"], ["serve", "--help"]):
        result = run(*args)
        assert result.returncode == 0 and "<bool>" not in result.stdout, result.stdout


def test_the_same_file_twice_is_benchmarked_not_refused(small_onnx: Artifact) -> None:
    path = small_onnx.path
    result = run("bench", path, path, "--runs", "3", "--batch-sizes", "1")  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    assert f"{path.name}#1" in result.stdout and f"{path.name}#2" in result.stdout  # type: ignore[union-attr]
