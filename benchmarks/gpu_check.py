"""GPU check: which GPU routes work on this machine, and how ResNet-18 does on each.

Detects what is there (CUDA torch and its GPU, TensorRT, ONNX Runtime's CUDA and TensorRT
execution providers), builds the torchvision-free ResNet-18 (``shipyard.examples.resnet``,
random but seeded weights) into a temporary folder with Shipyard (ONNX export; a symmetric int8
QDQ model for TensorRT int8; TensorRT engines with the ``convert_tensorrt`` pass), then for every
route that is available:

- validates it against PyTorch fp32 on the CPU on 16 random images (max |diff|, cosine,
  top-1 agreement, with ``shipyard.validate.compare_output``);
- times ``Session.run`` at batch 1 and 8 after a warm-up, all routes interleaved round by round
  (same inputs, rotating start), like ``shipyard.bench``: p50 latency and images/s.

Routes: torch CPU fp32 (the baseline), torch CUDA fp32 and fp16, ONNX Runtime CUDA EP and
TensorRT EP, native TensorRT fp32/fp16/int8. Missing pieces are reported, not fatal: on a
machine without a GPU every GPU route prints why it is unavailable and the script exits 0
(``--cpu-routes`` adds ONNX Runtime CPU routes to exercise the whole flow there). Prints one
table and the hardware fingerprint. Usage::

    python benchmarks/gpu_check.py [--runs 30] [--warmup 5] [--routes trt-fp16,ort-cuda-ep]
                                   [--trt-level 2] [--cpu-routes] [--json out.json]

What each route needs in the environment: a CUDA build of torch (PyPI's Linux wheels are; the
Makefile installs the CPU build), ``onnxruntime-gpu`` instead of ``onnxruntime`` for the two EP
routes (its TensorRT EP also needs the TensorRT libraries), and ``tensorrt`` for the native
routes. Most of the time goes into TensorRT builds (three native engines; ONNX Runtime's
TensorRT EP builds at the first run and again when the batch size leaves the range it saw);
``--trt-level`` lowers the builder optimization level to shorten them.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import shipyard
from shipyard.artifact import Artifact
from shipyard.bench import LatencyStats
from shipyard.hardware import hardware_fingerprint
from shipyard.runtimes import open_session
from shipyard.signature import Signature, TensorSpec
from shipyard.validate import Gates, compare_output

BATCHES = (1, 8)
SAMPLES = 16
SIGNATURE = Signature(
    inputs=(TensorSpec(name="x", shape=("batch", 3, 224, 224)),),
    outputs=(TensorSpec(name="logits", shape=("batch", 1000)),),
)


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- what is there ----------------------------------------------------------------------------


def detect() -> dict[str, Any]:
    """Versions and availability of every piece; prints one line each."""
    found: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    found["cuda"] = torch.cuda.is_available()
    if found["cuda"]:
        major, minor = torch.cuda.get_device_capability(0)
        found["gpu"] = torch.cuda.get_device_name(0)
        found["compute_capability"] = f"{major}.{minor}"
        print(
            f"torch {torch.__version__} (CUDA {torch.version.cuda}): GPU {found['gpu']}, "
            f"compute capability {found['compute_capability']}, "
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
        )
    else:
        build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
        print(f"torch {torch.__version__}: CUDA not available ({build})")
    try:  # before any ORT session: the wheel loads the libraries ORT's TensorRT EP dlopens
        import tensorrt

        found["tensorrt"] = str(tensorrt.__version__)
        print(f"tensorrt {found['tensorrt']}: importable")
    except Exception as error:  # ImportError, or OSError from a wheel without its libraries
        found["tensorrt"] = None
        found["tensorrt_error"] = _short(error)
        print(f"tensorrt: not importable ({found['tensorrt_error']})")
    import onnxruntime as ort

    found["onnxruntime"] = ort.__version__
    found["ort_providers"] = ort.get_available_providers()
    print(
        f"onnxruntime {ort.__version__} ({ort.get_device()}): {', '.join(found['ort_providers'])}"
    )
    return found


# --- the routes ---------------------------------------------------------------------------------


class HalfTorch:
    """PyTorch eager in float16 on the GPU (TorchSession runs float32 only)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = copy.deepcopy(module).half().cuda().eval()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(feeds["x"]).cuda().half()
        with torch.inference_mode():
            return {"logits": self.module(x).float().cpu().numpy()}

    def close(self) -> None:
        del self.module
        torch.cuda.empty_cache()


