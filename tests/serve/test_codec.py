"""The V2 codec on its own: every datatype, JSON and binary, both directions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shipyard.serve.codec import InferRequest, decode_request, encode_response
from shipyard.serve.errors import BadRequest
from shipyard.serve.protocol import DATATYPES


def _sample(datatype: str) -> np.ndarray:
    dtype = DATATYPES[datatype]
    values = np.arange(6).reshape(2, 3) % 2 if dtype.kind == "b" else np.arange(6).reshape(2, 3)
    return values.astype(dtype)


# A request-level parameter that pushes a JSON body past the size from which simdjson reads
# it (small bodies go to orjson): the JSON tests run both readers.
PAD = {"pad": "x" * 5000}
READERS = pytest.mark.parametrize("reader", ["orjson", "simdjson"])


def test_json_responses_keep_nan_and_integers_beyond_64_bits() -> None:
    """orjson writes the response unless it would change it: NaN/Inf (orjson: null) and an
    echoed integer beyond 64 bits (orjson refuses) go through json."""
    body = {"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [1]}]}
    request = decode_request(json.dumps(body).encode())
    values = np.array([0.5, 1e-5, -3.25], np.float32)
    plain, _ = encode_response("m", 1, {"y": values}, request)
    assert json.loads(plain)["outputs"][0]["data"] == values.tolist()
    special, _ = encode_response("m", 1, {"y": np.array([np.nan, np.inf], np.float32)}, request)
    assert b"[NaN,Infinity]" in special
    body["parameters"] = {"big": 2**70}
    echoed, _ = encode_response("m", 1, {"y": values}, decode_request(json.dumps(body).encode()))
    assert json.loads(echoed)["parameters"] == {"big": 2**70}


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
@pytest.mark.parametrize("binary", [False, True])
@READERS
def test_every_datatype_round_trips(datatype: str, binary: bool, reader: str) -> None:
    array = _sample(datatype)
    tensor: dict = {"name": "t", "datatype": datatype, "shape": [2, 3]}
    if binary:
        tensor["parameters"] = {"binary_data_size": array.nbytes}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
        request = decode_request(header.encode() + array.tobytes(), str(len(header)))
    else:
        tensor["data"] = array.tolist()  # nested lists
        padding = {"parameters": PAD} if reader == "simdjson" else {}
        request = decode_request(json.dumps({"inputs": [tensor], **padding}).encode())
    decoded = request.inputs["t"]
    assert decoded.dtype == array.dtype and decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded, array)

    body, header_length = encode_response("m", 1, {"t": decoded}, request)
    if binary:
        assert header_length is not None
        meta = json.loads(body[:header_length])
        assert meta["outputs"][0]["parameters"]["binary_data_size"] == array.nbytes
        out = np.frombuffer(body[header_length:], dtype=array.dtype).reshape(2, 3)
    else:
        assert header_length is None
        meta = json.loads(body)
        out = np.asarray(meta["outputs"][0]["data"], dtype=array.dtype).reshape(2, 3)
    assert meta["outputs"][0]["datatype"] == datatype and meta["outputs"][0]["shape"] == [2, 3]
    np.testing.assert_array_equal(out, array)


def test_output_selection_and_per_output_binary() -> None:
    request = decode_request(
        json.dumps(
            {
                "id": 42,
                "inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [1]}],
                "outputs": [{"name": "q", "parameters": {"binary_data": True}}, {"name": "p"}],
                "parameters": {"timeout": 5_000, "user": "x"},
            }
        ).encode()
    )
    assert request.timeout == pytest.approx(0.005) and request.id == "42"
    outputs = {"p": np.ones(2, np.float32), "q": np.zeros(3, np.int64), "r": np.ones(1)}
    body, length = encode_response("m", 3, outputs, request)
    assert length is not None
    meta = json.loads(body[:length])
    assert [o["name"] for o in meta["outputs"]] == ["q", "p"]  # as asked, "r" left out
    assert meta["id"] == "42" and meta["parameters"] == {"user": "x"}
    assert np.frombuffer(body[length:], np.int64).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "FP32", "shape": [2], "data": [1, 2, 3]}, "holds 3 values"),
        ({"datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative"),
        ({"datatype": "UINT8", "shape": [1], "data": [300]}, "UINT8|uint8"),
        ({"datatype": "UINT8", "shape": [2], "data": [1, -1]}, "uint8"),
        (
            {"datatype": "INT8", "shape": [2], "data": [1, -129]},
            "-129 (is )?out of bounds for int8",
        ),
        ({"datatype": "INT64", "shape": [1], "data": [2**70]}, "input 't'|not valid JSON"),
        ({"datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}, "input 't'"),
        ({"datatype": "FP32", "shape": [1]}, "neither 'data' nor binary_data_size"),
    ],
)
@READERS
def test_malformed_tensors_name_the_input(tensor: dict, message: str, reader: str) -> None:
    padding = {"parameters": PAD} if reader == "simdjson" else {}
    with pytest.raises(BadRequest, match=message):
        decode_request(json.dumps({"inputs": [{"name": "t", **tensor}], **padding}).encode())


def test_misaligned_binary_input_is_copied_not_rejected() -> None:
    array = np.arange(4, dtype=np.float64)
    tensors = [
        {"name": "b", "datatype": "UINT8", "shape": [1], "parameters": {"binary_data_size": 1}},
        {"name": "f", "datatype": "FP64", "shape": [4], "parameters": {"binary_data_size": 32}},
    ]
    header = json.dumps({"inputs": tensors}).encode()
    request = decode_request(header + b"\x07" + array.tobytes(), str(len(header)))
    assert request.inputs["f"].flags.aligned
    np.testing.assert_array_equal(request.inputs["f"], array)
    assert isinstance(request, InferRequest) and request.inputs["b"].tolist() == [7]


def test_json_numbers_decode_exactly_and_nan_still_parses() -> None:
    """The simdjson path (numbers straight into an array) gives what the JSON says, bit for bit;
    NaN, which only Python's json module writes and reads, takes the general path."""
    rng = np.random.default_rng(0)
    floats = rng.standard_normal(1000)
    ints = np.array([2**62 + 1, -(2**62) - 3, 0], np.int64)  # beyond float64's 53-bit mantissa
    body = json.dumps(
        {
            "inputs": [
                {"name": "f", "datatype": "FP64", "shape": [10, 100], "data": floats.tolist()},
                {"name": "h", "datatype": "FP32", "shape": [2, 500], "data": floats.tolist()},
                {"name": "i", "datatype": "INT64", "shape": [3], "data": ints.tolist()},
                {"name": "u", "datatype": "UINT64", "shape": [1], "data": [2**64 - 1]},
                {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            ],
            "parameters": {"nested": {"list": [1, {"x": None}]}},
        }
    ).encode()
    first = decode_request(body)  # hold its arrays while the next request is parsed
    second = decode_request(body)
    for request in (first, second):
        np.testing.assert_array_equal(request.inputs["f"].ravel(), floats)
        np.testing.assert_array_equal(request.inputs["h"].ravel(), floats.astype(np.float32))
        np.testing.assert_array_equal(request.inputs["i"], ints)
        assert (
            request.inputs["u"].tolist() == [2**64 - 1] and request.inputs["u"].dtype == np.uint64
        )
        assert request.inputs["b"].tolist() == [True, False]
        assert request.parameters == {"nested": {"list": [1, {"x": None}]}}
    nan = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, float("nan")]}]}
    )
    assert np.isnan(decode_request(nan.encode()).inputs["x"][1])
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_request(b'{"inputs": [')


def test_large_bodies_get_a_parser_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from shipyard.serve import codec

    monkeypatch.setattr(codec, "_REUSE_PARSER_BYTES", 200)
    monkeypatch.setattr(codec, "_SIMDJSON_FROM_BYTES", 0)
    small = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, 2.5]}]}
    large = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [64], "data": [0.5] * 64}]}
    for body in (small, large, small, large):
        text = json.dumps(body).encode()
        assert (len(text) > 200) == (body is large)
        request = decode_request(text)
        np.testing.assert_array_equal(request.inputs["x"], np.asarray(body["inputs"][0]["data"]))
