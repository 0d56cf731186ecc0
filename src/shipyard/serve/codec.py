"""V2 inference requests and responses ↔ numpy, JSON and the binary tensor data extension.

A request body is JSON, or (binary extension) JSON of ``Inference-Header-Content-Length``
bytes followed by the raw tensors of every input that declares
``parameters.binary_data_size``, in input order. Outputs are returned as JSON ``data`` or, when
asked (``parameters.binary_data_output`` on the request or ``parameters.binary_data`` on an
output), as raw bytes after the JSON header. BYTES inputs (texts, encoded images) become
object arrays of bytes, within ``protocol.check_bytes``'s limits; BYTES outputs (the
classification extension's) are strings in JSON, length-prefixed when binary. The request
``id`` and ``parameters`` (all but the protocol's own, such as ``timeout``) are echoed in the
response, with what dispatch says about the request (``response_parameters``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import simdjson

from shipyard.serve.errors import BadRequest
from shipyard.serve.protocol import (
    CONTROL_PARAMETERS,
    DATATYPES,
    as_bytes,
    check_bytes,
    classification_count,
    datatype_of,
    deserialize_bytes,
    input_dtype,
    serialize_bytes,
    timeout_seconds,
)
from shipyard.serve.sequence_control import SequenceControl, sequence_control
from shipyard.signature import Signature

HEADER_LENGTH = "inference-header-content-length"


@dataclass
class InferRequest:
    """A decoded request: inputs as arrays, which outputs to return and how."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None  # None: every output
    binary: dict[str, bool] = field(default_factory=dict)  # output name -> send as bytes
    binary_default: bool = False
    classification: dict[str, int] = field(default_factory=dict)  # output name -> top k
    # A raw image body (curl --data-binary @cat.jpg): answer with the top classes of the first
    # output when the package has labels (dispatch decides), else the output as it is.
    default_top_k: int | None = None
    # What the server says about this request in the response's parameters (texts truncated).
    response_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout(self) -> float | None:
        """``parameters.timeout`` (microseconds, as tritonclient sends it) in seconds."""
        return timeout_seconds(self.parameters.get("timeout"))

    @property
    def sequence(self) -> SequenceControl | None:
        """The sequence parameters (a stateful model's), or None."""
        return sequence_control(self.parameters)


