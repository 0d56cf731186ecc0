"""Signed packages: ``model.sig`` beside ``shipyard.json``, in the OpenSSF Model Signing format.

The ``model-signing`` library (the ``sign`` extra) writes and checks it: a Sigstore bundle
holding a DSSE envelope over an in-toto statement that lists the sha256 of every signed file.
Offline, with elliptic-curve PEM keys (P-256, P-384, P-521): :func:`sign_package` with the
private key, :class:`PackageVerifier` with the public one. With a signing certificate (and the
certificates it chains to) the bundle carries the certificate, and a verifier trusts a
certificate chain instead of one key. Keyless Sigstore (an OIDC identity, a Fulcio certificate,
the Rekor transparency log) is the same format's online option, through the library's own
``model_signing sign sigstore`` / ``verify sigstore``; it needs the network, so Shipyard does
not wrap it.

What a signature covers: every file of the package folder, ``shipyard.json`` byte for byte
included, except ``model.sig`` itself and the reports (``package.REPORT_FILES``). Reports are
derived from the manifest, never served, and ``shipyard report`` writes them again, which
must not break a signature; their numbers are trustworthy in the signed manifest only.
A file added after signing fails the check as much as a changed or a missing one. Editing
``serving`` in place (which ``manifest_sha256`` allows) needs a new signature: it chooses
what is served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from shipyard.errors import MissingExtraError, SigningError, VerificationError
from shipyard.package import is_report_file, load_package, repair_manifest

SIGNATURE_FILE = "model.sig"
# An encrypted private key's password, read from the environment: never a command-line
# argument, which other local users can see.
PASSWORD_ENV = "SHIPYARD_SIGN_KEY_PASSWORD"
_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # what model-signing accepts
_MAKE_KEYS = (
    "make a pair with: openssl ecparam -name prime256v1 -genkey -noout -out private.pem && "
    "openssl ec -in private.pem -pubout -out public.pem"
)
# model-signing 1.0.1 raises ValueError with exactly this text once the signature itself is
# authentic but the files differ from the signed ones (verifying.Config.verify); only then is
# the statement's file list worth comparing with the folder.
_MISMATCH = "Signature mismatch"


@dataclass(frozen=True)
class Signed:
    """What :func:`sign_package` wrote: the signature, how many files it covers, the signer
    (see :func:`fingerprint`) and the seconds it took."""

    signature: Path
    files: int
    signer: str
    seconds: float


@dataclass(frozen=True)
class Verified:
    """A package that passed :meth:`PackageVerifier.verify`."""

    folder: Path
    files: int
    signer: str
    seconds: float


def _library() -> ModuleType:
    """``model_signing`` (imported on first use: it pulls sigstore, ~0.5 s)."""
    try:
        import model_signing
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as error:
        raise MissingExtraError(
            "signing and verifying packages", "sign", error.name or "model_signing"
        ) from error
    return model_signing


def _offline_config(lib: ModuleType) -> Any:
    """A ``model_signing.signing.Config`` without its default keyless signer, whose set-up in
    the 1.0.1 constructor reaches Sigstore's TUF repository over the network (it fails
    offline, and key signing needs none of it; lazy upstream since sigstore/model-transparency
    PR 467, in releases that do not fit our pydantic pin). The public ``use_*_signer`` and
    ``set_hashing_config`` calls set everything ``sign`` uses."""

    class OfflineConfig(lib.signing.Config):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.set_hashing_config(lib.hashing.Config())

    return OfflineConfig()


def fingerprint(public_key: Any) -> str:
    """``sha256:`` and the first 16 hex digits of the sha256 of the key's DER
    SubjectPublicKeyInfo: ``openssl pkey -pubin -in public.pem -outform DER | sha256sum``."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SigningError(f"cannot read the {what} {path}: {error.strerror}") from error


