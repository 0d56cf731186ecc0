"""TLS for HTTP and gRPC, and mutual TLS, with certificates this test makes itself; the real
`shipyard serve` command, driven by tritonclient over https and gRPC with SSL."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gevent.ssl
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REPO
from tests.serve.conftest import reference

X = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    folder: Path, stem: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A P-256 key and certificate (a CA when ``issuer`` is None), written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem))
        .issuer_name(issuer[0].subject if issuer else _name(stem))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        import ipaddress

        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    certificate = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{stem}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    ca = _certificate(folder, "ca", None)
    _certificate(folder, "server", ca)
    _certificate(folder, "client", ca)
    _certificate(folder, "stranger", _certificate(folder, "other-ca", None))
    return folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(repository: Path, certs: Path, mutual: bool) -> Iterator[tuple[int, int]]:
    port, grpc_port = _free_port(), _free_port()
    args = [
        sys.executable, "-m", "shipyard", "serve", str(repository), "--port", str(port),
        "--grpc-port", str(grpc_port), "--tls-cert", str(certs / "server.pem"),
        "--tls-key", str(certs / "server.key"), "--log-level", "warning",
    ]  # fmt: skip
    if mutual:
        args += ["--tls-client-ca", str(certs / "ca.pem")]
    process = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if mutual:
        context.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    deadline = time.monotonic() + 120
    try:
        with httpx.Client(verify=context) as client:
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"the server exited: {process.communicate()[1]}")
                try:  # the shared repository holds models that never load: ask for tiny's
                    url = f"https://127.0.0.1:{port}/v2/models/tiny/ready"
                    if client.get(url).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the TLS server never became ready"
                time.sleep(0.05)
        yield port, grpc_port
    finally:
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
        assert "serving on https://127.0.0.1" in stdout and "gRPC (TLS)" in stdout, stdout


def _infer_http(port: int, certs: Path, mutual: bool) -> np.ndarray:
    def context(*args: object, **kwargs: object) -> gevent.ssl.SSLContext:
        made = gevent.ssl.create_default_context(cafile=str(certs / "ca.pem"))
        if mutual:
            made.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
        return made

    client = triton_http.InferenceServerClient(
        f"localhost:{port}", ssl=True, ssl_context_factory=context
    )
    inputs = [triton_http.InferInput("x", list(X.shape), "FP32")]
    inputs[0].set_data_from_numpy(X)
    return client.infer("tiny", inputs).as_numpy("logits")  # type: ignore[no-any-return]


def _infer_grpc(port: int, certs: Path, client: str | None) -> np.ndarray:
    options = {}
    if client is not None:
        options = {
            "private_key": str(certs / f"{client}.key"),
            "certificate_chain": str(certs / f"{client}.pem"),
        }
    grpc = triton_grpc.InferenceServerClient(
        f"localhost:{port}", ssl=True, root_certificates=str(certs / "ca.pem"), **options
    )
    inputs = [triton_grpc.InferInput("x", list(X.shape), "FP32")]
    inputs[0].set_data_from_numpy(X)
    return grpc.infer("tiny", inputs).as_numpy("logits")  # type: ignore[no-any-return]


def test_https_and_grpc_over_tls(repository: Path, packages: Path, certificates: Path) -> None:
    want = reference(packages, "tiny", 2, X)
    for port, grpc_port in _serve(repository, certificates, mutual=False):
        np.testing.assert_allclose(_infer_http(port, certificates, False), want, atol=1e-5)
        np.testing.assert_allclose(_infer_grpc(grpc_port, certificates, None), want, atol=1e-5)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"https://127.0.0.1:{port}/v2/health/ready", verify=True)
        plain = httpx.Client()
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
            plain.get(f"http://127.0.0.1:{port}/v2/health/ready")


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(
    repository: Path, packages: Path, certificates: Path
) -> None:
    want = reference(packages, "tiny", 2, X)
    for port, grpc_port in _serve(repository, certificates, mutual=True):
        np.testing.assert_allclose(_infer_http(port, certificates, True), want, atol=1e-5)
        np.testing.assert_allclose(_infer_grpc(grpc_port, certificates, "client"), want, atol=1e-5)
        with pytest.raises(httpx.HTTPError):  # no client certificate
            httpx.get(
                f"https://127.0.0.1:{port}/v2/health/ready", verify=str(certificates / "ca.pem")
            )
        for client in (None, "stranger"):  # none, or one signed by another CA
            with pytest.raises(triton_grpc.InferenceServerException):
                _infer_grpc(grpc_port, certificates, client)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "server.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "server.pem", "--tls-key", "client.key"], "does not fit the certificate"),
        (
            ["--tls-cert", "missing.pem", "--tls-key", "server.key"],
            "cannot read the TLS certificate",
        ),
        (["--tls-cert", "server.key", "--tls-key", "server.key"], "does not fit"),
    ],
)
def test_bad_tls_files_are_one_line(
    repository: Path, certificates: Path, args: list[str], message: str
) -> None:
    args = [str(certificates / a) if a.endswith((".pem", ".key")) else a for a in args]
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "serve", str(repository), "--port", "0", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
