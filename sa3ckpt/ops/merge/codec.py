"""Merge codec adapters into SAME codec weights (the official autoencoder safetensors).

The DiT merge plans targets from the DiT tables; a codec adapter's targets live in the codec
tables (targets/codec_families.py), and its base is the codec file: the autoencoder's own
`encoder.` / `decoder.` keys, or the `pretransform.model.` copy inside a full SA3 checkpoint.
The math is the DiT merge's tiled kernel (adapters.tiled: float32 accumulation, one
cast), every semantics, adapters chained in order. Before anything is
written every adapter must be identified as a codec family of the same SAME size and half
the base holds: SAME-S and SAME-L share module names, so a width mismatch is refused naming
both (exit 4). The output keeps every other tensor bit for bit, the base's key spelling and
metadata, plus provenance; the ledger is the DiT merge's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from sa3ckpt import __version__, dtypes
from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.adapters.kernels import NumpyAdapter
from sa3ckpt.adapters.types import adapter_type
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.formats import open_adapter_source
from sa3ckpt.io.safetensors import open_safetensors, write_safetensors
from sa3ckpt.ops.codec import CodecAdapter, analyze_codec, mismatches
from sa3ckpt.ops.inspect import PRETRANSFORM_PREFIX, codec_family, codec_part
from sa3ckpt.ops.merge.ledger import PROVENANCE_KEY, MergeLedger, adapter_sha256
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.targets.codec_families import (
    CODEC_TARGET_FAMILIES,
    CodecFamily,
    family_name,
)


def _prefix(keys: Sequence[str]) -> str:
    """`pretransform.model.` when the codec sits inside a full checkpoint, else ``."""
    return (
        PRETRANSFORM_PREFIX + "model."
        if any(k.startswith(PRETRANSFORM_PREFIX) for k in keys)
        else ""
    )


def base_families(shapes: dict[str, tuple[int, ...]]) -> dict[str, CodecFamily]:
    """part -> the codec family of that half in a codec weights file (by its widths)."""
    out: dict[str, CodecFamily] = {}
    for part in ("encoder", "decoder"):
        own = {k: v for k, v in shapes.items() if codec_part(k) == part}
        size, _, _ = codec_family(own)
        if size is not None:
            out[part] = CODEC_TARGET_FAMILIES[family_name(size.name, part)]
    return out


def _refuse_mismatch(
    arg: AdapterArg, codec: CodecAdapter, base: str, held: dict[str, CodecFamily]
) -> None:
    part = codec.part if codec.part in ("encoder", "decoder") else None
    if codec.family is None:
        first = next(
            (f.message for f in codec.findings if f.severity == "error"), "no codec family fits"
        )
        raise IncompatibleError(f"{arg.path}: not a usable codec adapter ({first})")
    if part is None or part not in held:
        have = ", ".join(f.label for f in held.values()) or "no recognised codec half"
        raise IncompatibleError(
            f"{arg.path}: an adapter on the {codec.family.label}, but {base} holds {have}"
        )
    target = held[part]
    if target.size != codec.family.size:
        _, wrong = mismatches(codec, target)
        example = f" (e.g. {wrong[0].line()})" if wrong else ""
        raise IncompatibleError(
            f"{arg.path}: a {codec.family.label} adapter on a {target.label} codec ({base}): "
            f"they share module names, not widths{example}"
        )
    errors = [f.message for f in codec.findings if f.severity == "error"]
    if errors:
        raise IncompatibleError(f"{arg.path}: {errors[0]}")


def _numpy_adapter(codec: CodecAdapter, source_arrays: dict[str, np.ndarray]) -> NumpyAdapter:
    kind = adapter_type(codec.adapter_type or "lora")
    params = {}
    for p, a in source_arrays.items():
        arr = dtypes.to_float32(np.asarray(a))
        params[p] = arr.reshape(-1) if p.startswith("magnitude") or p == "baked_vnorm_row" else arr
    return NumpyAdapter(kind, float(codec.scale or 0.0), params)


def merge_codec(
    base_path: str,
    adapters: Sequence[AdapterArg],
    output: str | None,
    *,
    semantics: str = "runtime",
    dtype: str | None = None,
    force: bool = False,
) -> MergeLedger:
    """Merge codec adapters into a codec weights file; write `output` atomically."""
    if semantics not in SEMANTICS:
        raise UsageError(f"unknown semantics {semantics!r} (known: {', '.join(SEMANTICS)})")
    if output is None:
        raise UsageError("merge needs -o OUT")
    out_code = dtypes.code_from_name(dtype) if dtype else None
    inputs = [base_path, *(a.path for a in adapters)]
    with open_safetensors(base_path) as base:
        shapes = {k: tuple(base.info(k).shape) for k in base}
        held = base_families(shapes)
        prefix = _prefix(list(shapes))
        ledger = MergeLedger(base_path, output, semantics, "official codec", "safetensors")
        stacks: dict[str, list[tuple[NumpyAdapter, float]]] = {}
        for arg in adapters:
            with open_adapter_source(arg.path) as source:
                codec = analyze_codec(source)
                _refuse_mismatch(arg, codec, base_path, held)
                ledger.adapters.append(
                    {
                        "path": arg.path,
                        "sha256": adapter_sha256(arg.path),
                        "strength": arg.strength,
                        "adapter_type": codec.adapter_type,
                        "family": codec.family.name if codec.family else None,
                        "rank": codec.rank,
                        "alpha": codec.alpha,
                        "targets": len(codec.targets),
                    }
                )
                for module, params in codec.targets.items():
                    key = f"{prefix}{module}.weight"
                    if key not in shapes:
                        ledger.missing_from_base.append(module)
                        continue
                    arrays = {p: np.array(source.array(e.key)) for p, e in params.items()}
                    stacks.setdefault(key, []).append((_numpy_adapter(codec, arrays), arg.strength))
        if ledger.missing_from_base:
            raise IncompatibleError(
                f"{len(ledger.missing_from_base)} adapter targets are not in {base_path} "
                f"(e.g. {ledger.missing_from_base[0]})"
            )
        merged: dict[str, np.ndarray] = {}
        for key, stack in stacks.items():
            w0 = dtypes.to_float32(np.asarray(base.array(key)))
            code = out_code or dtypes.code_for(base.array(key).dtype)
            w, finite = tiled.merge_array(w0, stack, semantics, code)
            if not finite:
                raise IncompatibleError(f"merging into {key} gives NaN/Inf; nothing was written")
            merged[key] = w
            ledger.merged.append(key[len(prefix) : -len(".weight")])

        def tensors() -> list[tuple[str, np.ndarray]]:
            out = []
            for key in shapes:
                if key in merged:
                    out.append((key, merged[key]))
                    continue
                array = np.asarray(base.array(key))
                if (
                    out_code
                    and array.dtype.kind == "f"
                    and dtypes.code_for(array.dtype) != out_code
                ):
                    array = dtypes.to_float32(array).astype(dtypes.numpy_dtype(out_code))
                    ledger.cast += 1
                else:
                    ledger.copied += 1
                out.append((key, array))
            return out

        metadata = dict(base.metadata)
        metadata[PROVENANCE_KEY] = json.dumps(
            {
                "tool": f"sa3ckpt {__version__}",
                "semantics": semantics,
                "adapters": ledger.adapters,
            },
            sort_keys=True,
        )
        write_safetensors(output, tensors(), metadata, inputs=inputs, overwrite=force)
    return ledger
