"""`load_dit`: an MLX DiT and its conditioner from an official, MLX-runtime or diffusers base.

Every input is read through the one base-checkpoint registry (`io.base_checkpoint`) and
translated to the MLX runtime's names and layouts by the base-conversion plan, so the rules
for key spellings (names.base_keys) and shapes (layout) are not restated here. The model is
built from the shapes (`models.detect`), so any file of the SA3 topology loads.

Loading is strict, unlike the official MLX runtime (`load_weights(strict=False)`: extra keys
dropped, missing ones silently keep their random init). Decided from the index before any
tensor is read:

- every DiT parameter must come from the input, with its exact shape and a floating dtype;
- an input key in the DiT's own namespace that is not a parameter of the model (a block
  beyond its depth, `lambda` of another attention) is refused too: the file is a different
  network, and dropping the key would run the wrong function;
- keys outside the DiT (the pretransform/VAE, the text encoder, other conditioner arrays)
  are not used and named in the ledger with the reason, as are the fixed frequency tables
  some files carry (checked against the model's own first).

The conditioner's three arrays load when the input holds all of them (official and MLX
files do; a diffusers pipeline keeps the seconds Linear in its `duration_embedder`
component beside `transformer/`); otherwise the conditioner is None and the ledger names
what is missing.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from sa3ckpt import dtypes, mlx_streams
from sa3ckpt.errors import IncompatibleError, MalformedFileError, UsageError
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, BaseTensor, open_base
from sa3ckpt.io.diffusers_folder import CONFIG_NAME, WEIGHTS_NAME
from sa3ckpt.io.diffusers_folder import CONTAINER as FOLDER
from sa3ckpt.io.formats import ADAPTER, PICKLE, identify
from sa3ckpt.io.remote import is_url
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.io.sources import read_json
from sa3ckpt.models.config import DiTConfig
from sa3ckpt.models.detect import Detected, detect, family_name
from sa3ckpt.models.dit import DiT, build_conditioner
from sa3ckpt.models.embeddings import Conditioner
from sa3ckpt.models.layers import fourier_frequencies
from sa3ckpt.models.load_ledger import LoadLedger
from sa3ckpt.names.base_keys import (
    MLX_PIPELINE_CONDITIONER_KEYS,
    OFFICIAL_CONDITIONER_PREFIX,
    OFFICIAL_DIT_PREFIX,
    SA3CPP_DIT_PREFIX,
    translate_base_key,
)
from sa3ckpt.names.modules import DIFFUSERS_DURATION_EMBEDDER, MLX_ARRAY_PREFIX
from sa3ckpt.ops.convert import TensorPlan, convert_tensor, plan_conversion
from sa3ckpt.targets.topology import rotary_inv_freq

Shape = tuple[int, ...]
_SHOWN = 5  # keys an error message names before it counts the rest
# Arrays kept in float32 whatever the run dtype: a fixed table, not a weight.
_KEEP_FP32 = frozenset({"transformer.rotary_pos_emb.inv_freq"})
RUN_DTYPES: dict[mx.Dtype, str] = {
    mx.float32: "float32",
    mx.float16: "float16",
    mx.bfloat16: "bfloat16",
}
_DURATION_PREFIX = DIFFUSERS_DURATION_EMBEDDER + "."
_PIPELINE_TRANSFORMER = "transformer"

# The DiT's own namespace in each naming: an input key there that is no parameter of the
# model belongs to another network and is refused, not ignored.
_IN_DIT: dict[str, Callable[[str], bool]] = {
    "official": lambda key: key.startswith(OFFICIAL_DIT_PREFIX),
    "mlx": lambda key: not key.startswith(MLX_ARRAY_PREFIX),
    "diffusers": lambda key: not key.startswith(_DURATION_PREFIX),
    "sa3cpp": lambda key: key.startswith(SA3CPP_DIT_PREFIX),
}
# Why a key outside the DiT is not used: first matching prefix.
_OUTSIDE_REASONS: tuple[tuple[str, str], ...] = (
    (
        OFFICIAL_CONDITIONER_PREFIX,
        "another conditioner's tensor (e.g. the text encoder): only the seconds Linear and "
        "the prompt padding embedding are used",
    ),
    (MLX_ARRAY_PREFIX, "a conditioner array this model does not use"),
    (_DURATION_PREFIX, "a duration embedder tensor the conditioner does not use"),
    ("", "outside the DiT and its conditioner (e.g. the pretransform/VAE): not used"),
)
# Fixed frequency tables some files carry (MLX name or input key) -> the topology field
# giving their feature count. The model computes its own (layers.fourier_frequencies).
_FIXED_TABLES: dict[str, str] = {
    "timestep_features.freqs": "timestep_features",
    _DURATION_PREFIX + "freqs": "seconds_features",
}
# torch's float32 linspace + exp lands up to tens of ulp (~2e-6) from the float64 formula.
_TABLE_RTOL = 1e-5
# diffusers duration-embedder settings the Conditioner fixes (clamp floor, frequency range).
_DURATION_FIXED: dict[str, float] = {"min_val": 0.0, "min_freq": 0.5, "max_freq": 1e4}


@dataclass
class LoadedDiT:
    dit: DiT
    conditioner: Conditioner | None  # None when the input lacks any of its three arrays
    ledger: LoadLedger


@dataclass(frozen=True)
class _Tensor:
    """One input tensor: its key, its MLX name (None: no MLX spelling) and reader."""

    key: str
    mlx: str | None
    shape: Shape  # in the MLX layout
    code: str  # safetensors dtype code as stored
    read: Callable[[], np.ndarray]  # the array in the MLX layout, dtype as stored
    # The same array read by MLX itself on a stream (None: the tensor needs `read`).
    lazy: Callable[[mx.Stream | None], mx.array | None] | None = None


def _read_converted(base: BaseCheckpoint, plan: TensorPlan) -> np.ndarray:
    return convert_tensor(base.read(plan.source), plan)


# Stored dtypes `mx.load` gives as they are.
_MX_LOADS: dict[str, mx.Dtype] = {"F16": mx.float16, "BF16": mx.bfloat16, "F32": mx.float32}


class _MlxReads:
    """Lazy MLX arrays, read by MLX (`mx.load`), for the tensors a base stores plainly in a
    local safetensors file (or diffusers shard) with the MLX runtime's layout: no NumPy buffer
    and copy on the way, and the read runs on the stream that evaluates it, so `_load`'s
    streams read and cast side by side. Only when MLX computes on the CPU (elsewhere the
    NumPy path stays). The header was validated by sa3ckpt's reader when the base was opened;
    an array MLX lists under another shape or dtype, or a file MLX cannot open, falls back to
    `read`. An array is bound to the stream it was made on: one `mx.load` per file and stream,
    and each array is taken out of it, so its buffer is freed once its cast has run."""

    def __init__(self, base: BaseCheckpoint) -> None:
        self._base = base
        self._files: dict[tuple[str, str], dict[str, mx.array]] = {}

    def usable(self, plan: TensorPlan) -> bool:
        return (
            self._base.container in ("safetensors", FOLDER)
            and plan.layouts is None
            and plan.code_out == plan.code_in in _MX_LOADS
            and mx.default_device() == mx.cpu
        )

    def take(self, plan: TensorPlan, stream: mx.Stream | None) -> mx.array | None:
        where = self._base.stored_bytes(plan.source)
        if where is None or is_url(where[0]):
            return None
        stream = stream or mx.default_stream(mx.cpu)
        arrays = self._files.get((where[0], str(stream)))
        if arrays is None:
            try:
                loaded = mx.load(where[0], format="safetensors", stream=stream)
            except (ValueError, RuntimeError, OSError):
                loaded = {}
            arrays = self._files[where[0], str(stream)] = (
                dict(loaded) if isinstance(loaded, dict) else {}
            )
        array = arrays.pop(plan.source, None)
        if (
            array is None
            or tuple(array.shape) != plan.shape_out
            or array.dtype != _MX_LOADS[plan.code_in]
        ):
            return None
        return array


def _tensors(base: BaseCheckpoint) -> list[_Tensor]:
    """Every tensor of `base` with its MLX name and layout (planned from the index only)."""
    plans, unmapped, _ = plan_conversion(base, "mlx", cast_to=None, drop_unmapped=True)
    reads = _MlxReads(base)
    out = [
        _Tensor(
            p.source,
            p.target,
            p.shape_out,
            p.code_in,
            functools.partial(_read_converted, base, p),
            functools.partial(reads.take, p) if reads.usable(p) else None,
        )
        for p in plans
    ]
    for key in unmapped:
        info = base.tensors[key]
        out.append(_Tensor(key, None, info.shape, info.dtype, functools.partial(base.read, key)))
    return out


# --- the input --------------------------------------------------------------------------------


def _resolve(path: str) -> str:
    """A diffusers pipeline root loads its `transformer` component."""
    inner = os.path.join(path, _PIPELINE_TRANSFORMER)
    return inner if os.path.isdir(path) and os.path.isdir(inner) else path


def _refuse_non_base(path: str) -> None:
    """A one-line MalformedFileError for anything that is not a base checkpoint."""
    found = identify(path)
    if found.is_base:
        return
    if found.kind == ADAPTER:
        keys = f", {found.naming} keys" if found.naming not in (None, found.format) else ""
        cause = f"an adapter ({found.format}{keys}), not a base: load_dit needs a full DiT base"
    elif found.kind == PICKLE:
        cause = "a pickle: load_dit reads safetensors, .npz and diffusers folders (never unpickles)"
    else:
        cause = f"not an SA3 base checkpoint ({found.reason})"
    raise MalformedFileError(path, cause)


def _duration_folder(transformer: str) -> str | None:
    """The pipeline's `duration_embedder` beside a diffusers transformer folder, if any."""
    parent = os.path.dirname(os.path.abspath(transformer))
    folder = os.path.join(parent, DIFFUSERS_DURATION_EMBEDDER)
    return folder if os.path.isfile(os.path.join(folder, WEIGHTS_NAME)) else None


