"""The model repository: ``<root>/<model>/<version>/shipyard.json``, loaded into batchers.

The root may also be one model folder or one package folder (:mod:`shipyard.serve.layout`);
then only that model is served. Loading a model reads its version folders, applies the
version policy (from the newest version's ``serving`` config), and for each chosen version:
checks its signature (with a verify key: an unsigned, tampered or foreign-signed version is
refused), verifies the package (sha256), opens ``instances`` sessions, runs the signature's example
inputs once (smoke test) and only then puts the version in service. A version that fails to
load never replaces one that is serving: under ``latest: N`` the next older version that
loads is served instead, and a failed reload of a serving version keeps the previous load.
Unloading drains: queued and running requests of the version finish first.

Model names from requests are looked up in memory only; the filesystem is touched only by
load, unload and index, and only after the name matched ``NAME_PATTERN``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import ShipyardError
from shipyard.package import MANIFEST, load_package
from shipyard.serve.batcher import Batcher
from shipyard.serve.errors import (
    BadRequest,
    ModelNotFound,
    ModelNotReady,
    ServeError,
)
from shipyard.serve.layout import NAME_PATTERN, VERSION_PATTERN, Layout, find_layout
from shipyard.serve.metrics import ServeMetrics
from shipyard.serve.sequences import SequenceBatcher
from shipyard.serve.version import ModelVersion, manifest_digest, open_version
from shipyard.serving import AllPolicy, LatestPolicy, ServingConfig, VersionPolicy
from shipyard.signing import SIGNATURE_FILE, PackageVerifier

logger = logging.getLogger(__name__)


class LoadFailed(ServeError):
    """A load request left at least one version unavailable (400, as Triton answers)."""

    status = 400


class State(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class VersionStatus:
    """``reason`` is short and shown to inference clients; ``detail`` (the error, which may
    name server paths) only in the repository index."""

    state: State
    reason: str = ""
    detail: str = ""

    def describe(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else BadRequest (nothing reaches the filesystem)."""
    if not NAME_PATTERN.match(name):
        raise BadRequest(f"invalid model name {name[:80]!r}: use letters, digits, '_', '.', '-'")
    return name


def parse_version(text: str) -> int:
    """A version from a URL: a positive integer, else BadRequest."""
    if not VERSION_PATTERN.match(text):
        raise BadRequest(f"invalid version {text[:40]!r}: versions are positive integers")
    return int(text)


@dataclass
class _Model:
    name: str
    serving: dict[int, ModelVersion] = field(default_factory=dict)
    status: dict[int, VersionStatus] = field(default_factory=dict)
    latest: ModelVersion | None = None  # the highest serving version, for unversioned requests
    unloaded: bool = False

    def publish(self, serving: dict[int, ModelVersion]) -> None:
        self.serving = serving
        self.latest = serving[max(serving)] if serving else None


@dataclass(frozen=True)
class VersionRow:
    """One version the repository knows, as the startup table lists it."""

    model: str
    version: int
    state: State
    reason: str  # why it is not READY, with the error (empty when READY)
    served: ModelVersion | None  # the version in service, None unless READY


Fingerprint = tuple[tuple[int, ...], ...]


def _fingerprint(versions: dict[int, Path]) -> Fingerprint:
    """Cheap change detector for a model: each version's manifest inode, mtime, size, and its
    signature's mtime and size (a version signed in place loads on the next poll)."""
    prints = []
    for number, path in sorted(versions.items()):
        try:
            stat = (path / MANIFEST).stat()
        except OSError:
            continue
        try:
            signature = (path / SIGNATURE_FILE).stat()
            signed = (signature.st_mtime_ns, signature.st_size)
        except OSError:
            signed = (0, 0)
        prints.append((number, stat.st_ino, stat.st_mtime_ns, stat.st_size, *signed))
    return tuple(prints)


def _policy(versions: dict[int, Path]) -> VersionPolicy:
    """The newest version's policy (an unreadable newest manifest defers to the next)."""
    for number in sorted(versions, reverse=True):
        try:
            package = load_package(versions[number], verify=False)
            return ServingConfig.from_manifest(package.manifest).version_policy
        except Exception:
            continue  # the load of that version reports why
    return LatestPolicy(latest=1)


def _detail(error: BaseException) -> str:
    if isinstance(error, ShipyardError):
        return str(error)
    return f"{type(error).__name__}: {error}"  # e.g. a KeyError from a malformed manifest


