"""What the HTTP and gRPC codecs share of the V2 protocol: datatypes, request parameters,
BYTES tensors and the classification extension.

Both codecs check an input's datatype against the model with :func:`input_dtype`, read the
protocol's own request parameters with :data:`CONTROL_PARAMETERS`, :func:`timeout_seconds`
and :func:`classification_count`, and serialize BYTES with :func:`serialize_bytes`, so a
request gets the same answer over either transport. Dispatch applies
:func:`apply_classification` between the model and the encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shipyard.serve.errors import BadRequest
from shipyard.signature import Signature

# V2 datatype -> numpy dtype; BYTES (length-prefixed strings) is not supported.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_NUMPY = {dtype.name: name for name, dtype in DATATYPES.items()}
# Keyed by the dtype itself: dtype.name runs Python inside numpy (~2 µs against ~0.03 µs for
# this lookup, once per output of every response; benchmarks/serve/profile_server.py).
_BY_DTYPE: dict[Any, str] = {dtype: name for name, dtype in DATATYPES.items()}

# BYTES inputs (texts, encoded images) are Python objects, one per element: a request's
# count and total size are capped before any is made. 100,000 one-word texts in one request
# would be refused anyway by the batcher, but only after 100,000 objects were built and
# tokenized (seconds, hundreds of MB); a real batch is at most a few hundred texts or images.
MAX_BYTES_ELEMENTS = 4096
MAX_BYTES_TOTAL = 32 * 2**20

# Request parameters that steer the protocol; every other one is echoed in the response.
CONTROL_PARAMETERS = frozenset(
    {"binary_data_output", "timeout", "priority", "sequence_id", "sequence_start", "sequence_end"}
)


def datatype_of(dtype: str | np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype (``float32`` -> ``FP32``; an object array of
    strings or bytes -> ``BYTES``)."""
    found = _BY_DTYPE.get(dtype)
    if found is not None:
        return found
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    return _BY_NUMPY[dtype.name]


def as_bytes(value: Any) -> bytes:
    """One element of a BYTES tensor as bytes (str as UTF-8)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, np.bytes_):
        return bytes(value)
    return str(value).encode()


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor as the protocol's raw form: each element, in row-major order, as a
    4-byte little-endian length and its bytes (the binary extension's and gRPC raw contents'
    layout; tritonclient's ``serialize_byte_tensor``)."""
    parts = []
    for value in array.ravel():
        item = as_bytes(value)
        parts += [len(item).to_bytes(4, "little"), item]
    return b"".join(parts)


def check_bytes(name: str, count: int, size: int) -> None:
    """BadRequest when BYTES input ``name`` has more than ``MAX_BYTES_ELEMENTS`` elements or
    ``MAX_BYTES_TOTAL`` bytes (checked before its elements are made)."""
    if count > MAX_BYTES_ELEMENTS:
        raise BadRequest(
            f"input '{name}' holds {count:,} BYTES elements, above the limit of "
            f"{MAX_BYTES_ELEMENTS:,} per input: split the request"
        )
    if size > MAX_BYTES_TOTAL:
        raise BadRequest(
            f"input '{name}' holds {size:,} bytes of BYTES elements, above the limit of "
            f"{MAX_BYTES_TOTAL:,} per input: split the request"
        )


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """``count`` BYTES elements from their raw form (see :func:`serialize_bytes`), as an object
    array of bytes; BadRequest when the buffer holds fewer, more, or a length past its end,
    or more than the limits allow (:func:`check_bytes`)."""
    view = memoryview(buffer)
    check_bytes(name, count, len(view))
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise BadRequest(f"input '{name}': a BYTES element's 4-byte length is cut off")
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(view):
            raise BadRequest(
                f"input '{name}': BYTES element {len(elements)} declares {size} bytes but "
                f"{len(view) - offset} remain"
            )
        elements.append(bytes(view[offset : offset + size]))
        offset += size
    if len(elements) != count:
        raise BadRequest(
            f"input '{name}': the BYTES data holds {len(elements)} elements but the shape needs "
            f"{count}"
        )
    out = np.empty(count, dtype=object)
    out[:] = elements
    return out


def classification_count(value: Any, name: str) -> int | None:
    """The ``classification`` parameter of output ``name``: how many top classes to return
    (None when absent or 0). BadRequest unless it is a positive integer."""
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(
            f"output '{name}': 'classification' must be a positive integer (how many top "
            f"classes to return), got {value!r}"
        )
    return value


def classify(array: np.ndarray, count: int, labels: Sequence[str] | None, name: str) -> np.ndarray:
    """Triton's classification extension: the ``count`` highest values along the last axis
    of ``array`` as BYTES strings ``"<value>:<index>:<label>"``, shape ``[..., count]``.

    BadRequest when the model has no class labels (the package names none) or the output
    is not a [batch, classes] vector of numbers.
    """
    if labels is None:
        raise BadRequest(
            f"output '{name}': classification needs the model's class labels, and this "
            f"package has none (the recipe's postprocess: labels: adds them)"
        )
    if array.ndim < 1 or array.dtype.kind not in "fiu":
        raise BadRequest(
            f"output '{name}': classification needs numbers with the classes on the last "
            f"axis, but the output is {datatype_of(array.dtype)} of shape {list(array.shape)}"
        )
    classes = array.shape[-1]
    if classes != len(labels):
        raise BadRequest(
            f"output '{name}' has {classes} classes but the package's labels file has "
            f"{len(labels)} lines"
        )
    count = min(count, classes)
    # highest first; a stable sort keeps the lower index first among equal values
    top = np.argsort(-array, axis=-1, kind="stable")[..., :count]
    values = np.take_along_axis(array, top, axis=-1)
    number = "{:f}" if array.dtype.kind == "f" else "{:d}"
    out = np.empty(top.shape, dtype=object)
    for position in np.ndindex(top.shape):
        index = int(top[position])
        value = number.format(values[position].item())
        out[position] = f"{value}:{index}:{labels[index]}".encode()
    return out


def apply_classification(
    outputs: dict[str, np.ndarray], wanted: Mapping[str, int], labels: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """``outputs`` with each output named in ``wanted`` replaced by its top classes."""
    if not wanted:
        return outputs
    result = dict(outputs)
    for name, count in wanted.items():
        if name in result:
            result[name] = classify(result[name], count, labels, name)
    return result


def input_dtype(datatype: Any, name: str, signature: Signature | None) -> np.dtype[Any]:
    """The numpy dtype of input ``name`` sent as ``datatype`` (a V2 name such as ``"FP32"``).

    BYTES gives an object array of bytes elements: whether the model takes it (encoded images,
    when its package pre-processes them) is for dispatch to say. Raises BadRequest for an
    unknown datatype, or one the model's input of that name does not take. An input the
    signature does not name passes here: the signature check names it with the missing ones.
    """
    if datatype == "BYTES":
        return np.dtype(object)
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise BadRequest(
            f"input '{name}': unknown datatype {datatype!r}; use one of {sorted(DATATYPES)}"
        )
    if signature is not None:
        spec = next((s for s in signature.inputs if s.name == name), None)
        if spec is not None and np.dtype(spec.dtype) != dtype:
            raise BadRequest(
                f"input '{name}' has datatype {datatype}, but the model expects "
                f"{datatype_of(spec.dtype)} ({spec.describe()})"
            )
    return dtype


def timeout_seconds(value: Any) -> float | None:
    """The ``timeout`` request parameter (microseconds, as tritonclient sends it) in seconds;
    None when absent or not a positive number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value) / 1e6
    return None
