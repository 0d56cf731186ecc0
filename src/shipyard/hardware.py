"""The hardware fingerprint: what a latency number, or a kernel choice, depends on.

``hardware_fingerprint()`` describes this machine: CPU model and the ISA flags that decide which
kernels a runtime can use, cores, memory, OS, library versions and GPUs. Benchmarks record it
beside every number, manifests keep it, and quantization reads its ISA flags to pick defaults.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import psutil

# ISA extensions that decide which kernels a runtime can use (int8 dot products, bf16, AMX...).
_ISA_FLAGS = {
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "neon",
    "asimd",
}


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str | None, list[str]]:
    """CPU model name and the ISA flags of interest from ``path`` (Linux only: else None, [])."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, []
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "features"):  # x86 says "flags", ARM says "Features"
            flags.update(value.split())
    return model, sorted(flags & _ISA_FLAGS)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (Linux), lowered by a cgroup v2
    CPU quota (``cpu.max``, as a container limited to 1.5 CPUs has: 1), else ``os.cpu_count``."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def hardware_fingerprint() -> dict[str, Any]:
    """What a latency number depends on: CPU, ISA flags, cores, memory, OS, library versions.

    Returns a JSON-serializable dict (``cpu``, ``isa``, ``logical_cores``, ``physical_cores``,
    ``usable_cores``, ``memory_gb``, ``os``, ``python``, ``versions``, ``gpu``). Works without
    /proc (macOS, Windows): the fields it cannot read fall back or become None.
    """
    model, isa = _cpuinfo()
    return {
        "cpu": model or platform.processor() or platform.machine() or None,
        "isa": isa,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        # a container may be limited to fewer cores than the machine has
        "usable_cores": usable_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("torch", "onnxruntime", "onnx", "numpy")},
        "gpu": _gpus(),
    }
