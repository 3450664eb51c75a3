"""`combine --method mean`: the weighted parameter average of checkpoints of one run (a soup).

Every stored tensor is averaged with weights w_i / Σw, accumulated in float64 and written
in the inputs' dtype (or `--dtype`). The mean of A and of B is not the mean of the updates
B·A: a soup averages parameters, which is meaningful only for checkpoints that share one
run (one initialisation, one base), so the inputs are refused (exit 4, one line naming the
files and the cause) unless they can be checkpoints of one run:

- the same adapter type (legacy aliases resolved), rank, alpha and target set, and the same
  stored parameters with the same shapes at every target;
- nothing they store or declare about the base disagrees. Stored: XS bases U/V are the SVD
  of the base weight, so they must be bit-identical in every file that stores them, and
  stored by all or by none (a file without them takes them from the base at merge time,
  which a file with them cannot be checked against). Declared: `base_model`, `norm_base`
  and `target` in lora_config must be equal where two files both declare them.
- NOT compared: magnitudes and `baked_vnorm_row`. A magnitude starts as the norms of W0 and
  is trained; `baked_vnorm_row` is the norms of W0 + c·ΔW_i of each file's own ΔW_i. Both
  differ between checkpoints of one run by design, and no threshold on them separates
  training drift from another base without reading that base. Because the mean's ΔW is new,
  the inputs' baked norms do not describe it: they are dropped (with `baked_norms` and
  `norm_base` in the config), and `sa3ckpt convert OUT --to sa3 --base BASE -o FILE`
  recomputes them.

The output keeps every lora_config field and metadata entry that is equal in all inputs and
drops (and names, in the ledger) those that differ, e.g. `step` and `epoch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.checkpoint import CONFIG_KEY, FP32_PARAMS, AdapterCheckpoint
from sa3ckpt.adapters.config import LoraConfig
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.names.modules import strip_dit_root

STRUCTURED = ("rank", "alpha", "adapter_type", "include", "exclude")
BASE_DECLARATIONS = ("base_model", "norm_base", "target")  # lora_config fields about the base
XS_BASES = ("U", "V")
BAKED = "baked_vnorm_row"
BAKED_CONFIG = ("baked_norms", "norm_base")  # meaningless once the baked norms are dropped


@dataclass
class Soup:
    """The averaged tensors, the output config and what the ledger should say about them."""

    tensors: dict[str, dict[str, np.ndarray]]
    config: LoraConfig
    metadata: dict[str, str]
    dtype: str  # the output dtype code
    notes: list[str] = field(default_factory=list)
    kept_config: list[str] = field(default_factory=list)
    dropped_config: dict[str, list[Any]] = field(default_factory=dict)


def _refuse(paths: Sequence[str], i: int, cause: str) -> IncompatibleError:
    return IncompatibleError(
        f"{paths[0]} and {paths[i]} are not checkpoints of one run: {cause}; "
        "--method mean averages checkpoints of one run (use cat or svd for different adapters)"
    )


def check_one_run(ckpts: Sequence[AdapterCheckpoint], paths: Sequence[str]) -> None:
    """Raise IncompatibleError naming the first thing that shows the files are not one run."""
    first = ckpts[0]
    for i, ckpt in enumerate(ckpts[1:], 1):
        problem = _run_difference(first, ckpt) or _base_difference(first, ckpt)
        if problem is not None:
            raise _refuse(paths, i, problem)


def _run_difference(a: AdapterCheckpoint, b: AdapterCheckpoint) -> str | None:
    """Type, rank, alpha, targets, stored parameters and shapes (the layout of one run)."""
    for what, x, y in (
        ("adapter types", a.kind.name, b.kind.name),
        ("ranks", a.config.rank, b.config.rank),
        ("alphas", a.config.alpha, b.config.alpha),
    ):
        if x != y:
            return f"different {what} ({x} vs {y})"
    if set(a.tensors) != set(b.tensors):
        odd = sorted(set(a.tensors) ^ set(b.tensors))
        side = "the first" if odd[0] in a.tensors else "the second"
        return f"different target sets ({len(odd)} in one file only, e.g. {odd[0]} in {side})"
    for target, params in a.tensors.items():
        other = b.tensors[target]
        if set(params) != set(other):
            return (
                f"{target} stores {', '.join(sorted(params))} in one and "
                f"{', '.join(sorted(other))} in the other"
            )
        for name, value in params.items():
            if tuple(value.shape) != tuple(other[name].shape):
                return (
                    f"{target}.{name} has shape {tuple(value.shape)} vs {tuple(other[name].shape)}"
                )
    return None


def _base_difference(a: AdapterCheckpoint, b: AdapterCheckpoint) -> str | None:
    """What the files store or declare about their base, where it disagrees."""
    for name in BASE_DECLARATIONS:
        x, y = a.config.extra.get(name), b.config.extra.get(name)
        if x is not None and y is not None and x != y:
            return f"lora_config {name} {x!r} vs {y!r} (another base)"
    for target, params in a.tensors.items():
        for name in XS_BASES:
            if name not in params:
                continue
            x = dtypes.to_float32(np.asarray(params[name]))
            y = dtypes.to_float32(np.asarray(b.tensors[target][name]))
            if not np.array_equal(x, y):
                worst = float(np.max(np.abs(x.astype(np.float64) - y)))
                return (
                    f"{target}: stored XS base {name} differs (max |diff| {worst:.3g}); U/V "
                    "are the SVD of the base weight, so these files were made on different "
                    "bases (or base dtypes)"
                )
    return None


def _output_dtype(ckpts: Sequence[AdapterCheckpoint], requested: str | None) -> tuple[str, str]:
    """(dtype code, ledger note): --dtype, else the inputs' one floating dtype, else F32."""
    codes = sorted(
        {
            dtypes.code_for(np.asarray(v).dtype)
            for c in ckpts
            for params in c.tensors.values()
            for name, v in params.items()
            if name not in FP32_PARAMS
        }
    )
    if requested is not None:
        return requested, f"written as {requested} (--dtype)"
    if len(codes) == 1:
        return codes[0], f"written as {codes[0]}, the inputs' dtype"
    return "F32", f"written as F32: the inputs mix {', '.join(codes)}"


