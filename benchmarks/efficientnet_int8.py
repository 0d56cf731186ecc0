"""What each static int8 setting buys on EfficientNet-Lite0, measured on real photos.

Exports the example model (its real ImageNet weights) to ONNX once, quantizes it with ONNX
Runtime's static QDQ u8s8 under several settings (per-tensor or per-channel weights; minmax,
entropy or percentile calibration; 64 to 352 calibration views; the stem, the head or both
kept in float), and compares each with the fp32 ONNX model (itself within 2e-5 of PyTorch) on
the example's 352 validation views: top-1 agreement, top-5 agreement (fp32's top-1 among
int8's five best) and top-1 agreement on the views where fp32 is confident (p >= 0.5). The
calibration views never appear in validation. Batch-1 latency: every variant and fp32
timed interleaved in one ``shipyard.bench`` run, 1 thread. Usage::

    OMP_NUM_THREADS=1 python benchmarks/efficientnet_int8.py [--only NAME ...] [--runs 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from shipyard.artifact import Artifact
from shipyard.bench import bench
from shipyard.data import Dataset
from shipyard.examples.efficientnet import calibration, validation
from shipyard.hardware import hardware_fingerprint
from shipyard.passes.export import export_onnx
from shipyard.passes.quantize import quantize_onnx
from shipyard.passes.quantize_config import QuantizeConfig
from shipyard.signature import Signature, TensorSpec
from shipyard.sources import load_model
from shipyard.validate import Gates, build_report, run_all

SIGNATURE = Signature(
    inputs=(TensorSpec(name="input", shape=("batch", 3, 224, 224), finite=True),),
    outputs=(TensorSpec(name="logits", shape=("batch", 1000)),),
)
# name -> (QuantizeConfig overrides, calibration views, keep in float: "stem"/"head")
VARIANTS: dict[str, tuple[dict[str, Any], int, tuple[str, ...]]] = {
    "per-tensor, minmax, 64": ({}, 64, ()),
    "per-channel, minmax, 64": ({"per_channel": True}, 64, ()),
    "per-channel, minmax, 128": ({"per_channel": True}, 128, ()),
    "per-channel, minmax, 256": ({"per_channel": True}, 256, ()),
    "per-channel, minmax, 352": ({"per_channel": True}, 352, ()),
    "per-channel, entropy, 128": ({"per_channel": True, "calibration": "entropy"}, 128, ()),
    "per-channel, percentile, 128": ({"per_channel": True, "calibration": "percentile"}, 128, ()),
    "per-channel, minmax, 128, stem float": ({"per_channel": True}, 128, ("stem",)),
    "per-channel, minmax, 128, head float": ({"per_channel": True}, 128, ("head",)),
    "per-channel, minmax, 128, stem+head float": ({"per_channel": True}, 128, ("stem", "head")),
}


def exclusions(model: Path, parts: tuple[str, ...]) -> list[str]:
    """Node names: "stem" = the first Conv; "head" = the last Conv (1x1 to 1280) and the Gemm."""
    nodes = onnx.load(str(model)).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    names = []
    if "stem" in parts:
        names.append(convs[0])
    if "head" in parts:
        names += [convs[-1], *(n.name for n in nodes if n.op_type == "Gemm")]
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per artifact")
    args = parser.parse_args()
    fingerprint = hardware_fingerprint()
    print(f"{fingerprint['cpu']}, ISA {', '.join(fingerprint['isa'])}")
    views, _ = validation()
    data = Dataset({"input": views})
    torch_model = load_model("shipyard.examples.efficientnet:pretrained", SIGNATURE, name="torch")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        fp32 = export_onnx(torch_model, Path(folder) / "model.onnx")
        reference = run_all(fp32, data, 32, None)
        artifacts: list[Artifact] = [fp32]
        for i, (name, (overrides, count, parts)) in enumerate(VARIANTS.items()):
            if args.only and name not in args.only:
                continue
            config = QuantizeConfig.static_qdq_u8s8(
                calibration_samples=count,
                exclude_nodes=exclusions(fp32.path, parts),  # type: ignore[arg-type]
                name=f"v{i}",
                **overrides,
            )
            calib, _ = calibration(count)
            started = time.perf_counter()
            int8 = quantize_onnx(
                fp32, Path(folder) / f"v{i}.onnx", config, Dataset({"input": calib})
            )
            seconds = time.perf_counter() - started
            candidate = run_all(int8, data, 32, None)
            report = build_report("onnx", name, reference, candidate, None, Gates())
            out = report.outputs[0]
            rows.append((name, out, seconds, int8.size_bytes))
            artifacts.append(int8)
            print(f"  {name}: top-1 {out.top1_agreement:.2%} ({seconds:.1f} s)", flush=True)
        timing = bench(artifacts, batch_sizes=[1], threads=1, runs=args.runs, max_seconds=30)
    base = timing.get(fp32.name).at(1).p50_ms
    print(f"\n{len(views)} validation views; fp32 ONNX batch 1: {base:.2f} ms p50\n")
    columns = ("top-1", "top-5", "top-1 where fp32 is confident", "quantize s", "MB", "b1 ms")
    print("| variant | " + " | ".join(columns) + " | × fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, out, seconds, size), artifact in zip(rows, artifacts[1:], strict=True):
        p50 = timing.get(artifact.name).at(1).p50_ms
        confident = f"{out.confident_top1_agreement:.2%} of {out.confident_samples}"
        print(
            f"| {name} | {out.top1_agreement:.2%} | {out.top5_agreement:.2%} | {confident} | "
            f"{seconds:.1f} | {size / 1e6:.2f} | {p50:.2f} | {base / p50:.2f}× |"
        )


if __name__ == "__main__":
    main()
