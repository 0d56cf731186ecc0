"""PyTorch eager (optionally ``torch.compile``) as a Session backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from shipyard.artifact import Artifact
from shipyard.errors import BackendError
from shipyard.runtimes.base import Session
from shipyard.torch_modules import eval_mode, flatten_outputs, output_names


class TorchSession(Session):
    backend = "torch"

    def __init__(
        self,
        artifact: Artifact,
        device: str = "cpu",
        threads: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(artifact, device, threads)
        if artifact.module is None:
            raise BackendError(f"{artifact.describe()} holds no torch module")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} asked for, but torch sees no CUDA GPU")
        if threads is not None:
            # torch's thread pool is process-wide: this also affects other torch sessions.
            torch.set_num_threads(threads)
        module = eval_mode(artifact.module.to(device))
        self._module: Any = torch.compile(module) if compile else module
        self._names = artifact.signature.input_names

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.requested_threads is not None and torch.get_num_threads() != self.requested_threads:
            torch.set_num_threads(self.requested_threads)
        args = [torch.as_tensor(feeds[name], device=self.device) for name in self._names]
        with torch.inference_mode():
            tensors = flatten_outputs(self._module(*args))
        names = output_names(len(tensors), self.signature.output_names)
        return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}
