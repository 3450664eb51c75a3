"""`load_same_encoder`: a SAME encoder from an official, MLX-runtime or diffusers weights file.

Accepted inputs (`names` has the key spellings):

- the official autoencoder safetensors (encoder + decoder + bottleneck), or a full SA3
  checkpoint holding it under `pretransform.model.`;
- the official MLX runtime's encoder file (`same_s_encoder_f32.npz` / `same_l_...`, or the
  same arrays as .safetensors);
- a diffusers `AutoencoderSAME` folder (config.json + diffusion_pytorch_model.safetensors,
  or its shards), or its weights file alone.

Loading is strict and decided from the index before a tensor is read: every encoder
parameter must come from the input with its exact shape and a floating dtype, and an input
key in the encoder's namespace that is no parameter of the model (a block beyond its depth,
an unknown leaf) is refused; all problems are listed in one IncompatibleError (exit 4).
Keys outside the encoder are named in the ledger with the reason (the decoder, the DiT of a
full SA3 file), as are the per-block RoPE tables, checked against the model's own first, and
the keys the official module registers that encoding never reads (`names.UNUSED`: the
bottleneck's noise_scaling_factor, empty in the released codecs).

The codec is detected from the shapes (width and depth: SAME-S 768 x 6, SAME-L 1536 x 12)
unless given; a `SameConfig` may be given for other sizes (tests).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from sa3ckpt import dtypes
from sa3ckpt.errors import IncompatibleError, MalformedFileError, UnreadableFileError, UsageError
from sa3ckpt.io.base_checkpoint import _npz_index, _read_npz_member
from sa3ckpt.io.diffusers_folder import CONFIG_NAME, open_folder
from sa3ckpt.io.hashing import file_sha256_only
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.models.load_ledger import LoadLedger
from sa3ckpt.models.loading import RUN_DTYPES
from sa3ckpt.models.same.config import CODECS, SameConfig, codec_config
from sa3ckpt.models.same.encoder import SameEncoder, rope_inv_freq
from sa3ckpt.models.same.names import (
    DIFFUSERS,
    MAPPING_WEIGHT,
    QKV_LEAF,
    Spelling,
    detect_spelling,
    diffusers_qkv_to_official,
)

Shape = tuple[int, ...]
_SHOWN = 5
DIFFUSERS_CLASS = "AutoencoderSAME"
_TABLE_RTOL = 1e-6
_NOT_USED = {
    "decoder": "the decoder: the encoder does not use it",
    "outside": "outside the SAME codec (the DiT or conditioner of a full SA3 checkpoint)",
    "pretransform": "another part of the pretransform, not the encoder",
}
# diffusers config fields -> the SameConfig value they must equal (None: what to compare).
_DIFFUSERS_FIELDS: dict[str, Callable[[SameConfig], object]] = {
    "audio_channels": lambda c: c.audio_channels,
    "patch_size": lambda c: c.patch,
    "encoder_strides": lambda c: [c.group],
    "encoder_transformer_depths": lambda c: [c.blocks],
    "latent_dim": lambda c: c.latent_channels,
    "use_differential_attention": lambda c: True,
    "dim_heads": lambda c: c.head_dim,
    "ff_mult": lambda c: c.ff_mult,
    "encoder_sinusoidal_blocks": lambda c: [0],
}


# --- the input --------------------------------------------------------------------------------


@dataclass
class _Input:
    """One opened weights input: its tensors' (dtype, shape), a reader, what was read."""

    path: str
    container: str
    tensors: dict[str, tuple[str, Shape]]
    read: Callable[[str], np.ndarray]
    close: Callable[[], None]
    files: list[str]
    config: dict[str, object] | None = None


def _open(path: str) -> _Input:
    if os.path.isdir(path):
        opened = open_folder(path)
        files = [os.path.join(path, name) for name, _ in opened.layout.shards]
        config = dict(opened.layout.config)
        return _Input(
            path, "diffusers-folder", opened.tensors, opened.read, opened.close, files, config
        )
    if not os.path.isfile(path):
        raise UnreadableFileError(path, "no such file or folder")
    if zipfile.is_zipfile(path):
        index, archive = _npz_index(path)
        tensors = {k: (t.dtype, t.shape) for k, t in index.items()}
        return _Input(
            path,
            "npz",
            tensors,
            lambda key: _read_npz_member(path, archive, key),
            archive.close,
            [path],
        )
    handle = open_safetensors(path)
    tensors = {k: (i.dtype, tuple(i.shape)) for k, i in handle.header.tensors.items()}
    return _Input(path, "safetensors", tensors, handle.read, handle.close, [path])


