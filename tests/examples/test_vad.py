"""The Silero VAD recipe end to end: the wheel's model, the wheel's conversation, three
artifacts validated chunk by chunk with the state carried, against the speaker turns."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from shipyard.build import BuildResult, build
from shipyard.cli.render import validation as render_validation
from shipyard.package import load_package
from shipyard.recipe import load_recipe
from shipyard.serve.version import open_version

RECIPE = Path(__file__).parents[2] / "examples" / "vad" / "recipe.yaml"

pytestmark = pytest.mark.skipif(
    find_spec("silero_vad") is None or find_spec("pyannote") is None,
    reason="needs silero-vad (the 'vad' extra) and pyannote.audio==4.0.7 installed --no-deps",
)


def test_the_example_recipe_is_the_packaged_one() -> None:
    packaged = Path(__file__).parents[2] / "src" / "shipyard" / "examples" / "vad" / "recipe.yaml"
    assert RECIPE.read_text() == packaged.read_text()


def test_the_plain_module_is_the_torchscript_network_exactly() -> None:
    """The sample's first 12.8 s (400 chunks, silence then speech), state carried: the same
    probabilities and states, bit for bit, as the TorchScript network silero's wrapper calls."""
    import torch

    from shipyard.examples.vad import original, silero, validation

    network, module = original()._model, silero()
    state = torch.zeros(2, 1, 128)
    mine, context = state.clone(), torch.zeros(1, 64)
    with torch.no_grad():
        for chunk in validation().inputs["input"][:400]:
            x = torch.cat([context, torch.from_numpy(chunk)[None]], dim=1)
            (theirs, state), (ours, mine) = network(x, state), module(x, mine)
            assert torch.equal(theirs, ours) and torch.equal(state, mine)
            context = x[:, -64:]


def test_the_labels_come_from_the_speaker_turns() -> None:
    from shipyard.examples.vad import turns, validation

    data = validation()
    assert data.inputs["input"].shape == (938, 512) and data.labels is not None
    assert turns()[0] == (6.69, pytest.approx(7.12)) and len(turns()) == 10
    assert 0.7 < data.labels.mean() < 0.8  # a conversation: mostly speech
    assert data.labels[: int(6.6 * 16000 / 512)].sum() == 0  # nobody speaks before 6.69 s


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(load_recipe(RECIPE), tmp_path_factory.mktemp("vad"), run_bench=False)


@pytest.mark.slow
def test_every_artifact_finds_the_conversation_like_the_original(result: BuildResult) -> None:
    reports = {r.candidate: r for r in result.validation}
    assert list(reports) == ["onnx", "onnx-int8", "openvino-fp32"]
    for name, report in reports.items():
        assert report.passed, [g.describe() for g in report.failures()]
        assert report.samples == 938 and [o.name for o in report.outputs] == ["probability"]
        assert report.f1_reference is not None and report.f1_reference > 0.98
        assert report.f1_candidate is not None and report.f1_candidate > 0.98, name
        assert {g.gate for g in report.gates} >= {"nonfinite", "max_f1_drop"}
    assert reports["onnx"].outputs[0].max_abs < 1e-5
    assert reports["openvino-fp32"].outputs[0].max_abs < 1e-5
    # int8 LSTM products: probabilities move by a few hundredths, decisions barely
    assert 1e-3 < reports["onnx-int8"].outputs[0].max_abs < 0.1
    assert abs(reports["onnx-int8"].f1_drop or 1.0) <= 0.005
    console = Console(width=200, record=True)
    console.print(render_validation(reports["onnx-int8"]))
    assert "F1 (frames): torch 0.99" in console.export_text()


@pytest.mark.slow
def test_the_package_serves_sequences(result: BuildResult) -> None:
    package = load_package(result.package_dir)
    manifest = package.manifest
    assert manifest["task"] == "detection" and manifest["default_artifact"] == "onnx"
    sequence = manifest["serving"]["sequence"]
    assert sequence["state"] == [{"input": "state", "output": "stateN"}]
    assert sequence["context"] == {"input": "input", "samples": 64}
    rows = {row["name"]: row for row in manifest["candidates"]}
    assert rows["torch"]["f1_drop"] == 0.0 and rows["onnx-int8"]["f1"] > 0.98
    sizes = {a["name"]: a["bytes"] for a in manifest["artifacts"]}
    assert sizes["onnx-int8"] < 0.75 * sizes["onnx"]
    opened = open_version(result.package_dir)  # loads, smoke-tests, checks the sequence config
    for session in opened.sessions:
        session.close()
    report_md = (result.package_dir / "report.md").read_text(encoding="utf-8")
    assert "F1 0.99" in report_md
    assert np.isfinite([rows[name]["f1"] for name in rows]).all()


@pytest.mark.slow
def test_shipyard_validate_steps_the_package_as_sequences(result: BuildResult) -> None:
    """The package names its sequence settings and data: the CLI runs the chunks in order
    with the state carried, reads the task, and gates on the F1 drop."""
    from tests.test_cli import shipyard as run_cli

    run = run_cli(
        "validate", "shipyard.examples.vad:silero", result.package_dir, "--max-f1-drop", "0",
        "--samples", "400",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "vs silero (400 samples)" in run.stdout and "F1 (frames): silero 0.97" in run.stdout
    assert "max_f1_drop: 0 (limit 0) ok" in run.stdout
