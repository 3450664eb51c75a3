"""How unique XS bases are: may another SVD of the same W0 give the trainer other bases?

The official trainer and sa3ckpt both take the canonical-sign SVD of the same fp32 W0, but
with different LAPACK builds (torch's vs numpy's), so each result is the exact SVD of a
slightly different matrix, W0 + E. Singular vectors are stable under E only when their
singular values are well separated; when σ_j is close to a neighbour the j-th vector can
rotate toward it, and when σ_r ≈ σ_{r+1} the rank-r subspace itself is not determined, so
the trainer's U_r and ours may span different spaces. The adapter's M_xs was learnt in the
trainer's coordinates, so a different basis is a different merged weight.

The bound used here (documented in docs/library/adapters.md, "XS bases: uniqueness"):

* perturbation: a backward-stable SVD in fp32 is exact for W0 + E with ‖E‖₂ of the order of
  u·‖W0‖_F (u = 2⁻²⁴, the fp32 unit roundoff); ‖W0‖_F <= √k·σ_1 (k = min(m, n)), so we take
  e = u·√k·σ_1, which needs only σ_1 (bases files store σ_1..σ_{r+1}, not all σ);
* per column j <= r, with gap_j = min(σ_{j-1} − σ_j, σ_j − σ_{j+1}) (neighbours that
  exist): Wedin's sin θ theorem (with Weyl's bound on how far σ moves) gives
  sin θ_j <= √2·e / (gap_j − e), and ‖u_j − u_j'‖ <= √2·sin θ_j for the sign-aligned pair,
  so δ_j = min(2, 2e / (gap_j − e)); δ_j = 2 when gap_j <= e (the vector is not determined);
* the sign rule can flip a column when its largest entry and the largest entry of opposite
  sign are within 2·δ_j of each other (each entry moves by at most δ_j): then δ_j = 2;
* merged weight: ΔW = c·s·U M Vᵀ, so ‖ΔW − ΔW'‖_F <= |c·s|·‖M‖₂·(‖U − U'‖_F + ‖V − V'‖_F)
  <= 2·|c·s|·‖M‖₂·√(Σ_j δ_j²), and relative to ‖ΔW‖_F = |c·s|·‖M‖_F at most 2·√(Σ δ_j²).
  For DoRA/BoRA-XS the same bound holds for the direction V' before normalisation.

A target is reported when max_j δ_j exceeds `FLAG_COLUMN_BOUND`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FP32_UNIT_ROUNDOFF = 2.0**-24
FLAG_COLUMN_BOUND = 1e-3
"""Report a target when some basis vector may differ from the trainer's by more than this
(‖u_j − u_j'‖, a unit vector's length being 1): beyond fp32-level agreement."""


@dataclass(frozen=True)
class Uniqueness:
    """The uniqueness of one target's rank-r bases (see the module docstring for the bound)."""

    target: str
    rank: int
    subspace_gap: float | None
    """(σ_r − σ_{r+1}) / σ_r; None when rank == min(m, n) (the subspace is everything)."""
    column_bounds: tuple[float, ...]
    """δ_j for j = 1..r: bound on ‖u_j − u_j'‖ (and ‖v_j − v_j'‖), 0..2."""
    sign_fragile: tuple[int, ...]
    """1-based columns whose sign pivot could flip under the perturbation."""

    @property
    def worst_column(self) -> int:
        return 1 + int(np.argmax(self.column_bounds))

    @property
    def column_bound(self) -> float:
        return max(self.column_bounds)

    @property
    def frobenius_bound(self) -> float:
        """Bound on ‖U − U'‖_F (and ‖V − V'‖_F): √(Σ δ_j²)."""
        return math.sqrt(sum(d * d for d in self.column_bounds))

    @property
    def flagged(self) -> bool:
        return self.column_bound > FLAG_COLUMN_BOUND

    @property
    def relative_effect_bound(self) -> float:
        """Bound on ‖ΔW − ΔW'‖_F / ‖ΔW‖_F, whatever M is."""
        return 2.0 * self.frobenius_bound

    def effect_bound(self, m_xs: np.ndarray, scale_strength: float) -> float:
        """Bound on ‖ΔW − ΔW'‖_F for this adapter's M_xs at c·s = ``scale_strength``."""
        spectral = float(np.linalg.norm(np.asarray(m_xs, dtype=np.float64), 2))
        return 2.0 * abs(scale_strength) * spectral * self.frobenius_bound

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "rank": self.rank,
            "subspace_gap": self.subspace_gap,
            "column_bound": self.column_bound,
            "worst_column": self.worst_column,
            "frobenius_bound": self.frobenius_bound,
            "relative_effect_bound": self.relative_effect_bound,
            "sign_fragile_columns": list(self.sign_fragile),
        }

    def line(self) -> str:
        gap = "n/a" if self.subspace_gap is None else f"{self.subspace_gap:.2e}"
        fragile = f", sign pivot fragile in columns {list(self.sign_fragile)}" * bool(
            self.sign_fragile
        )
        return (
            f"{self.target} (rank {self.rank}): (σ_r−σ_r+1)/σ_r = {gap}, basis vector "
            f"{self.worst_column} may differ by up to {self.column_bound:.2e}, merged ΔW by up "
            f"to {self.relative_effect_bound:.1%} of ‖ΔW‖{fragile}"
        )


