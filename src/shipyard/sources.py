"""Model sources: everything a user may hand us, loaded without executing untrusted pickles.

Accepted:
- ``pkg.module:factory`` — a callable returning an ``nn.Module`` (``kwargs`` passed), or a
  module instance; optional ``weights`` (state_dict as ``.safetensors`` or a ``.pt`` loaded
  with ``weights_only=True``);
- a TorchScript archive (``.pt``/``.pth``/``.ts`` made by ``torch.jit.save``);
- a ``torch.export`` program (``.pt2``);
- an ONNX file (``.onnx``);
- an OpenVINO IR (``.xml`` with its ``.bin``) or a TFLite file (``.tflite``), signature read
  from the file (tensor names taken from a given signature by position);
- a Hugging Face model folder (``config.json``, weights; sentence-transformers' pooling and
  normalisation when its files say so), signature derived from it: see ``model_folder``.

A reference (``pkg.module:attr``) may also name a path, or a function returning one: a file or
folder that ships inside an installed package.

The last three are *model files* (``MODEL_FILES``): a build packages such a file as it is when
no pass makes another, and ``shipyard package``/``serve`` take one without a recipe.
``model_file`` checks a path given as one; ``model_files`` lists the files it consists of.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from shipyard.artifact import Artifact
from shipyard.errors import SourceError
from shipyard.imports import import_reference, is_reference
from shipyard.signature import Signature, TensorSpec
from shipyard.torch_modules import eval_mode, flatten_outputs, output_names

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
# Model files by suffix -> their artifact format. They run as they are, with no torch module.
MODEL_FILES = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}
_MODEL_FILE_KINDS = ".onnx, .tflite, or an OpenVINO .xml with its .bin"


def is_model_file(source: str) -> bool:
    """Whether ``source`` names a model file, by its suffix (see ``MODEL_FILES``)."""
    return not is_reference(source) and Path(source).suffix.lower() in MODEL_FILES


def model_file(path: str | Path) -> Path:
    """``path`` checked as a model file: it exists and is one of ``MODEL_FILES``, and an
    OpenVINO ``.xml`` has its ``.bin`` (the ``.bin`` of an IR given instead: its ``.xml``).

    Raises SourceError naming what is missing or which files are accepted.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        xml = path.with_suffix(".xml")
        if not xml.is_file():
            raise SourceError(
                f"{path} has no {xml.name} beside it: an OpenVINO model is the .xml with its "
                f".bin, so pass the .xml (a .bin of PyTorch weights needs its architecture: "
                f"a recipe with model: {{source: 'pkg.module:factory', weights: '{path}'}})"
            )
        path, suffix = xml, ".xml"
    if suffix not in MODEL_FILES:
        raise SourceError(
            f"{path} is not a model file Shipyard runs as it is ({_MODEL_FILE_KINDS}); a "
            f"PyTorch model needs a recipe with an export or convert step (shipyard build)"
        )
    if not path.is_file():
        raise SourceError(f"model file {path} does not exist")
    if suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise SourceError(
            f"{path} has no {path.with_suffix('.bin').name} beside it: an OpenVINO model needs "
            f"both files (the .bin holds its weights)"
        )
    return path


def model_files(path: Path) -> list[Path]:
    """Every file model file ``path`` consists of, itself first: an ONNX file's external
    data, an OpenVINO IR's ``.bin``. Raises SourceError for external data outside its folder
    or missing."""
    files = [path]
    if path.suffix.lower() == ".xml":
        files.append(path.with_suffix(".bin"))
    if path.suffix.lower() == ".onnx":
        from shipyard.runtimes.onnxruntime import onnx_external_files

        for location in onnx_external_files(path):
            data = path.parent / location
            if Path(location).is_absolute() or ".." in Path(location).parts:
                raise SourceError(
                    f"{path} keeps external data at {location!r}, outside its own folder; "
                    f"save it beside the model (onnx.save_model(..., location='{path.name}.data'))"
                )
            if not data.is_file():
                raise SourceError(f"{path} refers to external data {location!r}, which is missing")
            files.append(data)
    return files


