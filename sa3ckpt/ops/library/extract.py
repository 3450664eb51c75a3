"""extract: an adapter from a full fine-tune (or ARC vs base), per target from W_ft − W_base.

Both checkpoints are read with the base-checkpoint reader (any naming and container merge
reads), each target's weight in its canonical 2-D view (Conv1d k>1 flattened in-major,
k-minor as `layout` does), and D = W_ft − W_base is formed in float64.

- lora: D ≈ B A from the truncated SVD of D (B = U_R √S_R, A = √S_R V_Rᵀ, alpha = R so the
  scale is 1). Exact SVD up to min(fan) `RANDOMIZED_ABOVE`, randomised above it (see
  `ops.lowrank` for how exact that is).
- lora-xs: U_R, V_R are the base weight's XS bases exactly as the library (and the official
  loader) rebuilds them (`adapters.xs_bases`: fp32 SVD of W_base, official sign rule), and
  M = U_Rᵀ D V_R, the best M for those bases. It captures only the part of D inside the
  base's leading singular subspaces, which the ledger states per target.

`--rank R` gives every target rank R. `--energy E` finds per target the smallest rank that
keeps a fraction E of ‖D‖²; an adapter file has one rank for all targets, so the file's rank
is the largest of those (capped at the narrowest target's min(fan_out, fan_in), which a
one-rank file cannot pass: targets that then fall short of E are named), and every target
keeps that many components (the file holds them anyway; each target retains >= E, and its
own needed rank is in the ledger). Targets whose ‖D‖/‖W_base‖ is below `--threshold` (or
whose D is exactly zero) are skipped and listed. The retained energy ‖D_R‖²/‖D‖² is
computed exactly in float64 from the factors before the cast to the output dtype (D_R is a
projection of D, so it is at most 1), the residual ‖D − D_R‖/‖D‖ from the factors as
written (so it includes the output dtype's rounding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint, save_checkpoint
from sa3ckpt.adapters.config import LoraConfig
from sa3ckpt.adapters.xs_bases import canonical_svd
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.atomic import check_output_path
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.names.modules import strip_dit_root
from sa3ckpt.ops.inspect import base_family
from sa3ckpt.ops.library.lowrank import (
    RANDOMIZED_ABOVE,
    balanced_factors,
    product_energy,
    residual_energy,
    svd_for_energy,
    top_svd,
)
from sa3ckpt.targets.families import FAMILIES, Family

TYPES = ("lora", "lora-xs")
DEFAULT_THRESHOLD = 1e-6
XS_METHOD = "XS bases: fp32 SVD of the base weight, official sign rule; M = U_Rᵀ D V_R"


@dataclass
class TargetResult:
    """One extracted target: what it changed, what rank it needed, what the file keeps."""

    target: str
    fan: tuple[int, int]
    relative_change: float  # ‖D‖ / ‖W_base‖
    method: str  # "exact" | "randomised" SVD of D, or "xs-projection"
    rank_needed: int | None = None  # --energy: the smallest rank reaching E here
    retained_energy: float = 0.0  # ‖D_R‖² / ‖D‖², float64 factors (before the output cast)
    residual: float = 0.0  # ‖D − D_R‖ / ‖D‖, from the factors as written (cast included)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "fan": list(self.fan),
            "relative_change": self.relative_change,
            "method": self.method,
            "rank_needed": self.rank_needed,
            "retained_energy": self.retained_energy,
            "residual": self.residual,
        }


@dataclass
class ExtractLedger:
    base: str
    finetuned: str
    output: str
    adapter_type: str
    family: str
    rank: int = 0
    energy: float | None = None
    threshold: float = DEFAULT_THRESHOLD
    targets: list[TargetResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    short_of_energy: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        how = f"--energy {self.energy}" if self.energy is not None else f"--rank {self.rank}"
        out = [
            f"{len(self.targets)} targets extracted ({self.family}, {how}) as a rank-{self.rank} "
            f"{self.adapter_type} -> {self.output}",
            f"{len(self.skipped)} targets skipped (‖D‖/‖W_base‖ < {self.threshold:g} or D = 0)",
        ]
        out += self.notes
        if self.targets:
            kept = [t.retained_energy for t in self.targets]
            worst = min(self.targets, key=lambda t: t.retained_energy)
            out.append(
                f"retained energy: mean {float(np.mean(kept)):.4%}, worst "
                f"{worst.retained_energy:.4%} ({worst.target})"
            )
        for t in self.targets:
            need = f", needs rank {t.rank_needed}" if t.rank_needed is not None else ""
            out.append(
                f"  {t.target}: retained {t.retained_energy:.4%}, residual {t.residual:.3g}, "
                f"‖D‖/‖W‖ {t.relative_change:.3g} ({t.method}{need})"
            )
        out += [f"  skipped {t}: {why}" for t, why in self.skipped]
        out += [
            f"  below --energy {self.energy} at rank {self.rank}: {t}" for t in self.short_of_energy
        ]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "finetuned": self.finetuned,
            "output": self.output,
            "adapter_type": self.adapter_type,
            "family": self.family,
            "rank": self.rank,
            "alpha": self.rank,
            "energy": self.energy,
            "threshold": self.threshold,
            "targets": [t.to_json() for t in self.targets],
            "skipped": [{"target": t, "reason": r} for t, r in self.skipped],
            "short_of_energy": self.short_of_energy,
            "notes": self.notes,
        }


def _check_args(
    rank: int | None, energy: float | None, adapter_type: str, threshold: float
) -> None:
    if (rank is None) == (energy is None):
        raise UsageError("give exactly one of --rank R or --energy E")
    if rank is not None and (isinstance(rank, bool) or rank < 1):
        raise UsageError(f"--rank must be a positive integer, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise UsageError(f"--energy must be in (0, 1], got {energy}")
    if adapter_type not in TYPES:
        raise UsageError(f"--type {adapter_type!r}: extract writes {' or '.join(TYPES)}")
    if not threshold >= 0:
        raise UsageError(f"--threshold must be >= 0, got {threshold}")


def _family(base: BaseCheckpoint, finetuned: BaseCheckpoint) -> Family:
    """The family both checkpoints belong to, or exit 4 naming what differs."""
    names = []
    for ckpt in (base, finetuned):
        found = base_family(ckpt)
        if found.family is None:
            why = f"fits {', '.join(found.fits)}" if found.fits else "fits no known family"
            raise IncompatibleError(f"{ckpt.path}: model family undetermined ({why})")
        names.append(found.family)
    if names[0] != names[1]:
        raise IncompatibleError(
            f"{finetuned.path} is a {names[1]} checkpoint but {base.path} is {names[0]}: "
            "a fine-tune and its base must be the same model"
        )
    return FAMILIES[names[0]]


def _canonical(ckpt: BaseCheckpoint, key: str) -> np.ndarray:
    """A stored weight in its canonical 2-D view, dtype as stored."""
    stored = np.asarray(ckpt.read(key))
    return np.asarray(ckpt.layout_of(stored.shape, key).to_canonical(stored))


def _pairs(
    base: BaseCheckpoint, finetuned: BaseCheckpoint, fam: Family
) -> dict[str, tuple[str, str]]:
    """target -> (base key, fine-tune key) for the family's targets; exit 4 on any mismatch."""
    out: dict[str, tuple[str, str]] = {}
    for target in fam.targets:
        keys = (base.target_key(target.name), finetuned.target_key(target.name))
        if keys == (None, None):
            continue  # neither has it (e.g. a DiT-only checkpoint without the conditioner)
        for key, ckpt in zip(keys, (base, finetuned), strict=True):
            if key is None:
                raise IncompatibleError(
                    f"{ckpt.path} has no weight for {target.name}; the other does"
                )
        shapes = []
        for key, ckpt in zip(keys, (base, finetuned), strict=True):
            assert key is not None
            shape = ckpt.tensors[key].shape
            shapes.append(tuple(ckpt.layout_of(shape, key).canonical_shape(shape)))
        if shapes[0] != shapes[1]:
            raise IncompatibleError(
                f"{target.name}: {shapes[1]} in {finetuned.path} vs {shapes[0]} in {base.path}"
            )
        out[target.name] = (str(keys[0]), str(keys[1]))
    if not out:
        raise IncompatibleError(f"no {fam.name} target weights in {base.path}")
    return out


