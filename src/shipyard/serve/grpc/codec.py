"""``ModelInferRequest`` ↔ numpy: the gRPC counterpart of :mod:`shipyard.serve.codec`.

Inputs come either all in ``raw_input_contents`` (one entry per input, in order: what
tritonclient sends) or each in its typed ``contents`` field. Datatypes, their checks against
the model and the error messages are those of the HTTP codec (both use
:mod:`shipyard.serve.protocol`); BYTES inputs (encoded images) come in ``bytes_contents`` or
length-prefixed in raw contents. Outputs go back the way inputs came: raw when the request was
raw (tritonclient reads only raw outputs), typed otherwise, and raw in any case when an output
is FP16 (it has no typed field). The request ``id`` and its parameters, except the protocol's
own (``timeout`` ...), are echoed in the response.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.serve.errors import BadRequest
from shipyard.serve.grpc import inference_pb2 as pb
from shipyard.serve.protocol import (
    CONTROL_PARAMETERS,
    as_bytes,
    check_bytes,
    classification_count,
    datatype_of,
    deserialize_bytes,
    input_dtype,
    serialize_bytes,
    timeout_seconds,
)
from shipyard.serve.sequence_control import (
    SEQUENCE_PARAMETERS,
    SequenceControl,
    sequence_control,
)
from shipyard.signature import Signature

# The InferTensorContents field of each datatype; FP16 travels raw only.
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_SHARED_MEMORY = "shared_memory_region"


@dataclass
class DecodedInfer:
    """A decoded request: inputs as arrays and what the response needs from the request."""

    inputs: dict[str, np.ndarray]
    request: pb.ModelInferRequest
    outputs: list[str] | None  # None: every output
    raw: bool  # answer in raw_output_contents
    timeout: float | None  # seconds, from parameters["timeout"] (microseconds)
    classification: dict[str, int] = field(default_factory=dict)  # output name -> top k
    # What the server says about this request in the response's parameters (texts truncated).
    response_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def sequence(self) -> SequenceControl | None:
        """The sequence parameters (a stateful model's), or None."""
        given = self.request.parameters  # `in` first: indexing a protobuf map inserts the key
        return sequence_control({k: parameter(given[k]) for k in SEQUENCE_PARAMETERS if k in given})


def parameter(value: pb.InferParameter) -> Any:
    """The Python value of an InferParameter (None when unset)."""
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def elements(request: pb.ModelInferRequest) -> int:
    """How many values the request's inputs declare (their shapes' products)."""
    return sum(math.prod(tensor.shape) for tensor in request.inputs)


def _refuse_shared_memory(parameters: Mapping[str, pb.InferParameter], what: str) -> None:
    if _SHARED_MEMORY in parameters:
        raise BadRequest(f"{what}: the shared memory extension is not supported by this server")


def _from_raw(raw: bytes, shape: tuple[int, ...], dtype: np.dtype[Any], name: str) -> np.ndarray:
    if dtype.kind == "O":  # BYTES: length-prefixed elements
        return deserialize_bytes(raw, math.prod(shape), name).reshape(shape)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadRequest(
            f"input '{name}': raw_input_contents holds {len(raw)} bytes but shape {list(shape)} "
            f"of {datatype_of(dtype)} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array if array.flags.aligned else array.copy()


def _from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS.get(datatype)
    if field is None:
        raise BadRequest(f"input '{name}': {datatype} tensors travel in raw_input_contents only")
    values: Sequence[Any] = getattr(tensor.contents, field)
    if dtype.kind == "O":
        check_bytes(name, len(values), sum(len(value) for value in values))
    expected = math.prod(shape)
    if len(values) != expected:
        given = [f.name for f, _ in tensor.contents.ListFields()]
        raise BadRequest(
            f"input '{name}': contents.{field} holds {len(values)} values but shape "
            f"{list(shape)} needs {expected}"
            + (f" (the request sets {given})" if given and given != [field] else "")
        )
    if dtype.kind == "O":
        array = np.empty(expected, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        array = np.array(values, dtype=dtype)
    except (OverflowError, ValueError) as error:
        raise BadRequest(f"input '{name}': contents do not fit {datatype}: {error}") from None
    return array.reshape(shape)


def decode_request(request: pb.ModelInferRequest, signature: Signature | None) -> DecodedInfer:
    """Check ``request`` against the model and turn its inputs into arrays.

    Raises BadRequest naming the offending input (shapes are checked by the batcher).
    """
    if not request.inputs:
        raise BadRequest("the request needs at least one input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in the order of 'inputs'"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise BadRequest("each input needs a name")
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        _refuse_shared_memory(tensor.parameters, f"input '{name}'")
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise BadRequest(f"input '{name}': shape {list(shape)} has a negative dimension")
        dtype = input_dtype(tensor.datatype, name, signature)
        if not raw:
            inputs[name] = _from_contents(tensor, shape, dtype)
        elif tensor.HasField("contents"):
            raise BadRequest(
                f"input '{name}' has contents, but the request carries raw_input_contents; "
                "use one or the other for every input"
            )
        else:
            inputs[name] = _from_raw(raw[index], shape, dtype, name)
    classification: dict[str, int] = {}
    outputs = _outputs(request, signature, classification)
    return DecodedInfer(
        inputs, request, outputs, bool(raw), _timeout(request.parameters), classification
    )


def _outputs(
    request: pb.ModelInferRequest, signature: Signature | None, classification: dict[str, int]
) -> list[str] | None:
    if not request.outputs:
        return None
    known = signature.output_names if signature is not None and signature.outputs else None
    names = []
    for output in request.outputs:
        name = output.name
        if known is not None and name not in known:
            raise BadRequest(f"unknown output '{name}'; the model has {known}")
        if "classification" in output.parameters:  # `in` first: indexing inserts the key
            value = parameter(output.parameters["classification"])
            count = classification_count(value, name)
            if count is not None:
                classification[name] = count
        _refuse_shared_memory(output.parameters, f"output '{name}'")
        names.append(name)
    return names


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _timeout(parameters: Mapping[str, pb.InferParameter]) -> float | None:
    # `in` first: indexing a protobuf map inserts the key.
    return timeout_seconds(parameter(parameters["timeout"]) if "timeout" in parameters else None)


def encode_response(
    model: str, version: int, outputs: Mapping[str, np.ndarray], decoded: DecodedInfer
) -> pb.ModelInferResponse:
    """The response for ``decoded`` with the model's ``outputs``."""
    request = decoded.request
    response = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request.id)
    for key, value in request.parameters.items():
        if key not in CONTROL_PARAMETERS:
            response.parameters[key].CopyFrom(value)
    for key, said in decoded.response_parameters.items():
        _set_parameter(response.parameters[key], said)
    names = decoded.outputs if decoded.outputs is not None else list(outputs)
    missing = [name for name in names if name not in outputs]
    if missing:
        raise BadRequest(f"unknown output(s) {missing}; the model returned {list(outputs)}")
    raw = decoded.raw or any(outputs[name].dtype == np.float16 for name in names)
    for name in names:
        array = outputs[name]
        datatype = datatype_of(array.dtype)
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            if raw:
                response.raw_output_contents.append(serialize_bytes(array))
            else:
                tensor.contents.bytes_contents.extend(as_bytes(v) for v in array.ravel())
        elif raw:
            response.raw_output_contents.append(array.tobytes())
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    return response