def _open_duration(folder: str) -> BaseCheckpoint:
    """The duration embedder as a diffusers-named base, keys spelled from the pipeline."""
    weights = os.path.join(folder, WEIGHTS_NAME)
    handle = open_safetensors(weights)
    tensors = {
        _DURATION_PREFIX + key: BaseTensor(_DURATION_PREFIX + key, info.dtype, tuple(info.shape))
        for key, info in handle.header.tensors.items()
    }
    return BaseCheckpoint(
        weights,
        "safetensors",
        "diffusers",
        tensors,
        dict(handle.metadata),
        lambda key: handle.read(key[len(_DURATION_PREFIX) :]),
        handle.close,
    )


def _duration_max_seconds(folder: str, default: float) -> float:
    """The seconds clamp of a duration embedder's config (refusing settings we fix)."""
    config_path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config_path):
        return default
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise MalformedFileError(config_path, "config.json is not a JSON object")
    odd = [
        f"{name} = {config[name]} (supported: {value})"
        for name, value in _DURATION_FIXED.items()
        if name in config and config[name] != value
    ]
    if odd:
        raise IncompatibleError(f"{config_path}: duration embedder settings {', '.join(odd)}")
    return float(config.get("max_val", default))


# --- checking the input against the model -----------------------------------------------------


