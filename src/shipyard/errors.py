"""Shipyard's exceptions: each carries a message a user can act on.

The CLI prints ``str(error)`` on one line and exits non-zero; ``--debug`` adds the traceback.
"""

from __future__ import annotations


class ShipyardError(Exception):
    """Base of every error Shipyard raises on purpose."""


class RecipeError(ShipyardError):
    """The recipe is malformed: unknown key, wrong type, missing field (with the YAML line)."""


class SourceError(ShipyardError):
    """A model source cannot be loaded: bad import path, not an nn.Module, unsafe file."""


class DataError(ShipyardError):
    """A data source cannot be loaded or does not match the model's signature."""


class ExportError(ShipyardError):
    """The model cannot be exported; the message holds the exporter's own reason."""


class InputError(ShipyardError):
    """An input tensor contradicts the signature (name, dtype or shape)."""


class BackendError(ShipyardError):
    """A runtime backend cannot execute the artifact as asked (e.g. a GPU EP fell back to CPU)."""


class MissingExtraError(BackendError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(
            f"{what} needs the '{extra}' extra: pip install 'shipyard[{extra}]' "
            f"(could not import '{module}')"
        )


class ServingConfigError(ShipyardError):
    """A manifest's ``serving`` section (a recipe's ``serve:``) is invalid; names the field."""


class PackageError(ShipyardError):
    """A package or output folder cannot be written or read."""


class GateError(ShipyardError):
    """A validation gate failed; ``report`` holds the full comparison."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
