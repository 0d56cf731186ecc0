"""A model file (``.onnx``, ``.tflite``, OpenVINO ``.xml`` + ``.bin``) as a package's artifact.

A build whose passes make no file packages its model file as it is (``copy_model_file``);
one that would package nothing at all is refused (``check_packages_something``); and
``file_recipe`` is the in-memory recipe that does only that, for ``shipyard package``
and ``shipyard serve FILE``: the one build pipeline, with no recipe file to write.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shipyard.artifact import Artifact
from shipyard.errors import InputError, RecipeError
from shipyard.passes import PASSES
from shipyard.recipe import NAME_PATTERN, Recipe
from shipyard.serving import ServingConfig
from shipyard.sources import is_model_file, model_file, model_files
from shipyard.validate import Gates


def copy_model_file(artifact: Artifact, folder: Path) -> Artifact:
    """``artifact`` (a model file) copied into package ``folder`` with every file it consists
    of, under their own names (an ONNX file names its external data files inside itself).

    The copy is the package's artifact; its provenance is the original's (no pass made it).
    """
    assert artifact.path is not None, "only a model file is copied"
    source = artifact.path
    for path in model_files(source):
        target = folder / path.relative_to(source.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return Artifact(
        artifact.name,
        artifact.format,
        artifact.signature,
        path=folder / source.name,
        provenance=list(artifact.provenance),
    )


def check_packages_something(recipe: Recipe) -> None:
    """Refuse a recipe that would package no artifact, before any work: its passes must make
    a file, or its model be a model file (packaged as it is). Such a file has no reference
    but itself, so ``validate: gates:`` would judge nothing: refused too."""
    if any(PASSES[step.name].makes == "file" for step in recipe.passes):
        return
    source = recipe.model.source
    if not is_model_file(source):
        steps = ", ".join(step.name for step in recipe.passes)
        made = f"its passes ({steps}) make only torch modules" if steps else "it has no passes"
        raise RecipeError(
            f"this recipe would package no artifact: its model {source} is a PyTorch model and "
            f"{made}; add a step that makes a file, e.g. passes: [{{export: {{}}}}] for ONNX "
            f"(or convert_openvino, convert_tflite)"
        )
    if recipe.validate_.gates != Gates():
        raise RecipeError(
            f"validate: gates: compare an artifact with the recipe's model, but this recipe "
            f"packages the model file {source} itself, which has nothing to be compared with; "
            f"remove the gates (the file is run once on the validation data, and its accuracy "
            f"reported when the data has labels)"
        )


def model_name(path: Path, name: str | None = None) -> str:
    """``name`` checked as a model name, else one made from the file's stem: every run of
    characters a name may not hold becomes ``-`` (``my model (2).onnx`` -> ``my-model-2``).

    Raises InputError for an invalid ``name`` or a stem that leaves nothing to name it by.
    """
    if name is not None:
        if not re.match(NAME_PATTERN, name):
            raise InputError(
                f"--name {name!r} is not a valid model name: 1 to 64 letters, digits, '_', '.' "
                f"or '-', starting with a letter or a digit"
            )
        return name
    made = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).lstrip("_.-")[:64].rstrip("-")
    if not made:
        raise InputError(f"cannot make a model name from {path.name!r}: give one with --name")
    return made


def file_recipe(
    path: str | Path,
    *,
    name: str | None = None,
    version: int = 1,
    serving: ServingConfig | Mapping[str, Any] | None = None,
    data: str | None = None,
    samples: int | None = None,
    task: str = "classification",
) -> Recipe:
    """The recipe that packages model file ``path`` as it is: no passes, the signature read
    from the file, ``data`` (``pkg.module:function``, ``.npz``, ``.npy``; at most ``samples``
    of it, default all, or 64 random inputs without data) to run it on, the serving settings
    in ``serving``; named ``name`` or after the file (:func:`model_name`).

    Raises SourceError for a path that is not a model file (missing, unsupported suffix, a
    ``.bin`` without its ``.xml``), InputError for a bad name or version.
    """
    checked = model_file(path).resolve()
    if version < 1:
        raise InputError(f"--version {version}: versions are integers >= 1")
    config = serving if isinstance(serving, ServingConfig) else ServingConfig(**(serving or {}))
    return Recipe.model_validate(
        {
            "name": model_name(checked, name),
            "version": version,
            "task": task,
            "description": f"the model file {checked.name}, packaged as it is",
            "model": {"source": str(checked)},
            "data": {"validation": data} if data is not None else {},
            "validate": {"samples": samples},
            "passes": [],
            "serve": config,
            "base_dir": Path.cwd(),
        }
    )
