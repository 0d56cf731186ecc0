"""One model version in service: open a package, smoke-test it, describe it (V2 metadata).

``open_version(folder)`` does the blocking part of a load (the signature check when the server
has a verify key, sha256 verification, opening
``instances`` sessions, one run of the signature's example inputs); the repository then puts
the sessions behind a Batcher on the event loop and wraps all of it in a ``ModelVersion``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.artifact import Artifact
from shipyard.errors import DataError, ServingConfigError
from shipyard.package import MANIFEST, Package, load_package
from shipyard.runtimes.base import Session, open_session
from shipyard.serve.batcher import Batcher
from shipyard.serve.images import EncodedImages
from shipyard.serve.metrics import MULTIPROCESS, VersionMetrics
from shipyard.serve.protocol import datatype_of
from shipyard.serve.sequences import SequenceBatcher
from shipyard.serve.speech import SpeechClips
from shipyard.serve.text import ServedText
from shipyard.serving import LatestPolicy, ServingConfig, SpecificPolicy
from shipyard.signature import TensorSpec
from shipyard.stateful import Stepper

if TYPE_CHECKING:
    from shipyard.signing import PackageVerifier

# backend -> the "platform" V2 model metadata reports (Triton's names).
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch"}


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else -1 for d in spec.shape]
    return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": shape}


@dataclass
class OpenedVersion:
    """What the loading thread produces: everything but the batcher (which needs the loop)."""

    package: Package
    config: ServingConfig
    sessions: list[Session]
    artifact: Artifact
    artifact_reason: str  # why this artifact: see `choose_artifact`
    backend: str
    digest: str
    seconds: float
    labels: list[str] | None = None  # class names, one per output index (postprocess: labels)
    images: EncodedImages | None = None  # encoded images its package pre-processes
    text: ServedText | None = None  # texts its package tokenizes
    signed_by: str | None = None  # who signed it (a key fingerprint), when verified


def read_labels(package: Package) -> list[str] | None:
    """The class names the package names in ``manifest["postprocess"]["labels"]`` (a text
    file in the package, one name per line), or None. The file is covered by the package's
    hashes like every served file; ServingConfigError when it is named but unreadable."""
    postprocess = package.manifest.get("postprocess") or {}
    name = postprocess.get("labels") if isinstance(postprocess, dict) else None
    if not name:
        return None
    path = (package.path / str(name)).resolve()
    if package.path.resolve() not in path.parents:
        raise ServingConfigError(f"labels file {name!r} escapes the package folder")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ServingConfigError(f"cannot read the labels file {name!r}: {error}") from error
    return [line.strip() for line in lines if line.strip()]


class ModelVersion:
    """A version in service: its package, serving config and batcher."""

    def __init__(
        self,
        name: str,
        version: int,
        opened: OpenedVersion,
        batcher: Batcher | SequenceBatcher,
        metrics: VersionMetrics,
    ) -> None:
        self.name, self.version = name, version
        self.package, self.config = opened.package, opened.config
        self.digest, self.load_seconds = opened.digest, opened.seconds
        self.batcher, self.metrics = batcher, metrics
        # Stateful versions: their batcher keeps sequences (dispatch passes the parameters).
        self.sequences = batcher if isinstance(batcher, SequenceBatcher) else None
        self.signature = batcher.signature
        self.artifact, self.artifact_reason = opened.artifact, opened.artifact_reason
        self.backend = opened.backend
        self.labels = opened.labels
        self.images = opened.images
        self.text = opened.text
        self.signed_by = opened.signed_by
        self.platform = _PLATFORMS.get(opened.backend, opened.backend)
        self.inputs = [_tensor_metadata(s) for s in self.signature.inputs]
        self.outputs = [_tensor_metadata(s) for s in self.signature.outputs]

    @property
    def artifact_file(self) -> str:
        """The served artifact's file, relative to the version folder."""
        path = self.artifact.path
        return str(path.relative_to(self.package.path)) if path is not None else ""

    def triton_config(self) -> dict[str, Any]:
        """The version's settings in the shape of Triton's model configuration (JSON)."""
        batching = self.batcher.max_batch_size > 0

        def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [
                {
                    "name": spec.name,
                    "data_type": "TYPE_" + datatype_of(spec.dtype),
                    "dims": [
                        d if isinstance(d, int) else -1
                        for d in (spec.shape[1:] if batching else spec.shape)
                    ],
                }
                for spec in specs
            ]

        config = self.config
        policy = config.version_policy
        if isinstance(policy, LatestPolicy):
            version_policy: dict[str, Any] = {"latest": {"num_versions": policy.latest}}
        elif isinstance(policy, SpecificPolicy):
            version_policy = {"specific": {"versions": policy.specific}}
        else:
            version_policy = {"all": {}}
        return {
            "name": self.name,
            "platform": self.platform,
            "backend": self.backend,
            # Triton's field for the file a version serves; the parameters say why.
            "default_model_filename": self.artifact_file,
            "version_policy": version_policy,
            "max_batch_size": self.batcher.max_batch_size,
            "input": tensors(self.signature.inputs),
            "output": tensors(self.signature.outputs),
            "dynamic_batching": {
                "preferred_batch_size": config.preferred_batch_sizes,
                "max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000),
                "default_queue_policy": {
                    "max_queue_size": config.max_queue_size,
                    "default_timeout_microseconds": int((config.timeout_ms or 0) * 1000),
                },
            }
            if batching
            else None,
            **({"sequence_batching": self._sequence_batching()} if self.sequences else {}),
            "instance_group": [{"count": config.instances, "kind": "KIND_CPU"}],
            "parameters": {
                "threads": {"string_value": str(config.threads)},
                "artifact": {"string_value": self.artifact.name},
                "artifact_reason": {"string_value": self.artifact_reason},
                **({"signed_by": {"string_value": self.signed_by}} if self.signed_by else {}),
                **(
                    {"encoded_input": {"string_value": self.images.describe()}}
                    if self.images is not None
                    else {}
                ),
                **(
                    {"text_input": {"string_value": self.text.describe()}}
                    if self.text is not None
                    else {}
                ),
                **({"labels": {"string_value": str(len(self.labels))}} if self.labels else {}),
            },
        }

    def _sequence_batching(self) -> dict[str, Any]:
        """Triton's ``sequence_batching`` section: implicit state, idle time, live cap."""
        assert self.sequences is not None
        stepper, config = self.sequences.stepper, self.sequences.config
        model = self.artifact.signature
        states = []
        for name, output in stepper.pairs:
            spec = next(s for s in model.inputs if s.name == name)
            dims = [d if isinstance(d, int) else -1 for d in spec.shape]
            states.append(
                {
                    "input_name": name,
                    "output_name": output,
                    "data_type": "TYPE_" + datatype_of(spec.dtype),
                    "dims": dims,
                    "initial_state": [{"name": "zeros", "zero_data": True}],
                }
            )
        section: dict[str, Any] = {
            "max_sequence_idle_microseconds": int(config.idle_timeout_s * 1e6),
            "oldest": {"max_candidate_sequences": config.max_sequences},
            "state": states,
        }
        if config.context is not None:
            section["context"] = config.context.model_dump()
        return section


