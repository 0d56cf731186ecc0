"""`shipyard sign`, `shipyard verify` and `shipyard build --sign-key`, run as a user runs them:
exit 0 when a package verifies, 1 when it does not (as a failed gate), 2 for unusable input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shipyard.signing import SIGNATURE_FILE
from tests.test_build import TINY
from tests.test_cli import shipyard as run
from tests.test_signing import make_key, openssl_fingerprint


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    make_key(folder, "signer")
    make_key(folder, "stranger")
    return folder


@pytest.fixture(scope="module")
def signed_build(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe built by `shipyard build --sign-key`."""
    root = tmp_path_factory.mktemp("cli-sign")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY.format(atol=1e-4))
    built = run(
        "build", recipe, "--output", root / "out", "--no-bench", "--sign-key", keys / "signer.pem"
    )
    assert built.returncode == 0, built.stderr
    folder = root / "out" / "tiny" / "3"
    assert f"signed {folder / SIGNATURE_FILE}" in built.stdout
    return folder


def test_build_sign_key_then_verify_exits_0_naming_the_signer(
    signed_build: Path, keys: Path
) -> None:
    verified = run("verify", signed_build, "--key", keys / "signer.pub.pem")
    assert verified.returncode == 0, verified.stderr
    assert f"2 files signed by {openssl_fingerprint(keys / 'signer.pub.pem')}" in verified.stdout


def test_sign_then_a_tampered_package_exits_1_with_the_reason(
    signed_build: Path, keys: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(signed_build, tmp_path / "copy")
    resigned = run("sign", folder, "--key", keys / "stranger.pem")
    assert resigned.returncode == 0, resigned.stderr
    stranger = openssl_fingerprint(keys / "stranger.pub.pem")
    assert f"2 files signed by {stranger}" in resigned.stdout
    assert run("verify", folder, "--key", keys / "stranger.pub.pem").returncode == 0
    foreign = run("verify", folder, "--key", keys / "signer.pub.pem")
    assert foreign.returncode == 1
    assert "signed by another key" in foreign.stderr and "Traceback" not in foreign.stderr
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    tampered = run("verify", folder, "--key", keys / "stranger.pub.pem")
    assert tampered.returncode == 1
    assert "changed after signing: model.onnx" in tampered.stderr


def test_unusable_input_exits_2(signed_build: Path, keys: Path, tmp_path: Path) -> None:
    private_as_public = run("verify", signed_build, "--key", keys / "signer.pem")
    assert private_as_public.returncode == 2
    assert "is not a PEM public key" in private_as_public.stderr
    neither = run("verify", signed_build)
    assert neither.returncode == 2 and "give --key PUBLIC.pem" in neither.stderr
    not_a_folder = run("sign", tmp_path / "nothing", "--key", keys / "signer.pem")
    assert not_a_folder.returncode == 2 and "is not a folder" in not_a_folder.stderr
