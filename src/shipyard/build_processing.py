"""The build's processing steps: check ``preprocess:``/``postprocess:`` against the model,
put their files into the package, and record what each artifact answers for the examples.

``check_processing`` runs before any slow step; ``package_processing`` returns the manifest's
``preprocess``, ``postprocess`` and ``examples`` entries. ``example_predictions`` runs every
artifact on the recipe's ``data: examples:`` (inputs labelled with their names) and keeps each
one's ``k`` most likely classes, named by the package's labels: the report's top-k table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.artifact import Artifact
from shipyard.data import Dataset
from shipyard.errors import RecipeError
from shipyard.processing.labels import top_k
from shipyard.processing.settings import install
from shipyard.recipe import Recipe
from shipyard.signature import Signature
from shipyard.validate import run_all


def check_processing(recipe: Recipe, signature: Signature) -> list[str] | None:
    """Check the recipe's processing against the model's signature; return the labels.

    Raises RecipeError when the images or texts cannot feed the model, DataError for a
    labels file that cannot be read or names another number of classes than the model has,
    or a tokenizer that cannot be found.
    """
    if recipe.preprocess is not None:
        recipe.preprocess.resolved(recipe.base_dir)  # the tokenizer exists, its length known
        try:
            recipe.preprocess.check(signature)
        except ValueError as error:
            raise RecipeError(str(error)) from error
    if recipe.postprocess is None:
        return None
    return recipe.postprocess.read_labels(recipe.base_dir, signature)


def example_predictions(
    artifacts: Sequence[Artifact],
    examples: Dataset,
    labels: Sequence[str] | None,
    k: int = 5,
    batch_size: int = 64,
) -> dict[str, Any]:
    """``{"names": [...], "top_k": k, "predictions": {artifact: [[{index, label,
    probability}, ...] per example]}}``; each artifact's first output holds the logits.

    Example names are the data set's labels as text (``#1``, ``#2``... without labels).
    """
    if examples.labels is not None:
        names = [str(name) for name in examples.labels]
    else:
        names = [f"#{i + 1}" for i in range(len(examples))]
    predictions = {}
    for artifact in artifacts:
        outputs = run_all(artifact, examples, batch_size, threads=None)
        predictions[artifact.name] = top_k(next(iter(outputs.values())), labels, k)
    return {"names": names, "top_k": k, "predictions": predictions}


def package_processing(
    recipe: Recipe, folder: Path, artifacts: Sequence[Artifact], data: dict[str, Dataset]
) -> dict[str, Any]:
    """Copy the processing files into ``folder``; return the manifest entries.

    ``artifacts``: the reference first, then the packaged ones (for ``examples``).
    """
    reference = artifacts[0]
    entries = install(
        folder, recipe.preprocess, recipe.postprocess, recipe.base_dir, reference.signature
    )
    if "examples" in data:
        labels = check_processing(recipe, reference.signature)
        k = recipe.postprocess.top_k if recipe.postprocess is not None else 5
        entries["examples"] = example_predictions(
            artifacts, data["examples"], labels, k, recipe.validate_.batch_size
        )
    return entries
