"""Shared fixtures: small real models, their artifacts, and the trained digits CNN."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.passes.export import export_onnx
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import torch_artifact

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test run trains the digits CNN into its own cache, never the user's."""
    cache = tmp_path_factory.mktemp("shipyard-cache")
    previous = os.environ.get("SHIPYARD_CACHE_DIR")
    os.environ["SHIPYARD_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("SHIPYARD_CACHE_DIR", None)
    else:
        os.environ["SHIPYARD_CACHE_DIR"] = previous


class SmallNet(torch.nn.Module):
    """Conv + BN + pooling + linear: the layer kinds real CNNs export."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def small_net() -> SmallNet:
    """Factory used by tests as 'tests.conftest:small_net'."""
    torch.manual_seed(0)
    return SmallNet().eval()


def small_calibration() -> np.ndarray:
    """Data source used by tests as 'tests.conftest:small_calibration' (64 random images)."""
    return np.random.default_rng(1).standard_normal((64, 1, 8, 8)).astype(np.float32)


SMALL_SIGNATURE = Signature(
    inputs=(TensorSpec(name="x", dtype="float32", shape=("batch", 1, 8, 8)),),
    outputs=(TensorSpec(name="logits", dtype="float32", shape=("batch", 10)),),
)


@pytest.fixture
def small_torch() -> Artifact:
    return torch_artifact(small_net(), SMALL_SIGNATURE)


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    torch_side = torch_artifact(small_net(), SMALL_SIGNATURE)
    return export_onnx(torch_side, tmp_path_factory.mktemp("small") / "small.onnx")


@pytest.fixture(scope="session")
def digits_model(_isolated_cache: Path) -> torch.nn.Module:
    from shipyard.examples.digits import trained

    return trained()


DIGITS_SIGNATURE = Signature(inputs=(TensorSpec(name="x", shape=("batch", 1, 8, 8)),))


@pytest.fixture(scope="session")
def digits_torch(digits_model: torch.nn.Module) -> Artifact:
    """The trained digits CNN as a torch artifact (outputs inferred)."""
    return torch_artifact(digits_model, DIGITS_SIGNATURE)


@pytest.fixture(scope="session")
def digits_onnx(digits_torch: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    """The trained digits CNN exported once per test run."""
    return export_onnx(digits_torch, tmp_path_factory.mktemp("digits") / "model.onnx")


@pytest.fixture(scope="session")
def held_out() -> Dataset:
    """The 450 real held-out digits with labels."""
    from shipyard.examples.digits import validation

    x, y = validation()
    return Dataset({"x": x}, y)


RECSYS_RECIPE = REPO / "examples" / "recsys" / "recipe.yaml"


def needs_recbole() -> None:
    """Skip, saying how to install it, where the MovieLens-100k files are not installed."""
    import importlib.util

    if importlib.util.find_spec("recbole") is None:
        reason = "MovieLens-100k comes from the recbole wheel: pip install --no-deps recbole"
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def recsys_torch(_isolated_cache: Path) -> Artifact:
    """The trained MovieLens DLRM (trained once per test run) with the recipe's signature."""
    needs_recbole()
    from shipyard.examples.recsys import trained
    from shipyard.recipe import load_recipe

    return torch_artifact(trained(), load_recipe(RECSYS_RECIPE).signature)


@pytest.fixture(scope="session")
def recsys_onnx(recsys_torch: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return export_onnx(recsys_torch, tmp_path_factory.mktemp("recsys") / "model.onnx")


@pytest.fixture(scope="session")
def recsys_held_out() -> Dataset:
    """The 20,000 latest MovieLens ratings (the time split's held-out part), with labels."""
    needs_recbole()
    from shipyard.examples.recsys import validation

    return Dataset(*validation())
