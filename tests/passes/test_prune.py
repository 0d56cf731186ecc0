"""The prune pass on real models: the seed's l1_unstructured, Torch-Pruning's structured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.errors import PruneError
from shipyard.examples import digits as digits_data
from shipyard.examples.digits import DigitsCNN
from shipyard.examples.resnet import resnet18
from shipyard.passes.context import PassContext
from shipyard.passes.export import export_onnx
from shipyard.passes.prune import PruneConfig, prune_module, run_prune
from shipyard.runtimes import open_session
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import torch_artifact

RESNET_SIG = Signature(inputs=(TensorSpec(name="x", shape=("batch", 3, 64, 64)),))
DIGITS_SIG = Signature(inputs=(TensorSpec(name="x", shape=("batch", 1, 8, 8)),))
SEED = PruneConfig(method="l1_unstructured", amount=0.2)


def _seeded(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = factory()
    return module.eval()


def _net(artifact: Artifact) -> Any:
    """The artifact's module, typed loosely so tests can reach its layers by attribute."""
    assert artifact.module is not None
    return artifact.module


def _zeros(tensor: Any) -> int:
    return int((tensor == 0).sum())


@pytest.fixture(scope="module")
def resnet() -> Artifact:
    return torch_artifact(_seeded(resnet18), RESNET_SIG)


@pytest.fixture
def digits() -> Artifact:
    return torch_artifact(_seeded(DigitsCNN), DIGITS_SIG)


def _context(tmp_path: Path, reference: Artifact) -> PassContext:
    return PassContext(workdir=tmp_path, reference=reference, data={})


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_seed_sparsity(model: nn.Module, amount: float) -> int:
    """Every Conv2d has ``amount`` zeros (±1 element) and no pruning re-parametrization."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        zeros = int((conv.weight == 0).sum())
        assert abs(zeros - amount * conv.weight.numel()) <= 1
        assert isinstance(conv.weight, nn.Parameter)
        assert not hasattr(conv, "weight_orig") and not hasattr(conv, "weight_mask")
        assert not conv._forward_pre_hooks
    return len(convs)


def test_l1_unstructured_is_the_seed_example_on_resnet18(resnet: Artifact, tmp_path: Path) -> None:
    before = _state(_net(resnet))
    pruned = run_prune(resnet, SEED, _context(tmp_path, resnet))
    model = _net(pruned)
    assert model is not resnet.module
    assert _assert_seed_sparsity(model, 0.2) == 20
    assert list(model.state_dict()) == list(before)  # same keys, same order
    assert _zeros(model.fc.weight) == 0  # only Conv2d, as configured
    for key, value in _net(resnet).state_dict().items():  # the input is untouched
        assert torch.equal(value, before[key])
    notes = pruned.provenance[-1].notes
    assert pruned.provenance[-1].name == "prune" and pruned.name == "torch-pruned"
    assert pruned.signature == resnet.signature and pruned.format == "torch"
    assert notes["sparsity"] == {"Conv2d": pytest.approx(0.2, abs=1e-4)}
    assert 0.18 < notes["sparsity_all_parameters"] < 0.2  # fc and BN are not pruned
    # Honest: the dense size does not move, only the compressed size does.
    assert notes["dense_bytes_after"] == notes["dense_bytes_before"]
    assert notes["compressed_bytes_after"] < 0.95 * notes["compressed_bytes_before"]
    assert "does not shrink the ONNX file nor the latency" in notes["note"]


def test_l1_unstructured_on_the_digits_cnn_with_plain_function(digits: Artifact) -> None:
    original = _net(digits)
    model: Any
    model, notes = prune_module(original, SEED, [torch.zeros(1, 1, 8, 8)])
    assert _assert_seed_sparsity(model, 0.2) == 3
    assert _zeros(model.fc.weight) == 0  # only Conv2d, as configured
    assert list(model.state_dict()) == list(original.state_dict())
    assert notes["sparsity_pruned_layers"] == pytest.approx(0.2, abs=1e-3)
    assert not any(_zeros(m.weight) for m in original.modules() if hasattr(m, "weight"))


def test_structured_resnet18_keeps_residuals_consistent_and_exports(
    resnet: Artifact, tmp_path: Path
) -> None:
    config = PruneConfig(method="structured", amount=0.3, allow_without_finetune=True)
    pruned = run_prune(resnet, config, _context(tmp_path, resnet))
    model = _net(pruned)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
    # Each block's output must match its shortcut, or the addition would fail.
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            shortcut = (
                block.downsample[0].out_channels if block.downsample else block.conv1.in_channels
            )
            assert block.conv2.out_channels == shortcut == block.bn2.num_features
    assert model.layer1[0].conv1.in_channels == model.conv1.out_channels < 64
    assert model.fc.out_features == 1000  # the classifier is kept whole
    notes = pruned.provenance[-1].notes
    assert notes["kept_whole"] == ["fc"]
    assert notes["params_after"] < 0.6 * notes["params_before"] == 0.6 * 11_689_512
    assert notes["macs_after"] < notes["macs_before"]
    assert not [key for key in notes if "latency" in key or "speedup" in key]  # bench's job
    assert sum(p.numel() for p in _net(resnet).parameters()) == 11_689_512  # input untouched

    exported = export_onnx(pruned, tmp_path / "pruned.onnx")
    feeds = {"x": x.numpy()}
    ours = open_session(pruned, threads=1).run(feeds)
    theirs = open_session(exported, threads=1).run(feeds)
    for key_a, key_b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(theirs[key_b], ours[key_a], atol=1e-3, rtol=1e-3)


def test_amount_outside_zero_one_is_rejected() -> None:
    with pytest.raises(ValidationError, match="less than 1"):
        PruneConfig(method="l1_unstructured", amount=1.5)
    with pytest.raises(ValidationError, match="greater than 0"):
        PruneConfig(method="structured", target_macs=0.0)
    with pytest.raises(ValidationError, match="exactly one of `amount`"):
        PruneConfig(method="structured", amount=0.3, target_macs=0.5)
    with pytest.raises(ValidationError, match="not target_macs"):
        PruneConfig(method="l1_unstructured", target_macs=0.5)
    with pytest.raises(ValidationError, match="did you mean Conv2d"):
        PruneConfig(method="l1_unstructured", amount=0.2, layers=["Conv2D"])
    with pytest.raises(ValidationError, match="extra"):
        PruneConfig.model_validate({"method": "structured", "amount": 0.2, "ratio": 0.5})


def test_ignore_typo_names_the_closest_layers(resnet: Artifact, tmp_path: Path) -> None:
    config = PruneConfig(method="l1_unstructured", amount=0.2, ignore=["layer1.0.cnov1"])
    with pytest.raises(PruneError, match=r"no module named 'layer1.0.cnov1'.*layer1\.0\.conv1"):
        run_prune(resnet, config, _context(tmp_path, resnet))


def test_ignore_keeps_a_layer_dense(digits: Artifact, tmp_path: Path) -> None:
    config = PruneConfig(method="l1_unstructured", amount=0.5, ignore=["features.0"])
    model = _net(run_prune(digits, config, _context(tmp_path, digits)))
    assert _zeros(model.features[0].weight) == 0
    assert _zeros(model.features[4].weight) > 0


def test_structured_half_without_training_data_is_refused(digits: Artifact, tmp_path: Path) -> None:
    config = PruneConfig(method="structured", target_macs=0.5)
    with pytest.raises(PruneError) as caught:
        run_prune(digits, config, _context(tmp_path, digits))
    message = str(caught.value)
    for part in ("50% of the MACs without training data", "43%", "data: train:", "finetune"):
        assert part in message
    assert "allow_without_finetune: true" in message and "--no-finetune" in message
    # 10% or less is allowed without training data, and so is anything once allowed.
    small = run_prune(
        digits, PruneConfig(method="structured", amount=0.1), _context(tmp_path, digits)
    )
    assert small.provenance[-1].notes["params_after"] < small.provenance[-1].notes["params_before"]


def test_taylor_without_training_data_says_why(digits: Artifact, tmp_path: Path) -> None:
    config = PruneConfig(
        method="structured", amount=0.3, importance="taylor", allow_without_finetune=True
    )
    with pytest.raises(PruneError, match="taylor needs training data"):
        run_prune(digits, config, _context(tmp_path, digits))


class HardCodedView(nn.Module):
    """Flattens with a constant channel count: Torch-Pruning cannot see through it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.shape[0], 16 * 64))