@dataclass
class Route:
    name: str
    needs: str | None  # why it cannot run here, or None
    open: Callable[[], Any]  # -> something with run(feeds) and close()
    session: Any = None
    open_s: float | None = None
    error: str | None = None
    check: dict[str, Any] = field(default_factory=dict)
    latency: dict[int, LatencyStats] = field(default_factory=dict)


class Artifacts:
    """The models, built once on first use into ``folder``."""

    def __init__(self, folder: Path, module: torch.nn.Module, calibration: np.ndarray) -> None:
        self.folder, self.module, self.calibration = folder, module, calibration
        self.torch = Artifact("torch", "torch", SIGNATURE, module=module)
        self._cache: dict[str, Artifact | BaseException] = {}

    def _once(self, key: str, make: Callable[[], Artifact]) -> Artifact:
        if key not in self._cache:
            started = time.perf_counter()
            try:
                self._cache[key] = make()
                print(f"  built {key} in {time.perf_counter() - started:.1f} s")
            except Exception as error:  # remembered: every route that needs it reports it
                self._cache[key] = error
        value = self._cache[key]
        if isinstance(value, BaseException):
            raise RuntimeError(f"building {key} failed: {_short(value)}") from value
        return value

    def onnx(self) -> Artifact:
        return self._once("onnx", lambda: shipyard.export(self.torch, self.folder / "model.onnx"))

    def qdq(self) -> Artifact:
        """Symmetric int8 QDQ, the kind TensorRT builds (see convert_tensorrt's docs)."""
        return self._once("int8 QDQ onnx", self._quantize)

    def _quantize(self) -> Artifact:
        from shipyard.data import Dataset
        from shipyard.passes.quantize import QuantizeConfig, quantize_onnx

        # Symmetric int8, float biases: what TensorRT's explicit quantization accepts.
        target = self.folder / "model.int8-qdq-symmetric.onnx"
        config = QuantizeConfig.tensorrt_s8s8(name="onnx-int8")
        return quantize_onnx(self.onnx(), target, config, Dataset({"x": self.calibration}))

    def engine(self, precision: str, level: int | None) -> Artifact:
        from shipyard.passes.convert_tensorrt import TensorRtConfig, convert_tensorrt

        def build() -> Artifact:
            source = self.qdq() if precision == "int8" else self.onnx()
            config = TensorRtConfig(
                precision=precision,  # type: ignore[arg-type]
                min_batch=1,
                opt_batch=8,
                max_batch=16,
                optimization_level=level,
            )
            return convert_tensorrt(source, self.folder / f"model.{precision}.plan", config)

        return self._once(f"tensorrt {precision} engine", build)


def ort_trt_options(models: Artifacts, fp16: bool) -> dict[str, Any]:
    """The ORT TensorRT EP builds its engine at session start: give it the batch range the
    check runs (else it rebuilds per new shape) and a cache folder per precision."""
    low, high = (f"x:{batch}x3x224x224" for batch in (min(BATCHES), max(BATCHES)))
    cache = models.folder / f"ort-trt-cache-{'fp16' if fp16 else 'fp32'}"
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_profile_min_shapes": low,
        "trt_profile_opt_shapes": high,
        "trt_profile_max_shapes": high,
    }


