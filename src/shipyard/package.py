"""Packages: ``<repository>/<model>/<version>/`` holding artifacts and ``shipyard.json``.

A version folder appears whole or not at all: builds write into a hidden staging folder
beside it and rename it into place at the end; a failed build removes the staging folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.artifact import Artifact, sha256_file, write_text_atomic
from shipyard.errors import PackageError
from shipyard.signature import Signature

MANIFEST = "shipyard.json"
SCHEMA_VERSION = 1


def check_writable(folder: Path) -> None:
    """Raise PackageError unless ``folder`` is (or can be created as) a writable folder.

    Creates nothing: a build checks this before its slow work, and a build that then fails
    must not leave empty folders behind.
    """
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PackageError(f"cannot create output folder {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise PackageError(
            f"output folder {existing} is not writable ({error.strerror}); choose another "
            f"with --output or fix its permissions"
        ) from error


def preflight(output: Path, name: str, version: int, overwrite: bool = False) -> Path:
    """Check that ``output/name/version`` can be written; return that path.

    Builds call this before any slow work, so a bad output folder fails in a second.
    """
    model_dir = Path(output) / name
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise PackageError(
            f"{target} already exists: replace it with --overwrite (Python: overwrite=True), "
            f"or write another version with --version N (recipe: version: N)"
        )
    check_writable(model_dir)
    return target


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


@contextlib.contextmanager
def staging(output: Path, name: str, version: int, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``output/name/version``.

    An existing version is refused unless ``overwrite``; then it is replaced only after the
    new one is complete.
    """
    target = preflight(output, name, version, overwrite)
    model_dir = target.parent
    created = _missing_parents(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PackageError(f"cannot create output folder {model_dir}: {error.strerror}") from error
    stage = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        try:
            yield stage
        except BaseException:
            # A failed build leaves nothing behind, not even the folders it created.
            shutil.rmtree(stage, ignore_errors=True)
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: another version may have appeared
            raise
        # mkdtemp makes 0700 folders; files inside may come from exporters with their own modes.
        os.chmod(stage, 0o755)
        for path in stage.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{version}-", dir=model_dir))
            os.replace(target, old / "v")
            os.replace(stage, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, target)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in the package (manifest excluded), by relative path."""
    return {
        str(path.relative_to(folder)): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST
    write_text_atomic(path, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return path


@dataclass
class Package:
    """A package read back from disk."""

    path: Path
    manifest: dict[str, Any]
    artifacts: list[Artifact]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def signature(self) -> Signature:
        return Signature.model_validate(self.manifest["signature"])


def is_package(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_package(folder: str | Path, verify: bool = True) -> Package:
    """Read ``shipyard.json`` and its artifacts; with ``verify``, check every sha256."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise PackageError(f"{folder} is not a package: no {MANIFEST}") from error
    except (OSError, json.JSONDecodeError) as error:
        raise PackageError(f"cannot read {folder / MANIFEST}: {error}") from error
    if verify:
        for relative, digest in manifest.get("files", {}).items():
            path = folder / relative
            if not path.is_file() or sha256_file(path) != digest:
                raise PackageError(f"{path} is missing or was modified after packaging")
    artifacts = []
    for entry in manifest.get("artifacts", []):
        file = folder / entry["file"]
        if folder.resolve() not in file.resolve().parents:
            raise PackageError(f"artifact path {entry['file']!r} escapes the package folder")
        signature = Signature.model_validate(entry.get("signature") or manifest["signature"])
        artifacts.append(Artifact(entry["name"], entry["format"], signature, path=file))
    return Package(folder, manifest, artifacts)
