"""Latent files: one encoded clip per safetensors file, and batches of them for training.

A file holds one tensor, `latents`, float32 channels-first (C, T) like the DiT's input (so a
batch is a stack, no transpose), and string metadata saying where it came from:

    format            "sa3ckpt-latents", format_version "1"
    valid_latents     the mask length: latents that hold audio (T may be larger: a codec that
                      works on blocks of latents keeps its padding latent, as SAME-S does)
    samples_per_latent, latent_channels
    source_samples    frames in the source file, at source_rate
    source_rate, source_channels, channels ("stereo" | "mono-duplicated"), resampled
    seconds_total     source_samples / source_rate (the DiT's seconds conditioning)
    codec, codec_sha256, dtype, chunk_latents, overlap_latents
    source_sha256     sha256 of the audio file's bytes
    sa3ckpt_version

`codec`, `codec_sha256`, `source_sha256`, `dtype`, `chunk_latents` and `overlap_latents` are
the resume key: a file whose values all equal the run's is up to date.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from sa3ckpt.errors import MalformedFileError, UsageError
from sa3ckpt.io.safetensors import open_safetensors, read_header, write_safetensors

LATENT_KEY = "latents"
FORMAT = "sa3ckpt-latents"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
RESUME_KEYS = (
    "codec",
    "codec_sha256",
    "source_sha256",
    "dtype",
    "chunk_latents",
    "overlap_latents",
)


def write_latent_file(
    path: str | os.PathLike[str],
    latents: np.ndarray,
    metadata: Mapping[str, str],
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Write (C, T) latents with `metadata` atomically (the old file stays until it is done)."""
    array = np.ascontiguousarray(latents, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"latents must be (channels, frames), got shape {array.shape}")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **metadata}
    write_safetensors(path, {LATENT_KEY: array}, meta, inputs=inputs)


def stored_metadata(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """A latent file's metadata from its header, or None when it is missing or not ours."""
    try:
        header = read_header(path)
    except (MalformedFileError, OSError):
        return None
    meta = header.metadata
    if meta.get("format") != FORMAT or set(header.tensors) != {LATENT_KEY}:
        return None
    return meta


@dataclass(frozen=True)
class LatentClip:
    """One latent file: (C, T) float32, its mask length and metadata."""

    path: str
    latents: np.ndarray
    valid: int
    metadata: dict[str, str]

    @property
    def seconds(self) -> float:
        return float(self.metadata.get("seconds_total", "0") or 0)


def read_latent_file(path: str | os.PathLike[str]) -> LatentClip:
    """Read a latent file written by `sa3ckpt encode`; MalformedFileError if it is not one."""
    name = os.fspath(path)
    with open_safetensors(name) as file:
        meta = file.metadata
        if meta.get("format") != FORMAT or list(file.header.tensors) != [LATENT_KEY]:
            raise MalformedFileError(name, f"not an sa3ckpt latent file (format {FORMAT!r})")
        latents = file.read(LATENT_KEY)
    if latents.ndim != 2 or latents.dtype != np.float32:
        raise MalformedFileError(
            name, f"latents are {latents.dtype} {latents.shape}, not (C, T) F32"
        )
    try:
        valid = int(meta["valid_latents"])
    except (KeyError, ValueError):
        raise MalformedFileError(
            name, "metadata valid_latents is missing or not a number"
        ) from None
    if not 0 < valid <= latents.shape[1]:
        raise MalformedFileError(name, f"valid_latents {valid} outside 1..{latents.shape[1]}")
    return LatentClip(name, latents, valid, meta)


@dataclass(frozen=True)
class LatentBatch:
    """Latent files stacked for the DiT: (B, C, T) zero-padded, (B, T) mask, seconds (B,)."""

    latents: mx.array
    mask: mx.array
    seconds: mx.array
    paths: tuple[str, ...]


def latent_batch(paths: Sequence[str | os.PathLike[str]]) -> LatentBatch:
    """Read latent files and stack them, right-padded to the longest, with their masks."""
    if not paths:
        raise UsageError("no latent files to batch")
    clips = [read_latent_file(p) for p in paths]
    widths = {c.latents.shape[0] for c in clips}
    if len(widths) != 1:
        raise UsageError(f"latent files have different channel counts {sorted(widths)}")
    longest = max(c.latents.shape[1] for c in clips)
    stacked = np.stack(
        [np.pad(c.latents, [(0, 0), (0, longest - c.latents.shape[1])]) for c in clips]
    )
    mask = np.arange(longest)[None, :] < np.array([c.valid for c in clips])[:, None]
    return LatentBatch(
        latents=mx.array(stacked),
        mask=mx.array(mask),
        seconds=mx.array([c.seconds for c in clips], dtype=mx.float32),
        paths=tuple(c.path for c in clips),
    )


__all__ = [
    "FORMAT",
    "LATENT_KEY",
    "RESUME_KEYS",
    "SUFFIX",
    "LatentBatch",
    "LatentClip",
    "latent_batch",
    "read_latent_file",
    "stored_metadata",
    "write_latent_file",
]
