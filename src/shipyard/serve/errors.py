"""Serving errors: each carries the HTTP status the V2 protocol answers it with.

The app turns any :class:`ServeError` into ``{"error": str(error)}`` with ``error.status``
(and ``Retry-After`` where ``retry_after`` is set). ``shipyard.errors.InputError`` from a
Session's signature check is answered as 400 too.
"""

from __future__ import annotations

from typing import ClassVar

from shipyard.errors import ShipyardError


class ServeError(ShipyardError):
    """Base of the errors a request can end in; ``status`` is its HTTP status code."""

    status: ClassVar[int] = 500
    retry_after: ClassVar[int | None] = None


class BadRequest(ServeError):
    """The request is malformed or contradicts the model (400)."""

    status = 400


class Unauthorized(ServeError):
    """A bearer token is required and missing or wrong (401)."""

    status = 401


class ModelNotFound(ServeError):
    """No such model or version in the repository, or not served by its version policy (404)."""

    status = 404


class PayloadTooLarge(ServeError):
    """The request body exceeds ``max_body_bytes`` (413)."""

    status = 413


class ModelNotReady(ServeError):
    """The model or version exists but is loading, unloaded or failed to load (503)."""

    status = 503
    retry_after = 1


class VersionRetired(ModelNotReady):
    """The version was unloaded or replaced between lookup and queueing (503)."""


class ShuttingDown(ServeError):
    """The server is draining before it exits: requests already accepted are answered, new
    ones are refused (503, Retry-After; over HTTP the connection is closed after it)."""

    status = 503
    retry_after = 1


class QueueFull(ServeError):
    """The version's batching queue holds ``max_queue_size`` requests already (503)."""

    status = 503
    retry_after = 1


class RequestTimeout(ServeError):
    """The request waited longer than its timeout before its result was ready (504)."""

    status = 504


class InternalError(ServeError):
    """A bug of ours, already logged where it happened; the message names its type (500)."""

    status = 500


class RepositoryError(ShipyardError):
    """What was given to serve cannot be served: not a folder, no model in it, or (strict)
    a model that failed to load. The message says what to pass instead."""
