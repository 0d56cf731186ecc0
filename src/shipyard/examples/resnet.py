"""ResNet-18 without torchvision, in torchvision's exact module layout.

``resnet18()`` has the same ``state_dict()`` keys, shapes and parameter count (11,689,512 for
1000 classes) as ``torchvision.models.resnet18()``, so torchvision checkpoints load into it
directly, and it exports with ``torch.onnx.export(dynamo=True)`` with a dynamic batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias, used to project the shortcut when shapes change."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual shortcut (torchvision's ``BasicBlock``).

    ``downsample`` (a ``Sequential(conv1x1, BatchNorm2d)`` or None) maps the input onto the
    output's shape when ``stride`` or the channel count changes.
    """

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, same layout as the input."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ``ResNet`` for ``BasicBlock`` stacks (ResNet-18/34 style).

    ``layers`` gives the number of blocks in layer1..layer4. Input float32 ``(N, 3, H, W)`` with
    H, W of at least 32 (the adaptive pool accepts any size); output ``(N, num_classes)`` logits.
    """

    def __init__(
        self,
        block: type[BasicBlock],
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must list 4 block counts, got {layers!r}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        # The same initialisation as torchvision, so an untrained model behaves like theirs.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:
            # Each block then starts as the identity, which helps some training recipes.
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.constant_(module.bn2.weight, 0)

    def _make_layer(
        self, block: type[BasicBlock], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        """``blocks`` blocks; the first one strides and projects the shortcut when needed."""
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, 3, H, W)`` images to ``(N, num_classes)`` logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """An untrained ResNet-18 in eval mode; ``num_classes`` sets the size of ``fc``.

    With the default 1000 classes it has 11,689,512 parameters, like torchvision's.
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes).eval()


def calibration_images(n: int = 32, seed: int = 1) -> np.ndarray:
    """``n`` seeded standard-normal 224x224 RGB images (NCHW), for int8 calibration.

    No image data set ships offline; the example's weights are random too, so random images
    exercise the same activation ranges the validation inputs will (validation draws its
    own, with another seed).
    """
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 224, 224)).astype(np.float32)
