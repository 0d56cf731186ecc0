"""The real `shipyard` command in a subprocess: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

SPEC = "x:float32[batch,1,8,8]"


def shipyard(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "shipyard", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "small.onnx"
    run = shipyard("export", "tests.conftest:small_net", "--input", SPEC, "-o", path)
    assert run.returncode == 0, run.stderr
    assert "dynamo exporter" in run.stdout and "max abs" in run.stdout
    return path


def test_export_writes_a_checked_file(exported: Path) -> None:
    assert exported.stat().st_size > 0
    run = shipyard("inspect", exported)
    assert run.returncode == 0 and "x: float32[batch, 1, 8, 8]" in run.stdout


def test_validate_passes_and_fails_gates_with_exit_codes(exported: Path, tmp_path: Path) -> None:
    # The torch reference borrows its input signature from the ONNX candidate.
    ok = shipyard("validate", "tests.conftest:small_net", exported, "--atol", "1e-4")
    assert ok.returncode == 0, ok.stderr
    assert "atol" in ok.stdout and "ok" in ok.stdout
    strict = shipyard("validate", "tests.conftest:small_net", exported, "--atol", "0", "--json")
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["passed"] is False


def test_validate_with_labelled_data_reports_accuracy(exported: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.zeros(40, np.int64))
    run = shipyard(
        "validate",
        "tests.conftest:small_net",
        exported,
        "--data",
        tmp_path / "d.npz",
        "--max-accuracy-drop",
        "0.0",
    )
    assert run.returncode == 0, run.stderr
    assert "accuracy: small_net" in run.stdout and "(drop +0.00 points)" in run.stdout


def test_data_that_does_not_fit_the_model(exported: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    run = shipyard("validate", "tests.conftest:small_net", exported, "--data", tmp_path / "bad.npz")
    assert run.returncode == 2
    assert "does not fit the model" in run.stderr and "dimension 1 must be 1" in run.stderr
    assert "Traceback" not in run.stderr


def test_bench_json_compares_artifacts(exported: Path) -> None:
    run = shipyard(
        "bench",
        exported,
        "tests.conftest:small_net",
        "--runs",
        "5",
        "--batch-sizes",
        "1,4",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [r["name"] for r in report["results"]] == ["small.onnx", "small_net"]
    assert report["fingerprint"]["cpu"] and report["threads"] == 1


def test_bad_recipe_is_one_line_and_debug_shows_the_trace(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel:\n  source: tests.conftest:small_net\n  wieghts: w.pt\n")
    run = shipyard("build", recipe, "-o", tmp_path / "out")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert f"{recipe}:4: model.wieghts: unknown key" in lines[0]
    debug = shipyard("--debug", "build", recipe, "-o", tmp_path / "out")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_unexportable_model_gives_the_real_reason(tmp_path: Path) -> None:
    run = shipyard(
        "export",
        "tests.passes.test_export:DataDependent",
        "--input",
        "x:float32[batch,4]",
        "-o",
        tmp_path / "m.onnx",
    )
    assert run.returncode == 2
    assert "data-dependent" in run.stderr and "if x.sum() > 0" in run.stderr
    assert len(run.stderr.strip().splitlines()) <= 3  # one paragraph (the console may wrap)
    assert not (tmp_path / "m.onnx").exists()


def test_bad_input_spec_and_usage_errors(tmp_path: Path) -> None:
    run = shipyard("export", "tests.conftest:small_net", "--input", "x:float32(1,2)")
    assert run.returncode == 2 and "expected NAME:DTYPE[DIMS]" in run.stderr
    assert shipyard("bench").returncode == 2  # missing argument: typer's usage error


def test_build_via_cli_into_a_repository(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: tiny\nmodel: {source: tests.conftest:small_net}\nsignature:\n"
        "  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]\n"
        "validate: {gates: {atol: 1.0e-4}, samples: 8}\n"
    )
    run = shipyard("build", recipe, "-o", tmp_path / "repo", "--no-bench")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "repo" / "tiny" / "1" / "shipyard.json").exists()
    again = shipyard("build", recipe, "-o", tmp_path / "repo", "--no-bench")
    assert again.returncode == 2 and "already exists" in again.stderr
    inspect = shipyard("inspect", tmp_path / "repo" / "tiny" / "1")
    assert inspect.returncode == 0 and "onnx: " in inspect.stdout


def test_structured_pruning_without_training_data_needs_no_finetune(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: pruned\nmodel: {source: tests.conftest:small_net}\nsignature:\n"
        "  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]\n"
        "passes:\n  - prune: {method: structured, amount: 0.5}\n  - export: {}\n"
        "validate: {samples: 8}\n"
    )
    refused = shipyard("build", recipe, "-o", tmp_path / "repo", "--no-bench")
    assert refused.returncode == 2
    assert "--no-finetune" in refused.stderr and "data: train:" in refused.stderr
    assert not (tmp_path / "repo" / "pruned" / "1").exists()
    allowed = shipyard("build", recipe, "-o", tmp_path / "repo", "--no-bench", "--no-finetune")
    assert allowed.returncode == 0, allowed.stderr
    manifest = json.loads((tmp_path / "repo" / "pruned" / "1" / "shipyard.json").read_text())
    prune = manifest["artifacts"][0]["provenance"][0]
    assert prune["pass"] == "prune" and prune["notes"]["params_ratio"] < 1.0
