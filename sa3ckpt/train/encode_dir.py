"""Encode a folder of audio clips into a folder of latent files, resumably (`sa3ckpt encode`).

Each clip under the input folder becomes one latent file at the same relative path with the
suffix replaced by `.safetensors` (`takes/a.flac` -> `takes/a.safetensors`). A clip whose
latent file already records the same resume key (`latent_files.RESUME_KEYS`: codec, codec
weights sha256, the audio file's sha256, dtype, chunking) is skipped, so an interrupted run
picks up where it stopped and a run with other weights re-encodes everything. The audio is
identified by the sha256 of its bytes, not its size and mtime: copying a dataset (which
changes mtimes) does not force a re-encode, and a file edited in place to the same size is
still caught; hashing reads each clip once, which is cheap beside encoding it.

A bad clip (unreadable, no samples, NaN/Inf, more than two channels, a rate that cannot be
resampled) is a failed entry with its reason and never stops the batch. Writes are atomic, so
an interrupted run leaves complete files only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from sa3ckpt import __version__
from sa3ckpt.errors import MalformedFileError, UnreadableFileError, UsageError
from sa3ckpt.io.audio import AUDIO_SUFFIXES, TARGET_RATE, AudioClip, probe_frames, read_clip
from sa3ckpt.progress import ProgressCallback, ProgressCounter
from sa3ckpt.train.codecs import LoadedCodec
from sa3ckpt.train.encode_audio import (
    chunk_plan,
    default_overlap,
    encode_latents,
    latents_multiple,
)
from sa3ckpt.train.latent_files import RESUME_KEYS, SUFFIX, stored_metadata, write_latent_file

DEFAULT_CHUNK = 128  # latents per window (~11.9 s at SAME's hop), as the official encoder
ENCODED, SKIPPED, FAILED = "encoded", "skipped", "failed"
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class Chunking:
    """Window and overlap in latents (chunk None: the whole clip at once)."""

    chunk: int | None
    overlap: int | None

    def resolved(self, codec: LoadedCodec) -> tuple[int | None, int | None]:
        """(chunk, overlap) with the overlap defaulted as `encode_latents` does; checked here,
        once, so a chunking the codec cannot use is a usage error, not a failure per clip."""
        if self.chunk is None:
            if self.overlap is not None:
                raise UsageError("--overlap needs --chunk")
            return None, None
        encoder = codec.encoder
        overlap = default_overlap(encoder) if self.overlap is None else self.overlap
        if self.overlap is None and overlap >= self.chunk:
            raise UsageError(
                f"--chunk {self.chunk} is too small for codec {codec.name}: exact stitching "
                f"needs an overlap of {overlap} latents (use a larger --chunk or set --overlap)"
            )
        block = latents_multiple(encoder)
        if self.chunk % block or overlap % block:
            raise UsageError(
                f"codec {codec.name} works on blocks of {block} latents: --chunk "
                f"({self.chunk}) and --overlap ({overlap}) must be multiples of {block}"
            )
        chunk_plan(self.chunk + 1, self.chunk, overlap)  # raises the library's usage error
        return self.chunk, overlap


@dataclass
class ClipResult:
    """What happened to one clip (paths relative to the input / output folders)."""

    source: str
    status: str
    output: str | None = None
    reason: str = ""
    clip: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "output": self.output,
            "reason": self.reason or None,
            **self.clip,
        }


@dataclass
class EncodeLedger:
    """Every clip's outcome, in input order, with the codec and settings used."""

    input: str
    output: str
    codec: LoadedCodec
    chunk: int | None
    overlap: int | None
    results: list[ClipResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[ClipResult]:
        return [r for r in self.results if r.status == FAILED]

    def _flagged(self, key: str, value: object) -> int:
        return sum(r.clip.get(key) == value for r in self.results if r.status != FAILED)

    def summary(self) -> dict[str, int]:
        return {
            "clips": len(self.results),
            ENCODED: self.count(ENCODED),
            SKIPPED: self.count(SKIPPED),
            FAILED: self.count(FAILED),
            "mono_duplicated": self._flagged("channels", "mono-duplicated"),
            "resampled": self._flagged("resampled", True),
        }

    def lines(self) -> list[str]:
        out = [
            f"codec {self.codec.name} ({self.codec.dtype}), weights {self.codec.weights} "
            f"sha256 {self.codec.sha256[:12]}",
            *(f"  {note}" for note in self.codec.notes),
            "chunking: whole clips"
            if self.chunk is None
            else f"chunking: {self.chunk}-latent windows, overlap {self.overlap}",
        ]
        for r in self.results:
            out.append(f"{r.status:<8} {r.source}{_detail(r)}")
        s = self.summary()
        out.append(
            f"{s['clips']} clips: {s[ENCODED]} encoded, {s[SKIPPED]} skipped (already done), "
            f"{s[FAILED]} failed; {s['mono_duplicated']} mono duplicated, "
            f"{s['resampled']} resampled -> {self.output}"
        )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "codec": {
                "name": self.codec.name,
                "weights": self.codec.weights,
                "sha256": self.codec.sha256,
                "dtype": self.codec.dtype,
                "notes": list(self.codec.notes),
            },
            "chunk_latents": self.chunk,
            "overlap_latents": self.overlap,
            "summary": self.summary(),
            "clips": [r.to_json() for r in self.results],
        }


