"""Progress the pipeline reports to its caller, as typed events (the CLI draws them).

``build``/``optimize`` call ``on_step(StepEvent)`` after each step; ``bench`` calls
``on_progress(BenchProgress)`` after each timed round. Callers branch on ``stage`` or read the
counts, never on message text.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Stage(str, enum.Enum):
    """What kind of step finished."""

    LOAD = "load"  # the model or the data sets were loaded
    PASS = "pass"  # a pass made an artifact
    VALIDATE = "validate"  # an artifact was validated against the reference
    CANDIDATE = "candidate"  # the optimization search evaluated one candidate
    BENCH = "bench"  # artifacts were benchmarked
    VERDICT = "verdict"  # the search chose its result


@dataclass(frozen=True)
class StepEvent:
    """One finished step: its stage, a line for people, and how long it took."""

    stage: Stage
    message: str
    seconds: float


@dataclass(frozen=True)
class BenchProgress:
    """``done`` of ``total`` timed rounds (all batch sizes together); ``batch`` runs now."""

    batch: int
    done: int
    total: int


StepCallback = Callable[[StepEvent], None]
BenchCallback = Callable[[BenchProgress], None]
