"""Packages: ``<repository>/<model>/<version>/`` holding artifacts and ``shipyard.json``.

A version folder appears whole or not at all: builds write into a hidden staging folder
beside it and rename it into place at the end; a failed build removes the staging folder.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
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


# Documents derived from the manifest (``shipyard report`` writes them again at will): not
# served, so editing or deleting one must not break the package. Top-level names only; every
# other file in the package (model files, processing files such as a tokenizer) is covered.
REPORT_FILES = ("report.md", "report.html", "report-*.png")
# The manifest's own checksum: sha256 of its canonical JSON without this field. It catches an
# accidental edit of shipyard.json; it is not a security feature (signing is).
MANIFEST_DIGEST = "manifest_sha256"
# Keys an operator may change in place, left out of the digest: "serving" (batching,
# instances, version policy; validated when the server loads the version, which reloads on
# such an edit) and "version" (in a repository the folder name is the version, so a package
# may be copied into another version folder with its "version" set to match).
EDITABLE = ("serving", "version")


def is_report_file(relative: str | Path) -> bool:
    """True for a derived document (``REPORT_FILES``), which integrity checks leave out."""
    parts = Path(relative).parts
    return len(parts) == 1 and any(fnmatch.fnmatchcase(parts[0], p) for p in REPORT_FILES)


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in the package by relative path, but the manifest and reports."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != MANIFEST and not is_report_file(relative):
            hashes[relative] = sha256_file(path)
    return hashes


def content_digest(manifest: dict[str, Any]) -> str:
    """sha256 of ``manifest``'s canonical JSON (sorted keys, no spaces), without its digest
    and the ``EDITABLE`` keys."""
    left_out = {MANIFEST_DIGEST, *EDITABLE}
    content = {key: value for key, value in manifest.items() if key not in left_out}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``shipyard.json`` atomically with its digest; return the manifest as written.

    Values JSON cannot hold (paths, dates) are written as strings, and the digest is taken
    over what a reader will get back, so that it checks on load.
    """
    written = json.loads(json.dumps(manifest, default=str))
    written.pop(MANIFEST_DIGEST, None)
    written[MANIFEST_DIGEST] = content_digest(written)
    write_text_atomic(folder / MANIFEST, json.dumps(written, indent=2) + "\n")
    return written


def seal(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash the package's files into ``manifest["files"]``, write it; return it as written.

    The last step of a build, once every served file is in ``folder``.
    """
    return write_manifest(folder, {**manifest, "files": file_hashes(folder)})


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
    """Read ``shipyard.json`` and its artifacts.

    With ``verify``: the manifest's digest (when it has one: older packages do not) and the
    sha256 of every file it lists, report files excepted; every artifact file must be listed.
    Raises PackageError saying which file changed.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise PackageError(f"{folder} is not a package: no {MANIFEST}") from error
    except (OSError, json.JSONDecodeError) as error:
        raise PackageError(f"cannot read {folder / MANIFEST}: {error}") from error
    if not isinstance(manifest, dict):
        raise PackageError(f"{folder / MANIFEST} is not a JSON object")
    if verify:
        _verify_manifest(folder, manifest)
    artifacts = []
    for entry in manifest.get("artifacts", []):
        file = folder / entry["file"]
        if folder.resolve() not in file.resolve().parents:
            raise PackageError(f"artifact path {entry['file']!r} escapes the package folder")
        signature = Signature.model_validate(entry.get("signature") or manifest["signature"])
        artifacts.append(Artifact(entry["name"], entry["format"], signature, path=file))
    if verify:
        _verify_files(folder, manifest.get("files", {}), artifacts)
    return Package(folder, manifest, artifacts)


def _verify_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    expected = manifest.get(MANIFEST_DIGEST)
    if expected is not None and content_digest(manifest) != expected:
        raise PackageError(
            f"{folder / MANIFEST} was modified after packaging: its content no longer matches "
            f"its {MANIFEST_DIGEST} (only {' and '.join(map(repr, EDITABLE))} may be edited in "
            f"place); restore the original or build the package again"
        )


def _verify_files(folder: Path, files: dict[str, str], artifacts: list[Artifact]) -> None:
    for relative, digest in files.items():
        if is_report_file(relative):
            continue  # listed by packages from before REPORT_FILES; derived, never served
        path = folder / relative
        if not path.is_file() or sha256_file(path) != digest:
            raise PackageError(f"{path} is missing or was modified after packaging")
    for artifact in artifacts:
        for path in artifact.files():
            if path.relative_to(folder).as_posix() not in files:
                raise PackageError(
                    f"{path} is served but the manifest holds no sha256 for it; "
                    f"build the package again"
                )


def repair_manifest(package: Package) -> bool:
    """Bring a verified package's manifest to the current integrity rules; True if rewritten.

    Packages from before these rules list report files among their hashes and carry no
    manifest digest: the report entries are dropped and the digest added. The remaining
    hashes are kept as they are, never recomputed, so a modified model file is not blessed.
    A manifest already current is left untouched (a rewrite would make a watching server
    reload the version).
    """
    files = package.manifest.get("files", {})
    kept = {name: digest for name, digest in files.items() if not is_report_file(name)}
    if kept == files and MANIFEST_DIGEST in package.manifest:
        return False
    package.manifest = write_manifest(package.path, {**package.manifest, "files": kept})
    return True