def test_untraceable_model_names_the_layer_and_suggests_ignore(tmp_path: Path) -> None:
    artifact = torch_artifact(_seeded(HardCodedView), DIGITS_SIG)
    config = PruneConfig(method="structured", amount=0.5, allow_without_finetune=True)
    with pytest.raises(PruneError, match=r"after 'conv' ran.*ignore: \['conv'\]"):
        run_prune(artifact, config, _context(tmp_path, artifact))
    kept = config.model_copy(update={"ignore": ["conv"]})
    assert run_prune(artifact, kept, _context(tmp_path, artifact)).module is not None


def test_structured_needs_python_code_and_a_torch_artifact(
    digits: Artifact, tmp_path: Path
) -> None:
    scripted = torch_artifact(torch.jit.script(_net(digits)), DIGITS_SIG)
    config = PruneConfig(method="structured", amount=0.3, allow_without_finetune=True)
    with pytest.raises(PruneError, match="TorchScript"):
        run_prune(scripted, config, _context(tmp_path, scripted))
    onnx = Artifact("onnx", "onnx", DIGITS_SIG, path=tmp_path / "m.onnx")
    with pytest.raises(PruneError, match="before export"):
        run_prune(onnx, config, _context(tmp_path, digits))


def test_taylor_importance_uses_training_gradients(digits: Artifact, tmp_path: Path) -> None:
    x, y = digits_data.train()
    context = PassContext(tmp_path, digits, data={"train": Dataset({"x": x}, y)})
    config = PruneConfig(method="structured", amount=0.3, importance="taylor")
    model = _net(run_prune(digits, config, context))
    assert model.features[0].out_channels < 32 and model.fc.out_features == 10
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    assert all(p.grad is None for p in _net(digits).parameters())


class WithFeatures(nn.Module):
    """Returns its pooled features beside the logits: pruning would change their width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x).mean(dim=(2, 3))
        return self.fc(features), features


def test_changed_output_shapes_are_refused(tmp_path: Path) -> None:
    artifact = torch_artifact(_seeded(WithFeatures), DIGITS_SIG)
    config = PruneConfig(method="structured", amount=0.5, allow_without_finetune=True)
    with pytest.raises(PruneError, match=r"changed the output shapes .*\(1, 16\).*\(1, 8\)"):
        run_prune(artifact, config, _context(tmp_path, artifact))