def _pivot_margins(u: np.ndarray) -> np.ndarray:
    """Per column: |largest entry| − |largest entry of the opposite sign| (the flip margin)."""
    pivot = np.argmax(np.abs(u), axis=0)
    lead = u[pivot, np.arange(u.shape[1])]
    positive = lead >= 0
    opposite = np.where(positive[None, :], np.maximum(-u, 0.0), np.maximum(u, 0.0))
    return np.abs(lead) - opposite.max(axis=0)


def assess(
    target: str,
    singular_values: Sequence[float] | np.ndarray,
    rank: int,
    shape: tuple[int, int],
    u: np.ndarray | None = None,
) -> Uniqueness:
    """The uniqueness of rank-``rank`` bases from σ_1..σ_{r+1} (σ_r only at full rank).

    ``u`` (fan_out, >= rank), when given, adds the sign-pivot check. Raises ValueError when
    fewer singular values are given than the rank needs.
    """
    k = min(shape)
    sigma = np.asarray(singular_values, dtype=np.float64)
    need = rank + 1 if rank < k else rank
    if sigma.size < need:
        raise ValueError(f"{target}: need {need} singular values for rank {rank}, got {sigma.size}")
    sigma = sigma[:need]
    e = FP32_UNIT_ROUNDOFF * math.sqrt(k) * float(sigma[0])
    bounds: list[float] = []
    for j in range(rank):
        gaps = []
        if j > 0:
            gaps.append(sigma[j - 1] - sigma[j])
        if j + 1 < sigma.size:
            gaps.append(sigma[j] - sigma[j + 1])
        gap = min(gaps) if gaps else math.inf
        bounds.append(2.0 if gap <= e else min(2.0, 2.0 * e / (gap - e)))
    fragile: list[int] = []
    if u is not None:
        margins = _pivot_margins(np.asarray(u, dtype=np.float64)[:, :rank])
        for j, margin in enumerate(margins):
            if margin <= 2.0 * bounds[j]:
                fragile.append(j + 1)
                bounds[j] = 2.0
    subspace_gap = None
    if rank < k:
        top = float(sigma[rank - 1])
        subspace_gap = (top - float(sigma[rank])) / top if top > 0 else 0.0
    return Uniqueness(target, rank, subspace_gap, tuple(bounds), tuple(fragile))


WORST_SHOWN = 5
"""Flagged targets listed on the terminal (the worst first); --json keeps every one."""


def summary_lines(flagged: Sequence[Mapping[str, Any]], total: int, prefix: str = "") -> list[str]:
    """A terminal summary of flagged targets (`Uniqueness.to_json()` records with a "line"):
    how many of `total`, the worst few by their bound on the merged ΔW, and what it means
    for a merge. Random or zero-initialised layers have near-degenerate spectra, so on a
    real base nearly every target is flagged: one line each would bury everything else."""
    if not flagged:
        return []
    worst = sorted(
        flagged,
        key=lambda r: (-float(r.get("relative_effect_bound", 0.0)), -float(r["column_bound"])),
    )[:WORST_SHOWN]
    top = float(worst[0].get("relative_effect_bound", 0.0))
    out = [
        f"{prefix}{len(flagged)} of {total} targets have close singular values, so their XS "
        f"bases may not be unique; the worst {len(worst)}:"
    ]
    out += [f"{prefix}  {r['line']}" for r in worst]
    out.append(
        f"{prefix}  for a merge: another SVD of the same W0 (the trainer's LAPACK) may pick "
        f"other U/V there, so an -xs adapter's merged ΔW may differ from the trainer's by up "
        f"to {top:.0%} of ‖ΔW‖ on the worst target; bases stored with the adapter (or a bases "
        "file made from the trainer's own W0) avoid it; every target is in --json"
    )
    return out


__all__ = [
    "FLAG_COLUMN_BOUND",
    "FP32_UNIT_ROUNDOFF",
    "WORST_SHOWN",
    "Uniqueness",
    "assess",
    "summary_lines",
]
