"""XS bases from any of the three files that hold them, as one `XsBases`.

* sa3ckpt's bases file (`sa3ckpt bases`, safetensors): bases, W0 digests, σ_1..σ_{r+1};
* the official ``svd_bases.pt`` (what ``load_and_apply_loras(svd_bases_path=...)`` reads): a
  torch pickle, so opt-in (``allow_pickle``) and ``torch.load(weights_only=True)`` only. The
  official loader reads it as a dict keyed by the module's official full-checkpoint weight
  key (``model.model.<DiT module>.weight``, ``conditioner.conditioners.<module>.weight``),
  each value a dict with ``U`` (fan_out, k) and ``V`` (fan_in, k), of which it uses the
  first ``rank`` columns. That is the layout accepted here; a value's optional 1-D ``S`` is
  kept as singular values. No digest of W0 is recorded, so a mismatch cannot be detected;
* sa3.cpp's bases GGUF (``tools/compute_svd_bases.py``, read by ``sa3-train --svd-bases``):
  ``general.architecture`` ``sa3-lora``, ``lora.rank`` (u32), F32 tensors ``<stem>.U``
  (fan_out, rank) and ``<stem>.V`` (fan_in, rank) with sa3.cpp DiT stems; no conditioner.

Every file is checked strictly (shapes, finiteness, key spelling): a wrong basis silently
corrupts every -xs merge, so anything odd is a `MalformedFileError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.types import BASIS_PARAMS
from sa3ckpt.adapters.xs_bases import XsBases, load_bases
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.gguf_adapter import KEY_RANK, is_gguf, read_gguf_adapter
from sa3ckpt.io.legacy_pickle import load_weights_only, looks_like_pickle, tensor_to_numpy
from sa3ckpt.names.base_keys import parse_official_base_key
from sa3ckpt.names.modules import from_sa3cpp_stem

ORIGIN_OFFICIAL = "official svd_bases.pt"
ORIGIN_SA3CPP = "sa3.cpp bases GGUF"
_SHOWN = 80
_UNRECORDED = "(not recorded in the file)"


def _pair(path: str, where: str, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U, V as float32, checked: 2-D, same column count, finite."""
    for name, array in (("U", u), ("V", v)):
        if array.ndim != 2:
            raise MalformedFileError(
                path, f"{where}: {name} has shape {list(array.shape)}, not 2-D"
            )
        if not dtypes.is_floating(dtypes.code_for(array.dtype)):
            raise MalformedFileError(path, f"{where}: {name} is {array.dtype}, not floating")
    if u.shape[1] != v.shape[1] or u.shape[1] < 1:
        raise MalformedFileError(
            path, f"{where}: U {list(u.shape)} and V {list(v.shape)} have different column counts"
        )
    u32, v32 = dtypes.to_float32(u), dtypes.to_float32(v)
    if not (np.isfinite(u32).all() and np.isfinite(v32).all()):
        raise MalformedFileError(path, f"{where}: contains NaN or inf values")
    return np.ascontiguousarray(u32), np.ascontiguousarray(v32)


def _official_entry(torch: Any, path: str, key: str, value: Any) -> tuple[str, dict[str, Any]]:
    parsed = parse_official_base_key(key)
    if parsed is None or parsed[1] != "weight":
        raise MalformedFileError(
            path,
            f"key {key[:_SHOWN]!r} is not an official weight key "
            "(model.model.<module>.weight or conditioner.conditioners.<module>.weight)",
        )
    if not isinstance(value, Mapping) or not all(p in value for p in BASIS_PARAMS):
        raise MalformedFileError(path, f"{key[:_SHOWN]!r}: expected a dict with 'U' and 'V'")
    arrays = {
        name: tensor_to_numpy(torch, path, f"{key}[{name!r}]", value[name])
        for name in ("U", "V", "S")
        if name in value
    }
    return parsed[0], arrays


def load_official_bases(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> XsBases:
    """The official ``svd_bases.pt`` (opt-in pickle, weights_only) as `XsBases`."""
    spath = os.fspath(path)
    torch, obj = load_weights_only(spath, allow_pickle=allow_pickle)
    if not isinstance(obj, Mapping):
        raise MalformedFileError(
            spath, f"expected a dict at the top level, got {type(obj).__name__}"
        )
    out = XsBases(rank=0, source_base="(not recorded)", origin=ORIGIN_OFFICIAL, path=spath, tool="")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise MalformedFileError(spath, f"top-level key {key!r:.80} is not a string")
        target, arrays = _official_entry(torch, spath, key, value)
        if target in out.bases:
            raise MalformedFileError(spath, f"two entries for {target[:_SHOWN]}")
        out.bases[target] = _pair(spath, key[:_SHOWN], arrays["U"], arrays["V"])
        s = arrays.get("S")
        if s is not None and s.ndim == 1:
            sigma = dtypes.to_float32(s).astype(np.float64)
            if np.isfinite(sigma).all() and (sigma >= 0).all():
                out.singular_values[target] = sigma
    if not out.bases:
        raise MalformedFileError(spath, "no bases in file")
    out.rank = min(u.shape[1] for u, _ in out.bases.values())
    return out


def load_sa3cpp_bases(path: str | os.PathLike[str]) -> XsBases:
    """sa3.cpp's bases GGUF (``<stem>.U`` / ``<stem>.V``, ``lora.rank``) as `XsBases`."""
    spath = os.fspath(path)
    gguf = read_gguf_adapter(spath)
    rank = gguf.kv.get(KEY_RANK)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise MalformedFileError(spath, f"{KEY_RANK} is {rank!r}, not a positive integer")
    found: dict[str, dict[str, np.ndarray]] = {}
    for name, array in gguf.tensors.items():
        stem, _, param = name.rpartition(".")
        target = from_sa3cpp_stem(stem) if param in BASIS_PARAMS else None
        if target is None:
            raise MalformedFileError(
                spath,
                f"tensor {name[:_SHOWN]!r} is not <sa3.cpp stem>.U or .V (not a bases GGUF)",
            )
        found.setdefault(target, {})[param] = array
    if not found:
        raise MalformedFileError(spath, "no bases tensors in file")
    out = XsBases(
        rank=rank, source_base="(not recorded)", origin=ORIGIN_SA3CPP, path=spath, tool=""
    )
    for target, pair in found.items():
        missing = [p for p in BASIS_PARAMS if p not in pair]
        if missing:
            raise MalformedFileError(spath, f"{target[:_SHOWN]} has no {missing[0]}")
        u, v = _pair(spath, target[:_SHOWN], pair["U"], pair["V"])
        if u.shape[1] < rank:
            raise MalformedFileError(
                spath, f"{target[:_SHOWN]}: {u.shape[1]} columns, fewer than {KEY_RANK} {rank}"
            )
        out.bases[target] = (u, v)
    return out


def load_xs_bases(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> XsBases:
    """Bases from any supported file, told apart by content: GGUF magic, torch pickle, or
    else sa3ckpt's safetensors bases file."""
    spath = os.fspath(path)
    if is_gguf(spath):
        return load_sa3cpp_bases(spath)
    if looks_like_pickle(spath):
        return load_official_bases(spath, allow_pickle=allow_pickle)
    return load_bases(spath)


__all__ = [
    "ORIGIN_OFFICIAL",
    "ORIGIN_SA3CPP",
    "load_official_bases",
    "load_sa3cpp_bases",
    "load_xs_bases",
]
