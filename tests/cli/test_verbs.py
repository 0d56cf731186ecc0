"""The one-off verbs (prune, finetune, quantize, convert) on the real digits model, through
the real ``shipyard`` command: options generated from the pass configs, the parity table,
exit codes, and nothing written when a gate fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipyard.artifact import Artifact
from tests.test_cli import shipyard

DIGITS = "shipyard.examples.digits:trained"
SPEC = "x:float32[batch,1,8,8]"
CALIBRATION = "shipyard.examples.digits:calibration"
VALIDATION = "shipyard.examples.digits:validation"
TRAIN = "shipyard.examples.digits:train"


@pytest.mark.parametrize(
    ("verb", "generated"),
    [
        ("quantize", ["--preset", "--per-channel / --no-per-channel", "--calibration-samples"]),
        ("prune", ["--method", "--target-macs", "--importance", "--allow-without-finetune"]),
        ("finetune", ["--epochs", "--lr", "--distill-from-original"]),
        ("convert", ["--to", "--precision", "openvino:", "calibration_samples=300"]),
    ],
)
def test_each_verb_lists_the_options_of_its_pass_config(verb: str, generated: list[str]) -> None:
    run = shipyard(verb, "--help")
    assert run.returncode == 0, run.stderr
    for option in generated:
        assert option in run.stdout, f"{option} missing from `shipyard {verb} --help`"
    assert "--set" in run.stdout and "--json" in run.stdout


def test_quantize_calibrates_validates_and_writes(digits_onnx: Artifact, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    run = shipyard(
        "quantize", digits_onnx.path, "-o", out, "--preset", "static_qdq_u8s8",
        "--data", CALIBRATION, "--validate-data", VALIDATION,
        "--max-accuracy-drop", "0.02", "--per-channel",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "vs model.onnx (450 samples)" in run.stdout  # the parity table, on real data
    assert "max_accuracy_drop" in run.stdout and "accuracy: model.onnx" in run.stdout
    assert out.is_file() and out.stat().st_size < digits_onnx.size_bytes / 2
    # The option was applied on top of the preset: the label says per-channel.
    assert "onnx-int8-static-qdq-u8s8-pc" in run.stdout


def test_quantize_json_and_random_inputs_said(digits_onnx: Artifact, tmp_path: Path) -> None:
    out = tmp_path / "d.onnx"
    run = shipyard("quantize", digits_onnx.path, "-o", out, "--mode", "dynamic", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["output"] == str(out) and result["format"] == "onnx"
    assert result["validation"]["random_inputs"] is True
    assert result["validation"]["passed"] is True
    table = shipyard("quantize", digits_onnx.path, "-o", out, "--mode", "dynamic", "--overwrite")
    assert "random inputs, no data given" in table.stdout


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mode", "static", "--set", "per_channel=maybe"], "quantize.per_channel"),
        (["--mode", "dynamic", "--calibration-samples", "0"], "quantize.calibration_samples"),
        (["--preset", "dynamic_s8", "--set", "per_chanel=true"], "did you mean per_channel"),
        ([], "quantize.mode (--mode): required field is missing"),
        (["--mode", "fp16", "--per-channel"], "per_channel do(es) not apply to mode 'fp16'"),
    ],
)
def test_quantize_bad_options_give_one_line(
    digits_onnx: Artifact, tmp_path: Path, options: list[str], message: str
) -> None:
    run = shipyard("quantize", digits_onnx.path, "-o", tmp_path / "q.onnx", *options)
    assert run.returncode == 2, run.stdout
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "errors.pydantic.dev" not in run.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_a_failed_gate_writes_nothing(digits_onnx: Artifact, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    run = shipyard("quantize", digits_onnx.path, "-o", out, "--preset", "dynamic_s8", "--atol", "0")
    assert run.returncode == 1
    assert "atol [output]" in run.stdout and "FAILED" in run.stdout
    assert "was not written" in run.stderr
    assert list(tmp_path.iterdir()) == []  # no file, no staging folder


def test_an_existing_output_needs_overwrite(digits_onnx: Artifact, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    out.write_bytes(b"keep me")
    run = shipyard("quantize", digits_onnx.path, "-o", out, "--preset", "fp16")
    assert run.returncode == 2 and "--overwrite" in run.stderr
    assert out.read_bytes() == b"keep me"


def test_prune_then_finetune_recovers_accuracy(tmp_path: Path) -> None:
    pruned = tmp_path / "pruned.pt2"
    run = shipyard(
        "prune", DIGITS, "--input", SPEC, "-o", pruned, "--method", "structured",
        "--target-macs", "0.5", "--allow-without-finetune", "--validate-data", VALIDATION,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "torch-pruned vs trained (450 samples)" in run.stdout
    assert pruned.is_file()
    tuned = tmp_path / "tuned.onnx"
    run = shipyard(
        "finetune", pruned, "--input", SPEC, "-o", tuned, "--data", TRAIN,
        "--validate-data", VALIDATION, "--epochs", "3", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert [r["pass"] for r in result["provenance"]][-2:] == ["finetune", "export"]
    assert result["validation"]["samples"] == 450
    assert result["validation"]["accuracy_candidate"] > 0.9


def test_prune_refuses_an_output_it_cannot_write(tmp_path: Path) -> None:
    run = shipyard(
        "prune", DIGITS, "--input", SPEC, "-o", tmp_path / "p.tflite",
        "--method", "l1_unstructured", "--amount", "0.2",
    )  # fmt: skip
    assert run.returncode == 2 and "NAME.pt2" in run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("to", "precision", "filename", "label"),
    [
        ("onnx", "int8", "m.onnx", "onnx-int8-static-qdq-u8s8"),
        ("openvino", "fp16", "m.xml", "openvino-fp16"),
        ("tflite", "dynamic_int8", "m.tflite", "tflite-dynamic-int8"),
    ],
)
def test_convert_to_each_target(
    tmp_path: Path, to: str, precision: str, filename: str, label: str
) -> None:
    out = tmp_path / filename
    run = shipyard(
        "convert", DIGITS, "--input", SPEC, "--to", to, "--precision", precision, "-o", out,
        "--data", CALIBRATION, "--validate-data", VALIDATION, "--max-accuracy-drop", "0.02",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"{label} vs trained (450 samples)" in run.stdout
    assert out.is_file()


def test_convert_names_the_precisions_a_target_takes(tmp_path: Path) -> None:
    run = shipyard(
        "convert", DIGITS, "--input", SPEC, "--to", "tflite", "--precision", "fp16",
        "-o", tmp_path / "m.tflite",
    )  # fmt: skip
    assert run.returncode == 2
    assert "convert_tflite.precision (--precision)" in run.stderr and "int8" in run.stderr
