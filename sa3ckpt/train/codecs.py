"""The codec encoders `sa3ckpt encode` can run, by name: the one place that loads them.

Each entry turns (weights path, run dtype) into a `LatentEncoder` plus the sha256 that
identifies those weights (what a latent file records, and what a resumed run compares).
`same-l` / `same-s` are the SA3 codecs (`sa3ckpt.models.same`, imported only when asked
for); `toy` is the strided-conv stand-in of `sa3ckpt.models.toy_codec` with weights from a
file, so the command and the docs' examples run on bundled data with a base whose latent
width is not 256. Its latents carry no meaning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import mlx.core as mx

from sa3ckpt.errors import IncompatibleError, UnreadableFileError, UsageError
from sa3ckpt.io.hashing import file_sha256_only
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.train.encode_audio import LatentEncoder

DTYPES: dict[str, mx.Dtype] = {"fp32": mx.float32, "fp16": mx.float16, "bf16": mx.bfloat16}
TOY_WEIGHT = "conv.weight"  # (latent_channels, 3 * samples_per_latent, 2), MLX Conv1d layout


@dataclass(frozen=True)
class LoadedCodec:
    """A ready encoder, the name it was asked for, and its weights' identity."""

    name: str
    encoder: LatentEncoder
    weights: str
    sha256: str
    dtype: str
    notes: tuple[str, ...] = ()


class RunIn:
    """An encoder run in another dtype: its input cast on the way in (its declarations kept)."""

    def __init__(self, encoder: LatentEncoder, dtype: mx.Dtype) -> None:
        self.encoder = encoder
        self.dtype = dtype
        self.samples_per_latent = encoder.samples_per_latent
        self.receptive_field = encoder.receptive_field
        self.latent_channels = encoder.latent_channels

    def __call__(self, audio: mx.array) -> mx.array:
        return self.encoder(audio.astype(self.dtype))


def _loader_notes(lines: list[str]) -> tuple[str, ...]:
    """The SAME loader's ledger, short: its facts, with the unused keys (a whole decoder in
    an autoencoder file) counted instead of listed."""
    unused = [line for line in lines if line.lstrip().startswith("not used:")]
    kept = [line.strip() for line in lines if line not in unused]
    if unused:
        kept.append(f"{len(unused)} keys of the file not used (decoder, tables; see the loader)")
    return tuple(kept)


def _load_same(codec: str) -> Callable[[str, mx.Dtype], tuple[LatentEncoder, str, tuple[str, ...]]]:
    def load(path: str, dtype: mx.Dtype) -> tuple[LatentEncoder, str, tuple[str, ...]]:
        from sa3ckpt.models import same

        encoder, ledger = same.load_same_encoder(path, codec=codec, dtype=dtype)
        # SameEncoder declares the LatentEncoder fields as read-only properties, which is all
        # encode_latents needs (it never sets them); mypy wants writable attributes.
        latent_encoder = cast(LatentEncoder, encoder)
        return latent_encoder, same.codec_sha256(path), _loader_notes(ledger.lines())

    return load


def _load_toy(path: str, dtype: mx.Dtype) -> tuple[LatentEncoder, str, tuple[str, ...]]:
    """A StridedConvEncoder from a safetensors file holding exactly `conv.weight`."""
    from sa3ckpt.models.toy_codec import StridedConvEncoder

    with open_safetensors(path) as file:
        names = sorted(file.header.tensors)
        if names != [TOY_WEIGHT]:
            raise IncompatibleError(
                f"{path}: a toy codec file holds exactly {TOY_WEIGHT!r}, found {names}"
            )
        weight = file.read(TOY_WEIGHT)
    shape = tuple(weight.shape)
    if len(shape) != 3 or shape[2] != 2 or shape[1] % 3 or shape[0] < 1:
        raise IncompatibleError(
            f"{path}: {TOY_WEIGHT} has shape {shape}, expected (channels, 3 * hop, 2)"
        )
    model = StridedConvEncoder(samples_per_latent=shape[1] // 3, latent_channels=shape[0])
    model.conv.weight = mx.array(weight).astype(dtype)
    mx.eval(model.parameters())
    spec = RunIn(model, dtype)
    note = (
        f"toy codec: strided conv, {model.samples_per_latent} samples per latent, "
        f"{model.latent_channels} channels (a stand-in, not a real codec)"
    )
    return spec, file_sha256_only(path), (note,)


# name -> (loader, one-line description for --help and the docs)
CODECS: dict[
    str, tuple[Callable[[str, mx.Dtype], tuple[LatentEncoder, str, tuple[str, ...]]], str]
] = {
    "same-l": (_load_same("same-l"), "SAME-L, the codec of the medium models"),
    "same-s": (_load_same("same-s"), "SAME-S, the codec of the small models"),
    "toy": (_load_toy, "a strided-conv stand-in for tests and examples (no meaning)"),
}


def load_codec(name: str, weights: str | os.PathLike[str], dtype: str = "fp32") -> LoadedCodec:
    """Build codec `name` from `weights` to run in `dtype` (fp32, fp16, bf16)."""
    if name not in CODECS:
        raise UsageError(f"unknown codec {name!r} (choose from {', '.join(CODECS)})")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise UnreadableFileError(path, "codec weights not found")
    loader, _ = CODECS[name]
    encoder, sha256, notes = loader(path, DTYPES[dtype])
    return LoadedCodec(name, encoder, path, sha256, dtype, notes)


__all__ = ["CODECS", "DTYPES", "TOY_WEIGHT", "LoadedCodec", "load_codec"]
