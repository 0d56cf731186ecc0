"""What the HTTP and gRPC codecs share of the V2 protocol: datatypes and request parameters.

Both codecs check an input's datatype against the model with :func:`input_dtype` and read
the protocol's own request parameters with :data:`CONTROL_PARAMETERS` and
:func:`timeout_seconds`, so a request gets the same answer over either transport.
"""

from __future__ import annotations

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

# Request parameters that steer the protocol; every other one is echoed in the response.
CONTROL_PARAMETERS = frozenset(
    {"binary_data_output", "timeout", "priority", "sequence_id", "sequence_start", "sequence_end"}
)


def datatype_of(dtype: str | np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype (``float32`` -> ``FP32``)."""
    return _BY_NUMPY[np.dtype(dtype).name]


def input_dtype(datatype: Any, name: str, signature: Signature | None) -> np.dtype[Any]:
    """The numpy dtype of input ``name`` sent as ``datatype`` (a V2 name such as ``"FP32"``).

    Raises BadRequest for BYTES, an unknown datatype, or one the model's input of that name
    does not take. An input the signature does not name passes here: the signature check
    names it together with the missing ones.
    """
    if datatype == "BYTES":
        raise BadRequest(f"input '{name}': BYTES tensors are not supported by this server")
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
