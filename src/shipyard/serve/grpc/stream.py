"""``ModelStreamInfer``: many inference requests on one bidirectional gRPC stream (Triton's).

tritonclient's ``start_stream`` / ``async_stream_infer`` send requests on one call without
waiting for answers; each is answered on the stream with ``ModelStreamInferResponse``:
``infer_response``, or ``error_message`` (the message HTTP answers with) when it failed. A
failed request does not end the stream. Each request goes through the same dispatcher as a
unary ``ModelInfer`` (auth, lookup, decode, batch, encode, metrics), so requests on a stream
batch with everyone else's.

Requests run concurrently, so answers come in the order they are ready, except within one
sequence: a request naming a ``sequence_id`` starts only once the stream's previous request
of that sequence (same model and version) has been answered, so a stream's chunks reach
the sequence batcher in the order they were sent. Responses carry the request's ``id``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from shipyard.serve.dispatch import Dispatcher, failure
from shipyard.serve.grpc import inference_pb2 as pb
from shipyard.serve.grpc.codec import parameter

Key = tuple[str, str, Any]


def _sequence(request: pb.ModelInferRequest) -> Key | None:
    """(model, version, sequence id) of a request that names a sequence, else None."""
    parameters = request.parameters
    if "sequence_id" not in parameters:  # `in` first: indexing a protobuf map inserts the key
        return None
    identifier = parameter(parameters["sequence_id"])
    if identifier in (None, 0, ""):
        return None
    return request.model_name, request.model_version, identifier


async def stream_infer(
    dispatcher: Dispatcher,
    transport: Any,
    requests: AsyncIterator[pb.ModelInferRequest],
    context: aio.ServicerContext,
    credentials: bytes | str | None,
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """Answer every request of the stream ``requests``, each as soon as it is ready."""
    answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
    latest: dict[Key, asyncio.Task[None]] = {}  # each sequence's last request on this stream
    running: set[asyncio.Task[None]] = set()

    async def answer(request: pb.ModelInferRequest, after: asyncio.Task[None] | None) -> None:
        if after is not None and not after.done():
            await asyncio.wait([after])  # never raises: `answer` catches what it can
        try:
            response = await dispatcher.infer(
                transport,
                request,
                request.model_name,
                request.model_version or None,
                credentials,
                context.time_remaining(),
            )
            reply = pb.ModelStreamInferResponse(infer_response=response)
        except Exception as error:  # counted and (bugs) logged by the dispatcher
            echo = pb.ModelInferResponse(
                model_name=request.model_name, model_version=request.model_version, id=request.id
            )
            reply = pb.ModelStreamInferResponse(
                error_message=failure(error).message, infer_response=echo
            )
        answers.put_nowait(reply)

    def forget(key: Key, task: asyncio.Task[None]) -> None:
        running.discard(task)
        if latest.get(key) is task:
            del latest[key]

    async def read() -> None:
        try:
            async for request in requests:
                key = _sequence(request)
                task = asyncio.create_task(answer(request, latest.get(key) if key else None))
                running.add(task)
                if key is None:
                    task.add_done_callback(running.discard)
                else:
                    latest[key] = task
                    task.add_done_callback(functools.partial(forget, key))
            if running:
                await asyncio.wait(list(running))
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (reply := await answers.get()) is not None:
            yield reply
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()


__all__ = ["stream_infer"]
