"""Factories for the serving tests' packages (recipes name them as ``tests.serve.models:...``)."""

from __future__ import annotations

import torch

from tests.conftest import SmallNet, small_net


class Shifted(torch.nn.Module):
    """``small_net`` plus a constant: a second version whose answers differ from the first."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.net = small_net()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.shift


def shifted_net(shift: float = 1.0) -> Shifted:
    return Shifted(shift).eval()


class Slow(torch.nn.Module):
    """Same signature as SmallNet, but tens of milliseconds per call: upsampled convolutions."""

    def __init__(self, width: int, layers: int, scale: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Upsample(scale_factor=scale)
        convs = [torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU()]
        for _ in range(layers):
            convs += [torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU()]
        self.body = torch.nn.Sequential(*convs)
        self.head = SmallNet().head if width == 8 else torch.nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.up(x)).mean(dim=(2, 3)))


def slow_net(width: int = 32, layers: int = 8, scale: int = 16) -> Slow:
    return Slow(width, layers, scale).eval()


class RowMean(torch.nn.Module):
    """``x: [batch, seq]`` -> ``[batch, 2]`` (mean and max over seq): a dynamic non-batch dim."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)


def row_mean() -> RowMean:
    return RowMean().eval()


class EmbeddingBag(torch.nn.Module):
    """``ids: int64[batch, seq]`` in [0, 9] -> ``[batch, 4]``: an embedding table, as a
    recommender's, whose ids must stay in range."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).mean(dim=1)


def embedding_bag() -> EmbeddingBag:
    return EmbeddingBag().eval()
