"""Audio in, model chunks out; speech probabilities in, speech segments out.

- ``read_wav(data, sample_rate)``: a WAV file's bytes (PCM 8/16/24/32-bit, IEEE float 32/64,
  also in WAVE_FORMAT_EXTENSIBLE) to float32 mono samples in [-1, 1] at ``sample_rate``.
  Channels are averaged; a file at a multiple of ``sample_rate`` is decimated by taking every
  n-th sample, as silero-vad's own wrapper does; any other rate is refused (no resampler here).
  The header is read before any sample, and a clip above ``max_seconds`` is refused.
- ``frames(samples, size)``: consecutive chunks of ``size`` samples, the last zero-padded.
- ``speech_segments(probabilities, settings, length)``: speech turns from one probability per
  chunk, with the state machine of silero-vad's ``get_speech_timestamps`` (6.2.3): hysteresis
  between ``threshold`` and ``neg_threshold``, short silences bridged, short turns dropped,
  over-long turns cut at their longest silence, padding on both sides. The server answers a
  whole WAV clip with these (``serve/sequences.py``); silero's own function needs torch, which
  the server never imports.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import AudioError

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


class SpeechSettings(BaseModel):
    """``speech:`` of a sequence model (``serve: sequence: speech:``): how a whole WAV clip
    is framed and how its chunk probabilities become segments. The defaults are
    ``get_speech_timestamps``'s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(default=16_000, ge=1, description="Rate the model takes")
    threshold: float = Field(default=0.5, gt=0, lt=1, description="Speech at or above this")
    neg_threshold: float | None = Field(
        default=None, gt=0, lt=1, description="Silence below this (default threshold - 0.15)"
    )
    min_speech_duration_ms: float = Field(default=250, ge=0)
    max_speech_duration_s: float | None = Field(default=None, gt=0, description="None: no cap")
    min_silence_duration_ms: float = Field(default=100, ge=0)
    speech_pad_ms: float = Field(default=30, ge=0)
    min_silence_at_max_speech_ms: float = Field(default=98, ge=0)
    use_max_poss_sil_at_max_speech: bool = True
    max_seconds: float = Field(default=600, gt=0, description="Longest clip one request may hold")


def _format(fmt: bytes) -> tuple[int, int, int, int]:
    """(format tag, channels, rate, bits) of a ``fmt `` chunk; extensible resolved."""
    if len(fmt) < 16:
        raise AudioError("the WAV 'fmt ' chunk is truncated")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE:
        if len(fmt) < 40:
            raise AudioError("the WAV extensible 'fmt ' chunk is truncated")
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID's first two bytes
    return tag, channels, rate, bits