def make_routes(
    found: dict[str, Any], models: Artifacts, cpu_routes: bool, level: int | None
) -> list[Route]:
    providers = found["ort_providers"]
    no_cuda = None if found["cuda"] else "torch sees no CUDA GPU"
    missing = [] if found["tensorrt"] else [f"tensorrt not importable ({found['tensorrt_error']})"]
    no_trt = "; ".join([no_cuda, *missing] if no_cuda else missing) or None

    def provider(name: str) -> str | None:
        return None if name in providers else f"onnxruntime has no {name} ({found['onnxruntime']})"

    def torch_on(device: str) -> Callable[[], Any]:
        def opening() -> Any:
            module = models.module if device == "cpu" else copy.deepcopy(models.module)
            artifact = Artifact(f"torch-{device}", "torch", SIGNATURE, module=module)
            return open_session(artifact, device=device)

        return opening

    def engine(precision: str) -> Callable[[], Any]:
        return lambda: open_session(models.engine(precision, level), device="cuda")

    routes = [
        Route("torch-cpu-fp32", None, torch_on("cpu")),
        Route("torch-cuda-fp32", no_cuda, torch_on("cuda")),
        Route("torch-cuda-fp16", no_cuda, lambda: HalfTorch(models.module)),
        Route(
            "ort-cuda-ep",
            provider("CUDAExecutionProvider"),
            lambda: open_session(models.onnx(), device="cuda"),
        ),
        Route(
            "ort-tensorrt-ep",
            provider("TensorrtExecutionProvider"),
            lambda: open_session(
                models.onnx(), device="tensorrt", provider_options=ort_trt_options(models, False)
            ),
        ),
        Route(
            "ort-tensorrt-ep-fp16",
            provider("TensorrtExecutionProvider"),
            lambda: open_session(
                models.onnx(), device="tensorrt", provider_options=ort_trt_options(models, True)
            ),
        ),
        Route("trt-fp32", no_trt, engine("fp32")),
        Route("trt-fp16", no_trt, engine("fp16")),
        Route("trt-int8", no_trt, engine("int8")),
    ]
    if cpu_routes:
        routes += [
            Route("ort-cpu-fp32", None, lambda: open_session(models.onnx())),
            Route("ort-cpu-int8-qdq", None, lambda: open_session(models.qdq())),
        ]
    return routes


# --- validate and time --------------------------------------------------------------------------


def validate(route: Route, images: np.ndarray, reference: np.ndarray) -> None:
    outputs = [route.session.run({"x": images[i : i + 8]})["logits"] for i in range(0, SAMPLES, 8)]
    result = compare_output("logits", reference, np.concatenate(outputs), Gates())
    route.check = {
        "max_abs": result.max_abs,
        "cosine": result.cosine,
        "top1": result.top1_agreement,
        "nonfinite": result.nonfinite_candidate,
    }