def _shapes(module: nn.Module, prefix: str = "") -> dict[str, Shape]:
    flat: list[tuple[str, mx.array]] = tree_flatten(module.parameters())  # type: ignore[assignment]
    return {prefix + key: tuple(value.shape) for key, value in flat}


def _listed(items: list[str]) -> str:
    more = len(items) - _SHOWN
    return ", ".join(items[:_SHOWN]) + (f", … (+{more} more)" if more > 0 else "")


def _spelled(mlx_key: str, shape: Shape, naming: str) -> str:
    """An MLX name as the input's naming spells it (with the MLX name when they differ)."""
    key = translate_base_key(mlx_key, shape, "mlx", naming) or mlx_key
    return key if key == mlx_key else f"{key} ({mlx_key})"


@dataclass
class _Sorted:
    """The input's tensors by what they are to the model."""

    dit: dict[str, _Tensor]  # DiT parameter -> tensor
    cond: dict[str, _Tensor]  # `cond.*` array -> tensor
    tables: list[_Tensor]
    foreign: list[_Tensor]  # in the DiT's namespace, but no parameter of the model


def _table_field(tensor: _Tensor) -> str | None:
    return _FIXED_TABLES.get(tensor.mlx or "") or _FIXED_TABLES.get(tensor.key)


def _outside_reason(key: str) -> str:
    return next(why for prefix, why in _OUTSIDE_REASONS if key.startswith(prefix))


def _sort(
    tensors: list[_Tensor],
    dit: Mapping[str, Shape],
    cond: Mapping[str, Shape],
    ledger: LoadLedger,
) -> _Sorted:
    """Each tensor into a group; keys outside the DiT go straight to `ledger.ignored`."""
    out = _Sorted({}, {}, [], [])
    in_dit = _IN_DIT[ledger.naming]
    for tensor in tensors:
        name = tensor.mlx or ""
        if name in dit:
            out.dit[name] = tensor
        elif name in cond:
            out.cond[name] = tensor
        elif _table_field(tensor) is not None:
            out.tables.append(tensor)
        elif in_dit(tensor.key):
            out.foreign.append(tensor)
        else:
            ledger.ignored[tensor.key] = _outside_reason(tensor.key)
    return out


