"""The sequence parameters of a V2 request: ``sequence_id``, ``sequence_start``, ``sequence_end``.

Triton's sequence batcher reads them from the request's parameters, and tritonclient sends
them that way over both transports (HTTP: JSON ``parameters``; gRPC: ``InferParameter``s,
``int64_param`` or ``string_param`` for the id, ``bool_param`` for the flags). An id of 0 or
``""`` means "no sequence", as in Triton. Both codecs hand their parameters here, so a request
gets the same answer over either transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shipyard.serve.errors import BadRequest

SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
# Longest string id kept (ids are dictionary keys held for as long as the sequence lives).
MAX_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """Which sequence a request belongs to, and whether it starts or ends it."""

    id: int | str
    start: bool = False
    end: bool = False


def _flag(parameters: Mapping[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter '{name}' must be a boolean, got {value!r}")
    return value


def sequence_control(parameters: Mapping[str, Any]) -> SequenceControl | None:
    """The request's sequence parameters (None when it names no sequence).

    BadRequest when the id is neither an integer nor a string (or a string above
    ``MAX_ID_LENGTH`` characters), a flag is not a boolean, or a flag is set without an id.
    """
    identifier = parameters.get("sequence_id")
    start, end = _flag(parameters, "sequence_start"), _flag(parameters, "sequence_end")
    if identifier is None or identifier == 0 or identifier == "":
        if start or end:
            raise BadRequest("sequence_start and sequence_end need a sequence_id (not 0)")
        return None
    if isinstance(identifier, bool) or not isinstance(identifier, int | str):
        raise BadRequest(f"sequence_id must be an integer or a string, got {identifier!r}")
    if isinstance(identifier, str) and len(identifier) > MAX_ID_LENGTH:
        raise BadRequest(f"sequence_id is longer than {MAX_ID_LENGTH} characters")
    return SequenceControl(identifier, start, end)


__all__ = ["MAX_ID_LENGTH", "SEQUENCE_PARAMETERS", "SequenceControl", "sequence_control"]
