"""What a folder given to the server holds: a model repository, one model, or one package.

=================  ==================================  ==========================================
layout             the folder holds                    served
=================  ==================================  ==========================================
repository         ``<model>/<version>/shipyard.json``  every model folder, each by its policy
model folder       ``<version>/shipyard.json``          that model (named after the folder), its
                                                       versions chosen by its version policy
package folder     ``shipyard.json``                   that one version, as model
                                                       ``manifest.name`` version
                                                       ``manifest.version``, whatever its policy
=================  ==================================  ==========================================

A model or package folder is served alone: its siblings are never listed, loaded or reachable,
also not through the repository endpoints. Model names from requests never reach the
filesystem unless they match ``NAME_PATTERN``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shipyard.package import MANIFEST
from shipyard.serve.errors import RepositoryError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,17}$")
_WHAT_TO_PASS = (
    "pass a repository (<model>/<version>/shipyard.json inside), a model folder "
    "(<version>/shipyard.json) or a package folder (shipyard.json)"
)


def scan_versions(folder: Path) -> dict[int, Path]:
    """Version number -> folder, for numeric subfolders holding a manifest."""
    if not folder.is_dir():
        return {}
    return {
        int(child.name): child
        for child in folder.iterdir()
        if VERSION_PATTERN.match(child.name) and (child / MANIFEST).is_file()
    }


@dataclass(frozen=True)
class Layout:
    """One served folder: ``kind``, its resolved ``path`` and, unless it is a repository, the
    one ``model`` it serves (and for a package, the one ``version``)."""

    kind: Literal["repository", "model", "package"]
    path: Path
    model: str | None = None
    version: int | None = None

    def model_names(self) -> list[str]:
        """The models served from this folder. In a repository: every folder with a valid
        name holding a version folder (one whose manifest is missing included, so that its
        load reports it); other folders (``src``, ``reports``, builds' staging folders) are
        not models."""
        if self.model is not None:
            return [self.model]
        if not self.path.is_dir():
            return []
        return sorted(
            p.name
            for p in self.path.iterdir()
            if p.is_dir() and NAME_PATTERN.match(p.name) and _holds_versions(p)
        )

    def versions(self, name: str) -> dict[int, Path]:
        """Version number -> folder of model ``name`` on disk now ({} for a model not served
        from here). ``name`` must have matched ``NAME_PATTERN``."""
        if self.kind == "repository":
            return scan_versions(self.path / name)
        if name != self.model:
            return {}
        if self.kind == "model":
            return scan_versions(self.path)
        assert self.version is not None
        return {self.version: self.path} if (self.path / MANIFEST).is_file() else {}

    def describe(self) -> str:
        """One line for logs and the startup table: what is served from where."""
        if self.kind == "repository":
            return f"repository {self.path}"
        if self.kind == "model":
            return f"model folder {self.path} (model '{self.model}')"
        return f"package {self.path} (model '{self.model}' version {self.version})"


def served_as(layout: Layout, name: str) -> Layout:
    """``layout`` (one model or package folder) served as model ``name``, as a serving
    runtime names it (KServe passes the InferenceService's name); RepositoryError for a
    repository, which holds models named by their folders, or for an invalid name."""
    if layout.kind == "repository":
        raise RepositoryError(
            f"--model-name renames one model: {layout.path} is a repository, whose models are "
            "named by their folders; pass one model folder or package folder"
        )
    if not NAME_PATTERN.match(name):
        raise RepositoryError(
            f"invalid model name {name[:80]!r}: use letters, digits, '_', '.', '-'"
        )
    return Layout(layout.kind, layout.path, name, layout.version)


def _holds_versions(folder: Path) -> bool:
    try:
        return any(VERSION_PATTERN.match(c.name) and c.is_dir() for c in folder.iterdir())
    except OSError:  # unreadable: not served, as a folder that is not a model
        return False


def find_layout(path: str | Path) -> Layout:
    """The layout of folder ``path``; RepositoryError saying what to pass when it is none."""
    folder = Path(path).resolve()
    if folder.is_file():  # the server serves packages; the CLI packages a model file first
        raise RepositoryError(
            f"{path} is a file, not a folder: {_WHAT_TO_PASS}; package a model file first "
            f"(shipyard package FILE -o REPO), or serve it with shipyard serve FILE, which does"
        )
    if not folder.is_dir():
        raise RepositoryError(f"{path} is not a folder: {_WHAT_TO_PASS}")
    if (folder / MANIFEST).is_file():
        name, version = _package_identity(folder)
        return Layout("package", folder, name, version)
    if scan_versions(folder):
        if not NAME_PATTERN.match(folder.name):
            raise RepositoryError(
                f"{path} is a model folder, but {folder.name!r} is not a valid model name "
                "(letters, digits, '_', '.', '-'): rename the folder"
            )
        return Layout("model", folder, folder.name)
    return Layout("repository", folder)


def _package_identity(folder: Path) -> tuple[str, int]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        name, version = manifest["name"], manifest["version"]
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise RepositoryError(
            f"cannot serve package {folder}: {MANIFEST} has no readable name and version "
            f"({type(error).__name__}: {error})"
        ) from None
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise RepositoryError(f"cannot serve package {folder}: invalid model name {name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RepositoryError(f"cannot serve package {folder}: invalid version {version!r}")
    return name, version


def suggest(layout: Layout) -> str:
    """What to pass instead of ``layout``, a folder that serves no model: the nearest folder
    below it that does (a package up to four levels deep, as in ``project/out/<model>/<v>``),
    else the layouts there are."""
    if layout.kind == "repository":
        for depth in range(1, 5):
            found = sorted(layout.path.glob("*/" * depth + MANIFEST))
            if found:
                package = found[0].parent
                repository = package.parent.parent
                fits = VERSION_PATTERN.match(package.name) and NAME_PATTERN.match(
                    package.parent.name
                )
                better = repository if fits and repository != layout.path else package
                return f"did you mean {better}? ({_WHAT_TO_PASS})"
    return _WHAT_TO_PASS
