"""The waveform -> latent boundary: checked 44.1 kHz stereo in, aligned latents and masks out.

The codec encoder is a parameter (`LatentEncoder`: any MLX callable that declares its hop,
receptive field and latent width), so this module owns only the bookkeeping that every
encoder needs and that is easy to get subtly wrong: alignment padding, the latent validity
mask of a padded batch, and chunked encoding of long clips.

Chunked encoding splits the latent timeline into overlapping windows, encodes each window on
its own and keeps, from every window, only the latents at least half the overlap away from
an inner edge (no crossfade). A latent is then computed from a window that contains its whole
receptive field, so when the overlap covers the encoder's context the stitched result equals
whole-clip encoding exactly; with less overlap it is an approximation near the seams.

Audio is channels-last, (samples, 2) or (batch, samples, 2), matching MLX convolutions, and
so is what an encoder returns: latents (B, T, C). The DiT, its conditioning helpers and the
loss take the official channels-first (B, C, T); `EncodedBatch.dit_latents` is the one place
that converts, so audio -> latents -> DiT needs no transpose of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

import mlx.core as mx
import numpy as np

from sa3ckpt.errors import UsageError

SAMPLE_RATE = 44_100
CHANNELS = 2
SAME_SAMPLES_PER_LATENT = 4096  # SAME-S / SAME-L hop
SAME_LATENT_CHANNELS = 256


@runtime_checkable
class LatentEncoder(Protocol):
    """What `encode_latents` needs from a codec encoder.

    `__call__` maps float audio (B, N, 2), N a multiple of `samples_per_latent`, to latents
    (B, N / samples_per_latent, latent_channels). `receptive_field` is the number of input
    samples one latent frame can depend on, a span that contains the frame's own hop; it
    sets how much overlap chunked encoding needs to be exact.

    Optional: `latents_multiple` (default 1), for an encoder whose function is defined on
    blocks of that many latents (SAME-S attends within 2-latent chunks and keeps the padding
    latent): `encode_latents` then pads the audio to whole blocks and starts every chunk of
    a chunked encoding on a block boundary, so chunks see the same block grid as the clip.
    """

    samples_per_latent: int
    receptive_field: int
    latent_channels: int

    def __call__(self, audio: mx.array) -> mx.array: ...


@dataclass(frozen=True)
class EncoderSpec:
    """Wraps a bare function (e.g. a codec's `encode`) with the declarations it lacks."""

    fn: Callable[[mx.array], mx.array]
    samples_per_latent: int = SAME_SAMPLES_PER_LATENT
    receptive_field: int = SAME_SAMPLES_PER_LATENT
    latent_channels: int = SAME_LATENT_CHANNELS

    def __call__(self, audio: mx.array) -> mx.array:
        return self.fn(audio)


@dataclass(frozen=True)
class EncodedBatch:
    """Latents (B, T, C) float32, mask (B, T) bool (True = real frame), lengths (B,) int.

    `latents` is channels-last as the encoder produced it; feed the DiT `dit_latents`.
    """

    latents: mx.array
    mask: mx.array
    lengths: tuple[int, ...]

    @property
    def dit_latents(self) -> mx.array:
        """The latents channels-first (B, C, T): the layout `sa3ckpt.models.DiT` takes as x,
        `rectified_flow_pair` keeps and `rectified_flow_loss` reads by default (with `mask`
        (B, T) unchanged), as the official DiT wrapper does."""
        return self.latents.transpose(0, 2, 1)


# --------------------------------------------------------------------------- input checks


def _dtype_name(audio: Any) -> str:
    return str(audio.dtype).removeprefix("mlx.core.")


def _is_floating(audio: Any) -> bool:
    if isinstance(audio, mx.array):
        return mx.issubdtype(audio.dtype, mx.floating)
    return np.issubdtype(audio.dtype, np.floating)


def check_audio(audio: Any, sample_rate: int) -> mx.array:
    """Validate float stereo 44.1 kHz audio and return it as float32 (B, N, 2).

    Raises UsageError (one line, exit 2) for the mistakes that otherwise produce silently
    wrong latents: another sample rate, integer PCM, mono or channels-first layout.
    """
    if sample_rate != SAMPLE_RATE:
        raise UsageError(
            f"audio sample rate is {sample_rate} Hz; SA3 codecs expect {SAMPLE_RATE} Hz "
            "(resample first)"
        )
    if not isinstance(audio, mx.array):
        audio = np.asarray(audio)
    if not _is_floating(audio):
        raise UsageError(
            f"audio dtype {_dtype_name(audio)} is not floating point; "
            "convert PCM to float32 in [-1, 1]"
        )
    shape = tuple(audio.shape)
    if len(shape) not in (2, 3):
        raise UsageError(f"audio must be (samples, 2) or (batch, samples, 2), got shape {shape}")
    if shape[-1] != CHANNELS:
        hint = " (channels-first? transpose to channels-last)" if shape[-2] == CHANNELS else ""
        raise UsageError(
            f"audio has {shape[-1]} channels in its last axis, SA3 codecs expect "
            f"{CHANNELS} (stereo, channels-last){hint}; got shape {shape}"
        )
    if shape[-2] == 0 or (len(shape) == 3 and shape[0] == 0):
        raise UsageError(f"audio has no samples (shape {shape})")
    if isinstance(audio, np.ndarray):
        audio = mx.array(audio.astype(np.float32, copy=False))
    audio = audio.astype(mx.float32)
    return audio[None] if audio.ndim == 2 else audio


def _positive_int(encoder: LatentEncoder, attr: str, default: int | None = None) -> int:
    value = getattr(encoder, attr, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"encoder.{attr} must be a positive int, got {value!r}")
    return value


def _check_encoder(encoder: LatentEncoder) -> int:
    for attr in ("samples_per_latent", "receptive_field", "latent_channels"):
        _positive_int(encoder, attr)
    _positive_int(encoder, "latents_multiple", 1)
    return int(encoder.samples_per_latent)


def latents_multiple(encoder: LatentEncoder) -> int:
    """The latent block an encoder works on (its optional `latents_multiple`, default 1)."""
    return _positive_int(encoder, "latents_multiple", 1)


# --------------------------------------------------------------------------- bookkeeping


def latent_count(samples: int, samples_per_latent: int) -> int:
    """Latent frames covering `samples` samples: ceil(samples / samples_per_latent)."""
    return -(-int(samples) // int(samples_per_latent))


def pad_to_alignment(audio: mx.array, samples_per_latent: int) -> mx.array:
    """Zero-pad (B, N, 2) on the right to a whole number of latent frames."""
    n = audio.shape[1]
    extra = latent_count(n, samples_per_latent) * samples_per_latent - n
    if extra == 0:
        return audio
    return mx.pad(audio, [(0, 0), (0, extra), (0, 0)])


def latent_mask(lengths: Sequence[int], total: int) -> mx.array:
    """(B, total) bool: True for the first lengths[b] latents of each sample."""
    return mx.arange(total)[None, :] < mx.array(list(lengths))[:, None]


def collate_clips(clips: Sequence[Any], sample_rate: int) -> tuple[mx.array, tuple[int, ...]]:
    """Stack clips of different lengths: ((B, N_max, 2) zero-padded, valid samples per clip)."""
    if not clips:
        raise UsageError("no audio clips to collate")
    checked = [check_audio(c, sample_rate) for c in clips]
    for i, c in enumerate(checked):
        if c.shape[0] != 1:
            raise UsageError(f"clip {i} is a batch of shape {tuple(c.shape)}; pass single clips")
    lengths = tuple(int(c.shape[1]) for c in checked)
    longest = max(lengths)
    padded = [mx.pad(c, [(0, 0), (0, longest - c.shape[1]), (0, 0)]) for c in checked]
    return mx.concatenate(padded, axis=0), lengths


def context_latents(encoder: LatentEncoder) -> int:
    """Latents a window must drop at an inner edge so the kept ones see their whole field.

    A frame's field spans `receptive_field` samples and contains its own hop, so it reaches at
    most receptive_field − hop samples beyond that hop on either side.
    """
    hop = _check_encoder(encoder)
    return latent_count(max(encoder.receptive_field - hop, 0), hop)


def chunk_plan(total: int, chunk: int, overlap: int) -> list[tuple[int, int, int]]:
    """Windows (start, keep_from, keep_to) in latents covering [0, total) with `chunk`-long
    windows overlapping by at least `overlap`.

    Windows step by chunk − overlap; the last one is moved back to end at `total`, so every
    window is full length. Between neighbours the seam is the middle of their overlap, so
    each keeps at least overlap // 2 latents away from an inner edge.
    """
    if chunk < 1 or overlap < 0 or overlap % 2 or overlap >= chunk:
        raise UsageError(
            f"need chunk_latents >= 1 and an even overlap_latents in [0, chunk), "
            f"got chunk {chunk}, overlap {overlap}"
        )
    if total <= chunk:
        return [(0, 0, total)]
    starts = [*range(0, total - chunk, chunk - overlap), total - chunk]
    seams = [(nxt + cur + chunk) // 2 for cur, nxt in pairwise(starts)]
    bounds = [0, *seams, total]
    return [(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


# --------------------------------------------------------------------------- encoding


def _encode_window(encoder: LatentEncoder, audio: mx.array, hop: int) -> mx.array:
    out = encoder(audio)
    want = (audio.shape[0], audio.shape[1] // hop, encoder.latent_channels)
    if tuple(out.shape) != want:
        raise ValueError(
            f"encoder returned shape {tuple(out.shape)} for audio {tuple(audio.shape)}, "
            f"expected {want} (samples_per_latent {hop})"
        )
    return out.astype(mx.float32)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def default_overlap(encoder: LatentEncoder) -> int:
    """The overlap chunked encoding uses unless told: 2 · `context_latents`, the least that
    keeps stitching exact, rounded up to an even multiple of the encoder's latent block."""
    return _round_up(2 * context_latents(encoder), math.lcm(2, latents_multiple(encoder)))


def encode_latents(
    encoder: LatentEncoder,
    audio: Any,
    sample_rate: int = SAMPLE_RATE,
    *,
    lengths: Sequence[int] | None = None,
    chunk_latents: int | None = None,
    overlap_latents: int | None = None,
) -> EncodedBatch:
    """Encode (samples, 2) or (batch, samples, 2) audio into latents with a validity mask.

    `lengths` are the valid samples per batch item (default: all); a padded item's valid
    latents are ceil(valid / samples_per_latent). With `chunk_latents`, windows of that many
    latents are encoded separately and stitched (see `chunk_plan`); `overlap_latents`
    defaults to 2 · `context_latents(encoder)`, the least overlap that keeps the result
    exact. Stitching happens on latents, so peak memory is one window's activations.
    An encoder with `latents_multiple` m gets audio padded to whole m-latent blocks (the
    result has that many latents; `mask` and `lengths` mark the valid ones), and the
    default overlap is rounded up to a multiple of m.
    """
    hop = _check_encoder(encoder)
    batch = check_audio(audio, sample_rate)
    b, n = batch.shape[0], batch.shape[1]
    if lengths is None:
        lengths = [n] * b
    lengths = [int(v) for v in lengths]
    if len(lengths) != b or any(not 0 < v <= n for v in lengths):
        raise UsageError(f"lengths must be {b} values in [1, {n}] (valid samples), got {lengths}")
    block = latents_multiple(encoder)
    batch = pad_to_alignment(batch, hop * block)
    total = batch.shape[1] // hop
    if chunk_latents is None:
        latents = _encode_window(encoder, batch, hop)
    else:
        if overlap_latents is None:
            overlap_latents = default_overlap(encoder)
            if overlap_latents >= chunk_latents:
                raise UsageError(
                    f"chunk_latents {chunk_latents} is too small for this encoder: exact "
                    f"stitching needs an overlap of {overlap_latents} latents, so use more"
                )
        if chunk_latents % block or overlap_latents % block:
            raise UsageError(
                f"this encoder works on blocks of {block} latents: chunk_latents "
                f"({chunk_latents}) and overlap_latents ({overlap_latents}) must be multiples "
                f"of {block}"
            )
        pieces = []
        for start, keep_from, keep_to in chunk_plan(total, chunk_latents, overlap_latents):
            stop = min(start + chunk_latents, total)
            window = _encode_window(encoder, batch[:, start * hop : stop * hop], hop)
            pieces.append(window[:, keep_from - start : keep_to - start])
            mx.eval(pieces[-1])
        latents = mx.concatenate(pieces, axis=1)
    counts = tuple(latent_count(v, hop) for v in lengths)
    return EncodedBatch(latents=latents, mask=latent_mask(counts, total), lengths=counts)


__all__ = [
    "CHANNELS",
    "SAME_LATENT_CHANNELS",
    "SAME_SAMPLES_PER_LATENT",
    "SAMPLE_RATE",
    "EncodedBatch",
    "EncoderSpec",
    "LatentEncoder",
    "check_audio",
    "chunk_plan",
    "collate_clips",
    "context_latents",
    "default_overlap",
    "encode_latents",
    "latent_count",
    "latent_mask",
    "latents_multiple",
    "pad_to_alignment",
]