def _problems(
    found: _Sorted, dit: Mapping[str, Shape], cond: Mapping[str, Shape], naming: str
) -> list[str]:
    """Everything that keeps the input from filling the model exactly, one clause each."""
    missing = [_spelled(k, shape, naming) for k, shape in dit.items() if k not in found.dit]
    expected = {**dit, **cond}
    present = {**found.dit, **found.cond}
    wrong = [
        f"{t.key} {t.shape} (expected {expected[name]})"
        for name, t in present.items()
        if t.shape != expected[name]
    ]
    not_float = [f"{t.key} ({t.code})" for t in present.values() if not dtypes.is_floating(t.code)]
    foreign = [t.key for t in found.foreign]
    clauses = (
        (missing, "DiT parameters missing"),
        (wrong, "tensors of the wrong shape"),
        (not_float, "tensors not floating point"),
        (foreign, "tensors look like DiT parameters the model does not have (another network?)"),
    )
    return [f"{len(items)} {what}: {_listed(items)}" for items, what in clauses if items]


def _check_tables(tables: list[_Tensor], config: DiTConfig, ledger: LoadLedger) -> None:
    """A stored frequency table must be the one the model computes (else another model)."""
    for tensor in tables:
        field = _table_field(tensor)
        assert field is not None
        ours = fourier_frequencies(getattr(config.topology, field))
        stored = tensor.read().astype(np.float64)
        if stored.shape != ours.shape or not np.allclose(stored, ours, rtol=_TABLE_RTOL, atol=0):
            raise IncompatibleError(
                f"{ledger.path}: {tensor.key} is not the {field} frequency table "
                f"exp(linspace(ln 0.5, ln 1e4, {len(ours)})) this model computes"
            )
        ledger.ignored[tensor.key] = (
            f"a fixed frequency table; the model computes its own (equal within {_TABLE_RTOL:g})"
        )


# --- building -------------------------------------------------------------------------------


def _config(found: Detected, max_seconds: float, path: str) -> DiTConfig:
    try:
        if found.memory_tokens is None:  # reported missing by the completeness check
            return DiTConfig(found.topology, max_seconds=max_seconds)
        return DiTConfig(found.topology, memory_tokens=found.memory_tokens, max_seconds=max_seconds)
    except ValueError as exc:
        raise IncompatibleError(f"{path}: {exc}") from None


def _to_mx(
    name: str, tensor: _Tensor, dtype: mx.Dtype, ledger: LoadLedger, stream: mx.Stream | None = None
) -> mx.array:
    """One tensor read, as an MLX array in the run dtype (fixed tables stay float32).

    The read (when MLX reads it, `_MlxReads`) and the cast run on `stream` (default: the
    current one) and are started here: this thread goes on to the next tensors while the
    streams read and cast the last ones (`mlx_streams`: a cast uses one core per stream), and
    each stored-dtype copy is freed as soon as its cast is done, so the copies are a few
    tensors' share of the peak, not the whole file's."""
    target = mx.float32 if name in _KEEP_FP32 else dtype
    lazy = tensor.lazy(stream) if tensor.lazy is not None else None
    array = lazy if lazy is not None else mx.array(tensor.read())
    ledger.stored[tensor.code] += 1
    if array.dtype != target:
        ledger.cast[f"{RUN_DTYPES.get(array.dtype, str(array.dtype))}->{RUN_DTYPES[target]}"] += 1
        with mx.stream(stream) if stream is not None else contextlib.nullcontext():
            array = array.astype(target)
    mx.async_eval(array)
    return array


def _conditioner(
    config: DiTConfig, found: _Sorted, dtype: mx.Dtype, ledger: LoadLedger
) -> Conditioner | None:
    cond = build_conditioner(config)
    keys = MLX_PIPELINE_CONDITIONER_KEYS
    missing = [k for k in keys if k not in found.cond]
    if missing:
        shapes = _shapes(cond, MLX_ARRAY_PREFIX)
        ledger.conditioner_missing = {
            k: translate_base_key(k, shapes[k], "mlx", ledger.naming) or k for k in missing
        }
        for tensor in found.cond.values():
            ledger.ignored[tensor.key] = f"conditioner incomplete (no {', '.join(missing)})"
        return None
    weights = []
    for key in keys:
        tensor = found.cond[key]
        weights.append((key[len(MLX_ARRAY_PREFIX) :], _to_mx(key, tensor, dtype, ledger)))
        ledger.conditioner[tensor.key] = key
    cond.load_weights(weights, strict=True)
    return cond