def _shared_fields(
    docs: Sequence[dict[str, Any]], skip: Sequence[str]
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(fields equal in every doc, {field: the values} for those that differ or are missing)."""
    keys = list(dict.fromkeys(k for d in docs for k in d if k not in skip))
    kept, dropped = {}, {}
    missing = object()
    for key in keys:
        values = [d.get(key, missing) for d in docs]
        if all(v is not missing and v == values[0] for v in values):
            kept[key] = values[0]
        else:
            dropped[key] = [None if v is missing else v for v in values]
    return kept, dropped


def mean_soup(
    ckpts: Sequence[AdapterCheckpoint],
    weights: Sequence[float],
    paths: Sequence[str],
    combined_from: list[dict[str, Any]],
    dtype: str | None,
) -> Soup:
    """The weighted mean of checkpoints of one run (refused unless they are; see the module)."""
    bad = [(p, w) for p, w in zip(paths, weights, strict=True) if not w > 0]
    if bad:
        raise UsageError(
            f"{bad[0][0]}: weight {bad[0][1]:g}; --method mean takes positive weights "
            "(each checkpoint's share w / Σw)"
        )
    check_one_run(ckpts, paths)
    total = float(np.sum(np.asarray(weights, np.float64)))
    shares = [w / total for w in weights]
    code, dtype_note = _output_dtype(ckpts, dtype)
    first = ckpts[0]
    tensors: dict[str, dict[str, np.ndarray]] = {}
    baked = 0
    for target, params in first.tensors.items():
        out: dict[str, np.ndarray] = {}
        for name, value in params.items():
            if name == BAKED:
                baked += 1
                continue
            if name in XS_BASES:  # identical in every file (checked): copied, not averaged
                out[name] = dtypes.to_float32(np.asarray(value)).astype(np.float64)
                continue
            acc = np.zeros(value.shape, np.float64)
            for ckpt, weight in zip(ckpts, weights, strict=True):
                stored = np.asarray(ckpt.tensors[target][name])
                acc += float(weight) * dtypes.to_float32(stored).astype(np.float64)
            # One division at the end: Σ w_i x_i is exact for fp16 inputs and small integer
            # weights, so the mean is correctly rounded (a tie stays a tie for the cast).
            out[name] = acc / total
        tensors[target] = out
    config_docs = [c.config.to_dict() for c in ckpts]
    kept, dropped = _shared_fields(config_docs, STRUCTURED)
    notes = [
        f"mean of {len(ckpts)} checkpoints of one run, weights "
        + ", ".join(f"{s:.6g}" for s in shares)
        + f" (w / Σw, accumulated in float64); {dtype_note}"
    ]
    if baked:
        for name in BAKED_CONFIG:
            if name in kept:
                dropped[name] = [d.get(name) for d in config_docs]
                del kept[name]
        notes.append(
            f"baked_vnorm_row dropped at {baked} targets (norms of W0 + c·ΔW of each input, "
            "not of the mean); recompute: sa3ckpt convert OUT --to sa3 --base BASE -o FILE"
        )
    if dropped:
        notes.append(
            "lora_config fields that differ between the inputs, dropped: " + ", ".join(dropped)
        )
    kept["combined_from"] = combined_from
    kept["combine_method"] = "mean"
    include, exclude = _selection(ckpts)
    config = LoraConfig(
        first.config.rank, first.config.alpha, first.kind.name, include, exclude, kept
    )
    metadata, dropped_meta = _shared_fields([c.metadata for c in ckpts], (CONFIG_KEY,))
    if dropped_meta:
        notes.append(
            "metadata entries that differ between the inputs, dropped: " + ", ".join(dropped_meta)
        )
    return Soup(
        tensors,
        config,
        {k: str(v) for k, v in metadata.items()},
        code,
        notes,
        sorted(k for k in kept if k not in ("combined_from", "combine_method")),
        dropped,
    )


def _selection(ckpts: Sequence[AdapterCheckpoint]) -> tuple[list[str], list[str]]:
    """The common include/exclude, else the targets by name (the target sets are equal)."""
    first = ckpts[0].config
    if all(c.config.include == first.include and c.config.exclude == first.exclude for c in ckpts):
        return list(first.include), list(first.exclude)
    return [strip_dit_root(t) for t in ckpts[0].tensors], []
