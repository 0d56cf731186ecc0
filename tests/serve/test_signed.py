"""A server with a verify key: real signed packages, a real uvicorn server, and every way a
version can fail its signature refused, with the reason in the index and the log, while the
version serving before keeps serving."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from shipyard.signing import sign_package
from tests.conftest import REPO
from tests.serve.conftest import add_version, reference, serving, wait_for
from tests.serve.test_command import _free_port, _serve, _stop, _wait_ready
from tests.test_signing import make_key, openssl_fingerprint

X = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)
INPUT = {"name": "x", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": X.ravel().tolist()}
BODY = {"inputs": [INPUT]}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    make_key(folder, "signer")
    make_key(folder, "stranger")
    return folder


def _index(client: httpx.Client) -> dict[tuple[str, str], dict[str, str]]:
    entries = client.post("/v2/repository/index").json()
    return {(entry["name"], entry["version"]): entry for entry in entries}


def _answer(client: httpx.Client, packages: Path, version: int) -> None:
    """tiny (no version asked) answers as ``version`` does in process."""
    response = client.post("/v2/models/tiny/infer", json=BODY)
    assert response.status_code == 200, response.text
    got = np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, reference(packages, "tiny", version, X), rtol=1e-5, atol=1e-6)


def _staged(packages: Path, tmp_path: Path, version: int) -> Path:
    """An unsigned copy of tiny ``version``, outside the repository (moved in at once)."""
    return add_version(packages, tmp_path / "staging", "tiny", version)


def test_only_versions_the_key_verifies_are_served(
    packages: Path, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository = tmp_path / "repository"
    sign_package(add_version(packages, repository, "tiny", 1), keys / "signer.pem")
    add_version(packages, repository, "rows", 1)  # unsigned from the start
    signer = openssl_fingerprint(keys / "signer.pub.pem")
    caplog.set_level(logging.WARNING, logger="shipyard")
    with (
        serving(repository, verify_key=keys / "signer.pub.pem") as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        config = client.get("/v2/models/tiny/config").json()
        assert config["parameters"]["signed_by"] == {"string_value": signer}
        rows = _index(client)[("rows", "1")]
        assert rows["state"] == "UNAVAILABLE" and "is not signed" in rows["reason"]
        assert client.post("/v2/models/rows/infer", json=BODY).status_code == 503
        _answer(client, packages, 1)

        new = repository / "tiny" / "2"
        refusals = [
            ("unsigned", "is not signed: it has no model.sig"),
            ("byte-changed", "does not match its signature: changed after signing: model.onnx"),
            ("foreign-key", f"not made by the trusted key {signer}"),
        ]
        for case, reason in refusals:
            shutil.rmtree(new, ignore_errors=True)
            staged = _staged(packages, tmp_path / case, 2)
            if case != "unsigned":
                key = "stranger" if case == "foreign-key" else "signer"
                sign_package(staged, keys / f"{key}.pem")
            if case == "byte-changed":
                data = bytearray((staged / "model.onnx").read_bytes())
                data[-10] ^= 0x01
                (staged / "model.onnx").write_bytes(bytes(data))
            os.replace(staged, new)
            loaded = client.post("/v2/repository/models/tiny/load")
            assert loaded.status_code == 400 and reason in loaded.json()["error"], case
            assert "serving versions [1]" in loaded.json()["error"]
            entry = _index(client)[("tiny", "2")]
            assert entry["state"] == "UNAVAILABLE" and reason in entry["reason"], case
            assert any(reason in record.getMessage() for record in caplog.records), case
            _answer(client, packages, 1)  # the signed version 1 keeps serving

        sign_package(new, keys / "signer.pem")  # version 2, now signed: it replaces 1
        loaded = client.post("/v2/repository/models/tiny/load")
        assert loaded.status_code == 200 and loaded.json()["versions"] == ["2"], loaded.text
        _answer(client, packages, 2)


def test_watch_refuses_a_tampered_version_and_loads_it_once_signed(
    packages: Path, keys: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    sign_package(add_version(packages, repository, "tiny", 1), keys / "signer.pem")
    with (
        serving(repository, verify_key=keys / "signer.pub.pem", watch_seconds=0.05) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        staged = _staged(packages, tmp_path, 2)
        sign_package(staged, keys / "signer.pem")
        (staged / "extra.bin").write_bytes(b"planted")
        os.replace(staged, repository / "tiny" / "2")

        def refused() -> bool:
            entry = _index(client).get(("tiny", "2"), {})
            return "added after signing): extra.bin" in entry.get("reason", "")

        wait_for(refused, what="the watcher to refuse version 2")
        _answer(client, packages, 1)
        (repository / "tiny" / "2" / "extra.bin").unlink()
        sign_package(repository / "tiny" / "2", keys / "signer.pem")  # in place: a new model.sig

        def serving_2() -> bool:
            return _index(client).get(("tiny", "2"), {}).get("state") == "READY"

        wait_for(serving_2, what="the watcher to load the signed version 2")
        _answer(client, packages, 2)


def test_serve_command_verify_key_from_the_environment(
    packages: Path, keys: Path, tmp_path: Path
) -> None:
    unsigned = add_version(packages, tmp_path / "unsigned", "tiny", 1)
    env = {**os.environ, "SHIPYARD_VERIFY_KEY": str(keys / "signer.pub.pem")}
    command = [sys.executable, "-m", "shipyard", "serve", str(unsigned), "--strict"]
    refused = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2, refused.stderr
    assert "refusing to start (strict)" in refused.stderr and "is not signed" in refused.stderr

    signed = add_version(packages, tmp_path / "signed", "tiny", 1)
    sign_package(signed, keys / "signer.pem")
    port = _free_port()
    process = _serve(str(signed), "--port", str(port), "--verify-key", str(keys / "signer.pub.pem"))
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}")
        config = httpx.get(f"http://127.0.0.1:{port}/v2/models/tiny/config", timeout=10).json()
        assert config["parameters"]["signed_by"]["string_value"].startswith("sha256:")
    finally:
        stdout, _ = _stop(process)
    assert f"signed by {openssl_fingerprint(keys / 'signer.pub.pem')}" in stdout