class Repository:
    """The models of ``root`` and their versions in service. Use inside one event loop.

    ``root``: a repository, model or package folder (see :mod:`shipyard.serve.layout`), or
    its :class:`Layout`. Raises RepositoryError when it is not a folder. ``verifier``: every
    version must pass its signature check before it loads.
    """

    def __init__(
        self,
        root: str | Path | Layout,
        metrics: ServeMetrics | None = None,
        verifier: PackageVerifier | None = None,
    ) -> None:
        self.layout = root if isinstance(root, Layout) else find_layout(root)
        self.root = self.layout.path
        self.metrics = metrics or ServeMetrics()
        self.verifier = verifier
        self._models: dict[str, _Model] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # model -> its folder's fingerprint when it was last loaded (for poll()).
        self._prints: dict[str, Fingerprint] = {}

    # -- the hot path: memory only ------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The version serving ``name`` (``version`` as in the URL; None: the newest ready).

        Raises BadRequest (invalid name/version), ModelNotFound or ModelNotReady.
        """
        model = self._models.get(name)
        if model is None:
            check_name(name)
            raise ModelNotFound(f"unknown model '{name}'")
        if version is None:
            if model.latest is None:
                raise ModelNotReady(f"model '{name}' has no ready version ({self._why(model)})")
            return model.latest
        number = parse_version(version)
        served = model.serving.get(number)
        if served is not None:
            return served
        status = model.status.get(number)
        if status is None:
            raise ModelNotFound(
                f"model '{name}' has no version {number} in service "
                f"(serving {sorted(model.serving) or 'none'})"
            )
        raise ModelNotReady(
            f"model '{name}' version {number} is {status.state.value}: "
            f"{status.reason or 'not ready'}"
        )

    def versions(self, name: str) -> list[int]:
        model = self._models.get(name)
        return sorted(model.serving) if model else []

    def ready(self) -> bool:
        """Every model that is meant to be served has a ready version."""
        return all(m.latest is not None for m in self._models.values() if not m.unloaded)

    @staticmethod
    def _why(model: _Model) -> str:
        reasons = [f"version {v}: {s.reason or s.state.value}" for v, s in model.status.items()]
        return "; ".join(reasons) or "not loaded"

    # -- repository operations ----------------------------------------------------------------
    def model_names(self) -> list[str]:
        """The models served from root: for a repository its valid model folder names
        (hidden and staging folders are skipped), else the one model."""
        return self.layout.model_names()

    def rows(self) -> list[VersionRow]:
        """Every version a load has looked at, by model and version."""
        return [
            VersionRow(name, number, status.state, status.describe(), model.serving.get(number))
            for name, model in sorted(self._models.items())
            for number, status in sorted(model.status.items())
        ]

    async def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """The V2 repository index: one entry per model version on disk or in memory."""

        def scan() -> dict[str, set[int]]:  # the filesystem part, off the event loop
            return {name: set(self.layout.versions(name)) for name in self.model_names()}

        on_disk = await asyncio.to_thread(scan)
        entries = []
        for name in sorted(set(on_disk) | set(self._models)):
            model = self._models.get(name, _Model(name))
            numbers = on_disk.get(name, set()) | set(model.status)
            for number in sorted(numbers):
                status = model.status.get(number, VersionStatus(State.UNAVAILABLE, "not loaded"))
                if ready_only and status.state is not State.READY:
                    continue
                entries.append(
                    {
                        "name": name,
                        "version": str(number),
                        "state": status.state.value,
                        "reason": status.describe(),
                    }
                )
        return entries

    async def load_all(self) -> dict[str, str]:
        """Load every model under root; return model -> why it (or one of the versions its
        policy chose) failed to load, for the caller to log or refuse. The index keeps it."""
        failures = {}
        for name in await asyncio.to_thread(self.model_names):
            try:
                await self.load(name)
            except ServeError as error:
                failures[name] = str(error)
        return failures

    async def load(self, name: str) -> list[int]:
        """(Re)load ``name`` per its version policy; return the versions now serving.

        Raises ModelNotFound when the folder holds no version, LoadFailed when a version
        could not be loaded (the versions serving before stay in service).
        """
        check_name(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            versions = await asyncio.to_thread(self.layout.versions, name)
            self._prints[name] = await asyncio.to_thread(_fingerprint, versions)
            if not versions:
                # Gone from disk (or never there): retire what served and forget the model.
                self._prints.pop(name, None)
                gone = self._models.pop(name, None)
                if gone is not None:
                    retired = dict(gone.serving)
                    gone.publish({})
                    await self._retire(gone, retired, "removed from the repository")
                raise ModelNotFound(f"no model '{name}' (no version folder with {MANIFEST})")
            model = self._models.setdefault(name, _Model(name))
            model.unloaded = False
            # A package folder is served as given, whatever its policy says.
            if self.layout.kind == "package":
                policy: VersionPolicy = AllPolicy(all=True)
            else:
                policy = await asyncio.to_thread(_policy, versions)
            wanted = policy.latest if isinstance(policy, LatestPolicy) else len(versions)
            serving: dict[int, ModelVersion] = {}
            failures: list[str] = []
            for number in policy.select(list(versions)):
                if len(serving) >= wanted:
                    break
                loaded, failure = await self._load_version(model, number, versions[number])
                if loaded is not None:
                    serving[number] = loaded
                if failure is not None:
                    failures.append(f"version {number}: {failure}")
            previous = model.serving
            model.publish(serving)
            retired = {v: mv for v, mv in previous.items() if serving.get(v) is not mv}
            await self._retire(model, retired, "unloaded: not selected by the version policy")
            for number in set(model.status) - set(versions):
                del model.status[number]  # folders that disappeared
            if failures:
                raise LoadFailed(
                    f"model '{name}': "
                    + "; ".join(failures)
                    + f" (serving versions {sorted(serving) or 'none'})"
                )
            return sorted(serving)

    async def _load_version(
        self, model: _Model, number: int, folder: Path
    ) -> tuple[ModelVersion | None, str | None]:
        """(the version in service after this call or None, why a (re)load failed or None).

        An unchanged manifest keeps the loaded version; a changed one is loaded anew, and if
        that fails the previous load keeps serving.
        """
        current = model.serving.get(number)
        try:
            if current is not None and current.digest == await asyncio.to_thread(
                manifest_digest, folder
            ):
                return current, None
            if current is None:
                model.status[number] = VersionStatus(State.LOADING, "loading")
            opened = await asyncio.to_thread(open_version, folder, self.verifier)
        except Exception as error:
            detail = _detail(error)
            if current is not None:
                why = "reload failed, serving the previous load"
                model.status[number] = VersionStatus(State.READY, why, detail)
                return current, f"{why}: {detail}"
            model.status[number] = VersionStatus(State.UNAVAILABLE, "failed to load", detail)
            return None, detail
        label = f"model '{model.name}' version {number}"
        bound = self.metrics.version(model.name, number)
        batcher: Batcher | SequenceBatcher
        if opened.config.sequence is not None:  # stateful: serve/sequences.py
            sequences = SequenceBatcher(opened.sessions, opened.config, label=label, metrics=bound)
            live = self.metrics.live_sequences.labels(model.name, str(number))
            live.set_function(lambda: sequences.live)
            batcher = sequences
        else:
            padding = opened.text.padding if opened.text is not None else None
            batcher = Batcher(
                opened.sessions, opened.config, label=label, metrics=bound, padding=padding
            )
        if not bound.track_depth:  # one process: read at scrape time, free per request
            bound.queue_depth.set_function(lambda: batcher.depth)
        batcher.start()
        self.metrics.load_seconds.labels(model.name, str(number)).set(opened.seconds)
        model.status[number] = VersionStatus(State.READY)
        return ModelVersion(model.name, number, opened, batcher, bound), None

    async def poll(self) -> list[str]:
        """Reload every model whose folder changed since its last load (new, replaced or
        removed versions; new or removed model folders). Return the names it reloaded.

        An explicitly unloaded model stays unloaded until its folder changes.
        """

        def scan() -> dict[str, Fingerprint]:
            names = set(self.model_names()) | set(self._prints)
            return {name: _fingerprint(self.layout.versions(name)) for name in names}

        changed = [
            name
            for name, print_ in (await asyncio.to_thread(scan)).items()
            if self._prints.get(name) != print_
        ]
        for name in changed:
            try:
                await self.load(name)
            except ServeError as error:
                logger.warning("model %s: %s", name, error)
        return changed

    async def unload(self, name: str) -> None:
        """Take every version of ``name`` out of service; in-flight requests finish first."""
        check_name(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            model = self._models.get(name)
            if model is None:
                raise ModelNotFound(f"unknown model '{name}'")
            model.unloaded = True
            serving = dict(model.serving)
            model.publish({})
            await self._retire(model, serving, "unloaded")

    async def _retire(self, model: _Model, versions: dict[int, ModelVersion], why: str) -> None:
        for number in versions:
            if number not in model.serving:
                model.status[number] = VersionStatus(State.UNAVAILABLE, why)
        await asyncio.gather(*(mv.batcher.close() for mv in versions.values()))
        for number in versions:
            if number not in model.serving:
                self.metrics.forget(model.name, number)

    async def close(self) -> None:
        """Unload every model (drains in-flight requests)."""
        for name, model in list(self._models.items()):
            if model.serving:
                await self.unload(name)
