"""The recommender example: MovieLens-100k read from the recbole wheel, a time-based split,
real training to a held-out AUC, the safetensors cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.metrics import log_loss, roc_auc_score

from tests.conftest import needs_recbole

needs_recbole()

from shipyard.examples import recsys  # noqa: E402  (after the skip: it reads the files)
from shipyard.examples.recsys import data  # noqa: E402

INPUTS = {"user", "item", "gender", "occupation", "dense"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache of this module's own, so that the training below really runs."""
    folder = tmp_path_factory.mktemp("recsys-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHIPYARD_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def first(cache: Path) -> recsys.DLRM:
    assert not recsys.checkpoint_path().exists()
    return recsys.trained()


def test_split_sizes_dtypes_and_id_ranges() -> None:
    (x_train, y_train), (x_val, y_val) = recsys.train(), recsys.validation()
    assert len(y_train) == 80_000 and len(y_val) == 20_000
    for x, y in ((x_train, y_train), (x_val, y_val)):
        assert set(x) == INPUTS
        assert x["dense"].shape == (len(y), data.DENSE) and x["dense"].dtype == np.float32
        for name, high in (("user", 942), ("item", 1681), ("gender", 1), ("occupation", 20)):
            assert x[name].dtype == np.int64 and x[name].shape == (len(y),)
            assert x[name].min() >= 0 and x[name].max() <= high  # the recipe's ranges
        assert y.dtype == np.int64 and set(np.unique(y).tolist()) == {0, 1}
        # genre flags are 0/1 and every movie but one ("unknown") has at least one
        assert set(np.unique(x["dense"][:, 2:]).tolist()) == {0.0, 1.0}
    assert 0.54 < y_train.mean() < 0.58 and 0.54 < y_val.mean() < 0.58  # 4 or 5 stars: ~55%


def test_the_split_is_by_time() -> None:
    """Every held-out rating is at least as late as every training rating (checked against
    the file itself), and most held-out users were never seen in training."""
    inter = data.data_dir() / "ml-100k.inter"
    table = np.loadtxt(inter, skiprows=1, dtype=np.int64, usecols=(0, 1, 3))
    when = {(u - 1, i - 1): t for u, i, t in table}  # ml-100k: one rating per user and item
    (x_train, _), (x_val, _) = recsys.train(), recsys.validation()
    train_times = [when[pair] for pair in zip(x_train["user"], x_train["item"], strict=True)]
    val_times = [when[pair] for pair in zip(x_val["user"], x_val["item"], strict=True)]
    assert max(train_times) <= min(val_times)
    unseen = ~np.isin(x_val["user"], x_train["user"])
    assert 0.8 < unseen.mean() < 0.9  # 85%: users arrive over time and rate in bursts


def test_loaders_return_copies_and_calibration_spans_the_period() -> None:
    x1, y1 = recsys.validation()
    x1["user"][:] = -1
    y1[:] = 7
    x2, y2 = recsys.validation()
    assert x2["user"].min() >= 0 and y2.max() == 1
    x_cal, y_cal = recsys.calibration(100)
    assert len(y_cal) == 100 and set(x_cal) == INPUTS
    x_train, _ = recsys.train()
    np.testing.assert_array_equal(x_cal["item"], x_train["item"][::800][:100])
    for bad in (0, 80_001):
        with pytest.raises(ValueError, match="between 1 and 80000"):
            recsys.calibration(bad)


def test_candidates_are_the_rows_of_one_user_against_several_items() -> None:
    x_val, _ = recsys.validation()
    user = int(x_val["user"][0])
    rows = np.flatnonzero(x_val["user"] == user)[:7]
    request = recsys.candidates(user, x_val["item"][rows])
    for name, array in request.items():
        np.testing.assert_array_equal(array, x_val[name][rows], err_msg=name)
    assert set(request["user"].tolist()) == {user}


def test_trained_model_beats_the_base_rate_on_held_out_ratings(first: recsys.DLRM) -> None:
    """Measured: AUC 0.703, log-loss 0.624 on the 20,000 latest ratings (an item's past
    positive rate alone gives AUC 0.697: 85% of these users were never seen in training)."""
    x_val, y_val = recsys.validation()
    probability = recsys.predict(first, x_val)
    assert probability.shape == (20_000,) and probability.dtype == np.float32
    assert probability.min() > 0.0 and probability.max() < 1.0
    auc = roc_auc_score(y_val, probability)
    assert auc > 0.69, auc
    # a constant at the training base rate scores 0.686; untrained (p = 0.5) 0.693
    base_rate = np.full(len(y_val), recsys.train()[1].mean())
    assert log_loss(y_val, probability) < log_loss(y_val, base_rate) - 0.05
    assert recsys.auc(first, x_val, y_val) == pytest.approx(auc)


def test_checkpoint_is_safetensors_loaded_not_retrained_and_deterministic(
    first: recsys.DLRM, cache: Path
) -> None:
    path = recsys.checkpoint_path()
    assert path.parent == cache and path.name.startswith("recsys-dlrm-")
    with safe_open(str(path), framework="pt") as stored:
        assert stored.metadata() == {"arch_version": str(recsys.ARCH_VERSION)}
        assert "tables.item.weight" in stored.keys()  # noqa: SIM118 (a safe_open handle)
    stamp = path.stat().st_mtime_ns
    again = recsys.trained()
    assert path.stat().st_mtime_ns == stamp  # loaded, not trained and written again
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    path.unlink()  # retrain from scratch: the same seed gives the same weights
    retrained = recsys.trained()
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, retrained.state_dict()[name]), name
    assert recsys.checkpoint_path(seed=1) != path


def test_untrained_model_shapes() -> None:
    model = recsys.build_model()
    assert not model.training
    x, _ = recsys.calibration(5)
    with torch.no_grad():
        out = model(*(torch.from_numpy(x[n]) for n in ("user", "item", "gender", "occupation")),
                    torch.from_numpy(x["dense"]))  # fmt: skip
    assert out.shape == (5,) and out.dtype == torch.float32
