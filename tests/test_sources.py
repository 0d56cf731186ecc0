from __future__ import annotations

import pickle
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file

from shipyard.artifact import Artifact
from shipyard.errors import SourceError
from shipyard.runtimes.onnxruntime import onnx_signature
from shipyard.sources import load_model, model_file, model_files
from tests.conftest import SMALL_SIGNATURE, small_net

INPUTS = SMALL_SIGNATURE.with_outputs(())


def not_a_module() -> str:
    return "I am a string"


class _Boom:
    """Unpickling this would create a marker file: proof that code ran."""

    marker: Path

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_factory_source_infers_outputs() -> None:
    artifact = load_model("tests.conftest:small_net", INPUTS)
    assert artifact.format == "torch"
    assert artifact.signature.outputs[0].shape == ("batch", 10)


def test_source_that_does_not_import() -> None:
    with pytest.raises(SourceError, match="cannot import module 'no_such_pkg.models'"):
        load_model("no_such_pkg.models:build", INPUTS)


def test_missing_attribute_lists_what_exists() -> None:
    with pytest.raises(SourceError, match="has no attribute 'smal_net'.*did you mean 'small_net'"):
        load_model("tests.conftest:smal_net", INPUTS)


def test_factory_returning_non_module() -> None:
    with pytest.raises(
        SourceError,
        match="returned the str .I am a string., neither a torch.nn.Module nor an existing",
    ):
        load_model("tests.test_sources:not_a_module", INPUTS)


def test_factory_refusing_its_kwargs_says_where_to_fix_them() -> None:
    # trained() checks its arguments with ValueError, before any training.
    pattern = r"calling 'shipyard.examples.digits:trained' with kwargs \{'epochs': 0\} failed: "
    with pytest.raises(SourceError, match=pattern + r"ValueError: .*epochs>=1.*--kwargs"):
        load_model("shipyard.examples.digits:trained", INPUTS, kwargs={"epochs": 0})


def test_torch_source_without_signature_says_how_to_give_one() -> None:
    with pytest.raises(SourceError, match="needs an input signature.*--input"):
        load_model("tests.conftest:small_net", None)


def test_state_dict_pt_and_safetensors_load_into_factory(tmp_path: Path) -> None:
    reference = small_net()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(1.0)  # weights differ from the factory's own initialisation
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(2, 1, 8, 8)
    for name in ("w.pt", "w.safetensors"):
        artifact = load_model("tests.conftest:small_net", INPUTS, weights=tmp_path / name)
        assert artifact.module is not None
        torch.testing.assert_close(artifact.module(x), reference(x))


def test_checkpoint_with_nested_state_dict(tmp_path: Path) -> None:
    trained = small_net()
    with torch.no_grad():
        trained.head.bias.add_(1.0)  # not what the factory makes, so loading must show
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    artifact = load_model("tests.conftest:small_net", INPUTS, weights=tmp_path / "ckpt.pt")
    assert artifact.module is not None
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(artifact.module(x), trained(x))


def test_pickled_objects_are_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    boom = _Boom()
    boom.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": boom}, path)
    with pytest.raises(SourceError, match="refused to load .*never unpickles"):
        load_model("tests.conftest:small_net", INPUTS, weights=path)
    assert not marker.exists()
    # A raw (non-zip) pickle is refused the same way.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(boom))
    with pytest.raises(SourceError, match="refused to load"):
        load_model("tests.conftest:small_net", INPUTS, weights=raw)
    assert not marker.exists()


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(SourceError, match="do not fit the model"):
        load_model("tests.conftest:small_net", INPUTS, weights=tmp_path / "w.pt")


def test_state_dict_without_factory_explains(tmp_path: Path) -> None:
    torch.save(small_net().state_dict(), tmp_path / "w.pt")
    with pytest.raises(SourceError, match="holds weights, not an architecture"):
        load_model(str(tmp_path / "w.pt"), INPUTS)


def test_torchscript_and_pt2_files(tmp_path: Path) -> None:
    model = small_net()
    x = torch.randn(2, 1, 8, 8)
    torch.jit.save(torch.jit.trace(model, x), tmp_path / "m.pt")
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "m.pt2")
    for name in ("m.pt", "m.pt2"):
        artifact = load_model(str(tmp_path / name), INPUTS)
        assert artifact.module is not None
        torch.testing.assert_close(artifact.module(x), model(x))


def test_onnx_file_signature_is_read_from_the_graph(small_onnx: Artifact) -> None:
    artifact = load_model(str(small_onnx.path))
    assert artifact.format == "onnx"
    # What export wrote (SMALL_SIGNATURE), read back from the graph alone.
    assert artifact.signature == onnx_signature(small_onnx.path) == SMALL_SIGNATURE


def test_missing_file() -> None:
    with pytest.raises(SourceError, match="neither an existing file"):
        load_model("does/not/exist.pt2")
    with pytest.raises(SourceError, match="model file does/not/exist.onnx does not exist"):
        load_model("does/not/exist.onnx")


@pytest.mark.parametrize(
    ("files", "given", "said"),
    [
        ((), "net.onnx", "model file {dir}/net.onnx does not exist"),
        (("net.pt2",), "net.pt2", "is not a model file Shipyard runs as it is (.onnx, .tflite, "),
        (("net.bin",), "net.bin", "net.bin has no net.xml beside it: an OpenVINO model is the"),
        (("net.xml",), "net.xml", "net.xml has no net.bin beside it: an OpenVINO model needs"),
    ],
)
def test_a_path_that_is_no_model_file_says_why(
    files: tuple[str, ...], given: str, said: str, tmp_path: Path
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(SourceError) as error:
        model_file(tmp_path / given)
    assert said.format(dir=tmp_path) in str(error.value)


def test_the_bin_of_an_openvino_model_means_its_xml(tmp_path: Path) -> None:
    (tmp_path / "net.xml").write_text("<net/>")
    (tmp_path / "net.bin").write_bytes(b"")
    assert model_file(tmp_path / "net.bin") == tmp_path / "net.xml"
    assert model_files(tmp_path / "net.xml") == [tmp_path / "net.xml", tmp_path / "net.bin"]


def test_external_data_outside_the_models_folder_is_refused(
    small_onnx: Artifact, tmp_path: Path
) -> None:
    """An ONNX file names its external data files: one outside its folder would not travel."""
    assert small_onnx.path is not None
    model = onnx.load(str(small_onnx.path))
    (tmp_path / "model").mkdir()
    onnx.save_model(model, str(tmp_path / "model" / "net.onnx"), save_as_external_data=True,
                    location="net.bin", size_threshold=256)  # fmt: skip
    assert model_files(tmp_path / "model" / "net.onnx")[1:] == [tmp_path / "model" / "net.bin"]
    moved = onnx.load(str(tmp_path / "model" / "net.onnx"), load_external_data=False)
    for tensor in moved.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../net.bin"
    (tmp_path / "model" / "moved.onnx").write_bytes(moved.SerializeToString())
    with pytest.raises(SourceError, match="keeps external data at '../net.bin', outside its own"):
        model_files(tmp_path / "model" / "moved.onnx")