def time_interleaved(routes: list[Route], runs: int, warmup: int, max_seconds: float) -> None:
    """p50 per route and batch size; every round runs each route once, rotating the start."""
    rng = np.random.default_rng(1)
    for batch in BATCHES:
        feeds = {"x": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
        for route in routes:
            for _ in range(warmup):
                route.session.run(feeds)
        samples: list[list[int]] = [[] for _ in routes]
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        try:
            for r in range(runs):
                shift = r % len(routes)
                for i in [*range(shift, len(routes)), *range(shift)]:
                    t0 = time.perf_counter_ns()
                    routes[i].session.run(feeds)
                    samples[i].append(time.perf_counter_ns() - t0)
                if r >= 4 and time.perf_counter() - started > max_seconds:
                    break
        finally:
            gc.enable()
        for route, ns in zip(routes, samples, strict=True):
            route.latency[batch] = LatencyStats.from_ns(batch, ns)


def table(routes: list[Route]) -> str:
    head = (
        f"{'route':<22}{'status':<12}{'open s':>8}{'max|d|':>10}{'cosine':>10}{'top-1':>7}"
        + "".join(f"{f'p50 b{b} ms':>12}{f'img/s b{b}':>11}" for b in BATCHES)
    )
    lines = [head, "-" * len(head)]
    for route in routes:
        if route.needs or route.error or not route.check:
            status = "unavailable" if route.needs else "FAILED" if route.error else "not run"
            lines.append(f"{route.name:<22}{status:<12}{route.needs or route.error or ''}")
            continue
        c = route.check
        top1 = "-" if c["top1"] is None else f"{c['top1']:.2f}"
        row = (
            f"{route.name:<22}{'ok':<12}{route.open_s or 0:>8.1f}{c['max_abs']:>10.2e}"
            f"{c['cosine']:>10.6f}{top1:>7}"
        )
        for b in BATCHES:
            stats = route.latency.get(b)
            row += f"{stats.p50_ms:>12.3f}{stats.samples_per_s:>11.0f}" if stats else f"{'-':>23}"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed rounds per batch size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per route and batch")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap per batch size")
    parser.add_argument("--routes", help="comma-separated route names to run (default: all)")
    parser.add_argument("--cpu-routes", action="store_true", help="add ONNX Runtime CPU routes")
    parser.add_argument("--trt-level", type=int, help="TensorRT builder optimization level 0-5")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    began = time.perf_counter()

    print("== what is available")
    found = detect()
    torch.manual_seed(0)
    from shipyard.examples.resnet import resnet18

    module = resnet18().eval()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((SAMPLES, 3, 224, 224)).astype(np.float32)

    with tempfile.TemporaryDirectory(prefix="shipyard-gpu-check-") as tmp:
        models = Artifacts(Path(tmp), module, calibration=images)
        routes = make_routes(found, models, args.cpu_routes, args.trt_level)
        if args.routes:
            wanted = {"torch-cpu-fp32", *args.routes.split(",")}
            routes = [r for r in routes if r.name in wanted]
        for route in routes:
            print(
                f"  {route.name}: {'unavailable: ' + route.needs if route.needs else 'available'}"
            )
        runnable = [r for r in routes if r.needs is None]
        if len(runnable) <= 1 and not args.cpu_routes:
            print("\nno GPU route is available here: nothing to build or measure")
        else:
            print("\n== build, open and validate against torch fp32 on the CPU")
            with torch.inference_mode():
                reference = module(torch.from_numpy(images)).numpy()
            for route in runnable:
                started = time.perf_counter()
                try:
                    route.session = route.open()
                    route.open_s = time.perf_counter() - started
                    validate(route, images, reference)
                    print(f"  {route.name}: ok ({route.open_s:.1f} s to open) {route.check}")
                except Exception as error:  # a route that fails is reported, not fatal
                    route.error = _short(error)
                    print(f"  {route.name}: FAILED {route.error}")
                    print("    " + "".join(traceback.format_exception(error)[-3:]).strip())
            ready = [r for r in runnable if r.session is not None]
            print(f"\n== timing {', '.join(r.name for r in ready)} (interleaved)")
            try:
                time_interleaved(ready, args.runs, args.warmup, args.max_seconds)
            except Exception as error:
                print(f"  timing failed: {_short(error)}")
            for route in ready:
                route.session.close()
        print("\n== results (latency: one Session.run incl. host<->device copies)")
        print(table(routes))
    fingerprint = hardware_fingerprint()
    print("\n== hardware fingerprint")
    print(json.dumps(fingerprint, indent=2))
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    if args.json:
        report = {
            "found": found,
            "fingerprint": fingerprint,
            "routes": [
                {
                    "name": r.name,
                    "unavailable": r.needs,
                    "error": r.error,
                    "open_s": r.open_s,
                    "check": r.check,
                    "latency": {b: vars(s) for b, s in r.latency.items()},
                }
                for r in routes
            ],
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