def weight_files(path: str | os.PathLike[str]) -> list[str]:
    """The files holding a codec's tensors: the file itself, or a diffusers folder's shards."""
    spath = os.fspath(path)
    if not os.path.isdir(spath):
        return [spath]
    opened = open_folder(spath)
    opened.close()
    return [os.path.join(spath, name) for name, _ in opened.layout.shards]


def codec_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a codec's weights: the file's bytes, or a folder's weights file (its
    shards' bytes as one stream, in the index's order, when it has several)."""
    files = weight_files(path)
    if len(files) == 1:
        return file_sha256_only(files[0])
    whole = hashlib.sha256()
    for name in files:
        try:
            with open(name, "rb") as f:
                while chunk := f.read(1 << 20):
                    whole.update(chunk)
        except OSError as exc:
            raise UnreadableFileError(name, exc.strerror or str(exc)) from None
    return whole.hexdigest()


# --- sizing the model -------------------------------------------------------------------------


def _listed(items: list[str]) -> str:
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f", … (+{more} more)" if more > 0 else "")


def _detected(spelling: Spelling, tensors: Mapping[str, tuple[str, Shape]]) -> tuple[int, int]:
    """(width, blocks) of the file's encoder: block count, and the width of `to_qkv` (5D, D)."""
    blocks = spelling.block_indices(tensors)
    qkv = spelling.key(f"blocks.0.{QKV_LEAF}")
    shape = tensors.get(qkv or "", ("", ()))[1]
    width = shape[1] if len(shape) == 2 and shape[0] == 5 * shape[1] else 0
    return width, len(blocks)


def _resolve_config(
    codec: str | SameConfig | None, spelling: Spelling, source: _Input
) -> tuple[SameConfig, list[str]]:
    width, blocks = _detected(spelling, source.tensors)
    seen = f"width {width or '?'}, {blocks} blocks"
    if isinstance(codec, SameConfig):
        return codec, [f"config given: {codec.name} ({seen} in the file)"]
    if codec is not None:
        try:
            return codec_config(codec), [f"codec given: {codec} ({seen} in the file)"]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    for config in CODECS.values():
        if (config.width, config.blocks) == (width, blocks):
            return config, [f"codec detected from the shapes: {config.name} ({seen})"]
    known = ", ".join(f"{c.name} (width {c.width}, {c.blocks} blocks)" for c in CODECS.values())
    raise IncompatibleError(
        f"{source.path}: a SAME encoder of {seen} is neither {known}; pass the codec"
    )


def _check_diffusers_config(config: dict[str, object] | None, same: SameConfig, path: str) -> str:
    """A diffusers config must describe this encoder (the fields that change the function)."""
    if config is None:
        return ""
    where = os.path.join(path, CONFIG_NAME)
    name = config.get("_class_name")
    if name not in (None, DIFFUSERS_CLASS):
        raise IncompatibleError(f"{where}: _class_name {name!r}, expected {DIFFUSERS_CLASS}")
    odd = []
    for key, want in _DIFFUSERS_FIELDS.items():
        if key in config:
            have = config[key]
            have = list(have) if isinstance(have, (list, tuple)) else have
            if have != want(same):
                odd.append(f"{key} = {have!r} (this encoder: {want(same)!r})")
    channels, mults = config.get("encoder_channels"), config.get("encoder_c_mults")
    if (
        isinstance(channels, int)
        and isinstance(mults, (list, tuple))
        and len(mults) == 1
        and channels * int(mults[0]) != same.width
    ):
        odd.append(f"encoder_channels x c_mults = {channels * int(mults[0])} (not {same.width})")
    if odd:
        raise IncompatibleError(f"{where}: not this SAME encoder: {'; '.join(odd)}")
    if same.schedule == "chunked":
        return (
            "diffusers runs every block with a band; this encoder runs the official chunked "
            "schedule (same weights, reference/same.md)"
        )
    return ""


