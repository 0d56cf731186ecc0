"""Real speech with real labels: the 30 s telephone conversation in the ``pyannote.audio``
4.0.7 wheel (``pyannote/audio/sample/sample.wav``, 16 kHz mono, two speakers) and its
speaker turns (``sample.rttm``), read by path; pyannote itself is never imported (install it
with ``--no-deps``: its dependencies are not needed).

``validation()`` gives what a streaming client sends: the clip cut into 512-sample chunks
(the last one zero-padded, as ``get_speech_timestamps`` pads it), one row per chunk in order,
as one sequence, with a frame label per chunk: 1 when speaker turns cover at least half of it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from shipyard.data import Dataset
from shipyard.errors import DataError
from shipyard.examples.vad.model import CHUNK, SAMPLE_RATE
from shipyard.processing.audio import frames, read_wav


def sample_dir() -> Path:
    """``pyannote/audio/sample/`` in the installed wheel; DataError naming the install
    command when it is missing."""
    spec = importlib.util.find_spec("pyannote")  # a namespace package: nothing runs
    for location in list(spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "audio" / "sample"
        if (folder / "sample.wav").is_file() and (folder / "sample.rttm").is_file():
            return folder
    raise DataError(
        "the speech sample comes from the pyannote.audio wheel, which is not installed: "
        "pip install --no-deps pyannote.audio==4.0.7 (its dependencies are not needed)"
    )


def sample_wav() -> bytes:
    """The sample clip's WAV file, as a client would send it whole."""
    return (sample_dir() / "sample.wav").read_bytes()


def sample_audio() -> np.ndarray:
    """The sample clip as float32 samples at 16 kHz (480,000: 30 s)."""
    return read_wav(sample_wav(), SAMPLE_RATE)


def turns() -> list[tuple[float, float]]:
    """The speaker turns of ``sample.rttm`` as (start, end) seconds, speakers merged."""
    found = []
    for line in (sample_dir() / "sample.rttm").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "SPEAKER":
            start, duration = float(fields[3]), float(fields[4])
            found.append((start, start + duration))
    return found


def frame_labels(length: int, chunk: int = CHUNK) -> np.ndarray:
    """int64 ``[ceil(length / chunk)]``: 1 where the turns cover at least half the chunk."""
    covered = np.zeros(-(-length // chunk) * chunk, bool)
    for start, end in turns():
        covered[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)] = True
    return (covered.reshape(-1, chunk).mean(axis=1) >= 0.5).astype(np.int64)


def validation() -> Dataset:
    """The sample as 938 chunks ``input: float32 [938, 512]`` (one sequence, in order) with
    their speech labels (75% speech)."""
    audio = sample_audio()
    chunks = frames(audio, CHUNK)
    return Dataset({"input": chunks}, frame_labels(len(audio)), np.zeros(len(chunks), np.int64))


__all__ = ["frame_labels", "sample_audio", "sample_dir", "sample_wav", "turns", "validation"]
