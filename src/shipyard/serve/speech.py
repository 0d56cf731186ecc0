"""A whole WAV clip in one request, speech segments out (``serving.sequence.speech``).

A version whose sequence config sets ``speech`` also takes its chunk input as BYTES: one WAV
file (shape ``[1]`` or ``[1, 1]``; tritonclient sends ``np.object_`` arrays, ``curl`` a JSON
string in base64). The server decodes it (:func:`shipyard.processing.audio.read_wav`, in a
worker thread), cuts it into the model's chunks (the last one zero-padded) and runs them as a
private sequence of the version's :class:`~shipyard.serve.sequences.SequenceBatcher`, in order
with the state carried, so its chunks share model calls with the live streams instead of
holding a session for the whole clip. The probabilities become segments with silero-vad's
``get_speech_timestamps`` state machine (:func:`shipyard.processing.audio.speech_segments`).

The answer: ``segments`` FP32 ``[K, 2]`` (start and end of each speech turn in seconds) and
the model's probability output, one row per chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shipyard.errors import InputError, ServingConfigError
from shipyard.processing.audio import SpeechSettings, frames, read_wav, speech_segments
from shipyard.serve.errors import BadRequest, RequestTimeout
from shipyard.signature import Signature, TensorSpec
from shipyard.stateful import Stepper

if TYPE_CHECKING:
    from shipyard.serve.sequences import SequenceBatcher

#: The output that carries the speech turns of a whole clip.
SEGMENTS = "segments"


@dataclass(frozen=True)
class SpeechClips:
    """How one version answers a whole clip."""

    settings: SpeechSettings
    input: str  # the chunk input, which takes the clip as BYTES
    chunk: int  # samples per step
    probability: str  # the output read as the speech probability
    signature: Signature  # the client signature with the segments output added

    @classmethod
    def create(cls, stepper: Stepper, settings: SpeechSettings | None) -> SpeechClips | None:
        """The version's clip settings, or None without ``speech``. ServingConfigError when
        the model's steps are not fixed-length chunks of one input."""
        if settings is None:
            return None
        client = stepper.client
        if stepper.chunk is None or stepper.context is None or len(client.inputs) != 1:
            raise ServingConfigError(
                "serving.sequence.speech needs a context input of fixed length and no other "
                f"input sent by clients; they send {client.describe_inputs()}"
            )
        segments = TensorSpec(name=SEGMENTS, dtype="float32", shape=("segments", 2))
        signature = client.with_outputs([*client.outputs, segments])
        first = client.output_names[0]
        return cls(settings, client.inputs[0].name, stepper.chunk, first, signature)

    def _audio(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        clip = feeds.get(self.input)
        if clip is None or len(feeds) != 1 or clip.size != 1 or clip.ndim > 2:
            raise BadRequest(
                f"a whole clip is one WAV file as BYTES input '{self.input}' of shape [1] "
                f"(or [1, 1]); got { ({k: list(v.shape) for k, v in feeds.items()}) }"
            )
        data = clip.reshape(-1)[0]
        try:
            return read_wav(bytes(data), self.settings.sample_rate, self.settings.max_seconds)
        except InputError as error:  # AudioError: not a WAV file we read, wrong rate, too long
            raise BadRequest(f"input '{self.input}': {error}") from None

    async def answer(
        self, batcher: SequenceBatcher, feeds: Mapping[str, np.ndarray], limit: float | None
    ) -> dict[str, np.ndarray]:
        """The segments and chunk probabilities of the clip in ``feeds``."""
        audio = await asyncio.to_thread(self._audio, feeds)
        if audio.size == 0:
            raise BadRequest(f"input '{self.input}': the clip holds no samples")
        chunks = frames(audio, self.chunk)
        sequence = batcher.clip_sequence()
        futures = [
            batcher.clip_step(sequence, {self.input: chunks[i : i + 1]}, first=i == 0)
            for i in range(len(chunks))
        ]
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), limit)
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"the clip ({len(chunks)} chunks) was not done within {(limit or 0) * 1e3:g} ms"
            ) from None
        finally:
            for future in futures:
                future.cancel()  # the rest is skipped when its turn comes
        probability = np.concatenate([result[self.probability] for result in results])
        turns = speech_segments(probability.reshape(-1), self.settings, len(audio), self.chunk)
        rate = float(self.settings.sample_rate)
        segments = np.array(turns, np.float64).reshape(-1, 2) / rate
        return {self.probability: probability, SEGMENTS: segments.astype(np.float32)}


__all__ = ["SEGMENTS", "SpeechClips"]
