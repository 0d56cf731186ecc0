"""TLS for both transports, for deployments without a service mesh.

``Tls(cert, key)`` serves HTTPS and gRPC over TLS with one certificate; with ``client_ca``
both also require a client certificate signed by that CA (mutual TLS). The files are read
once, when the server starts; a missing or unreadable one is a one-line error then, not a
handshake failure later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import ShipyardError


class TlsError(ShipyardError):
    """A certificate, key or CA file cannot be used."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TlsError(f"cannot read the {what} {path}: {error.strerror}") from error
    if b"-----BEGIN" not in data:
        raise TlsError(f"the {what} {path} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class Tls:
    """PEM files: the server's certificate (chain), its private key, and optionally the CA
    that client certificates must be signed by."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def check(self) -> None:
        """Raise TlsError when the files cannot be read or do not belong together."""
        _read(self.cert, "TLS certificate")
        _read(self.key, "TLS key")
        if self.client_ca is not None:
            _read(self.client_ca, "client CA")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as error:
            raise TlsError(
                f"the TLS key {self.key} does not fit the certificate {self.cert}: {error}"
            ) from error

    def uvicorn_options(self) -> dict[str, Any]:
        """uvicorn.Config's TLS keywords."""
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options |= {"ssl_ca_certs": str(self.client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options

    def grpc_credentials(self) -> Any:
        """``grpc.ssl_server_credentials`` for the same files."""
        import grpc

        root = _read(self.client_ca, "client CA") if self.client_ca is not None else None
        return grpc.ssl_server_credentials(
            [(_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))],
            root_certificates=root,
            require_client_auth=root is not None,
        )
