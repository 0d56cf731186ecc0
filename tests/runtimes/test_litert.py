"""The LiteRT runtime on real .tflite files: signatures from the file, threads, compare."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from shipyard.artifact import Artifact
from shipyard.errors import BackendError
from shipyard.passes.convert_tflite import TfliteConfig, convert_tflite
from shipyard.runtimes import open_session
from shipyard.runtimes.litert import tflite_signature
from shipyard.sources import load_model
from tests.test_cli import shipyard as run_cli

pytestmark = pytest.mark.skipif(
    find_spec("litert_torch") is None, reason="needs the 'tflite' extra"
)


@pytest.fixture(scope="module")
def files(digits_torch: Artifact, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("litert")
    out = {}
    for config in (TfliteConfig(), TfliteConfig(channels_last_io=True)):
        artifact = convert_tflite(digits_torch, folder / config.output_filename(), config)
        assert artifact.path is not None
        out[config.artifact_name()] = artifact.path
    return out


def test_signature_is_read_from_the_file(files: dict[str, Path]) -> None:
    signature = tflite_signature(files["tflite-fp32"])
    (spec,) = signature.inputs
    assert spec.shape == ("batch", 1, 8, 8) and spec.dtype == "float32"
    assert [o.shape for o in signature.outputs] == [("batch", 10)]
    # Loaded as a model source, the tensors take the given names; NHWC is recognised.
    given = load_model(str(files["tflite-fp32-nhwc"]), tflite_signature(files["tflite-fp32"]))
    assert given.signature.inputs[0].layout == "NHWC"
    assert given.signature.inputs[0].name == spec.name


def test_one_session_is_safe_from_two_threads(files: dict[str, Path]) -> None:
    artifact = load_model(str(files["tflite-fp32"]))
    name = artifact.signature.inputs[0].name
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((n, 1, 8, 8)).astype(np.float32) for n in (1, 3, 8)]
    errors: list[BaseException] = []
    with open_session(artifact, threads=1) as session:
        expected = [next(iter(session.run({name: x}).values())) for x in inputs]

        def worker() -> None:
            try:
                for i in range(150):
                    x = inputs[i % 3]
                    got = next(iter(session.run({name: x}).values()))
                    np.testing.assert_allclose(got, expected[i % 3], atol=1e-6)
            except BaseException as error:  # collected: the main thread asserts
                errors.append(error)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_gpu_device_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(BackendError, match="use device='cpu'"):
        open_session(load_model(str(files["tflite-fp32"])), device="cuda")


@pytest.mark.skipif(find_spec("openvino") is None, reason="needs the 'openvino' extra")
def test_compare_mixes_onnx_tflite_nhwc_and_openvino(
    files: dict[str, Path], digits_onnx: Artifact, tmp_path: Path
) -> None:
    from shipyard.passes.convert_openvino import convert_openvino

    xml = convert_openvino(digits_onnx, tmp_path / "model.xml").path
    result = run_cli(
        "compare", digits_onnx.path, files["tflite-fp32"], files["tflite-fp32-nhwc"], xml,  # type: ignore[arg-type]
        "--atol", "1e-4", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert [r["candidate"] for r in reports] == [
        "model.fp32.tflite",
        "model.fp32-nhwc.tflite",
        "model.xml",
    ]
    assert all(r["passed"] and r["outputs"][0]["max_abs"] < 1e-4 for r in reports)


def test_a_fresh_process_prints_nothing_on_stderr(files: dict[str, Path]) -> None:
    # LiteRT's C++ announces its XNNPACK delegate on fd 2 at the first allocation; the
    # session keeps that line for the debug log, so CLI output stays ours.
    code = (
        "import sys, numpy as np\n"
        "from shipyard.runtimes import open_session\n"
        "from shipyard.sources import load_model\n"
        "artifact = load_model(sys.argv[1])\n"
        "name = artifact.signature.inputs[0].name\n"
        "with open_session(artifact, threads=1) as session:\n"
        "    out = session.run({name: np.zeros((2, 1, 8, 8), np.float32)})\n"
        "print(next(iter(out.values())).shape)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(files["tflite-fp32"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 10)"
    assert "XNNPACK" not in done.stderr and done.stderr.strip() == "", done.stderr