def _load(
    tensors: list[_Tensor], ledger: LoadLedger, dtype: mx.Dtype, max_seconds: float
) -> LoadedDiT:
    named = {t.mlx: t for t in tensors if t.mlx is not None}
    found = detect(
        {k: t.shape for k, t in named.items()}, ledger.path, {k: t.key for k, t in named.items()}
    )
    ledger.family = found.family
    ledger.notes += found.notes
    config = _config(found, max_seconds, ledger.path)
    dit = DiT(config)
    dit_shapes = _shapes(dit)
    cond_shapes = _shapes(build_conditioner(config), MLX_ARRAY_PREFIX)
    groups = _sort(tensors, dit_shapes, cond_shapes, ledger)
    problems = _problems(groups, dit_shapes, cond_shapes, ledger.naming)
    if problems:
        raise IncompatibleError(
            f"{ledger.path}: not a complete {found.family} DiT: {'; '.join(problems)}"
        )
    _check_tables(groups.tables, config, ledger)
    weights = []
    streams = mlx_streams.work_streams()
    for index, name in enumerate(dit_shapes):
        tensor = groups.dit[name]
        stream = streams[index % len(streams)]
        weights.append((name, _to_mx(name, tensor, dtype, ledger, stream)))
        ledger.loaded[tensor.key] = name
    dit.load_weights(weights, strict=True)
    dit.eval()
    conditioner = _conditioner(config, groups, dtype, ledger)
    mx.eval(dit.parameters(), [] if conditioner is None else conditioner.parameters())
    return LoadedDiT(dit, conditioner, ledger)


# sa3.cpp stores no rotary table (it recomputes it from these KVs); neither does the input.
SA3CPP_INV_FREQ_SOURCE = "dit.rot, dit.rope_base"
_INV_FREQ = "transformer.rotary_pos_emb.inv_freq"


def _sa3cpp_inv_freq(base: BaseCheckpoint, ledger: LoadLedger) -> list[_Tensor]:
    """The rotary table of an sa3.cpp DiT GGUF, computed as sa3.cpp does from its KVs."""
    if base.gguf is None or base.gguf.dit is None:
        return []
    kv = base.gguf.dit.kv
    rot, rope_base = kv.get("dit.rot"), kv.get("dit.rope_base")
    if not isinstance(rot, int) or not isinstance(rope_base, float) or rot < 2:
        return []
    table = rotary_inv_freq(rot, rope_base).astype(np.float32)
    ledger.notes.append(
        f"{_INV_FREQ} computed from {SA3CPP_INV_FREQ_SOURCE} ({rot}, {rope_base:g}): "
        "sa3.cpp files do not store it"
    )
    return [_Tensor(SA3CPP_INV_FREQ_SOURCE, _INV_FREQ, table.shape, "F32", lambda: table.copy())]


def load_dit(
    path: str | os.PathLike[str],
    dtype: mx.Dtype = mx.float32,
    *,
    conditioner: str | os.PathLike[str] | None = None,
) -> LoadedDiT:
    """The DiT (and conditioner) of a base file or folder, every parameter from the input.

    Accepts an official full base (`model.model.…`), an MLX runtime file (.safetensors or
    .npz, `cond.*` arrays inside), a diffusers transformer folder, a diffusers pipeline
    root (its `transformer/` plus the seconds Linear from `duration_embedder/`), or an
    sa3.cpp DiT GGUF with its `conditioner` sidecar GGUF when given (quantised tensors are
    dequantised by the gguf package; the rotary table is computed from its KVs, as sa3.cpp
    does). `dtype` is
    the run dtype every floating array is cast to (float32, float16 or bfloat16; the RoPE
    table stays float32); the ledger counts the casts. Raises MalformedFileError for an
    input that is not an SA3 base (an adapter, a pickle, a damaged file) and
    IncompatibleError for a base that does not fill the model exactly.
    """
    if dtype not in RUN_DTYPES:
        raise UsageError(f"run dtype must be one of {', '.join(RUN_DTYPES.values())}, not {dtype}")
    spath = _resolve(os.fspath(path))
    _refuse_non_base(spath)
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(open_base(spath, conditioner=conditioner))
        sources = [spath] + ([os.fspath(conditioner)] if conditioner is not None else [])
        ledger = LoadLedger(spath, base.naming, base.container, "", RUN_DTYPES[dtype], sources)
        tensors = _tensors(base) + _sa3cpp_inv_freq(base, ledger)
        max_seconds = DiTConfig.max_seconds
        folder = _duration_folder(spath) if base.container == FOLDER else None
        if folder is not None:
            duration = stack.enter_context(_open_duration(folder))
            ledger.sources.append(duration.path)
            tensors += _tensors(duration)
            max_seconds = _duration_max_seconds(folder, max_seconds)
        return _load(tensors, ledger, dtype, max_seconds)


__all__ = ["LoadLedger", "LoadedDiT", "family_name", "load_dit"]