def parse_json(body: bytes) -> Any:
    """``body`` parsed as JSON: orjson (7x faster than ``json`` on a 3 MB image request,
    measured 8.7 vs 62 ms), then the standard library for what orjson refuses but Python
    clients send (``NaN``, ``Infinity``: ``json.dumps`` writes them). BadRequest if neither
    parses it."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except RecursionError:  # [[[[...]]]]: orjson stops at depth 1024, the stdlib at its stack
        raise BadRequest(
            f"the request nests JSON arrays or objects deeper than {_MAX_DEPTH} levels"
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the request is not valid JSON: {error}") from None


# simdjson buffer type per numpy kind: the numbers of a "data" array go straight into an array
# of float64 / int64 / uint64, never through a Python float each.
_BUFFER_TYPES: dict[str, tuple[Literal["d", "i", "u"], type[np.generic]]] = {
    "f": ("d", np.float64),
    "i": ("i", np.int64),
    "u": ("u", np.uint64),
}
_parsers = threading.local()
# A parser keeps buffers sized to the largest document it has read: reuse one per thread for
# bodies up to this size, and give larger ones a parser of their own that is then freed.
_REUSE_PARSER_BYTES = 8 << 20
# orjson refuses deeper documents; the stdlib fallback would hit Python's recursion limit.
_MAX_DEPTH = 1024
# Below this size orjson is faster. decode_request timed both ways here: 6.1 (orjson) vs
# 7.8 us (simdjson) for a 1.4 kB request, 14 vs 11 us at 5 kB, 176 vs 74 us at 85 kB.
_SIMDJSON_FROM_BYTES = 4096


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _rectangular(data: Any, shape: Any) -> bool:
    """Whether nested ``data`` has exactly the lengths of ``shape`` at every level (a ragged
    array with the right element count must not pass as its flattened numbers)."""
    if not isinstance(shape, simdjson.Array) or len(shape) < 2:
        return True  # one level: nothing to compare (the count is checked later)
    dims = shape.as_list()
    level = [data]
    for depth, dim in enumerate(dims[:-1]):
        if not isinstance(dim, int) or any(len(a) != dim for a in level):
            return False
        level = [item for a in level for item in a]
        if not all(isinstance(a, simdjson.Array) for a in level):
            return False
        if depth == len(dims) - 2:
            return all(len(a) == dims[-1] for a in level)
    return True


def _numbers(data: Any, datatype: Any, shape: Any) -> Any:
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if isinstance(data, simdjson.Array) and dtype is not None and dtype.kind in _BUFFER_TYPES:
        of_type, buffer_dtype = _BUFFER_TYPES[dtype.kind]
        nested = len(data) > 0 and isinstance(data[0], simdjson.Array)
        if not nested or _rectangular(data, shape):
            try:  # arrays of numbers only; anything else takes the general path
                return np.frombuffer(data.as_buffer(of_type=of_type), dtype=buffer_dtype)
            except (TypeError, ValueError):
                pass
    return _plain(data)  # the general path (np.asarray) refuses what is malformed


def _tensor(value: Any) -> Any:
    if not isinstance(value, simdjson.Object):
        return _plain(value)
    datatype, shape = value.get("datatype"), value.get("shape")
    return {
        key: _numbers(value[key], datatype, shape) if key == "data" else _plain(value[key])
        for key in value
    }


def _parser(size: int) -> simdjson.Parser:
    if size > _REUSE_PARSER_BYTES:
        return simdjson.Parser()
    if not hasattr(_parsers, "parser"):
        _parsers.parser = simdjson.Parser()
    parser: simdjson.Parser = _parsers.parser
    return parser


def load_request(body: bytes) -> Any:
    """A request body parsed as JSON; from ~4 kB on, each input's numeric ``data`` is
    already an ndarray (smaller bodies go to orjson, which is faster there).

    simdjson reads the numbers of a 224x224x3 image request into float64 without making a
    Python float each. On a 3 MB request ``decode_request`` took 4.3 ms, checks included;
    orjson + ``np.asarray`` alone took 11.7 ms, the standard library 51.7 ms
    (``benchmarks/serve/decode.py``). Anything simdjson refuses (``NaN``, integers beyond
    64 bits, broken JSON; a parser still holding an earlier document) goes through
    ``parse_json``, which parses it or says what is wrong. Nested ``data`` arrays are read
    flat, in row-major order.
    """
    if len(body) < _SIMDJSON_FROM_BYTES:
        return parse_json(body)
    try:
        document = _parser(len(body)).parse(body)
        if not isinstance(document, simdjson.Object):
            return _plain(document)
        request: dict[str, Any] = {}
        for key in document:
            value = document[key]
            if key == "inputs" and isinstance(value, simdjson.Array):
                request[key] = [_tensor(tensor) for tensor in value]
            else:
                request[key] = _plain(value)
        return request
    except (ValueError, RuntimeError, UnicodeDecodeError):
        return parse_json(body)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _shape(tensor: Mapping[str, Any], name: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _from_json(data: Any, shape: tuple[int, ...], dtype: np.dtype[Any], name: str) -> np.ndarray:
    if isinstance(data, np.ndarray) and dtype.kind in "iu" and data.size:
        # as np.asarray on a list does: refuse values the datatype cannot hold, never wrap
        info, low, high = np.iinfo(dtype), data.min(), data.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise BadRequest(
                f"input '{name}': 'data' does not hold {dtype} numbers: {bad} is out of "
                f"bounds for {dtype}"
            )
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as error:
        if "inhomogeneous" in str(error) or "sequence" in str(error):
            raise BadRequest(
                f"input '{name}': 'data' is a ragged nested list; send a flat list, or nested "
                f"lists whose lengths follow the shape {list(shape)}"
            ) from None
        raise BadRequest(f"input '{name}': 'data' does not hold {dtype} numbers: {error}") from None
    expected = math.prod(shape)
    if array.size != expected:
        raise BadRequest(
            f"input '{name}': 'data' holds {array.size} values but shape {list(shape)} "
            f"needs {expected}"
        )
    return array.reshape(shape)


def _bytes_from_json(
    data: Any, shape: tuple[int, ...], params: Mapping[str, Any], name: str
) -> np.ndarray:
    """A BYTES input given in JSON: strings, as UTF-8 text, or with ``parameters.content_type``
    ``base64`` (as MLServer takes them), the bytes they encode (images: JSON strings cannot
    carry arbitrary bytes)."""
    flat = data if isinstance(data, list) else [data]
    if any(isinstance(item, list) for item in flat):
        flat = [v for item in flat for v in (item if isinstance(item, list) else [item])]
    check_bytes(name, len(flat), 0)
    if not all(isinstance(item, str) for item in flat):
        raise BadRequest(f"input '{name}': BYTES 'data' must hold strings")
    if len(flat) != math.prod(shape):
        raise BadRequest(
            f"input '{name}': 'data' holds {len(flat)} values but shape {list(shape)} needs "
            f"{math.prod(shape)}"
        )
    encoded = params.get("content_type") == "base64"
    out = np.empty(len(flat), dtype=object)
    for index, item in enumerate(flat):
        try:
            out[index] = base64.b64decode(item, validate=True) if encoded else item.encode()
        except (binascii.Error, ValueError):
            raise BadRequest(f"input '{name}': element {index} is not valid base64") from None
    check_bytes(name, len(flat), sum(len(item) for item in out))
    return out.reshape(shape)


def decode_image_body(body: bytes, signature: Signature | None) -> InferRequest:
    """A request whose whole body is one encoded image (``Content-Type: image/jpeg``, as
    ``curl --data-binary @cat.jpg`` sends it): the model's only input, as one BYTES element."""
    names = signature.input_names if signature is not None else []
    if len(names) != 1:
        raise BadRequest(
            f"an image body needs a model with one input; this one takes {names}: send a V2 "
            f"request naming the input"
        )
    if not body:
        raise BadRequest("the image body is empty")
    image = np.empty(1, dtype=object)
    image[0] = body
    return InferRequest({names[0]: image}, default_top_k=5)


