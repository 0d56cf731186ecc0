"""The digits example: fixed data split, real training to the accuracy gate, safetensors cache."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from shipyard.examples import digits
from shipyard.examples.digits import model as digits_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache folder for the whole module, so the real training runs only once."""
    folder = tmp_path_factory.mktemp("shipyard-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIPYARD_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def first(cache: Path) -> digits.DigitsCNN:
    """The model trained from scratch with the default hyper-parameters."""
    assert not digits.checkpoint_path().exists()
    return digits.trained()


def test_split_sizes_dtypes_and_range() -> None:
    (x_train, y_train), (x_val, y_val) = digits.train(), digits.validation()
    assert x_train.shape == (1347, 1, 8, 8) and y_train.shape == (1347,)
    assert x_val.shape == (450, 1, 8, 8) and y_val.shape == (450,)
    for x, y in ((x_train, y_train), (x_val, y_val)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.min() >= 0.0 and x.max() <= 1.0
        # Stratified: every class appears in both parts.
        assert set(np.unique(y).tolist()) == set(range(10))
    assert x_train.max() == 1.0  # divided by 16, not by the batch's own maximum


def test_split_is_deterministic_and_returns_copies() -> None:
    x1, y1 = digits.validation()
    x1[:] = -1.0
    y1[:] = -1
    x2, y2 = digits.validation()
    assert x2.min() >= 0.0 and y2.min() >= 0  # the cache was not corrupted by the caller
    np.testing.assert_array_equal(digits.train()[1], digits.train()[1])


def test_calibration_is_the_first_training_images() -> None:
    x_cal, y_cal = digits.calibration()
    x_train, y_train = digits.train()
    assert x_cal.shape == (256, 1, 8, 8) and x_cal.dtype == np.float32
    np.testing.assert_array_equal(x_cal, x_train[:256])
    np.testing.assert_array_equal(y_cal, y_train[:256])
    assert digits.calibration(16)[0].shape == (16, 1, 8, 8)
    for bad in (0, 1348):
        with pytest.raises(ValueError, match="between 1 and 1347"):
            digits.calibration(bad)


def test_untrained_model_shapes_and_size() -> None:
    model = digits.build_model()
    assert not model.training
    assert 90_000 <= sum(p.numel() for p in model.parameters()) <= 100_000
    with torch.no_grad():
        out = model(torch.zeros(5, 1, 8, 8))
    assert out.shape == (5, 10) and out.dtype == torch.float32


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SHIPYARD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert digits.cache_dir() == tmp_path / "xdg" / "shipyard"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert digits.cache_dir() == tmp_path / "home" / ".cache" / "shipyard"
    monkeypatch.setenv("SHIPYARD_CACHE_DIR", str(tmp_path / "explicit"))
    assert digits.cache_dir() == tmp_path / "explicit"


def test_checkpoint_name_depends_on_every_hyper_parameter(cache: Path) -> None:
    default = digits.checkpoint_path()
    assert default.parent == cache
    assert default.name.startswith("digits-cnn-") and default.suffix == ".safetensors"
    changed = [
        digits.checkpoint_path(epochs=31),
        digits.checkpoint_path(seed=1),
        digits.checkpoint_path(lr=1e-3),
        digits.checkpoint_path(batch_size=32),
    ]
    assert len({default, *changed}) == 5


def test_trained_reaches_the_accuracy_gate(first: digits.DigitsCNN) -> None:
    assert not first.training
    x_val, y_val = digits.validation()
    assert digits.accuracy(first, x_val, y_val) >= 0.95


def test_checkpoint_is_safetensors(first: digits.DigitsCNN) -> None:
    path = digits.checkpoint_path()
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temporary behind
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == set(first.state_dict())


def test_second_call_loads_the_cache(
    first: digits.DigitsCNN, caplog: pytest.LogCaptureFixture
) -> None:
    path = digits.checkpoint_path()
    written = path.stat().st_mtime_ns
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="shipyard.examples.digits"):
        second = digits.trained()
    assert torch.equal(torch.get_rng_state(), rng_before)  # loading leaves the caller's RNG
    assert second is not first and not second.training
    assert path.stat().st_mtime_ns == written
    assert not [r for r in caplog.records if "trained" in r.getMessage()]  # no retraining
    expected, loaded = first.state_dict(), second.state_dict()
    assert list(loaded) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_unreadable_checkpoint_is_retrained(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = digits.checkpoint_path(epochs=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a safetensors file")
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="shipyard.examples.digits"):
        model = digits.trained(epochs=1)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    messages = [r.getMessage() for r in caplog.records if r.name == digits_model.logger.name]
    assert any("unreadable" in m for m in messages)
    assert any("held-out accuracy" in m for m in messages)
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == set(model.state_dict())


def test_training_is_reproducible(first: digits.DigitsCNN, digits_model: torch.nn.Module) -> None:
    """Two trainings with the same hyper-parameters (separate caches) give identical weights."""
    theirs = digits_model.state_dict()
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