def _xs_projection(w0: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, V, P = UᵀDV) with the base's full XS bases (float32 U, V; P in float64)."""
    u, _, vh = canonical_svd(w0)
    v = vh.T
    return u, v, u.astype(np.float64).T @ d @ v.astype(np.float64)


def _xs_rank_for_energy(p: np.ndarray, total: float, energy: float) -> int | None:
    """Smallest R whose leading R×R block of P = UᵀDV holds energy·‖D‖² (None: none does)."""
    sq = p * p
    block = np.diagonal(np.cumsum(np.cumsum(sq, axis=0), axis=1))
    reached = np.nonzero(block >= energy * total * (1 - 1e-12))[0]
    return int(reached[0]) + 1 if reached.size else None


@dataclass
class _Work:
    """What pass 1 learnt of a target: enough to re-derive its factors at the final rank."""

    keys: tuple[str, str]
    result: TargetResult


def extract(
    base_path: str,
    finetuned_path: str,
    output: str,
    *,
    rank: int | None = None,
    energy: float | None = None,
    adapter_type: str = "lora",
    threshold: float = DEFAULT_THRESHOLD,
    dtype: str = "fp16",
    store_bases: bool = False,
    force: bool = False,
    exact_up_to: int = RANDOMIZED_ABOVE,
) -> ExtractLedger:
    """Extract an adapter of `adapter_type` from `finetuned_path` − `base_path`; write `output`.

    exact_up_to: targets whose min(fan) is at most this get an exact SVD, larger ones a
    randomised one (tests lower it to exercise the randomised path on tiny layers).
    """
    _check_args(rank, energy, adapter_type, threshold)
    try:
        code = dtypes.code_from_name(dtype)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_output_path(output, inputs=[base_path, finetuned_path], overwrite=force)
    with open_base(base_path) as base, open_base(finetuned_path) as finetuned:
        fam = _family(base, finetuned)
        pairs = _pairs(base, finetuned, fam)
        ledger = ExtractLedger(base_path, finetuned_path, output, adapter_type, fam.name)
        ledger.energy, ledger.threshold = energy, threshold
        narrow = min(pairs, key=lambda t: min(fam.by_name[t].shape))
        bound = min(fam.by_name[narrow].shape)
        if rank is not None and rank > bound:
            raise UsageError(
                f"--rank {rank} does not fit {narrow}: at most {bound} (min(fan_out, fan_in)); "
                "the adapter has one rank for every target"
            )
        work = _first_pass(
            base, finetuned, pairs, adapter_type, rank, energy, threshold, ledger, exact_up_to
        )
        if not work:
            raise IncompatibleError(
                f"nothing to extract: every target of {finetuned_path} is within --threshold "
                f"{threshold:g} of {base_path}"
            )
        out_rank = _output_rank(work, rank, energy, bound, narrow, ledger)
        tensors = _factor_all(
            base, finetuned, work, adapter_type, out_rank, code, store_bases, exact_up_to
        )
        ledger.rank = out_rank
        ledger.targets = [w.result for w in work.values()]
    _check_finite(output, tensors, code)
    included = list(work)
    extra: dict[str, Any] = {
        "base_model": fam.base_model_names[0],
        "extracted_from": {
            "base": os.path.basename(base_path),
            "finetuned": os.path.basename(finetuned_path),
            "method": XS_METHOD if adapter_type == "lora-xs" else "truncated SVD of W_ft − W_base",
            "energy": energy,
            "threshold": threshold,
        },
    }
    config = LoraConfig(
        rank=out_rank,
        alpha=out_rank,
        adapter_type=adapter_type,
        include=[] if len(included) == len(fam.targets) else [strip_dit_root(t) for t in included],
        exclude=[],
        extra=extra,
    )
    save_checkpoint(
        AdapterCheckpoint(config, adapter_type, tensors),
        output,
        dtype=code,
        inputs=(base_path, finetuned_path),
        overwrite=force,
    )
    if adapter_type == "lora-xs":
        ledger.notes.append(
            "lora-xs: M = U_Rᵀ D V_R with the base's XS bases; retained energy is the part of D "
            "inside the base's leading singular subspaces"
            + (
                "; U/V stored in the file"
                if store_bases
                else "; U/V not stored (merge rebuilds them from the base)"
            )
        )
    return ledger


