from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from shipyard.artifact import Artifact
from shipyard.errors import SourceError
from shipyard.runtimes.onnxruntime import onnx_signature
from shipyard.sources import load_model
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
    with pytest.raises(SourceError, match="returned a str, not a torch.nn.Module"):
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
        load_model("does/not/exist.onnx")
