"""Silero VAD (from the silero-vad wheel) on real speech (the pyannote.audio wheel's sample).

``silero()`` is the stateless 16 kHz network (the caller carries state and context),
``original()`` silero's own stateful wrapper; ``validation()`` the sample clip as 512-sample
chunks with frame labels from its speaker turns.
"""

from shipyard.examples.vad.data import (
    frame_labels,
    sample_audio,
    sample_dir,
    sample_wav,
    turns,
    validation,
)
from shipyard.examples.vad.model import CHUNK, CONTEXT, SAMPLE_RATE, model_path, original, silero

__all__ = [
    "CHUNK",
    "CONTEXT",
    "SAMPLE_RATE",
    "frame_labels",
    "model_path",
    "original",
    "sample_audio",
    "sample_dir",
    "sample_wav",
    "silero",
    "turns",
    "validation",
]
