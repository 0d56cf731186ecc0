"""Signed packages: real P-256 keys made here, real packages built by shipyard.build, and
each way a package can fail its signature refused with its own reason."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

import shipyard
from shipyard.errors import PackageError, SigningError, VerificationError
from shipyard.optimize import optimize
from shipyard.package import MANIFEST, load_package, seal
from shipyard.recipe import OptimizeSettings, SignSettings, parse_recipe
from shipyard.report import regenerate
from shipyard.signing import (
    PASSWORD_ENV,
    SIGNATURE_FILE,
    PackageVerifier,
    sign_package,
    signing_identity,
)
from tests.test_build import TINY


def make_key(folder: Path, name: str, password: bytes | None = None) -> tuple[Path, Path]:
    """A fresh P-256 key pair as PEM files: (private, public)."""
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def openssl_fingerprint(public: Path) -> str:
    """What ``openssl pkey -pubin -outform DER | sha256sum`` gives, cut to 16 digits."""
    key = serialization.load_pem_public_key(public.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def build_tiny(output: Path, version: int = 3, sign: str = "") -> Path:
    recipe = parse_recipe(
        TINY.format(atol=1e-4).replace("version: 3", f"version: {version}") + sign
    )
    return shipyard.build(recipe, output, run_bench=False).package_dir


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    make_key(folder, "signer")
    make_key(folder, "stranger")
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two unsigned packages of the tiny recipe: versions 3 and 4 (different manifests)."""
    root = tmp_path_factory.mktemp("built")
    return build_tiny(root, 3), build_tiny(root, 4)


@pytest.fixture
def signed(built: tuple[Path, Path], keys: Path, tmp_path: Path) -> Path:
    """A fresh copy of version 3, signed with the signer's key."""
    folder = shutil.copytree(built[0], tmp_path / "tiny" / "3")
    sign_package(folder, keys / "signer.pem")
    return folder


def test_sign_then_verify_names_the_key_and_every_file(signed: Path, keys: Path) -> None:
    verified = PackageVerifier(keys / "signer.pub.pem").verify(signed)
    assert verified.signer == openssl_fingerprint(keys / "signer.pub.pem")
    assert verified.files == 2  # model.onnx and shipyard.json; not the reports, not model.sig
    bundle = json.loads((signed / SIGNATURE_FILE).read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    assert not [p for p in signed.iterdir() if p.name.startswith(".")]  # no temporary left


def _change_a_byte(folder: Path) -> None:
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.onnx").write_bytes(bytes(data))


def _add_a_file(folder: Path) -> None:
    (folder / "labels.txt").write_text("cat\ndog\n")


def _remove_a_file(folder: Path) -> None:
    (folder / "model.onnx").unlink()


def _edit_the_manifest_and_reseal(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["description"] = "the best model ever"
    seal(folder, manifest)  # the sha256 list and manifest_sha256 agree again
    assert load_package(folder).manifest["description"] == "the best model ever"


def _copy_another_signature(folder: Path, other: Path) -> None:
    shutil.copy(other / SIGNATURE_FILE, folder / SIGNATURE_FILE)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_change_a_byte, r"does not match its signature: changed after signing: model\.onnx$"),
        (_add_a_file, r"not covered by the signature \(added after signing\): labels\.txt$"),
        (_remove_a_file, r"does not match its signature: signed but missing: model\.onnx$"),
        (_edit_the_manifest_and_reseal, r"changed after signing: shipyard\.json$"),
    ],
    ids=["byte-changed", "file-added", "file-removed", "manifest-edited-and-resealed"],
)
def test_a_changed_package_is_refused_naming_what_changed(
    signed: Path, keys: Path, tamper: object, reason: str
) -> None:
    tamper(signed)  # type: ignore[operator]
    with pytest.raises(VerificationError, match=reason):
        PackageVerifier(keys / "signer.pub.pem").verify(signed)


def test_a_signature_copied_from_another_package_is_refused(
    signed: Path, built: tuple[Path, Path], keys: Path, tmp_path: Path
) -> None:
    other = shutil.copytree(built[1], tmp_path / "other")
    sign_package(other, keys / "signer.pem")  # same key, another package
    _copy_another_signature(signed, other)
    with pytest.raises(VerificationError) as refused:
        PackageVerifier(keys / "signer.pub.pem").verify(signed)
    # The ONNX files are equal (same model); the manifests are not.
    assert "changed after signing: shipyard.json" in str(refused.value)
    assert "model.onnx" not in str(refused.value)


def test_a_package_signed_by_another_key_is_refused(signed: Path, keys: Path) -> None:
    sign_package(signed, keys / "stranger.pem")
    expected = openssl_fingerprint(keys / "signer.pub.pem")
    stranger = openssl_fingerprint(keys / "stranger.pub.pem")
    with pytest.raises(VerificationError) as refused:
        PackageVerifier(keys / "signer.pub.pem").verify(signed)
    message = str(refused.value)
    assert f"not made by the trusted key {expected}" in message
    assert f"signed by another key; it names key {stranger}" in message


def test_an_unsigned_package_is_refused(built: tuple[Path, Path], keys: Path) -> None:
    with pytest.raises(VerificationError, match=r"is not signed: it has no model\.sig"):
        PackageVerifier(keys / "signer.pub.pem").verify(built[0])


