"""Progress bars for long library steps (training, fine-tuning): on stderr, and only when
stderr is a terminal, so that logs, pipes, CI and callers of the Python API get no output."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import Progress


def progress_bar(*columns: Any) -> Progress:
    """A transient rich Progress on stderr; disabled when stderr is not a terminal."""
    console = Console(stderr=True)
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)
