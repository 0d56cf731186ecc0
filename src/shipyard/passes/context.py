"""What a pass may use besides its input artifact and config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.artifact import Artifact
from shipyard.data import Dataset


@dataclass
class PassContext:
    """``workdir`` is the (staging) package folder a pass writes its files into."""

    workdir: Path
    reference: Artifact
    data: dict[str, Dataset] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("shipyard.passes"))

    def output_path(self, filename: str) -> Path:
        return self.workdir / filename
