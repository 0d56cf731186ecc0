"""How many server processes ``shipyard serve`` starts by default (``--workers auto``).

One Python process and its GIL serve about one core's worth of requests however many cores
the machine has. Measured on a 2-core machine with wrk (``benchmarks/serve/peers.py``): the
digits CNN served by two workers answered 1.36× the requests of one process at 32
connections and 1.33× at 64, with the same p50 at one connection (0.155 against 0.149 ms);
ResNet-18 served as much by two workers as by one process with two instances. So the default
is one worker per usable core, unless something says otherwise:

- a stateful model (``serve: sequence:``): its sequences live in one process;
- every model already uses every core in one process (``instances`` × ``threads``), where
  more processes would only hold more copies of the weights;
- the models' files would not fit that many times in half the available memory;
- the platform cannot share a port between processes (``SO_REUSEPORT``) or one core is usable.

:func:`choose_workers` returns the count with the reason, which the startup line says.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import psutil

from shipyard.errors import ServingConfigError
from shipyard.hardware import usable_cores
from shipyard.package import MANIFEST
from shipyard.serve.layout import find_layout
from shipyard.serving import ServingConfig


def parse_workers(value: str) -> int | None:
    """``auto`` -> None; a whole number of processes >= 1; ValueError otherwise."""
    if value.strip().lower() == "auto":
        return None
    count = int(value)
    if count < 1:
        raise ValueError(value)
    return count


def choose_workers(path: Path) -> tuple[int, str]:
    """(processes, why) for serving ``path`` (a repository, model or package folder)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return 1, "auto: this platform cannot share a port between processes"
    cores = usable_cores()
    if cores < 2:
        return 1, "auto: one usable core"
    layout = find_layout(path)
    folders, configs = [], []
    for name in layout.model_names():
        for folder in layout.versions(name).values():
            folders.append(folder)
            try:
                manifest = json.loads((folder / MANIFEST).read_text())
                configs.append((name, ServingConfig.from_manifest(manifest)))
            except (OSError, ValueError, ServingConfigError):
                continue  # its load reports it
    for name, config in configs:
        if config.sequence is not None:
            return 1, f"auto: model '{name}' keeps state per sequence, in one process"
    if configs and all(config.instances * config.threads >= cores for _, config in configs):
        return 1, f"auto: every model's instances × threads already use the {cores} cores"
    size = sum(file.stat().st_size for f in folders for file in f.rglob("*") if file.is_file())
    fits = int(psutil.virtual_memory().available * 0.5 // max(2 * size, 1))
    if fits < cores:
        count = max(1, fits)
        return count, f"auto: {count} copies of the models fit in half the free memory"
    return cores, "auto: one per usable core"