# --- matching the input to the model ----------------------------------------------------------


@dataclass
class _Plan:
    """Input key -> our parameter for every tensor used, and what was not used and why."""

    params: dict[str, list[str]] = field(default_factory=dict)  # param -> input keys
    tables: dict[str, int] = field(default_factory=dict)  # RoPE table key -> block
    ignored: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _flat(model: SameEncoder) -> list[tuple[str, mx.array]]:
    return tree_flatten(model.parameters())  # type: ignore[return-value]


def _expected_shapes(model: SameEncoder, spelling: Spelling) -> dict[str, Shape]:
    """Input key -> the shape it must have, for every key the model needs."""
    out: dict[str, Shape] = {}
    for name, value in _flat(model):
        shape = tuple(value.shape)
        key = spelling.key(name)
        if name == MAPPING_WEIGHT:
            width, fan_in = shape
            pair = spelling.weight_norm_keys()
            if pair is None:
                out[name] = (width, fan_in, 1)
            else:
                out[pair[0]], out[pair[1]] = (width, 1, 1), (width, fan_in, 1)
        else:
            assert key is not None
            out[key] = shape
    return out


def _param_of(model: SameEncoder, spelling: Spelling) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, _ in _flat(model):
        pair = spelling.weight_norm_keys() if name == MAPPING_WEIGHT else None
        if pair is not None:
            out[pair[0]] = out[pair[1]] = name
        else:
            out[spelling.key(name) or name] = name
    return out


def _plan(source: _Input, spelling: Spelling, model: SameEncoder) -> _Plan:
    plan = _Plan()
    expected = _expected_shapes(model, spelling)
    param_of = _param_of(model, spelling)
    blocks = model.config.blocks
    foreign, wrong, not_float = [], [], []
    for key, (code, shape) in source.tensors.items():
        if key in expected:
            plan.params.setdefault(param_of[key], []).append(key)
            if shape != expected[key]:
                wrong.append(f"{key} {shape} (expected {expected[key]})")
            elif not dtypes.is_floating(code):
                not_float.append(f"{key} ({code})")
            continue
        unused = spelling.unused(key)
        if unused is not None:
            if unused.fits(shape):
                plan.ignored[key] = unused.reason
            else:
                wrong.append(f"{key} {shape} (expected {unused.shape})")
            continue
        block = spelling.rope_table_block(key)
        if block is not None and block < blocks:
            plan.tables[key] = block
        elif spelling.in_encoder(key):
            foreign.append(key)
        elif spelling.in_decoder(key):
            plan.ignored[key] = _NOT_USED["decoder"]
        elif spelling.prefix and key.startswith("pretransform."):
            plan.ignored[key] = _NOT_USED["pretransform"]
        elif spelling.prefix:
            plan.ignored[key] = _NOT_USED["outside"]
        else:
            foreign.append(key)
    missing = [k for k in expected if k not in source.tensors]
    clauses = (
        (missing, "encoder parameters missing"),
        (wrong, "tensors of the wrong shape"),
        (not_float, "tensors not floating point"),
        (foreign, "keys that are no parameter of this encoder (another network?)"),
    )
    plan.problems = [f"{len(items)} {what}: {_listed(items)}" for items, what in clauses if items]
    return plan


# --- reading ----------------------------------------------------------------------------------


def _fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """w = g * v / ||v||, the norm over all but dim 0 (legacy weight_norm, dim 0), float64."""
    v64 = v.astype(np.float64)
    norm = np.sqrt((v64**2).sum(axis=(1, 2), keepdims=True))
    return (g.astype(np.float64) * v64 / norm)[:, :, 0]


def _array(source: _Input, key: str, ledger: LoadLedger) -> np.ndarray:
    code = source.tensors[key][0]
    ledger.stored[code] += 1
    return dtypes.to_float32(source.read(key)) if code != "F64" else source.read(key)