def _difference(
    base: BaseCheckpoint, finetuned: BaseCheckpoint, keys: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """(W_base as stored, D = W_ft − W_base in float64), both canonical 2-D."""
    w0 = _canonical(base, keys[0])
    w1 = _canonical(finetuned, keys[1])
    d = dtypes.to_float32(w1).astype(np.float64) - dtypes.to_float32(w0).astype(np.float64)
    return w0, d


def _first_pass(
    base: BaseCheckpoint,
    finetuned: BaseCheckpoint,
    pairs: dict[str, tuple[str, str]],
    adapter_type: str,
    rank: int | None,
    energy: float | None,
    threshold: float,
    ledger: ExtractLedger,
    exact_up_to: int,
) -> dict[str, _Work]:
    """Which targets changed (the rest go to `ledger.skipped`) and, for --energy, their ranks."""
    work: dict[str, _Work] = {}
    for target, keys in pairs.items():
        w0, d = _difference(base, finetuned, keys)
        d_norm = float(np.linalg.norm(d))
        w_norm = float(np.linalg.norm(dtypes.to_float32(w0).astype(np.float64)))
        ratio = d_norm / w_norm if w_norm > 0 else (float("inf") if d_norm > 0 else 0.0)
        if d_norm == 0 or ratio < threshold:
            ledger.skipped.append((target, f"‖D‖/‖W_base‖ = {ratio:.3g}"))
            continue
        fan = (int(d.shape[0]), int(d.shape[1]))
        method = "xs-projection"
        needed = None
        if adapter_type == "lora-xs":
            if energy is not None:
                _, _, p = _xs_projection(w0, d)
                needed = _xs_rank_for_energy(p, d_norm**2, energy) or min(fan)
        elif energy is not None:
            found, needed = svd_for_energy(d, energy, exact_up_to=exact_up_to)
            method = found.method
        else:
            method = "exact" if min(fan) <= exact_up_to else "randomised"
        work[target] = _Work(keys, TargetResult(target, fan, ratio, method, needed))
    return work


def _output_rank(
    work: dict[str, _Work],
    rank: int | None,
    energy: float | None,
    bound: int,
    narrow: str,
    ledger: ExtractLedger,
) -> int:
    if rank is not None:
        return rank
    needed = {t: w.result.rank_needed or 1 for t, w in work.items()}
    widest = max(needed, key=needed.__getitem__)
    out = min(needed[widest], bound)
    ledger.notes.append(
        f"one rank for all targets: {out}, the largest needed ({needed[widest]} at {widest})"
        + (f", capped at {bound} (min(fan) of {narrow})" if needed[widest] > bound else "")
        + "; every target keeps that many components"
    )
    ledger.short_of_energy = [t for t, r in needed.items() if r > out]
    return out


def _factor_all(
    base: BaseCheckpoint,
    finetuned: BaseCheckpoint,
    work: dict[str, _Work],
    adapter_type: str,
    out_rank: int,
    code: str,
    store_bases: bool,
    exact_up_to: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Every kept target's factors at the file's rank, with retained energy and residual."""
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for target, item in work.items():
        w0, d = _difference(base, finetuned, item.keys)
        total = float(np.sum(d * d))
        if adapter_type == "lora-xs":
            u, v, p = _xs_projection(w0, d)
            u_r, v_r = np.ascontiguousarray(u[:, :out_rank]), np.ascontiguousarray(v[:, :out_rank])
            m = p[:out_rank, :out_rank]
            params = {"M_xs": m}
            if store_bases:
                params |= {"U": u_r, "V": v_r}
            b, a = u_r.astype(np.float64) @ m, v_r.astype(np.float64).T
            written = (u_r.astype(np.float64) @ _written(m, code), a)
        else:
            found = top_svd(d, out_rank, exact_up_to=exact_up_to)
            b, a = balanced_factors(found, out_rank)
            params = {"lora_A": a, "lora_B": b}
            written = (_written(b, code), _written(a, code))
        # retained: of the float64 factors (a projection of D, so <= 1); residual: of the
        # factors as written, so it includes the rounding of the output dtype
        item.result.retained_energy = product_energy(b, a) / total
        item.result.residual = float(np.sqrt(residual_energy(d, *written) / total))
        tensors[target] = params
    return tensors


def _written(array: np.ndarray, code: str) -> np.ndarray:
    """The values as the file will hold them (cast to the output dtype), in float64."""
    return dtypes.to_float32(dtypes.cast(array, code)).astype(np.float64)


def _check_finite(output: str, tensors: dict[str, dict[str, np.ndarray]], code: str) -> None:
    """Factors of a huge difference can overflow fp16 (65504): refuse before writing."""
    for target, params in tensors.items():
        for name, value in params.items():
            if not np.isfinite(dtypes.to_float32(dtypes.cast(value, code))).all():
                raise IncompatibleError(
                    f"{output}: {target}.{name} is not finite in {code} (values beyond its "
                    "range); nothing was written (try --dtype fp32)"
                )
