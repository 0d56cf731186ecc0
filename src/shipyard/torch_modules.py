"""What every part of Shipyard needs to know about a ``torch.nn.Module``.

Sources, passes and the torch runtime all call a module the same way: ``eval_mode`` switches it
to inference, ``flatten_outputs`` turns whatever ``forward`` returns into a list of tensors, and
``output_names`` names those tensors. They live here, in the core, so that ``sources.py`` and
the passes need not import the torch runtime.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from shipyard.errors import BackendError


def flatten_outputs(result: Any) -> list[torch.Tensor]:
    """A module's return value as a flat list of tensors (tensor, tuple/list, or dict).

    Raises BackendError for anything else (a string, None, a custom object).
    """
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for value in result.values() for t in flatten_outputs(value)]
    if isinstance(result, (tuple, list)):
        return [t for value in result for t in flatten_outputs(value)]
    # HF-style ModelOutput objects are dict subclasses; anything else is unsupported.
    raise BackendError(f"the model returned {type(result).__name__}; expected tensors")


def output_names(count: int, declared: list[str]) -> list[str]:
    """Declared names when they match the count, else ``output`` / ``output_0..``."""
    if len(declared) == count:
        return declared
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def eval_mode(module: torch.nn.Module) -> torch.nn.Module:
    """Put ``module`` in eval mode and return it; modules from ``torch.export`` refuse ``eval()``.

    Those were captured in the mode they were exported in, so there is nothing to switch.
    """
    with contextlib.suppress(NotImplementedError):
        module.eval()
    return module
