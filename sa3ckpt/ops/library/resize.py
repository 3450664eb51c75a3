"""resize: re-rank one adapter, per target from the exact SVD of its low-rank update.

- lora: c·B·A is factored exactly (QR of both factors, SVD of the small core: `ops.lowrank`)
  and truncated to rank R: B' = U_R √S_R, A' = √S_R V_Rᵀ, alpha' = R (scale 1: c is folded
  into the factors, so the file's alpha/rank convention never changes the product).
- dora-rows / dora-cols / bora: the stored magnitudes are kept bit for bit (same dtype by
  default) and the direction update c·B·A is re-ranked as for lora. The normaliser is not
  kept: the merged weight is m·V'/‖V'‖ with V' = W0 + c'B'A', and truncating B·A changes
  ‖V'‖, so the adapted weight moves by more than the dropped energy of c·B·A alone. With
  `--base` the ledger reports per target, with the library's merge kernel (fp32), how much
  the adapted weight f(W0; 1) changed (relative to the weight and to the adapter's effect
  f(W0; 1) − W0) and the largest relative change of the normaliser's norms. dora-rows baked
  norms (row norms of V' at s = 1) are recomputed with `--base`, else dropped (they would
  be stale) and the ledger says so.
- -xs types: U·(c·M)·Vᵀ with the SVD c·M = P Σ Qᵀ becomes U'·M'·V'ᵀ with U' = U P_R,
  V' = V Q_R, M' = Σ_R, alpha' = R. U' and V' are rotated bases, no longer the base
  weight's singular vectors, so they are stored in the output (runtimes that read stored
  bases — sa3ckpt, sa3.cpp — use them; the official loader rebuilds bases from W0 and would
  not). U and V of the input come from the file, `--bases` or an SVD of `--base`.

`--rank R` above the adapter's rank is refused (nothing to do; exit 2), as is R above the
narrowest target's min(fan_out, fan_in). `--energy E` picks per target the smallest rank
keeping a fraction E of ‖c·B·A‖²; the file's one rank is the largest of those, and every
target keeps that many components. Per target the ledger gives the retained energy
Σ_{i≤R} σ_i²/Σ σ_i² (exact SVD) and the residual ‖ΔW − ΔW'‖/‖ΔW‖ in float64 from the
factors as written (so it includes the output dtype's rounding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.checkpoint import FP32_PARAMS, AdapterCheckpoint, save_checkpoint
from sa3ckpt.adapters.config import LoraConfig
from sa3ckpt.adapters.finite import find_nonfinite, refuse_nonfinite
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.adapters.kernels import NumpyAdapter, merge_f32
from sa3ckpt.adapters.types import AdapterType
from sa3ckpt.adapters.xs_bases import XsBases
from sa3ckpt.adapters.xs_sources import load_xs_bases
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.atomic import check_output_path
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.ops.library.lowrank import lowrank_svd, rank_for_energy

MAGNITUDE_PARAMS = ("magnitude", "magnitude_r", "magnitude_c")
STALE_CONFIG = ("baked_norms", "norm_base")


@dataclass
class ResizeTarget:
    """One re-ranked target and, with --base, what the re-ranking did to the adapted weight."""

    target: str
    fan: tuple[int, int]
    rank_needed: int | None = None
    retained_energy: float = 0.0  # Σ_{i≤R} σ_i² / Σ σ_i² of the exact SVD of c·ΔW
    residual: float = 0.0  # ‖ΔW − ΔW'‖ / ‖ΔW‖, from the factors as written (cast included)
    effect_change: float | None = None  # ‖W' − W‖ / ‖W − W0‖ (adapted weights at s = 1)
    weight_change: float | None = None  # ‖W' − W‖ / ‖W‖
    norm_change: float | None = None  # max_i |‖V'_new‖_i / ‖V'‖_i − 1| (DoRA/BoRA)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "fan": list(self.fan),
            "rank_needed": self.rank_needed,
            "retained_energy": self.retained_energy,
            "residual": self.residual,
            "effect_change": self.effect_change,
            "weight_change": self.weight_change,
            "norm_change": self.norm_change,
        }


@dataclass
class ResizeLedger:
    input: str
    output: str
    adapter_type: str
    old_rank: int
    old_alpha: float
    rank: int = 0
    energy: float | None = None
    base: str | None = None
    targets: list[ResizeTarget] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"{len(self.targets)} targets of a rank-{self.old_rank} {self.adapter_type} "
            f"re-ranked to {self.rank} (alpha {self.rank}, scale 1) -> {self.output}"
        ]
        out += self.notes
        if self.targets:
            worst = min(self.targets, key=lambda t: t.retained_energy)
            mean = float(np.mean([t.retained_energy for t in self.targets]))
            out.append(
                f"retained energy: mean {mean:.4%}, worst {worst.retained_energy:.4%} "
                f"({worst.target})"
            )
        for t in self.targets:
            line = f"  {t.target}: retained {t.retained_energy:.4%}, residual {t.residual:.3g}"
            if t.rank_needed is not None:
                line += f", needs rank {t.rank_needed}"
            if t.effect_change is not None:
                line += f"; adapted weight moved {t.effect_change:.3g} of the effect"
                line += f" ({t.weight_change:.3g} of the weight)"
            if t.norm_change is not None:
                line += f", norms up to {t.norm_change:.3g}"
            out.append(line)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "adapter_type": self.adapter_type,
            "old_rank": self.old_rank,
            "old_alpha": self.old_alpha,
            "rank": self.rank,
            "alpha": self.rank,
            "energy": self.energy,
            "base": self.base,
            "targets": [t.to_json() for t in self.targets],
            "notes": self.notes,
        }


@dataclass
class _Factored:
    """One target's update c·ΔW as an exact SVD in float64: left, singular values, right."""

    left: np.ndarray  # (fan_out, k): U for lora, U·P for -xs
    s: np.ndarray
    right: np.ndarray  # (k, fan_in): Vᵀ for lora, Qᵀ·Vᵀ for -xs
    params: dict[str, np.ndarray]  # the input's params, XS bases resolved (fp32)


