"""``shipyard sign`` and ``shipyard verify``: a package's ``model.sig`` (OpenSSF Model Signing).

A failed verification exits 1, as a failed validation gate does: the check ran and the package
did not pass it. A key, certificate or folder that cannot be used exits 2 (bad input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shipyard.cli.app import app, console
from shipyard.errors import InputError

PackageArg = Annotated[Path, typer.Argument(help="A package folder (OUT/<model>/<version>).")]
ChainOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--certificate-chain",
        show_default=False,
        help="PEM certificates up to a root (repeat the option for several files).",
    ),
]


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise InputError(f"{path} is not a folder: give a package folder (OUT/<model>/<version>)")
    return path


@app.command()
def sign(
    package: PackageArg,
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            show_default=False,
            help="Elliptic-curve private key (PEM; P-256, P-384 or P-521). An encrypted key's "
            "password comes from env SHIPYARD_SIGN_KEY_PASSWORD.",
        ),
    ],
    certificate: Annotated[
        Path | None,
        typer.Option(
            show_default=False,
            help="The key's signing certificate (PEM), carried in the signature; verify then "
            "with --certificate-chain instead of a key.",
        ),
    ] = None,
    certificate_chain: ChainOpt = None,
) -> None:
    """Sign a package: write model.sig, covering every file but itself and the reports.

    The package must pass its own sha256 check first. Verify with
    `shipyard verify PACKAGE --key PUBLIC.pem` or serve with `--verify-key PUBLIC.pem`.
    """
    from shipyard.signing import sign_package

    signed = sign_package(
        _folder(package), key, certificate=certificate, certificate_chain=certificate_chain or []
    )
    console.print(
        f"[green]✓[/] {escape(str(signed.signature))}: {signed.files} files signed by "
        f"{escape(signed.signer)}",
        highlight=False,
    )


@app.command()
def verify(
    package: PackageArg,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key", show_default=False, help="The signer's elliptic-curve public key (PEM)."
        ),
    ] = None,
    certificate_chain: ChainOpt = None,
) -> None:
    """Check a package's model.sig: made by --key (or by a certificate that chains to
    --certificate-chain), over exactly the files the package holds.

    Exit 0 when it verifies; 1 when it does not (unsigned, another signer, a file changed,
    added or removed: the reason is on stderr); 2 when the key or chain cannot be used.
    """
    from shipyard.signing import PackageVerifier

    if (key is None) == (not certificate_chain):
        raise InputError("give --key PUBLIC.pem, or --certificate-chain CA.pem (one of the two)")
    verifier = PackageVerifier(key, certificate_chain=certificate_chain or [])
    verified = verifier.verify(_folder(package))
    console.print(
        f"[green]✓[/] {escape(str(verified.folder))}: {verified.files} files signed by "
        f"{escape(verified.signer)} ({verified.seconds:.2f} s)",
        highlight=False,
    )