def _samples(raw: bytes, tag: int, bits: int) -> np.ndarray:
    """Interleaved samples as float32 in [-1, 1]."""
    if tag == _FLOAT and bits in (32, 64):
        values = np.frombuffer(raw[: len(raw) // (bits // 8) * (bits // 8)], f"<f{bits // 8}")
        return values.astype(np.float32)
    if tag != _PCM or bits not in (8, 16, 24, 32):
        raise AudioError(
            f"unsupported WAV encoding (format {tag}, {bits} bits): send PCM of 8, 16, 24 or "
            f"32 bits, or IEEE float of 32 or 64 bits"
        )
    if bits == 8:  # unsigned, centred on 128
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if bits == 24:
        usable = len(raw) // 3 * 3
        triples = np.frombuffer(raw[:usable], np.uint8).reshape(-1, 3).astype(np.int32)
        values = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
        return (values / float(1 << 23)).astype(np.float32)
    width = bits // 8
    values = np.frombuffer(raw[: len(raw) // width * width], f"<i{width}")
    return (values / float(1 << (bits - 1))).astype(np.float32)


def read_wav(data: bytes, sample_rate: int, max_seconds: float = 600.0) -> np.ndarray:
    """``data`` (a WAV file) as float32 mono samples at ``sample_rate``.

    Raises AudioError (400 when served) naming what is wrong: not RIFF/WAVE, no ``fmt `` or
    ``data`` chunk, an encoding or rate we do not read, or a clip above ``max_seconds``.
    """
    view = memoryview(data)
    if len(view) < 12 or bytes(view[:4]) != b"RIFF" or bytes(view[8:12]) != b"WAVE":
        raise AudioError("not a WAV file (no RIFF/WAVE header)")
    offset, fmt, raw = 12, None, None
    while offset + 8 <= len(view):
        kind = bytes(view[offset : offset + 4])
        size = struct.unpack("<I", view[offset + 4 : offset + 8])[0]
        body = view[offset + 8 : offset + 8 + size]
        if kind == b"fmt ":
            fmt = _format(bytes(body))
        elif kind == b"data":
            raw = body
            break
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    if fmt is None or raw is None:
        raise AudioError("the WAV file has no 'fmt ' or no 'data' chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise AudioError(f"the WAV header declares {channels} channels at {rate} Hz")
    if rate != sample_rate and rate % sample_rate:
        raise AudioError(
            f"the clip is sampled at {rate} Hz; this model takes {sample_rate} Hz (or a "
            f"multiple of it, which is decimated): resample it first"
        )
    seconds = len(raw) / max(bits // 8, 1) / channels / rate
    if seconds > max_seconds:
        raise AudioError(f"the clip lasts {seconds:.1f} s; the limit is {max_seconds:g} s")
    samples = _samples(bytes(raw), tag, bits)
    samples = samples[: len(samples) // channels * channels].reshape(-1, channels)
    mono = samples[:, 0] if channels == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono[:: rate // sample_rate])


def frames(samples: np.ndarray, size: int) -> np.ndarray:
    """``samples`` as ``[ceil(len / size), size]`` consecutive chunks; the last one is padded
    with zeros (as ``get_speech_timestamps`` pads it)."""
    count = -(-len(samples) // size)
    out = np.zeros((count, size), np.float32)
    out.reshape(-1)[: len(samples)] = samples
    return out


def speech_segments(
    probabilities: Sequence[float] | np.ndarray,
    settings: SpeechSettings,
    length: int,
    chunk: int,
) -> list[tuple[int, int]]:
    """Speech turns as (start, end) sample offsets from one probability per ``chunk``
    samples of a clip of ``length`` samples: ``get_speech_timestamps_from_probs`` of
    silero-vad 6.2.3, step for step (its ``return_seconds=False`` result)."""
    rate = settings.sample_rate
    threshold = settings.threshold
    neg = settings.neg_threshold
    neg = max(threshold - 0.15, 0.01) if neg is None else neg
    min_speech = rate * settings.min_speech_duration_ms / 1000
    pad = rate * settings.speech_pad_ms / 1000
    cap = settings.max_speech_duration_s
    max_speech = rate * cap - chunk - 2 * pad if cap is not None else float("inf")
    min_silence = rate * settings.min_silence_duration_ms / 1000
    min_silence_at_max = rate * settings.min_silence_at_max_speech_ms / 1000
    use_longest = settings.use_max_poss_sil_at_max_speech

    triggered = False
    speeches: list[dict[str, float]] = []
    current: dict[str, float] = {}
    temp_end = prev_end = next_start = 0.0
    possible_ends: list[tuple[float, float]] = []
    for index, probability in enumerate(probabilities):
        sample = chunk * index
        if probability >= threshold and temp_end:
            silence = sample - temp_end
            if silence > min_silence_at_max:
                possible_ends.append((temp_end, silence))
            temp_end = 0
            if next_start < prev_end:
                next_start = sample
        if probability >= threshold and not triggered:
            triggered = True
            current["start"] = sample
            continue
        if triggered and sample - current["start"] > max_speech:
            if use_longest and possible_ends:
                prev_end, duration = max(possible_ends, key=lambda end: end[1])
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                next_start = prev_end + duration
                if next_start < prev_end + sample:
                    current["start"] = next_start
                else:
                    triggered = False
                prev_end = next_start = temp_end = 0
                possible_ends = []
            elif prev_end:
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                if next_start < prev_end:
                    triggered = False
                else:
                    current["start"] = next_start
                prev_end = next_start = temp_end = 0
                possible_ends = []
            else:
                current["end"] = sample
                speeches.append(current)
                current = {}
                prev_end = next_start = temp_end = 0
                triggered = False
                possible_ends = []
                continue
        if probability < neg and triggered:
            if not temp_end:
                temp_end = sample
            silence_now = sample - temp_end
            if not use_longest and silence_now > min_silence_at_max:
                prev_end = temp_end
            if silence_now < min_silence:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech:
                speeches.append(current)
            current = {}
            prev_end = next_start = temp_end = 0
            triggered = False
            possible_ends = []
            continue
    if current and length - current["start"] > min_speech:
        current["end"] = length
        speeches.append(current)
    return _padded(speeches, pad, length)


def _padded(speeches: list[dict[str, float]], pad: float, length: int) -> list[tuple[int, int]]:
    """The turns widened by ``pad`` on each side; a gap under twice the pad is split."""
    for index, speech in enumerate(speeches):
        if index == 0:
            speech["start"] = int(max(0, speech["start"] - pad))
        if index != len(speeches) - 1:
            following = speeches[index + 1]
            silence = following["start"] - speech["end"]
            if silence < 2 * pad:
                speech["end"] += int(silence // 2)
                following["start"] = int(max(0, following["start"] - silence // 2))
            else:
                speech["end"] = int(min(length, speech["end"] + pad))
                following["start"] = int(max(0, following["start"] - pad))
        else:
            speech["end"] = int(min(length, speech["end"] + pad))
    return [(int(s["start"]), int(s["end"])) for s in speeches]


__all__ = ["SpeechSettings", "frames", "read_wav", "speech_segments"]
