"""Resolving ``pkg.module:attr`` references, with errors that say what to fix."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from shipyard.errors import ShipyardError


def is_reference(value: str) -> bool:
    """True for ``pkg.module:attr`` (a colon, no path separator before it, no file suffix)."""
    module, sep, attr = value.partition(":")
    return bool(sep and module and attr and "/" not in module and "\\" not in module)


def import_reference(value: str, error: type[ShipyardError]) -> Any:
    """Import ``pkg.module:attr`` (attr may be dotted) and return the attribute."""
    module_name, _, attr = value.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"cannot import module '{module_name}' (from '{value}'): {exc}. "
            f"Check the spelling and that the package is installed in this environment"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            public = sorted(n for n in dir(target) if n.isidentifier() and not n.startswith("_"))
            close = difflib.get_close_matches(part, public, n=3)
            hint = (
                f"did you mean {' or '.join(repr(c) for c in close)}?"
                if close
                else f"it has: {', '.join(public[:20])}"
            )
            raise error(
                f"module '{module_name}' has no attribute '{attr}' (from '{value}'); {hint}"
            ) from exc
    return target
