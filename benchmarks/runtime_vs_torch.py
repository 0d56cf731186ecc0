"""ONNX Runtime vs PyTorch eager on the digits CNN and ResNet-18, measured in one run.

For each model: export to ONNX in a temporary folder, then time torch and ONNX Runtime
interleaved (same process, same inputs, same thread count) at batch 1 and 8 with
``shipyard.bench``. Prints the hardware fingerprint, each table, and the speed-up
``torch p50 / ORT p50`` (above 1: ONNX Runtime is faster). Weights are random: latency does not
depend on them. Usage::

    python benchmarks/runtime_vs_torch.py [--threads 1] [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from shipyard.artifact import Artifact
from shipyard.bench import BenchReport, bench
from shipyard.cli.render import bench as render
from shipyard.hardware import hardware_fingerprint
from shipyard.passes.export import export_onnx
from shipyard.signature import Signature, TensorSpec

BATCH_SIZES = (1, 8)


@dataclass
class Case:
    """One model to measure, and how long to measure it."""

    name: str
    build: Callable[[], torch.nn.Module]
    input_shape: tuple[int | str, ...]
    classes: int
    runs: int
    max_seconds: float  # per batch size: keeps ResNet-18 at batch 8 within the time budget


def _digits() -> torch.nn.Module:
    from shipyard.examples.digits import build_model

    return build_model()


def _resnet18() -> torch.nn.Module:
    from shipyard.examples.resnet import resnet18

    return resnet18()


CASES = (
    # ~1 ms per run: many rounds are cheap and steady the tails.
    Case("digits-cnn", _digits, ("batch", 1, 8, 8), 10, runs=1000, max_seconds=10.0),
    # ~30-60 ms at batch 1 and ~8x that at batch 8 on one thread: cap by time.
    Case("resnet18", _resnet18, ("batch", 3, 224, 224), 1000, runs=100, max_seconds=40.0),
)


def measure(case: Case, threads: int, warmup: int, folder: Path, console: Console) -> BenchReport:
    torch.manual_seed(0)  # random but reproducible weights
    signature = Signature(
        inputs=(TensorSpec(name="x", dtype="float32", shape=case.input_shape),),
        outputs=(TensorSpec(name="logits", dtype="float32", shape=("batch", case.classes)),),
    )
    original = Artifact(name="torch", format="torch", signature=signature, module=case.build())
    started = time.perf_counter()
    onnx = export_onnx(original, folder / f"{case.name}.onnx")
    console.print(f"[dim]{case.name}: exported to ONNX in {time.perf_counter() - started:.1f} s")
    return bench(
        [original, onnx], batch_sizes=BATCH_SIZES, threads=threads, warmup=warmup,
        runs=case.runs, max_seconds=case.max_seconds,
    )  # fmt: skip


def summary(case: Case, report: BenchReport) -> str:
    """One line per batch size: the speed-up, and each engine's median with its min/max."""
    lines = [f"{case.name}: ONNX Runtime speed-up over PyTorch eager (torch p50 / ORT p50)"]
    for b in report.batch_sizes:
        t, o = report.get("torch").at(b), report.get(onnx_name(report)).at(b)
        lines.append(
            f"  batch {b}: {t.p50_ms / o.p50_ms:.2f}×   torch {t.p50_ms:.3f} ms "
            f"[{t.min_ms:.3f}–{t.max_ms:.3f}]   ORT {o.p50_ms:.3f} ms "
            f"[{o.min_ms:.3f}–{o.max_ms:.3f}]   ({t.runs} interleaved rounds)"
        )
    return "\n".join(lines)


def describe(fingerprint: dict[str, Any]) -> str:
    """The fingerprint as ``key: value`` lines (lists and dicts flattened onto one line)."""
    lines = []
    for key, value in fingerprint.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(value) or "none"
        lines.append(f"{key:>15}: {value}")
    return "\n".join(lines)


def onnx_name(report: BenchReport) -> str:
    return next(r.name for r in report.results if r.backend == "onnxruntime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads per session (default 1)")
    parser.add_argument("--warmup", type=int, default=5, help="discarded runs per batch size")
    parser.add_argument("--json", type=Path, help="write every report as JSON here")
    args = parser.parse_args()

    console = Console()
    if not console.is_terminal:  # piped or logged (make bench | tee): don't squeeze to 80 columns
        console = Console(width=160)
    console.print(describe(hardware_fingerprint()), highlight=False)
    console.print()
    reports: dict[str, BenchReport] = {}
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-") as tmp:
        for case in CASES:
            report = measure(case, args.threads, args.warmup, Path(tmp), console)
            reports[case.name] = report
            console.print(render(report, baseline="torch"))
            console.print(summary(case, report), highlight=False)
            console.print()
    console.print(f"threads per session: {args.threads}")
    for name, report in reports.items():
        start = " ".join(f"{v:.2f}" for v in report.loadavg_start)
        end = " ".join(f"{v:.2f}" for v in report.loadavg_end)
        console.print(f"load average during {name}: {start} → {end} ({report.seconds:.0f} s)")
    if args.json:
        payload = {name: report.to_dict() for name, report in reports.items()}
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
