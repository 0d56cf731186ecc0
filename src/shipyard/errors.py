"""Shipyard's exceptions: each carries a message a user can act on.

The CLI prints ``str(error)`` on one line and exits non-zero; ``--debug`` adds the traceback.
"""

from __future__ import annotations


class ShipyardError(Exception):
    """Base of every error Shipyard raises on purpose."""


class RecipeError(ShipyardError):
    """The recipe is malformed: unknown key, wrong type, missing field (with the YAML line)."""


class ArtifactError(ShipyardError):
    """An artifact is described inconsistently: an unknown format, a torch artifact without
    its module, or a file format without its path."""


class SourceError(ShipyardError):
    """A model source cannot be loaded: bad import path, not an nn.Module, unsafe file."""


class DataError(ShipyardError):
    """A data source cannot be loaded or does not match the model's signature."""


class PassError(ShipyardError):
    """A pass cannot run on what it was given: the wrong artifact format for it, a step order
    that lost the torch module it needs, or a file an earlier step of the recipe already wrote.
    Each pass family raises its own subclass for its own failures."""


class PruneError(PassError):
    """Pruning cannot run as configured, or Torch-Pruning cannot handle the model."""


class FinetuneError(PassError):
    """Fine-tuning cannot run: no training data, labels unusable, no torch model or teacher."""


class ExportError(PassError):
    """The model cannot be exported; the message holds the exporter's own reason."""


class QuantizeError(PassError):
    """Quantization cannot run: not an ONNX input, an exclusion matching nothing, or ONNX
    Runtime's quantizer failed (its reason in the message)."""


class ConvertError(PassError):
    """Converting to OpenVINO, TFLite or TensorRT cannot start or failed; the message names
    the target and the converter's own reason."""


class InputError(ShipyardError):
    """An input tensor contradicts the signature (name, dtype or shape)."""


class ImageError(InputError):
    """An encoded image cannot be used: not an image of a format we read, above the pixel
    limit, truncated, or of a pixel type we cannot convert to 8-bit RGB."""


class AudioError(InputError):
    """An audio clip cannot be used: not a WAV file we read, at a sample rate the model does
    not take, or longer than the limit."""


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


class SigningError(ShipyardError):
    """A key or certificate cannot be used to sign or verify: unreadable, not PEM, not an
    elliptic-curve key, or a certificate that does not belong to the key."""


class VerificationError(ShipyardError):
    """A package fails its signature check: no ``model.sig``, a signature another key made,
    or files that differ from the signed ones (the message names them)."""


class ComparisonError(ShipyardError):
    """Two artifacts cannot be compared: their outputs differ in count or shape, so the
    candidate does not compute what the reference does (a different model, or a conversion
    that changed the outputs)."""


class GateError(ShipyardError):
    """A validation gate failed; ``report`` holds the full comparison."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