def _param_array(
    name: str, keys: list[str], source: _Input, spelling: Spelling, ledger: LoadLedger
) -> np.ndarray:
    """Our parameter `name` from its input key(s), in our layout (float32 or float64)."""
    if name == MAPPING_WEIGHT:
        pair = spelling.weight_norm_keys()
        if pair is None:
            return _array(source, keys[0], ledger)[:, :, 0]
        return _fold_weight_norm(_array(source, pair[0], ledger), _array(source, pair[1], ledger))
    array = _array(source, keys[0], ledger)
    if spelling.naming == DIFFUSERS and name.endswith(QKV_LEAF):
        array = np.concatenate([array[s] for s in diffusers_qkv_to_official(array.shape[0])])
    return array


def _check_tables(plan: _Plan, source: _Input, config: SameConfig, ledger: LoadLedger) -> None:
    ours = rope_inv_freq(config).astype(np.float64)
    for key in plan.tables:
        stored = dtypes.to_float32(source.read(key)).astype(np.float64)
        if stored.shape != ours.shape or not np.allclose(stored, ours, rtol=_TABLE_RTOL, atol=0):
            raise IncompatibleError(
                f"{source.path}: {key} is not the RoPE table 1/{config.rope_base:g}^(2i/"
                f"{config.rope_dims}) this encoder computes"
            )
        ledger.ignored[key] = "a fixed RoPE table; the encoder computes its own (equal)"


def _load(
    source: _Input, codec: str | SameConfig | None, dtype: mx.Dtype
) -> tuple[SameEncoder, LoadLedger]:
    spelling = detect_spelling(source.tensors, source.container == "diffusers-folder")
    if spelling is None:
        raise MalformedFileError(
            source.path,
            "no SAME encoder keys (official `encoder.layers.0.`, MLX `blocks.N.` with "
            "`mapping.weight`, or diffusers `encoder.blocks.0.`)",
        )
    naming = spelling.naming + (" (in a full SA3 checkpoint)" if spelling.prefix else "")
    config, notes = _resolve_config(codec, spelling, source)
    ledger = LoadLedger(
        source.path,
        naming,
        source.container,
        config.name,
        RUN_DTYPES[dtype],
        list(source.files),
        notes=notes,
        model="SAME encoder",
    )
    diffusers_note = _check_diffusers_config(source.config, config, source.path)
    if diffusers_note:
        ledger.notes.append(diffusers_note)
    model = SameEncoder(config)
    plan = _plan(source, spelling, model)
    if plan.problems:
        raise IncompatibleError(
            f"{source.path}: not a complete {config.name} encoder ({spelling.naming} naming): "
            + "; ".join(plan.problems)
        )
    _check_tables(plan, source, config, ledger)
    ledger.ignored.update(plan.ignored)
    weights = []
    for name, keys in plan.params.items():
        array = _param_array(name, keys, source, spelling, ledger)
        value = mx.array(array.astype(np.float32))
        if value.dtype != dtype:
            ledger.cast[f"float32->{RUN_DTYPES[dtype]}"] += 1
            value = value.astype(dtype)
        weights.append((name, value))
        for key in keys:
            ledger.loaded[key] = name
    model.load_weights(weights, strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model, ledger


def load_same_encoder(
    path: str | os.PathLike[str],
    codec: str | SameConfig | None = None,
    dtype: mx.Dtype = mx.float32,
) -> tuple[SameEncoder, LoadLedger]:
    """The SAME encoder of an official, MLX-runtime or diffusers weights file or folder.

    `codec`: 'same-s' / 'same-l' (checked against the file), a `SameConfig`, or None to
    detect it from the shapes. `dtype`: the run dtype (float32, float16 or bfloat16); the
    ledger counts the casts. Raises MalformedFileError for an unreadable input or one with
    no SAME encoder keys, IncompatibleError (exit 4) listing every problem for one that does
    not fill the encoder exactly, UsageError for an unknown codec name or dtype.
    """
    if dtype not in RUN_DTYPES:
        raise UsageError(f"run dtype must be one of {', '.join(RUN_DTYPES.values())}, not {dtype}")
    source = _open(os.fspath(path))
    try:
        return _load(source, codec, dtype)
    finally:
        source.close()


__all__ = ["codec_sha256", "load_same_encoder", "weight_files"]
