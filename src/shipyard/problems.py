"""pydantic's validation errors as one readable line, without its links and type tags.

``describe(error, prefix)`` -> ``"quantize.per_channel: Input should be a valid boolean"``;
recipes add the YAML line themselves, command-line options name the option.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

_VALUE_ERROR = "Value error, "


def message(item: ErrorDetails) -> str:
    """The message of one pydantic error item, in our words where pydantic's are unclear."""
    if item["type"] == "extra_forbidden":
        return "unknown key (check its spelling and indentation)"
    if item["type"] == "missing":
        return "required field is missing"
    text = str(item["msg"])
    return text.removeprefix(_VALUE_ERROR)


def location(loc: tuple[Any, ...]) -> str:
    """``("passes", 0, "quantize", "mode")`` -> ``passes.0.quantize.mode``, without the
    union/type tags pydantic inserts (``function-after[...]``, ``literal['auto']``...)."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or "(" in p)))


def describe(
    error: ValidationError,
    prefix: str = "",
    name: Callable[[tuple[Any, ...]], str] | None = None,
) -> str:
    """Every problem of ``error`` on one line, ``; ``-separated, deduplicated.

    ``name(loc)`` spells a location (e.g. as a command-line option); default ``a.b.c``.
    """
    problems: list[str] = []
    for item in error.errors():
        where = (name or location)(tuple(item["loc"]))
        where = f"{prefix}{where}" if where else prefix.rstrip(".: ")
        line = f"{where}: {message(item)}" if where else message(item)
        if line not in problems:
            problems.append(line)
    return "; ".join(problems)
