"""WAV in, chunks out; probabilities in, speech segments out (silero's state machine)."""

from __future__ import annotations

import io
import struct
import wave
from importlib.util import find_spec

import numpy as np
import pytest

from shipyard.errors import AudioError
from shipyard.processing.audio import SpeechSettings, frames, read_wav, speech_segments

RATE = 16_000
TONE = (0.5 * np.sin(np.arange(1600) / 7.0)).astype(np.float32)  # 0.1 s


def _pcm(samples: np.ndarray, rate: int = RATE, channels: int = 1, width: int = 2) -> bytes:
    """A PCM WAV written by the standard library (``samples``: [n, channels] in [-1, 1])."""
    scale = float(1 << (8 * width - 1)) - 1
    if width == 1:
        raw = (np.round(samples * 127) + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(samples * scale).astype(np.int32).reshape(-1)
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        raw = np.round(samples * scale).astype(f"<i{width}").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(raw)
    return out.getvalue()


def _float_wav(samples: np.ndarray, rate: int = RATE, extensible: bool = False) -> bytes:
    """A 32-bit IEEE float WAV (format 3, or 0xFFFE with the float sub-format)."""
    data = samples.astype("<f4").tobytes()
    if extensible:
        guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * 4, 4, 32, 22, 32, 4) + guid
    else:
        fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # an odd-sized chunk before the data
    chunks += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_of_every_width_reads_back(width: int) -> None:
    got = read_wav(_pcm(TONE[:, None], width=width), RATE)
    assert got.dtype == np.float32 and got.shape == TONE.shape
    np.testing.assert_allclose(got, TONE, atol=2.0 / (1 << (8 * width - 1)) + 1e-6)


@pytest.mark.parametrize("extensible", [False, True])
def test_float_wav_reads_back_exactly(extensible: bool) -> None:
    np.testing.assert_array_equal(read_wav(_float_wav(TONE, extensible=extensible), RATE), TONE)


def test_stereo_is_averaged_and_48_khz_is_decimated() -> None:
    stereo = np.stack([TONE, -TONE / 2], axis=1)
    np.testing.assert_allclose(read_wav(_pcm(stereo, channels=2), RATE), TONE / 4, atol=1e-4)
    fast = np.repeat(TONE, 3)  # each sample three times: 48 kHz
    np.testing.assert_allclose(read_wav(_pcm(fast[:, None], rate=48_000), RATE), TONE, atol=1e-4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3 not audio at all", "not a WAV file"),
        (_pcm(TONE[:, None], rate=44_100), "44100 Hz; this model takes 16000 Hz"),
        (_pcm(np.zeros((RATE * 3, 1))), "lasts 3.0 s; the limit is 2 s"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no 'fmt ' or no 'data' chunk"),
        (_pcm(TONE[:, None]).replace(b"\x01\x00\x01\x00", b"\x02\x00\x01\x00", 1), "format 2"),
    ],
)
def test_refusals_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        read_wav(data, RATE, max_seconds=2)


def test_frames_pad_the_last_chunk_with_zeros() -> None:
    chunks = frames(np.arange(1, 1201, dtype=np.float32), 512)
    assert chunks.shape == (3, 512)
    assert chunks[2, 175] == 1200 and not chunks[2, 176:].any()


silero = pytest.mark.skipif(find_spec("silero_vad") is None, reason="needs silero-vad")


def _probabilities() -> np.ndarray:
    """Speech probabilities with every feature of the state machine: turns, short gaps,
    a blip too short to keep, near-threshold values, and one long turn."""
    rng = np.random.default_rng(3)
    pattern = [(0.1, 20), (0.9, 40), (0.2, 2), (0.8, 30), (0.1, 60), (0.95, 3), (0.05, 20)]
    pattern += [(0.6, 300), (0.3, 4), (0.7, 200), (0.45, 10), (0.1, 40)]
    values = np.concatenate([np.full(n, p) for p, n in pattern])
    return np.clip(values + rng.normal(0, 0.08, len(values)), 0, 1)


@silero
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"threshold": 0.6, "speech_pad_ms": 0},
        {"min_silence_duration_ms": 300, "min_speech_duration_ms": 50},
        {"max_speech_duration_s": 3.0},
        {"max_speech_duration_s": 3.0, "use_max_poss_sil_at_max_speech": False},
        {"neg_threshold": 0.2, "max_speech_duration_s": 2.0},
    ],
)
def test_segments_equal_silero_s_own_state_machine(options: dict[str, float]) -> None:
    from silero_vad import get_speech_timestamps_from_probs

    probabilities = _probabilities()
    length = len(probabilities) * 512 - 100
    theirs = dict(options)
    if "min_silence_at_max_speech_ms" in theirs:
        theirs["min_silence_at_max_speech"] = theirs.pop("min_silence_at_max_speech_ms")
    want = get_speech_timestamps_from_probs(
        list(probabilities), audio_length_samples=length, **theirs
    )
    got = speech_segments(probabilities, SpeechSettings(**options), length, 512)
    assert len(want) >= 2
    assert got == [(t["start"], t["end"]) for t in want]
