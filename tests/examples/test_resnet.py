"""ResNet-18 without torchvision: torchvision's exact state_dict layout and parameter count."""

from __future__ import annotations

import torch

from shipyard.examples.resnet import resnet18


def test_parameter_count_matches_torchvision() -> None:
    model = resnet18()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert not model.training


def test_output_shape() -> None:
    model = resnet18()
    with torch.no_grad():
        # The adaptive average pool accepts any input size; 64x64 keeps the test fast.
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000)


def test_num_classes() -> None:
    model = resnet18(num_classes=10)
    assert model.fc.weight.shape == (10, 512)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_state_dict_layout() -> None:
    state = resnet18().state_dict()
    keys = list(state)
    # 20 convs + 20 BatchNorms (weight, bias, running_mean, running_var, num_batches_tracked)
    # + fc weight and bias, as torchvision.models.resnet18().
    assert len(keys) == 20 + 20 * 5 + 2
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert "layer4.1.bn2.running_var" in keys
    assert "layer1.0.downsample.0.weight" not in keys
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer2.0.downsample.1.running_mean"].shape == (128,)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert state["fc.weight"].shape == (1000, 512)
