"""What checking a signed package costs: ResNet-18 (``examples/resnet18/recipe.yaml``).

Builds the recipe into a temporary folder (without torchvision its source becomes
``shipyard.examples.resnet:resnet18``, the same architecture and file size; no bench step),
makes a P-256 key pair, signs the package once, then times, interleaved over ``--runs``
rounds:

- ``verify``: ``PackageVerifier.verify`` (what ``shipyard verify`` and a server with
  ``--verify-key`` run before a version loads: the signature, then the sha256 of every file);
- ``verify-cold``: the same after ``posix_fadvise(DONTNEED)`` on the package's files, which
  asks the kernel to drop them from the page cache (no root needed; a file system that cannot
  drop pages, such as tmpfs, makes it equal to ``verify``);
- ``sha256``: ``load_package(verify=True)``, the manifest's own hash check, which a server
  runs after the signature check, for scale.

Prints the medians with min/max, what a fresh process pays for its first verification
(Python started, then ``shipyard.signing`` and model-signing imported, the key read, one
verification: a ``shipyard verify`` or a server start pays this once), the hardware
fingerprint and the load average.

Usage: ``.venv/bin/python benchmarks/verify.py [--runs 15] [--package DIR] [--json out.json]``
(``--package``: measure an existing package instead of building one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shipyard.hardware import hardware_fingerprint
from shipyard.package import load_package

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "resnet18" / "recipe.yaml"


def build_package(output: Path) -> Path:
    import shipyard
    from shipyard.recipe import ModelSource, load_recipe

    recipe = load_recipe(RECIPE)
    if importlib.util.find_spec("torchvision") is None:
        recipe.model = ModelSource(source="shipyard.examples.resnet:resnet18")
    return shipyard.build(recipe, output, run_bench=False).package_dir


def make_keys(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / "private.pem", folder / "public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def drop_from_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)  # dirty pages cannot be dropped
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


FIRST = """
import sys, time
started = time.perf_counter()
from shipyard.signing import PackageVerifier  # imports shipyard/__init__.py (torch)
imported = time.perf_counter()
verifier = PackageVerifier(sys.argv[2])  # imports model-signing and sigstore
ready = time.perf_counter()
verifier.verify(sys.argv[1])
print(imported - started, ready - imported, time.perf_counter() - ready)
"""


def first_verification(folder: Path, public: Path) -> list[float]:
    """A fresh process's seconds: importing shipyard, then model-signing, then verifying."""
    command = [sys.executable, "-c", FIRST, str(folder), str(public)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [float(part) for part in output.split()]


def measure(folder: Path, public: Path, runs: int) -> dict[str, list[float]]:
    """Seconds per way, per round."""
    from shipyard.signing import PackageVerifier

    verifier = PackageVerifier(public)

    def cold() -> object:
        drop_from_cache(folder)
        started = time.perf_counter()
        verifier.verify(folder)
        return time.perf_counter() - started

    ways: dict[str, Callable[[], object]] = {
        "verify": lambda: verifier.verify(folder),
        "verify-cold": cold,
        "sha256": lambda: load_package(folder, verify=True),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for i in range(runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            result = ways[name]()
            elapsed = time.perf_counter() - started
            # cold() times itself: dropping the pages is not part of the check
            times[name].append(result if isinstance(result, float) else elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--package", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shipyard-verify-") as temporary:
        work = Path(temporary)
        folder = args.package or build_package(work / "out")
        private, public = make_keys(work)
        from shipyard.signing import sign_package

        load_before = os.getloadavg()
        signed = sign_package(folder, private)
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        times = measure(folder, public, args.runs)
        fresh = [first_verification(folder, public) for _ in range(3)]
        first = [statistics.median(column) for column in zip(*fresh, strict=True)]
        if args.package is not None:
            (folder / "model.sig").unlink()  # leave the package as it was given
    report: dict[str, Any] = {
        "package_bytes": size,
        "files_signed": signed.files,
        "sign_s": signed.seconds,
        "fresh_process_s": dict(zip(("shipyard", "model_signing", "verify"), first, strict=True)),
        "runs": args.runs,
        "ways": {
            name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
            for name, v in times.items()
        },
        "fingerprint": hardware_fingerprint(),
        "loadavg": {"before": load_before, "after": os.getloadavg()},
    }
    print(f"package {size / 1e6:.1f} MB, {signed.files} files signed in {signed.seconds:.3f} s")
    print(
        f"a fresh process (median of 3): import shipyard {first[0]:.3f} s, model-signing "
        f"{first[1]:.3f} s, first verification {first[2]:.3f} s"
    )
    for name, row in report["ways"].items():
        print(
            f"  {name:<12} median {row['median_s']:.3f} s  "
            f"(min {row['min_s']:.3f}, max {row['max_s']:.3f}), {args.runs} runs"
        )
    fingerprint = report["fingerprint"]
    after = report["loadavg"]["after"]
    print(
        f"{fingerprint.get('cpu')}, {fingerprint.get('usable_cores')} usable cores; "
        f"load average {load_before[0]:.2f} -> {after[0]:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
