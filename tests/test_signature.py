from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from shipyard.errors import InputError
from shipyard.signature import Signature, TensorSpec

SIG = Signature(
    inputs=(
        TensorSpec(name="ids", dtype="int64", shape=("batch", "seq")),
        TensorSpec(name="mask", dtype="int64", shape=("batch", "seq")),
    )
)


def test_example_inputs_follow_the_signature() -> None:
    feeds = SIG.example_inputs(batch=3)
    assert feeds["ids"].shape == (3, 3) and feeds["ids"].dtype == np.int64
    SIG.check_inputs(feeds)


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"ids": np.zeros((2, 4), np.int64)}, "missing input(s) ['mask']"),
        (
            {"ids": np.zeros((2, 4), np.int32), "mask": np.zeros((2, 4), np.int64)},
            "input 'ids' has dtype int32, expected int64",
        ),
        ({"ids": np.zeros((2,), np.int64), "mask": np.zeros((2, 4), np.int64)}, "expected 2 dims"),
        (
            {"ids": np.zeros((2, 4), np.int64), "mask": np.zeros((3, 4), np.int64)},
            "dynamic dimension 'batch' is 2 in input 'ids' but 3 in input 'mask'",
        ),
        (
            {
                "ids": np.zeros((2, 4), np.int64),
                "mask": np.zeros((2, 4), np.int64),
                "extra": np.zeros(1),
            },
            "unknown input(s) ['extra']",
        ),
    ],
)
def test_check_inputs_names_the_problem(feeds: dict, message: str) -> None:
    with pytest.raises(InputError) as error:
        SIG.check_inputs(feeds)
    assert message in str(error.value)


def test_fixed_dimension_mismatch_names_axis() -> None:
    sig = Signature(inputs=(TensorSpec(name="x", shape=("batch", 3, 8, 8)),))
    with pytest.raises(InputError, match="dimension 1 must be 3, got 1"):
        sig.check_inputs({"x": np.zeros((2, 1, 8, 8), np.float32)})


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown dtype"):
        TensorSpec(name="x", dtype="float", shape=(1,))
    with pytest.raises(ValidationError, match=">= 1"):
        TensorSpec(name="x", shape=(0,))
    with pytest.raises(ValidationError, match="unique"):
        Signature(inputs=(TensorSpec(name="x", shape=(1,)), TensorSpec(name="x", shape=(1,))))
    with pytest.raises(ValidationError, match="needs a 4-dimensional shape"):
        TensorSpec(name="x", shape=("batch", 8), layout="NHWC")


def test_nhwc_spec_transposes_channels_first_data_and_back() -> None:
    spec = TensorSpec(name="x", shape=("batch", 8, 8, 3), layout="NHWC")
    nchw = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    nhwc = spec.from_channels_first(nchw)
    assert nhwc.shape == (2, 8, 8, 3) and nhwc.flags.c_contiguous
    assert nhwc[1, 4, 5, 2] == nchw[1, 2, 4, 5]
    np.testing.assert_array_equal(spec.to_channels_first(nhwc), nchw)
    plain = TensorSpec(name="x", shape=("batch", 3, 8, 8))
    assert plain.from_channels_first(nchw) is nchw
    assert spec.describe() == "x: float32[batch, 8, 8, 3] NHWC"


def test_finite_inputs_refuse_nan_and_inf_naming_the_input() -> None:
    spec = TensorSpec(name="x", shape=("batch", 4), finite=True)
    signature = Signature(inputs=(spec,))
    signature.check_inputs({"x": np.zeros((2, 4), np.float32)})
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros((2, 4), np.float32)
        x[1, 2] = bad
        with pytest.raises(InputError, match=r"input 'x' holds 1 NaN or Inf .* flat index 6"):
            signature.check_inputs({"x": x})
    # Without finite: true the model decides what NaN means.
    lenient = Signature(inputs=(spec.model_copy(update={"finite": False}),))
    lenient.check_inputs({"x": np.full((1, 4), np.nan, np.float32)})
    with pytest.raises(ValueError, match="finite: true applies to float inputs"):
        TensorSpec(name="ids", dtype="int64", shape=("batch", 4), finite=True)


def test_integer_ranges_are_checked_and_named() -> None:
    signature = Signature(
        inputs=(
            TensorSpec(name="user", dtype="int64", shape=("batch",), range=(0, 942)),
            TensorSpec(name="age", dtype="float32", shape=("batch", 1)),
        )
    )
    feeds = signature.example_inputs(batch=64, seed=3)
    assert feeds["user"].min() >= 0 and feeds["user"].max() <= 942
    assert feeds["user"].max() > 99  # drawn from the range, not [0, 100)
    signature.check_inputs(feeds)
    feeds["user"][5] = 943
    with pytest.raises(
        InputError,
        match=r"input 'user' holds 1 value\(s\) outside its range "
        r"\[0, 942\] \(the first at flat index 5: 943\)",
    ):
        signature.check_inputs(feeds)
    feeds["user"][5] = -1
    with pytest.raises(InputError, match="flat index 5: -1"):
        signature.check_inputs(feeds)
    assert "user: int64[batch] in [0, 942]" in signature.describe_inputs()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"dtype": "float32", "range": (0, 1)}, "range applies to integer inputs"),
        ({"dtype": "int64", "range": (5, 1)}, "the low end is above the high end"),
    ],
)
def test_bad_ranges_are_refused(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TensorSpec(name="x", shape=(1,), **spec)  # type: ignore[arg-type]