def load_model(
    source: str,
    signature: Signature | None = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    weights: str | Path | None = None,
    name: str | None = None,
) -> Artifact:
    """Load ``source`` as an Artifact (format ``torch``, or a model file's format).

    A torch source needs ``signature`` (at least its inputs); missing outputs are inferred
    by running the model once. A model file's signature is read from the file when omitted.
    ``name`` labels the artifact in tables (default: the file's stem, ``net.int8`` for
    ``net.int8.onnx``; ``torch`` for a factory).
    """
    if is_reference(source):
        made = _from_factory(source, dict(kwargs or {}))
        if isinstance(made, Path):  # a path inside an installed package
            if weights is not None:
                raise SourceError(f"'{source}' names the model file or folder {made}: no weights")
            return load_model(str(made), signature, name=name)
        if weights is not None:
            load_weights(made, Path(weights))
        return torch_artifact(made, signature, name or "torch", source)
    path = Path(source)
    if path.is_dir():
        from shipyard.model_folder import is_model_folder, load_model_folder

        if not is_model_folder(path):
            raise SourceError(
                f"{path} is a folder without a config.json: a model folder is a Hugging Face "
                f"one (config.json and its weights)"
            )
        module, derived = load_model_folder(path)
        return torch_artifact(module, signature or derived, name or "torch", source)
    if is_model_file(source):
        path = model_file(path)
        return _file_artifact(path, MODEL_FILES[path.suffix.lower()], signature, name)
    if not path.exists():
        raise SourceError(
            f"model source '{source}' is neither an existing file nor 'pkg.module:factory'"
        )
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as error:
            raise SourceError(f"cannot load torch.export program {path}: {error}") from error
        return torch_artifact(program.module(), signature, name or path.stem, source, path)
    if path.suffix in (".pt", ".pth", ".ts", ".jit") and _is_torchscript(path):
        return torch_artifact(torch.jit.load(str(path)), signature, name or path.stem, source, path)
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors"):
        raise SourceError(
            f"{path} holds weights, not an architecture: give the architecture as "
            f"'pkg.module:factory' and this file as its weights "
            f"(recipe: model: {{source: 'pkg.module:factory', weights: '{path}'}}; "
            f"CLI: --weights {path})"
        )
    raise SourceError(
        f"unsupported model file {path.name}: use .onnx, .tflite, an OpenVINO .xml, .pt2, "
        f"a TorchScript archive, or 'pkg.module:factory' with weights"
    )


def _file_artifact(
    path: Path, kind: str, signature: Signature | None, name: str | None
) -> Artifact:
    """A model file as an Artifact; its signature read from the file. An ONNX file's is
    replaced by ``signature`` when given; the converters' files keep their own, with the tensor
    names of ``signature`` (see :func:`adopt_names`)."""
    if kind == "onnx":
        from shipyard.runtimes.onnxruntime import onnx_signature

        return Artifact(name or path.stem, "onnx", signature or onnx_signature(path), path=path)
    if kind == "tflite":
        from shipyard.runtimes.litert import tflite_signature

        own = tflite_signature(path)
    else:
        from shipyard.runtimes.openvino import ir_signature

        own = ir_signature(path)
    return Artifact(name or path.stem, kind, adopt_names(own, signature), path=path)