def manifest_digest(folder: Path) -> str:
    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()


def choose_artifact(package: Package, config: ServingConfig) -> tuple[Artifact, str]:
    """The artifact a version serves and why, in words for the config endpoint and the
    startup table: ``serving.artifact`` when set, else the manifest's ``default_artifact``
    with its ``default_artifact_reason`` (older packages have none), else the first one.

    Raises ServingConfigError when the package has no artifact or not the one named.
    """
    manifest = package.manifest
    if not package.artifacts:
        raise ServingConfigError(f"{package.path} holds no artifact to serve")
    names = [a.name for a in package.artifacts]
    if config.artifact is not None:
        wanted, why = config.artifact, "named by serving.artifact (the recipe's serve: artifact:)"
    elif manifest.get("default_artifact") is not None:
        wanted = manifest["default_artifact"]
        reason = manifest.get("default_artifact_reason")
        why = reason if isinstance(reason, str) and reason else "the package's default artifact"
    else:
        wanted = names[0]
        why = "the package's first artifact (its manifest names no default)"
    if wanted not in names:
        raise ServingConfigError(f"artifact {wanted!r} is not in the package; it has {names}")
    return package.artifacts[names.index(wanted)], why


def _backend(package: Package, artifact: Artifact) -> str:
    entry = next(e for e in package.manifest["artifacts"] if e["name"] == artifact.name)
    return entry.get("backend") or ("onnxruntime" if artifact.format == "onnx" else "")


def open_version(folder: Path, verifier: PackageVerifier | None = None) -> OpenedVersion:
    """Blocking: verify the package, open its sessions and smoke-test them.

    ``verifier``: check the package's signature first; VerificationError refuses it before
    any of its files is parsed.
    """
    started = time.perf_counter()
    signed_by = verifier.verify(folder).signer if verifier is not None else None
    digest = manifest_digest(folder)
    package = load_package(folder, verify=True)
    config = ServingConfig.from_manifest(package.manifest)
    artifact, why = choose_artifact(package, config)
    if config.sequence is not None and MULTIPROCESS:
        raise ServingConfigError(
            "a stateful model keeps each sequence's state in the process that started it, and "
            "worker processes share the port by connection: serve it without --workers"
        )
    if config.sequence is not None:  # names that do not fit fail the load, before any session
        SpeechClips.create(Stepper(artifact.signature, config.sequence), config.sequence.speech)
    backend = _backend(package, artifact)
    sessions: list[Session] = []
    try:
        for _ in range(config.instances):
            sessions.append(open_session(artifact, backend=backend, threads=config.threads))
        example = artifact.signature.example_inputs(batch=1)
        for session in sessions:
            outputs = session.run(example)
            declared = artifact.signature.output_names
            if declared and list(outputs) != declared:
                raise ServingConfigError(
                    f"smoke test: the model returned outputs {list(outputs)}, its signature "
                    f"declares {declared}"
                )
    except BaseException:
        for session in sessions:
            session.close()
        raise
    labels = read_labels(package)
    try:
        images = EncodedImages.from_manifest(package.manifest, artifact.signature)
        text = ServedText.from_manifest(
            package.manifest, artifact.signature, package.path, config.max_batch_size
        )
    except (ValueError, DataError) as error:  # the manifest's preprocess section, its files
        raise ServingConfigError(f"invalid preprocess section: {error}") from error
    seconds = time.perf_counter() - started
    return OpenedVersion(
        package,
        config,
        sessions,
        artifact,
        why,
        backend,
        digest,
        seconds,
        labels=labels,
        images=images,
        text=text,
        signed_by=signed_by,
    )
