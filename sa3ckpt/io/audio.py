"""Audio files in, checked 44.1 kHz stereo float32 out (the `audio` extra: soundfile + soxr).

Reading is libsndfile's (through `soundfile`: WAV, FLAC, OGG/Vorbis and the rest it knows),
resampling is libsoxr's (`soxr`, its "very high quality" setting). Both are imported only
when a clip is read, so the rest of sa3ckpt works without the extra.

SA3's codecs take 44.1 kHz stereo. A mono file is duplicated to both channels (what a mono
source played on two speakers is); more than two channels are refused, because no downmix
is right for every layout. A clip with NaN/Inf samples, no samples or a rate that cannot be
turned into 44.1 kHz is refused with one reason, so a batch can report it and go on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from sa3ckpt.errors import MalformedFileError, UsageError

TARGET_RATE = 44_100
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# Source rates accepted for resampling: telephone-band audio up to high-resolution masters.
# Below 8 kHz there is too little bandwidth to call the result SA3 training audio.
RATE_RANGE = (8_000, 384_000)
RESAMPLE_QUALITY = "VHQ"  # soxr's very high quality
# How the channels were made stereo, by the source's channel count ("refused" beyond).
CHANNEL_HANDLING = {1: "mono-duplicated", 2: "stereo"}
EXTRA_HINT = "install the audio extra: pip install 'sa3ckpt[audio]'"


class AudioError(MalformedFileError):
    """One audio file that cannot be encoded (exit 3 alone; a batch reports it and goes on)."""


@dataclass(frozen=True)
class AudioClip:
    """A clip ready for an SA3 codec, with what was done to it.

    `samples` is (frames, 2) float32 at TARGET_RATE; `source_frames`, `source_rate` and
    `source_channels` describe the file as it was.
    """

    samples: np.ndarray
    source_frames: int
    source_rate: int
    source_channels: int

    @property
    def channels(self) -> str:
        """'stereo' or 'mono-duplicated'."""
        return CHANNEL_HANDLING[self.source_channels]

    @property
    def resampled(self) -> bool:
        return self.source_rate != TARGET_RATE

    @property
    def seconds(self) -> float:
        return self.source_frames / self.source_rate


def _module(name: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError as exc:
        raise UsageError(f"reading audio needs {name}: {EXTRA_HINT}") from exc
    except OSError as exc:
        raise UsageError(f"{name} cannot load its library ({exc}): {EXTRA_HINT}") from exc


def soundfile_module() -> ModuleType:
    """The soundfile module, or UsageError naming the extra when it is not installed."""
    return _module("soundfile")


def _reason(exc: BaseException) -> str:
    """libsndfile's own words (its error string, without the path the caller already names)."""
    text = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split()).rstrip(".")


def probe_frames(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(frames, rate) from the file's header, or None when it cannot be read (no decoding)."""
    sf = soundfile_module()
    try:
        info = sf.info(os.fspath(path))
    except Exception:  # the read itself reports why; a probe only sizes the progress bar
        return None
    return int(info.frames), int(info.samplerate)


def _decode(path: str) -> tuple[np.ndarray, int]:
    sf = soundfile_module()
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile's errors, a truncated stream, a directory
        raise AudioError(path, f"unreadable audio: {_reason(exc)}") from exc
    return np.ascontiguousarray(data), int(rate)


def _check_finite(path: str, data: np.ndarray, rate: int, what: str) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        first = int(np.argmax(bad.any(axis=1)))
        raise AudioError(
            path,
            f"{int(bad.sum())} NaN/Inf samples {what} (first at {first / rate:.3f} s, "
            f"frame {first})",
        )


def resample(data: np.ndarray, rate: int, path: str = "audio") -> np.ndarray:
    """(frames, channels) float32 at `rate` -> at TARGET_RATE, checked; AudioError if not."""
    low, high = RATE_RANGE
    if not low <= rate <= high:
        raise AudioError(
            path,
            f"sample rate {rate} Hz cannot be resampled to {TARGET_RATE} Hz "
            f"(accepted: {low}..{high} Hz)",
        )
    if rate == TARGET_RATE:
        return data
    soxr: Any = _module("soxr")
    out = np.asarray(soxr.resample(data, rate, TARGET_RATE, quality=RESAMPLE_QUALITY))
    want = data.shape[0] * TARGET_RATE / rate
    if out.ndim != 2 or out.shape[1] != data.shape[1] or abs(out.shape[0] - want) > 1:
        raise AudioError(
            path,
            f"resampling {rate} -> {TARGET_RATE} Hz gave {out.shape[0]} frames, "
            f"expected {want:.0f}: the rate after resampling is wrong",
        )
    return np.ascontiguousarray(out, dtype=np.float32)


def read_clip(path: str | os.PathLike[str]) -> AudioClip:
    """Read one file as SA3 codec input: (frames, 2) float32 at 44.1 kHz, or AudioError."""
    name = os.fspath(path)
    data, rate = _decode(name)
    frames, channels = data.shape
    if frames == 0:
        raise AudioError(name, "no samples (zero-length audio)")
    if channels not in CHANNEL_HANDLING:
        raise AudioError(
            name,
            f"{channels} channels; SA3 codecs take stereo (mono is duplicated), downmix it first",
        )
    _check_finite(name, data, rate, "in the file")
    resampled = resample(data, rate, name)
    _check_finite(name, resampled, TARGET_RATE, "after resampling")
    stereo = np.repeat(resampled, 2, axis=1) if channels == 1 else resampled
    return AudioClip(
        samples=np.ascontiguousarray(stereo, dtype=np.float32),
        source_frames=frames,
        source_rate=rate,
        source_channels=channels,
    )


__all__ = [
    "AUDIO_SUFFIXES",
    "CHANNEL_HANDLING",
    "RATE_RANGE",
    "TARGET_RATE",
    "AudioClip",
    "AudioError",
    "probe_frames",
    "read_clip",
    "resample",
    "soundfile_module",
]