def test_a_corrupt_signature_is_refused(signed: Path, keys: Path) -> None:
    (signed / SIGNATURE_FILE).write_text('{"mediaType": "something else"}')
    with pytest.raises(VerificationError, match=r"model\.sig cannot be verified"):
        PackageVerifier(keys / "signer.pub.pem").verify(signed)


def test_reports_are_not_signed_so_shipyard_report_keeps_the_signature(
    signed: Path, keys: Path
) -> None:
    verifier = PackageVerifier(keys / "signer.pub.pem")
    (signed / "report.md").write_text("edited by hand\n")
    (signed / "report-extra.png").write_bytes(b"\x89PNG")
    (signed / "report.html").unlink()
    written, repaired = regenerate(signed)
    assert {p.name for p in written} >= {"report.md", "report.html"} and not repaired
    assert verifier.verify(signed).files == 2


def test_signing_refuses_a_package_that_fails_its_own_hashes(
    built: tuple[Path, Path], keys: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(built[0], tmp_path / "changed")
    _change_a_byte(folder)
    with pytest.raises(PackageError, match="modified after packaging"):
        sign_package(folder, keys / "signer.pem")
    assert not (folder / SIGNATURE_FILE).exists()


def test_unusable_keys_are_refused_with_advice(signed: Path, keys: Path, tmp_path: Path) -> None:
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SigningError, match="elliptic-curve keys .* not RSAPublicKey.* openssl"):
        sign_package(signed, rsa_key)
    with pytest.raises(SigningError, match="is not a PEM public key"):
        PackageVerifier(keys / "signer.pem")  # the private key given where the public one goes
    with pytest.raises(SigningError, match="cannot read the signing key .*absent.pem"):
        sign_package(signed, tmp_path / "absent.pem")


def test_an_encrypted_key_takes_its_password_from_the_environment(
    signed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = make_key(tmp_path, "locked", password=b"correct horse")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(
        SigningError, match=f"not given but private key is encrypted.*{PASSWORD_ENV}"
    ):
        sign_package(signed, private)
    monkeypatch.setenv(PASSWORD_ENV, "correct horse")
    assert sign_package(signed, private).signer == openssl_fingerprint(public)
    assert PackageVerifier(public).verify(signed).signer == openssl_fingerprint(public)


def _certificate(
    folder: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA (``issuer`` None) or a code-signing certificate it issued, with its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=issuer is not None,
                key_cert_sign=issuer is None,
                crl_sign=issuer is None,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        .sign(issuer[1] if issuer else key, hashes.SHA256())
    )
    (folder / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate, key


def test_a_certificate_signature_verifies_against_its_chain_only(
    signed: Path, tmp_path: Path
) -> None:
    ca = _certificate(tmp_path, "release-ca", None)
    _certificate(tmp_path, "release-team", ca)
    _certificate(tmp_path, "other-ca", None)
    with pytest.raises(SigningError, match="is not the certificate of the key"):
        signing_identity(tmp_path / "other-ca.pem", tmp_path / "release-team.crt")
    with pytest.raises(SigningError, match="needs its chain"):
        signing_identity(tmp_path / "release-team.pem", tmp_path / "release-team.crt")
    sign_package(
        signed,
        tmp_path / "release-team.pem",
        certificate=tmp_path / "release-team.crt",
        certificate_chain=[tmp_path / "release-ca.crt"],
    )
    verified = PackageVerifier(certificate_chain=[tmp_path / "release-ca.crt"]).verify(signed)
    assert verified.signer.startswith("CN=release-team (sha256:")
    with pytest.raises(VerificationError, match="cannot be verified: X509StoreContextError"):
        PackageVerifier(certificate_chain=[tmp_path / "other-ca.crt"]).verify(signed)


def test_a_build_with_sign_signs_before_the_version_appears(keys: Path, tmp_path: Path) -> None:
    section = f"sign: {{key: {keys / 'signer.pem'}}}\n"
    folder = build_tiny(tmp_path / "out", 5, sign=section)
    verified = PackageVerifier(keys / "signer.pub.pem").verify(folder)
    assert verified.files == 2
    # The manifest's copy of the recipe leaves the key path out.
    assert "sign" not in load_package(folder).manifest["provenance"]["recipe"]


def test_a_build_with_an_unusable_key_fails_before_any_work(tmp_path: Path) -> None:
    section = f"sign: {{key: {tmp_path / 'absent.pem'}}}\n"
    with pytest.raises(SigningError, match="cannot read the signing key"):
        build_tiny(tmp_path / "out", 6, sign=section)
    assert not (tmp_path / "out").exists()


def test_an_optimize_search_signs_its_package_too(keys: Path, tmp_path: Path) -> None:
    recipe = parse_recipe(TINY.format(atol=1e-4))
    recipe.sign = SignSettings(key=str(keys / "signer.pem"))
    settings = OptimizeSettings(budget=1e-9, prune_levels=[], quantize=[])
    result = optimize(recipe, tmp_path, settings=settings)
    verified = PackageVerifier(keys / "signer.pub.pem").verify(result.package_dir)
    assert verified.signer == openssl_fingerprint(keys / "signer.pub.pem")
