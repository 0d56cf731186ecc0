"""Optimization candidates for ResNet-18 (random weights), as ratios to PyTorch eager fp32.

Builds, in one process: ONNX fp32; each quantization preset; structured pruning to 75% and
50% of the MACs (no fine-tuning: weights are random, only latency is measured here) exported
to ONNX, alone and with static QDQ u8s8. Then times all of them and PyTorch eager together,
interleaved, at batch 1 and 8 with one thread, and prints each candidate's speed-up
(torch p50 / candidate p50; above 1 is faster) with the hardware fingerprint. Static
quantization is calibrated on random-normal inputs (no image data ships offline).

    python benchmarks/optimize.py [--threads 1] [--runs 15] [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from shipyard.bench import bench
from shipyard.cli.render import bench as render
from shipyard.data import Dataset
from shipyard.examples.resnet import resnet18
from shipyard.passes.export import ExportConfig, export_onnx
from shipyard.passes.prune import PruneConfig, prune_module
from shipyard.passes.quantize import quantize_onnx
from shipyard.passes.quantize_config import PRESETS
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import torch_artifact

SIGNATURE = Signature(
    inputs=(TensorSpec(name="x", dtype="float32", shape=("batch", 3, 224, 224)),),
    outputs=(TensorSpec(name="logits", dtype="float32", shape=("batch", 1000)),),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    console = Console(width=120)
    torch.manual_seed(0)
    reference = torch_artifact(resnet18(), SIGNATURE)
    rng = np.random.default_rng(0)
    shape = (args.calibration_samples, 3, 224, 224)
    calibration = Dataset({"x": rng.standard_normal(shape).astype(np.float32)})
    example = [torch.as_tensor(SIGNATURE.example_inputs(batch=2)["x"])]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        candidates = []
        fp32 = export_onnx(reference, work / "fp32.onnx", ExportConfig(name="ort-fp32"))
        candidates.append(fp32)
        for preset in PRESETS:
            config = PRESETS[preset](name=preset)
            if config.mode == "static":
                config = PRESETS[preset](name=preset, calibration_samples=args.calibration_samples)
            candidates.append(quantize_onnx(fp32, work / f"{preset}.onnx", config, calibration))
            console.print(f"built {preset} ({time.perf_counter() - started:.0f} s)")
        for level in (0.75, 0.5):
            config = PruneConfig(
                method="structured", target_macs=level, allow_without_finetune=True
            )
            module, notes = prune_module(reference.module, config, example, None)  # type: ignore[arg-type]
            tag = f"pruned{round(level * 100)}"
            pruned = export_onnx(
                torch_artifact(module, SIGNATURE),
                work / f"{tag}.onnx",
                ExportConfig(name=f"{tag}-fp32"),
            )
            int8 = quantize_onnx(
                pruned,
                work / f"{tag}-int8.onnx",
                PRESETS["static_qdq_u8s8"](
                    name=f"{tag}-static_qdq_u8s8", calibration_samples=args.calibration_samples
                ),
                calibration,
            )
            candidates += [pruned, int8]
            console.print(
                f"built {tag}: MACs {notes.get('macs_ratio')} of the original "
                f"({time.perf_counter() - started:.0f} s)"
            )
        sizes = {c.name: c.size_bytes for c in candidates}
        report = bench(
            [reference, *candidates],
            batch_sizes=(1, 8),
            threads=args.threads,
            warmup=3,
            runs=args.runs,
        )
    console.print(render(report, baseline="torch"))
    console.print(
        f"threads {args.threads} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
        f", load average {report.loadavg_start} -> {report.loadavg_end}"
    )
    for batch in (1, 8):
        ratios = report.speedups("torch", batch)
        best = max((n for n in ratios if n != "torch"), key=ratios.__getitem__)
        console.print(
            f"batch {batch}: best {best} {ratios[best]:.2f}× PyTorch eager "
            f"({sizes[best] / 1e6:.1f} MB vs {sizes['ort-fp32'] / 1e6:.1f} MB fp32)"
        )
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2))


if __name__ == "__main__":
    main()