def _from_factory(reference: str, kwargs: dict[str, Any]) -> torch.nn.Module | Path:
    """The module ``reference`` names or makes, or the path it names or returns."""
    target = import_reference(reference, SourceError)
    if isinstance(target, torch.nn.Module | str | os.PathLike):
        if kwargs:
            raise SourceError(f"'{reference}' is not a factory; it takes no kwargs")
        return target if isinstance(target, torch.nn.Module) else Path(target)
    if not callable(target):
        raise SourceError(f"'{reference}' is a {type(target).__name__}, not a factory or module")
    try:
        module = target(**kwargs)
    except (TypeError, ValueError) as error:  # the factory refused the arguments it was given
        raise SourceError(
            f"calling '{reference}' with kwargs {kwargs} failed: {type(error).__name__}: "
            f"{error}; fix the kwargs (recipe: model: kwargs:, CLI: --kwargs)"
        ) from error
    if isinstance(module, str | os.PathLike):
        if not Path(module).exists():
            raise SourceError(
                f"factory '{reference}' returned the {type(module).__name__} {str(module)!r}, "
                f"neither a torch.nn.Module nor an existing model file or folder"
            )
        return Path(module)
    if not isinstance(module, torch.nn.Module):
        raise SourceError(
            f"factory '{reference}' returned a {type(module).__name__}, not a torch.nn.Module"
        )
    return module


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives carry their code; state_dict archives only data.pkl + tensors.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("constants.pkl") for n in archive.namelist())


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load a state_dict into ``module`` without ever unpickling arbitrary objects."""
    if not path.exists():
        raise SourceError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError) as error:
            raise SourceError(
                f"refused to load {path}: it holds pickled Python objects besides tensors, and "
                f"Shipyard never unpickles arbitrary objects (torch.load weights_only=True). "
                f"Save only the weights: torch.save(model.state_dict(), path), or use "
                f"safetensors"
            ) from error
    if isinstance(state, Mapping):
        for key in _STATE_DICT_KEYS:  # common checkpoint layouts nest the state_dict
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise SourceError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise SourceError(
            f"weights {path} do not fit the model: missing {list(result.missing_keys)[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


def torch_artifact(
    module: torch.nn.Module,
    signature: Signature | None,
    name: str = "torch",
    source: str = "",
    path: Path | None = None,
) -> Artifact:
    """Wrap a module; infer the output specs by running it once when they are not given."""
    if signature is None:
        raise SourceError(
            f"the model '{source or name}' needs an input signature: in the recipe "
            f"'signature: {{inputs: [{{name: x, dtype: float32, shape: [batch, 3, 224, 224]}}]}}'"
            f", on the command line '--input x:float32[batch,3,224,224]'"
        )
    eval_mode(module)
    if not signature.outputs:
        signature = signature.with_outputs(infer_outputs(module, signature))
    return Artifact(name, "torch", signature, path=path, module=module)


def infer_outputs(module: torch.nn.Module, signature: Signature) -> list[TensorSpec]:
    """Output specs from two runs at different dynamic sizes: dims that change are dynamic."""
    runs = []
    for size in (2, 3):
        feeds = signature.example_inputs(batch=size)
        args = [torch.as_tensor(feeds[n]) for n in signature.input_names]
        try:
            with torch.inference_mode():
                runs.append(flatten_outputs(module(*args)))
        except Exception as error:
            raise SourceError(
                f"running the model on example inputs ({signature.describe_inputs()}) failed: "
                f"{type(error).__name__}: {error}"
            ) from error
    dynamic = [d for spec in signature.inputs for d in spec.dynamic_dims.values()]
    dim_name = dynamic[0] if len(set(dynamic)) == 1 else None
    names = output_names(len(runs[0]), [])
    specs = []
    for i, (a, b) in enumerate(zip(runs[0], runs[1], strict=True)):
        shape: list[int | str] = []
        for axis, (da, db) in enumerate(zip(a.shape, b.shape, strict=True)):
            shape.append(da if da == db else (dim_name or f"{names[i]}_d{axis}"))
        dtype = str(a.dtype).removeprefix("torch.")
        specs.append(TensorSpec(name=names[i], dtype=dtype, shape=tuple(shape)))
    return specs


def adopt_names(own: Signature, given: Signature | None) -> Signature:
    """A converted file's own signature, with the tensor names of ``given`` by position.

    Converters rename tensors (TFLite: ``args_0``; OpenVINO may drop output names), while
    data sets and comparisons key inputs by the source model's names. A 4-D input whose shape
    is ``given``'s NCHW shape moved to NHWC is marked ``layout: NHWC``.
    """
    if given is None:
        return own
    if len(given.inputs) != len(own.inputs):
        raise SourceError(
            f"the file takes {len(own.inputs)} inputs ({own.describe_inputs()}) but the given "
            f"signature has {len(given.inputs)} ({given.describe_inputs()})"
        )

    def rename(mine: TensorSpec, theirs: TensorSpec) -> TensorSpec:
        layout = mine.layout
        nchw = theirs.shape
        if len(mine.shape) == len(nchw) == 4 and mine.shape[1:] == (*nchw[2:], nchw[1]):
            layout = "NHWC"
        return mine.model_copy(update={"name": theirs.name, "layout": layout})

    inputs = tuple(rename(m, t) for m, t in zip(own.inputs, given.inputs, strict=True))
    outputs = own.outputs
    if len(given.outputs) == len(own.outputs):
        outputs = tuple(
            m.model_copy(update={"name": t.name})
            for m, t in zip(own.outputs, given.outputs, strict=True)
        )
    return Signature(inputs=inputs, outputs=outputs)