def _detail(r: ClipResult) -> str:
    if r.status == FAILED:
        return f": {r.reason}"
    c = r.clip
    notes = [f"{c['valid_latents']} latents, {c['seconds']:.2f} s"]
    if c.get("channels") == "mono-duplicated":
        notes.append("mono duplicated to stereo")
    if c.get("resampled"):
        notes.append(f"resampled {c['source_rate']} -> {TARGET_RATE} Hz")
    if r.reason:
        notes.append(r.reason)
    return f" -> {r.output} ({'; '.join(notes)})"


# --------------------------------------------------------------------------- finding clips


def find_clips(root: str) -> list[str]:
    """Audio files under `root` (a folder, or one file), relative, sorted; hidden ones skipped."""
    if os.path.isfile(root):
        return [os.path.basename(root)]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(AUDIO_SUFFIXES):
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found, key=lambda p: Path(p).parts)


def output_for(rel: str) -> str:
    """The latent file's relative path for a clip's relative path."""
    return str(Path(rel).with_suffix(SUFFIX))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- encoding


def clip_facts(clip: AudioClip, valid: int, hop: int) -> dict[str, Any]:
    """The per-clip facts the ledger shows and the latent file's metadata records."""
    return {
        "valid_latents": valid,
        "samples_per_latent": hop,
        "source_samples": clip.source_frames,
        "source_rate": clip.source_rate,
        "source_channels": clip.source_channels,
        "channels": clip.channels,
        "resampled": clip.resampled,
        "seconds": clip.seconds,
    }


def encode_clip(
    codec: LoadedCodec, clip: AudioClip, chunk: int | None, overlap: int | None
) -> tuple[np.ndarray, int]:
    """One clip's latents channels-first (C, T) float32, and how many hold audio.

    T is what the encoder produced: an encoder that works on blocks of latents (SAME-S, 2)
    keeps the padding latent after the audio's last, as the official encoder does, so T may
    exceed the valid count; the file keeps all T and records the valid count as the mask.
    """
    batch = encode_latents(
        codec.encoder, clip.samples, TARGET_RATE, chunk_latents=chunk, overlap_latents=overlap
    )
    return np.array(batch.dit_latents[0].astype(mx.float32)), batch.lengths[0]


def _metadata(
    codec: LoadedCodec, key: dict[str, str], facts: dict[str, Any], channels: int
) -> dict[str, str]:
    meta = {
        **key,
        "valid_latents": str(facts["valid_latents"]),
        "samples_per_latent": str(facts["samples_per_latent"]),
        "latent_channels": str(channels),
        "source_samples": str(facts["source_samples"]),
        "source_rate": str(facts["source_rate"]),
        "source_channels": str(facts["source_channels"]),
        "channels": facts["channels"],
        "resampled": "true" if facts["resampled"] else "false",
        "seconds_total": repr(float(facts["seconds"])),
        "sa3ckpt_version": __version__,
    }
    return meta


def _stored_facts(meta: dict[str, str]) -> dict[str, Any]:
    """The ledger facts of a skipped clip, from its latent file's metadata."""
    try:
        return {
            "valid_latents": int(meta["valid_latents"]),
            "samples_per_latent": int(meta["samples_per_latent"]),
            "source_samples": int(meta["source_samples"]),
            "source_rate": int(meta["source_rate"]),
            "source_channels": int(meta["source_channels"]),
            "channels": meta["channels"],
            "resampled": meta["resampled"] == "true",
            "seconds": float(meta["seconds_total"]),
        }
    except (KeyError, ValueError):
        return {}


