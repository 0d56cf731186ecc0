"""Runtimes: the one way to execute an artifact.

``open_session(artifact, device="cpu", threads=1)`` returns a :class:`Session` whose
``run({name: ndarray}) -> {name: ndarray}`` is the same for every backend, so validation,
benchmarking and serving work on any format unchanged.
"""

from shipyard.runtimes.base import BACKENDS, Session, default_backend, open_session

__all__ = ["BACKENDS", "Session", "default_backend", "open_session"]