def decode_request(
    body: bytes, header_length: str | None = None, signature: Signature | None = None
) -> InferRequest:
    """Parse a request ``body``; ``header_length`` is the Inference-Header-Content-Length value.

    With ``signature``, datatypes and requested outputs are checked against the model (shapes
    are checked by the batcher). Raises BadRequest naming the offending input.
    """
    binary = memoryview(b"")
    if header_length is not None:
        if not header_length.isdigit():
            raise BadRequest("Inference-Header-Content-Length must be a non-negative integer")
        length = int(header_length)
        if length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {length} but the body has {len(body)} bytes"
            )
        binary = memoryview(body)[length:]
        body = body[:length]
    request = _object(load_request(body), "the request")
    tensors = request.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise BadRequest("the request needs a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in tensors:
        tensor = _object(tensor, "each entry of 'inputs'")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("each input needs a 'name'")
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        shape, dtype = _shape(tensor, name), input_dtype(tensor.get("datatype"), name, signature)
        params = _object(tensor.get("parameters") or {}, f"input '{name}': 'parameters'")
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise BadRequest(f"input '{name}' has neither 'data' nor binary_data_size")
            if dtype.kind == "O":
                inputs[name] = _bytes_from_json(tensor["data"], shape, params, name)
            else:
                inputs[name] = _from_json(tensor["data"], shape, dtype, name)
            continue
        if dtype.kind == "O":  # BYTES: length-prefixed elements, any total size
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input '{name}': the binary data is truncated ({len(binary) - offset} of "
                    f"{size} bytes present)"
                )
            chunk = binary[offset : offset + size]
            offset += size
            inputs[name] = deserialize_bytes(chunk, math.prod(shape), name).reshape(shape)
            continue
        expected = math.prod(shape) * dtype.itemsize
        if not isinstance(size, int) or size != expected:
            raise BadRequest(
                f"input '{name}': binary_data_size is {size!r} but shape {list(shape)} of "
                f"{datatype_of(dtype)} needs {expected} bytes"
            )
        if offset + size > len(binary):
            raise BadRequest(
                f"input '{name}': the binary data is truncated ({len(binary) - offset} of "
                f"{size} bytes present)"
            )
        chunk = binary[offset : offset + size]
        offset += size
        # Zero-copy view of the body; copy only when misaligned for the dtype.
        array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        inputs[name] = array if array.flags.aligned else array.copy()
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return _options(request, inputs, signature)


def _options(
    request: dict[str, Any], inputs: dict[str, np.ndarray], signature: Signature | None
) -> InferRequest:
    parameters = _object(request.get("parameters") or {}, "'parameters'")
    decoded = InferRequest(
        inputs,
        id=str(request["id"]) if request.get("id") is not None else None,
        parameters=parameters,
        binary_default=bool(parameters.get("binary_data_output", False)),
    )
    wanted = request.get("outputs")
    if wanted is None:
        return decoded
    if not isinstance(wanted, list):
        raise BadRequest("'outputs' must be a list")
    known = signature.output_names if signature is not None and signature.outputs else None
    decoded.outputs = []
    for output in wanted:
        output = _object(output, "each entry of 'outputs'")
        name = output.get("name")
        if not isinstance(name, str):
            raise BadRequest("each requested output needs a 'name'")
        if known is not None and name not in known:
            raise BadRequest(f"unknown output '{name}'; the model has {known}")
        params = _object(output.get("parameters") or {}, f"output '{name}': 'parameters'")
        count = classification_count(params.get("classification"), name)
        if count is not None:
            decoded.classification[name] = count
        if "binary_data" in params:
            decoded.binary[name] = bool(params["binary_data"])
        decoded.outputs.append(name)
    return decoded


def _dumps(response: dict[str, Any], finite: bool) -> bytes:
    """Compact JSON by orjson (profile_server.py: ~7 µs less than json), by json when a value
    is NaN/Inf (orjson writes null) or orjson refuses one (an int beyond 64 bits)."""
    with contextlib.suppress(TypeError):  # orjson.JSONEncodeError
        if finite:
            return orjson.dumps(response)
    return json.dumps(response, separators=(",", ":")).encode()


def encode_response(
    model: str,
    version: int,
    outputs: Mapping[str, np.ndarray],
    request: InferRequest,
) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary tensors, the JSON header's length."""
    names: Sequence[str] = request.outputs if request.outputs is not None else list(outputs)
    described: list[dict[str, Any]] = []
    blobs: list[Any] = []  # bytes, or an array's buffer
    finite = True  # orjson writes NaN/Inf as null: such responses keep json's NaN
    missing = [name for name in names if name not in outputs]
    if missing:  # e.g. a whole clip's output asked of one chunk
        raise BadRequest(f"unknown output(s) {missing} for this request; it gives {list(outputs)}")
    for name in names:
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype)}
        entry["shape"] = list(array.shape)
        strings = array.dtype.kind in "OSU"
        if request.binary.get(name, request.binary_default):
            blob = serialize_bytes(array) if strings else np.ascontiguousarray(array).data
            entry["parameters"] = {"binary_data_size": len(blob) if strings else array.nbytes}
            blobs.append(blob)
        elif strings:  # JSON carries BYTES elements as strings
            entry["data"] = [as_bytes(v).decode("utf-8", "replace") for v in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
            if array.dtype.kind == "f" and finite:
                finite = bool(np.isfinite(array).all())
        described.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request.id is not None:
        response["id"] = request.id
    echoed = {k: v for k, v in request.parameters.items() if k not in CONTROL_PARAMETERS}
    echoed.update(request.response_parameters)
    if echoed:
        response["parameters"] = echoed
    response["outputs"] = described
    header = _dumps(response, finite)
    if not blobs:
        return header, None
    parts = [blob if isinstance(blob, bytes) else blob.cast("B") for blob in blobs]
    return b"".join([header, *parts]), len(header)