def encode_folder(
    audio_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    codec: LoadedCodec,
    *,
    chunking: Chunking = Chunking(DEFAULT_CHUNK, None),
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> EncodeLedger:
    """Encode every clip under `audio_dir` into `out_dir`; see the module docstring.

    Raises MalformedFileError (exit 3) when `audio_dir` does not exist, UsageError when it
    holds no audio or the chunking does not fit the codec; a clip's own failure is an entry
    of the ledger. Output failures (a full disk) raise OutputError and stop the run.
    """
    root, out = os.fspath(audio_dir), os.fspath(out_dir)
    if not os.path.exists(root):
        raise UnreadableFileError(root, "audio folder not found")
    chunk, overlap = chunking.resolved(codec)
    clips = find_clips(root)
    if not clips:
        raise UsageError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}")
    base = os.path.dirname(root) if os.path.isfile(root) else root
    ledger = EncodeLedger(root, out, codec, chunk, overlap)
    ms = [_milliseconds(os.path.join(base, rel)) for rel in clips]
    counter = ProgressCounter(progress, sum(ms), unit="audio_ms")
    claimed: dict[str, str] = {}
    for index, (rel, clip_ms) in enumerate(zip(clips, ms, strict=True)):
        result = _one(os.path.join(base, rel), rel, out, codec, chunk, overlap, force, claimed)
        ledger.results.append(result)
        counter.advance(clip_ms, f"{index + 1}/{len(clips)} {rel}")
    return ledger


def _milliseconds(path: str) -> int:
    probed = probe_frames(path)
    return 0 if probed is None or probed[1] <= 0 else round(1000 * probed[0] / probed[1])


def _one(
    path: str,
    rel: str,
    out: str,
    codec: LoadedCodec,
    chunk: int | None,
    overlap: int | None,
    force: bool,
    claimed: dict[str, str],
) -> ClipResult:
    out_rel = output_for(rel)
    target = os.path.join(out, out_rel)
    if out_rel in claimed:
        return ClipResult(rel, FAILED, reason=f"same output {out_rel} as {claimed[out_rel]}")
    claimed[out_rel] = rel
    try:
        key = {
            "codec": codec.name,
            "codec_sha256": codec.sha256,
            "source_sha256": file_sha256(path),
            "dtype": codec.dtype,
            "chunk_latents": "none" if chunk is None else str(chunk),
            "overlap_latents": "none" if overlap is None else str(overlap),
        }
    except OSError as exc:
        return ClipResult(rel, FAILED, reason=f"unreadable: {exc.strerror or exc}")
    stored = stored_metadata(target)
    if stored is None and os.path.lexists(target) and not force:
        return ClipResult(
            rel,
            FAILED,
            reason=f"output {out_rel} exists and is not an sa3ckpt latent file "
            "(pass --force to replace it)",
        )
    redo = ""
    if stored is not None:
        changed = [k for k in RESUME_KEYS if stored.get(k) != key[k]]
        if not changed and not force:
            return ClipResult(rel, SKIPPED, out_rel, "already encoded", _stored_facts(stored))
        redo = "re-encoded: --force" if not changed else f"re-encoded: {', '.join(changed)} changed"
    try:
        clip = read_clip(path)
        latents, valid = encode_clip(codec, clip, chunk, overlap)
    except MalformedFileError as exc:
        return ClipResult(rel, FAILED, reason=exc.cause)
    except UsageError as exc:  # the encoder's own input checks
        return ClipResult(rel, FAILED, reason=str(exc))
    if not np.isfinite(latents).all():
        return ClipResult(rel, FAILED, reason="the codec produced NaN/Inf latents")
    facts = clip_facts(clip, valid, codec.encoder.samples_per_latent)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    write_latent_file(
        target, latents, _metadata(codec, key, facts, latents.shape[0]), inputs=(path,)
    )
    return ClipResult(rel, ENCODED, out_rel, redo, facts)


__all__ = [
    "DEFAULT_CHUNK",
    "ENCODED",
    "FAILED",
    "SKIPPED",
    "Chunking",
    "ClipResult",
    "EncodeLedger",
    "encode_clip",
    "encode_folder",
    "find_clips",
    "output_for",
]