def _check_curve(key: Any, path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise SigningError(
            f"{path}: model signing takes elliptic-curve keys (P-256, P-384 or P-521), "
            f"not {kind}; {_MAKE_KEYS}"
        )


def _private_key(path: Path, password: str | None) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError as error:  # encrypted without a password, or a password for a plain key
        raise SigningError(
            f"signing key {path}: {error} (the password comes from {PASSWORD_ENV})"
        ) from None
    except ValueError as error:
        raise SigningError(
            f"{path} is not a PEM private key, or its password is wrong ({error}); {_MAKE_KEYS}"
        ) from None
    _check_curve(key.public_key(), path)
    return key


def _public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SigningError(
            f"{path} is not a PEM public key; verify with the public half of the signing key "
            f"(openssl ec -in private.pem -pubout -out public.pem)"
        ) from None
    _check_curve(key, path)
    return key


def _certificate_identity(certificate: Any) -> str:
    """``CN=...,O=... (sha256:...)``: whom a certificate names, and its key."""
    return f"{certificate.subject.rfc4514_string()} ({fingerprint(certificate.public_key())})"


def _hashing(lib: ModuleType, folder: Path, *more: Path) -> Any:
    """What is signed in ``folder`` (resolved): every file but ``model.sig``, the reports
    present and ``more``. Symlinks are refused (a link could point anywhere). model-signing
    1.0.1 matches ignored paths against ``folder / relative``, hence the absolute paths; git
    files are not left out, since a package has no reason to hold any."""
    reports = [path for path in folder.iterdir() if is_report_file(path.name)]
    return (
        lib.hashing.Config()
        .use_file_serialization(allow_symlinks=False)
        .set_ignored_paths(paths=[folder / SIGNATURE_FILE, *reports, *more], ignore_git_paths=False)
    )


def _bundle(signature: Path) -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(signature.read_text(encoding="utf-8"))
    return bundle


def _signed_files(signature: Path) -> dict[str, str]:
    """relative path -> sha256 from the in-toto statement in the bundle's DSSE envelope.
    Trust it only once the envelope's signature verified."""
    payload = base64.b64decode(_bundle(signature)["dsseEnvelope"]["payload"])
    resources = json.loads(payload)["predicate"]["resources"]
    return {str(item["name"]): str(item["digest"]) for item in resources}


def _password(given: str | None) -> str | None:
    return given if given is not None else os.environ.get(PASSWORD_ENV) or None


def signing_identity(
    key: str | Path,
    certificate: str | Path | None = None,
    certificate_chain: Sequence[str | Path] = (),
    password: str | None = None,
) -> str:
    """Check that ``key`` (and ``certificate``) can sign; return who signs: the key's
    :func:`fingerprint`, or the certificate's subject and fingerprint. A build calls this
    before its slow work. ``password``: as for :func:`sign_package`. Raises SigningError, or
    MissingExtraError without the extra."""
    _library()
    private = _private_key(Path(key), _password(password))
    if certificate is None:
        if certificate_chain:
            raise SigningError("a certificate chain goes with a signing certificate: give both")
        return fingerprint(private.public_key())
    from cryptography import x509

    path = Path(certificate)
    try:
        loaded = x509.load_pem_x509_certificate(_read(path, "signing certificate"))
    except ValueError as error:
        raise SigningError(f"{path} is not a PEM certificate ({error})") from None
    if loaded.public_key() != private.public_key():
        raise SigningError(f"the certificate {path} is not the certificate of the key {key}")
    if not certificate_chain:  # model-signing 1.0.1 fails on an empty chain
        raise SigningError("a signing certificate needs its chain: the certificates up to a root")
    _certificates(certificate_chain)
    return _certificate_identity(loaded)


def _certificates(paths: Sequence[str | Path]) -> None:
    """SigningError unless every file holds PEM certificates."""
    from cryptography import x509

    for path in map(Path, paths):
        try:
            x509.load_pem_x509_certificates(_read(path, "certificate chain file"))
        except ValueError as error:
            raise SigningError(f"{path} holds no PEM certificate ({error})") from None


def sign_package(
    folder: str | Path,
    key: str | Path,
    *,
    certificate: str | Path | None = None,
    certificate_chain: Sequence[str | Path] = (),
    password: str | None = None,
) -> Signed:
    """Sign package ``folder`` with the elliptic-curve private ``key`` (PEM): write
    ``model.sig`` (atomically: a server never reads half a signature). With ``certificate``
    (PEM, of that key) and ``certificate_chain`` (PEM files up to a root), the signature
    carries the certificates. ``password``: of an encrypted key (default: the
    ``SHIPYARD_SIGN_KEY_PASSWORD`` environment variable).

    The package must verify first (sha256 of its files, its manifest digest): signing never
    blesses a changed file. An older manifest is brought up to date first, as
    ``shipyard report`` would (that rewrite would otherwise break the signature later).
    Raises PackageError, SigningError, or MissingExtraError without the ``sign`` extra.
    """
    started = time.perf_counter()
    lib = _library()
    password = _password(password)
    signer = signing_identity(key, certificate, certificate_chain, password)
    if certificate is not None and password:
        raise SigningError("model-signing 1.0.1 signs with a certificate only from a plain key")
    folder = Path(folder).resolve()
    repair_manifest(load_package(folder, verify=True))
    config = _offline_config(lib)
    if certificate is None:
        # 1.0.1 hands the password to cryptography as it is, which wants bytes.
        secret = password.encode() if password else None
        config.use_elliptic_key_signer(private_key=key, password=secret)
    else:
        config.use_certificate_signer(
            private_key=key, signing_certificate=certificate, certificate_chain=certificate_chain
        )
    handle, name = tempfile.mkstemp(prefix=f".{SIGNATURE_FILE}.", dir=folder)
    os.close(handle)
    temporary = Path(name)
    try:
        config.set_hashing_config(_hashing(lib, folder, temporary))
        config.sign(folder, temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, folder / SIGNATURE_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    files = len(_signed_files(folder / SIGNATURE_FILE))
    return Signed(folder / SIGNATURE_FILE, files, signer, time.perf_counter() - started)


class PackageVerifier:
    """Checks packages' ``model.sig`` against one public ``key`` (PEM) or, instead, a
    ``certificate_chain`` (PEM files) that the signing certificate must chain to.

    Reads the key at once: raises SigningError when it is unusable (a private key included),
    MissingExtraError without the ``sign`` extra. ``trusted`` says what is trusted, in words.
    """

    def __init__(
        self, key: str | Path | None = None, *, certificate_chain: Sequence[str | Path] = ()
    ) -> None:
        self._lib = _library()
        if (key is None) == (not certificate_chain):
            raise SigningError("verify with a public key or with a certificate chain: give one")
        self.key = Path(key) if key is not None else None
        self.chain = tuple(Path(item) for item in certificate_chain)
        if self.key is not None:
            self.fingerprint: str | None = fingerprint(_public_key(self.key))
            self.trusted = f"key {self.fingerprint} ({self.key})"
        else:
            _certificates(self.chain)
            self.fingerprint = None
            self.trusted = "certificates chaining to " + ", ".join(map(str, self.chain))

    def _config(self) -> Any:
        config = self._lib.verifying.Config()
        if self.key is not None:
            return config.use_elliptic_key_verifier(public_key=self.key)
        return config.use_certificate_verifier(certificate_chain=self.chain)

    def verify(self, folder: str | Path) -> Verified:
        """Check ``folder``'s ``model.sig``: made by the trusted key (or certificate chain),
        and listing exactly the files there are, with their sha256. Returns who signed;
        raises VerificationError saying why not (not signed, another signer, and which
        files changed, appeared or disappeared)."""
        from cryptography.exceptions import InvalidSignature

        started = time.perf_counter()
        folder = Path(folder).resolve()
        signature = folder / SIGNATURE_FILE
        if not signature.is_file():
            raise VerificationError(
                f"{folder} is not signed: it has no {SIGNATURE_FILE} "
                f"(shipyard sign {folder} --key PRIVATE.pem)"
            )
        config = self._config().set_hashing_config(_hashing(self._lib, folder))
        try:
            config.verify(folder, signature)
        except InvalidSignature:
            raise VerificationError(self._foreign(folder)) from None
        except ValueError as error:
            if str(error) == _MISMATCH:
                raise VerificationError(self._differences(folder)) from None
            raise VerificationError(f"{signature} cannot be verified: {error}") from None
        except Exception as error:  # a malformed bundle, a certificate outside the chain
            name = type(error).__name__
            raise VerificationError(f"{signature} cannot be verified: {name}: {error}") from None
        files = len(_signed_files(signature))
        return Verified(folder, files, self._signer(signature), time.perf_counter() - started)

    def _signer(self, signature: Path) -> str:
        if self.fingerprint is not None:
            return self.fingerprint
        from cryptography import x509

        chain = _bundle(signature)["verificationMaterial"]["x509CertificateChain"]
        leaf = base64.b64decode(chain["certificates"][0]["rawBytes"])
        return _certificate_identity(x509.load_der_x509_certificate(leaf))

    def _foreign(self, folder: Path) -> str:
        """Why: another key signed. The key a bundle names is not evidence (anyone can write
        it there), but tells an operator which key to look for."""
        claimed = ""
        try:
            from cryptography.hazmat.primitives import serialization

            material = _bundle(folder / SIGNATURE_FILE)["verificationMaterial"]
            pem = base64.b64decode(material["publicKey"]["rawBytes"])
            claimed = f"; it names key {fingerprint(serialization.load_pem_public_key(pem))}"
        except Exception:
            pass  # no key named (a certificate bundle, or none at all)
        return (
            f"{folder / SIGNATURE_FILE} was not made by the trusted {self.trusted}: "
            f"signed by another key{claimed}"
        )

    def _differences(self, folder: Path) -> str:
        """Which files differ from the signed ones (the statement verified already)."""
        signed = _signed_files(folder / SIGNATURE_FILE)
        hashed = _hashing(self._lib, folder).hash(folder).resource_descriptors()
        present = {item.identifier: item.digest.digest_hex for item in hashed}
        changed = sorted(name for name in signed if present.get(name, signed[name]) != signed[name])
        missing = sorted(set(signed) - set(present))
        added = sorted(set(present) - set(signed))
        parts = []
        if changed:
            parts.append("changed after signing: " + ", ".join(changed))
        if added:
            parts.append("not covered by the signature (added after signing): " + ", ".join(added))
        if missing:
            parts.append("signed but missing: " + ", ".join(missing))
        if signed and len(changed) + len(missing) == len(signed):
            parts.append(f"no signed file matches: {SIGNATURE_FILE} is another package's")
        return f"{folder} does not match its signature: " + "; ".join(parts)