def _check_args(rank: int | None, energy: float | None) -> None:
    if (rank is None) == (energy is None):
        raise UsageError("give exactly one of --rank R or --energy E")
    if rank is not None and (isinstance(rank, bool) or rank < 1):
        raise UsageError(f"--rank must be a positive integer, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise UsageError(f"--energy must be in (0, 1], got {energy}")


def _fan(
    params: dict[str, np.ndarray], base: BaseCheckpoint | None, target: str
) -> tuple[int, int] | None:
    if "lora_B" in params:
        return int(params["lora_B"].shape[0]), int(params["lora_A"].shape[1])
    if "U" in params and "V" in params:
        return int(params["U"].shape[0]), int(params["V"].shape[0])
    if base is not None:
        key = base.target_key(target)
        if key is not None:
            shape = base.tensors[key].shape
            fan = base.layout_of(shape, key).canonical_shape(shape)
            return int(fan[0]), int(fan[1])
    return None


def _base_2d(base: BaseCheckpoint, target: str, fan: tuple[int, int] | None) -> np.ndarray:
    """A target's base weight, canonical 2-D, as stored; exit 4 if absent or the wrong shape."""
    key = base.target_key(target)
    if key is None:
        raise IncompatibleError(f"{target} is not in the base {base.path}")
    stored = np.asarray(base.read(key))
    w0 = np.asarray(base.layout_of(stored.shape, key).to_canonical(stored))
    if fan is not None and tuple(w0.shape) != fan:
        raise IncompatibleError(
            f"{target}: the adapter is {fan} but {base.path} holds {tuple(w0.shape)}; wrong base?"
        )
    return w0


def _factor(
    ckpt: AdapterCheckpoint, target: str, w0: np.ndarray | None, bases: XsBases | None
) -> _Factored:
    """The exact SVD of one target's c·ΔW (c = alpha/rank folded in)."""
    kind, c = ckpt.kind, ckpt.config.scale
    if kind.xs and not ckpt.has_stored_bases(target):
        covered = bases is not None and bases.get(target) is not None
        if w0 is None and not covered:
            raise UsageError(
                f"{target}: {kind.name} stores no U/V; pass --base BASE or --bases FILE "
                "(the bases the adapter was trained with)"
            )
    try:
        params, _ = ckpt.resolved_params(target, base_2d=w0, bases=bases)
    except ValueError as exc:
        raise IncompatibleError(str(exc)) from None
    p = {k: v.astype(np.float64) for k, v in params.items()}
    if kind.xs:
        pm, s, qt = np.linalg.svd(c * p["M_xs"])
        return _Factored(p["U"] @ pm, s, qt @ p["V"].T, params)
    u, s, vt = lowrank_svd(c * p["lora_B"], p["lora_A"])
    return _Factored(u, s, vt, params)


def _written(array: np.ndarray, code: str) -> np.ndarray:
    return dtypes.to_float32(dtypes.cast(array, code)).astype(np.float64)


def _new_params(
    kind: AdapterType, f: _Factored, rank: int, stored: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The re-ranked params: factors at `rank` (alpha = rank), magnitudes as stored."""
    r = min(rank, len(f.s))
    out: dict[str, np.ndarray] = {}
    if kind.xs:
        m = np.zeros((rank, rank))
        m[np.arange(r), np.arange(r)] = f.s[:r]
        u = np.zeros((f.left.shape[0], rank))
        v = np.zeros((f.right.shape[1], rank))
        u[:, :r], v[:, :r] = f.left[:, :r], f.right[:r].T
        out |= {"M_xs": m, "U": u, "V": v}
    else:
        b = np.zeros((f.left.shape[0], rank))
        a = np.zeros((rank, f.right.shape[1]))
        root = np.sqrt(f.s[:r])
        b[:, :r], a[:r] = f.left[:, :r] * root, root[:, None] * f.right[:r]
        out |= {"lora_A": a, "lora_B": b}
    for name in MAGNITUDE_PARAMS:
        if name in stored:
            out[name] = stored[name]  # the stored array itself: bit-identical in the same dtype
    return out


def _factors_of(
    kind: AdapterType, params: dict[str, np.ndarray], code: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """(B, A) of the update as written (cast to `code` if given), float64, c = 1."""
    cast = (lambda a: _written(a, code)) if code else (lambda a: np.asarray(a, np.float64))
    if kind.xs:
        return cast(params["U"]) @ cast(params["M_xs"]), cast(params["V"]).T
    return cast(params["lora_B"]), cast(params["lora_A"])


def _default_dtype(ckpt: AdapterCheckpoint) -> str:
    """The input's factor dtype: keeping it keeps the magnitudes bit-identical."""
    for params in ckpt.tensors.values():
        for name, value in params.items():
            if name not in FP32_PARAMS:
                return dtypes.code_for(np.asarray(value).dtype)
    return "F16"


def resize(
    path: str,
    output: str,
    *,
    rank: int | None = None,
    energy: float | None = None,
    base_path: str | None = None,
    bases_path: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    force: bool = False,
) -> ResizeLedger:
    """Re-rank the adapter at `path` and write it atomically to `output`; return the ledger."""
    _check_args(rank, energy)
    inputs = [path, *([base_path] if base_path else []), *([bases_path] if bases_path else [])]
    check_output_path(output, inputs=inputs, overwrite=force)
    ckpt = load_adapter(path, allow_pickle=allow_pickle)
    refuse_nonfinite(path, find_nonfinite(ckpt.tensors), "resize")
    try:
        code = dtypes.code_from_name(dtype) if dtype else _default_dtype(ckpt)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    old = ckpt.config.rank
    if rank is not None and rank > old:
        raise UsageError(
            f"--rank {rank} is above the adapter's rank {old}: nothing to do (resize only "
            "lowers a rank; a higher one would add zero columns)"
        )
    bases = load_xs_bases(bases_path, allow_pickle=allow_pickle) if bases_path else None
    base = open_base(base_path) if base_path else None
    try:
        ledger = ResizeLedger(path, output, ckpt.adapter_type, old, ckpt.config.alpha)
        ledger.energy, ledger.base = energy, base_path
        fans = {t: _fan(ckpt.tensors[t], base, t) for t in ckpt.targets()}
        _check_fan_bound(rank, fans)
        w0s = {t: _base_2d(base, t, fans[t]) if base is not None else None for t in ckpt.targets()}
        factored = {t: _factor(ckpt, t, w0s[t], bases) for t in ckpt.targets()}
        needed = _needed_ranks(factored, energy) if energy is not None else {}
        out_rank = rank if rank is not None else _energy_rank(needed, ledger)
        tensors = _resized(ckpt, factored, w0s, out_rank, code, needed, ledger)
    finally:
        if base is not None:
            base.close()
    config = _output_config(ckpt, path, out_rank, ledger)
    save_checkpoint(
        AdapterCheckpoint(config, ckpt.adapter_type, tensors),
        output,
        dtype=code,
        inputs=tuple(inputs),
        overwrite=force,
    )
    ledger.rank = out_rank
    return ledger


def _check_fan_bound(rank: int | None, fans: dict[str, tuple[int, int] | None]) -> None:
    known = {t: min(f) for t, f in fans.items() if f is not None}
    if rank is None or not known:
        return
    narrow = min(known, key=known.__getitem__)
    if rank > known[narrow]:
        raise UsageError(
            f"--rank {rank} does not fit {narrow}: at most {known[narrow]} (min(fan_out, fan_in))"
        )


def _needed_ranks(factored: dict[str, _Factored], energy: float) -> dict[str, int]:
    """Per target, the smallest rank keeping `energy` of ‖c·ΔW‖² (exact: the SVD is)."""
    return {
        t: rank_for_energy(f.s, float(np.sum(f.s**2)), energy) or len(f.s)
        for t, f in factored.items()
    }


def _energy_rank(needed: dict[str, int], ledger: ResizeLedger) -> int:
    """The file's one rank under --energy: the largest any target needs."""
    widest = max(needed, key=needed.__getitem__)
    ledger.notes.append(
        f"one rank for all targets: {needed[widest]}, the largest needed (at {widest}); "
        "every target keeps that many components"
    )
    return needed[widest]


def _resized(
    ckpt: AdapterCheckpoint,
    factored: dict[str, _Factored],
    w0s: dict[str, np.ndarray | None],
    out_rank: int,
    code: str,
    needed: dict[str, int],
    ledger: ResizeLedger,
) -> dict[str, dict[str, np.ndarray]]:
    kind, c = ckpt.kind, ckpt.config.scale
    tensors: dict[str, dict[str, np.ndarray]] = {}
    baked_dropped = 0
    for target, f in factored.items():
        stored = ckpt.tensors[target]
        params = _new_params(kind, f, out_rank, stored)
        b_old, a_old = _factors_of(kind, f.params, None)
        b_old = b_old * c
        b_new, a_new = _factors_of(kind, params, code)
        d_old = b_old @ a_old
        total = float(np.sum(d_old * d_old))
        diff = d_old - b_new @ a_new
        fan = (int(d_old.shape[0]), int(d_old.shape[1]))
        result = ResizeTarget(
            target,
            fan,
            needed.get(target),
            float(np.sum(f.s[:out_rank] ** 2) / np.sum(f.s**2)) if total > 0 else 1.0,
            float(np.sqrt(np.sum(diff * diff) / total)) if total > 0 else 0.0,
        )
        w0 = w0s[target]
        if "baked_vnorm_row" in stored:
            if w0 is not None:
                v = dtypes.to_float32(w0).astype(np.float64) + b_new @ a_new
                params["baked_vnorm_row"] = np.sqrt(np.einsum("ij,ij->i", v, v)).astype(np.float32)
            else:
                baked_dropped += 1
        if w0 is not None:
            _adapted_change(kind, c, f.params, params, code, dtypes.to_float32(w0), result)
        ledger.targets.append(result)
        tensors[target] = params
    if kind.is_weight_decomposed:
        ledger.notes.append(
            "magnitudes kept as stored; the normaliser ‖W0 + c'B'A'‖ changes with the rank"
            + (
                " (per-target change of the adapted weight below)"
                if ledger.base
                else " (pass --base to measure how much the adapted weight moves)"
            )
        )
    if baked_dropped:
        ledger.notes.append(
            f"baked_vnorm_row dropped on {baked_dropped} targets: stale at the new rank "
            "(pass --base to recompute them)"
        )
    elif any("baked_vnorm_row" in p for p in tensors.values()):
        ledger.notes.append("baked_vnorm_row recomputed from the base at the new rank")
    if kind.xs:
        ledger.notes.append(
            "-xs: U' = U·P, V' = V·Q are rotated bases and are stored in the output (the "
            "official loader rebuilds bases from W0 and would not use them)"
        )
    return tensors


def _adapted_change(
    kind: AdapterType,
    c: float,
    old: dict[str, np.ndarray],
    new: dict[str, np.ndarray],
    code: str,
    w0: np.ndarray,
    result: ResizeTarget,
) -> None:
    """How far the adapted weight f(W0; 1) moved, with the library's fp32 merge kernel."""
    new32 = {k: dtypes.to_float32(dtypes.cast(np.asarray(v), code)) for k, v in new.items()}
    w_old = merge_f32(w0, [(NumpyAdapter(kind, c, old), 1.0)], "runtime").astype(np.float64)
    w_new = merge_f32(w0, [(NumpyAdapter(kind, 1.0, new32), 1.0)], "runtime").astype(np.float64)
    w0_64 = w0.astype(np.float64)
    moved = float(np.linalg.norm(w_new - w_old))
    effect = float(np.linalg.norm(w_old - w0_64))
    result.effect_change = moved / effect if effect > 0 else 0.0
    result.weight_change = moved / float(np.linalg.norm(w_old))
    if kind.norm is None:
        return
    axis = 0 if kind.norm == "cols" else 1
    v_old = w0_64 + NumpyAdapter(kind, c, old).low_rank(c).astype(np.float64)
    v_new = w0_64 + NumpyAdapter(kind, 1.0, new32).low_rank(1.0).astype(np.float64)
    n_old = np.linalg.norm(v_old, axis=axis)
    n_new = np.linalg.norm(v_new, axis=axis)
    result.norm_change = float(np.max(np.abs(n_new / np.maximum(n_old, 1e-30) - 1)))


def _output_config(
    ckpt: AdapterCheckpoint, path: str, rank: int, ledger: ResizeLedger
) -> LoraConfig:
    extra = {k: v for k, v in ckpt.config.extra.items() if k not in STALE_CONFIG}
    for key in STALE_CONFIG:
        if key in ckpt.config.extra and any("recomputed" in n for n in ledger.notes):
            extra[key] = ckpt.config.extra[key]
    extra["resized_from"] = {
        "file": os.path.basename(path),
        "rank": ckpt.config.rank,
        "alpha": ckpt.config.alpha,
        "energy": ledger.energy,
    }
    return LoraConfig(
        rank=rank,
        alpha=rank,
        adapter_type=ckpt.adapter_type,
        include=list(ckpt.config.include),
        exclude=list(ckpt.config.exclude),
        extra=extra,
    )
