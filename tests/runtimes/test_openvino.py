"""The OpenVINO Session with the real OpenVINO: shapes, names, settings, missing extra, bench."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from shipyard.artifact import Artifact
from shipyard.bench import bench
from shipyard.errors import BackendError, InputError
from shipyard.passes.convert_openvino import OpenVinoConfig, convert_openvino
from shipyard.runtimes import open_session
from shipyard.runtimes.openvino import OpenVinoSession
from shipyard.signature import TensorSpec

pytestmark = pytest.mark.skipif(find_spec("openvino") is None, reason="needs the 'openvino' extra")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_ov(small_onnx: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return convert_openvino(small_onnx, tmp_path_factory.mktemp("ov") / "small.xml")


def _reference(small_onnx: Artifact, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with open_session(small_onnx, threads=1) as session:
        return session.run(feeds)["logits"]


@pytest.mark.parametrize("batch", [1, 5, 17])
def test_dynamic_batch_matches_onnxruntime(
    batch: int, small_onnx: Artifact, small_ov: Artifact
) -> None:
    feeds = small_onnx.signature.example_inputs(batch=batch, seed=batch)
    with open_session(small_ov, threads=1) as session:
        assert isinstance(session, OpenVinoSession) and session.backend == "openvino"
        outputs = session.run(feeds)
    assert list(outputs) == ["logits"]
    assert outputs["logits"].shape == (batch, 10) and outputs["logits"].dtype == np.float32
    np.testing.assert_allclose(outputs["logits"], _reference(small_onnx, feeds), atol=1e-5)


def test_inputs_are_checked_before_running(small_ov: Artifact) -> None:
    session = open_session(small_ov, threads=1)
    with pytest.raises(InputError, match="dimension 1 must be 1, got 3"):
        session.run({"x": np.zeros((2, 3, 8, 8), np.float32)})
    with pytest.raises(InputError, match="dtype float64, expected float32"):
        session.run({"x": np.zeros((2, 1, 8, 8))})
    with pytest.raises(InputError, match="missing input"):
        session.run({})
    with pytest.raises(InputError, match="unknown output"):
        session.run({"x": np.zeros((2, 1, 8, 8), np.float32)}, outputs=["probs"])


def test_outputs_belong_to_the_caller(small_onnx: Artifact, small_ov: Artifact) -> None:
    """The request reuses its buffers: earlier results must not change on the next run."""
    a, b = (small_onnx.signature.example_inputs(batch=3, seed=s) for s in (1, 2))
    session = open_session(small_ov, threads=1)
    first = session.run(a)["logits"]
    kept = first.copy()
    session.run(b)
    np.testing.assert_array_equal(first, kept)
    # A non-contiguous input (Fortran order) gives the same answer as a contiguous one.
    fortran = {"x": np.asfortranarray(a["x"])}
    np.testing.assert_allclose(session.run(fortran)["logits"], kept, atol=1e-6)


def test_concurrent_callers_are_serialized(small_onnx: Artifact, small_ov: Artifact) -> None:
    session = open_session(small_ov, threads=1)
    feeds = [small_onnx.signature.example_inputs(batch=2 + i, seed=i) for i in range(4)]
    expected = [session.run(f)["logits"] for f in feeds]
    errors: list[str] = []

    def worker() -> None:
        for _ in range(25):
            for f, want in zip(feeds, expected, strict=True):
                if not np.array_equal(session.run(f)["logits"], want):
                    errors.append("wrong result")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_settings_are_explicit(small_ov: Artifact) -> None:
    session = open_session(small_ov, threads=1)
    assert session.threads == 1
    assert session.config == {  # type: ignore[attr-defined]
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": 1,
    }
    throughput = open_session(small_ov, threads=2, hint="throughput")
    # its streams share the threads; one inference runs on one stream
    streams = throughput.streams  # type: ignore[attr-defined]
    assert streams >= 1 and throughput.threads >= 1 and throughput.threads * streams <= 2
    assert throughput.config["PERFORMANCE_HINT"] == "THROUGHPUT"  # type: ignore[attr-defined]
    assert "NUM_STREAMS" not in throughput.config  # type: ignore[attr-defined]
    assert open_session(small_ov).threads >= 1  # OpenVINO's own default, as it reports it


def test_only_the_cpu_is_supported(small_ov: Artifact) -> None:
    with pytest.raises(BackendError, match=r"device 'gpu'.* sees \['CPU'"):
        open_session(small_ov, device="gpu")
    with pytest.raises(BackendError, match="unknown hint"):
        open_session(small_ov, hint="fast")


def test_outputs_map_by_position_when_names_differ(
    small_onnx: Artifact, small_ov: Artifact
) -> None:
    """The signature is the contract: an IR whose output has another name still answers."""
    renamed = small_ov.signature.with_outputs([TensorSpec(name="scores", shape=("batch", 10))])
    artifact = Artifact("ov", "openvino", renamed, path=small_ov.path)
    feeds = small_onnx.signature.example_inputs(batch=2)
    outputs = open_session(artifact, threads=1).run(feeds)
    assert list(outputs) == ["scores"]
    np.testing.assert_allclose(outputs["scores"], _reference(small_onnx, feeds), atol=1e-5)
    too_many = small_ov.signature.with_outputs([*small_ov.signature.outputs] * 2)
    with pytest.raises(BackendError, match="has 1 outputs but the signature names 2"):
        open_session(Artifact("ov", "openvino", too_many, path=small_ov.path))


def test_a_broken_ir_is_a_backend_error(small_ov: Artifact, tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<net>", encoding="utf-8")
    with pytest.raises(BackendError, match="OpenVINO cannot load"):
        open_session(Artifact("ov", "openvino", small_ov.signature, path=broken))


def test_missing_extra_names_the_extra(small_ov: Artifact, tmp_path: Path) -> None:
    """A real interpreter in which ``import openvino`` fails, as without the package."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["openvino"] = None  # makes `import openvino` raise ImportError
        import shipyard, shipyard.runtimes, shipyard.passes.convert_openvino as co
        from shipyard.artifact import Artifact
        from shipyard.errors import MissingExtraError
        from shipyard.runtimes import open_session
        from shipyard.signature import Signature
        signature = Signature.model_validate_json({small_ov.signature.model_dump_json()!r})
        artifact = Artifact("ov", "openvino", signature, path={str(small_ov.path)!r})
        target = {str(tmp_path / "m.xml")!r}
        for attempt in (open_session, lambda a: co.convert_openvino(a, target)):
            try:
                attempt(artifact)
            except MissingExtraError as error:
                print(error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    message = (
        "OpenVINO target needs the 'openvino' extra: pip install 'shipyard[openvino]' "
        "(could not import 'openvino')"
    )
    assert done.stdout.splitlines() == [message, message]
    assert list(tmp_path.iterdir()) == []


def test_bench_runs_openvino_beside_onnxruntime(
    small_onnx: Artifact, small_ov: Artifact, tmp_path: Path
) -> None:
    fp16 = convert_openvino(small_ov, tmp_path / "small-fp16.xml", OpenVinoConfig(precision="fp16"))
    report = bench([small_onnx, small_ov, fp16], batch_sizes=(1, 4), warmup=1, runs=5)
    assert [(r.name, r.backend, r.threads) for r in report.results] == [
        ("onnx", "onnxruntime", 1),
        ("openvino-fp32", "openvino", 1),
        ("openvino-fp16", "openvino", 1),
    ]
    assert all(r.at(4).p50_ms > 0 for r in report.results)
    assert report.get("openvino-fp32").file_bytes == small_ov.size_bytes
