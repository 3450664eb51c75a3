"""Low-rank helpers shared by extract and resize: truncated SVDs, energies, ranks for energies.

combine's randomised SVD and exact low-rank SVD are reused as they are (imported, not
copied), so `combine --method svd`, `extract` and `resize` factor with the same code.

How exact the randomised path is: `randomized_svd` (Halko et al.; here a Gaussian sketch
of width 2R, `oversample_for`, and 4 QR-stabilised power iterations) returns Q·T_R, the
rank-R truncation of QᵀD lifted back by the orthonormal Q. That is an orthogonal projection
of D, so ‖D_R‖² = Σ_{i≤R} s_i² and ‖D − D_R‖² = ‖D‖² − ‖D_R‖² hold exactly; what the
sketch can lose is only how close Σ_{i≤R} s_i² comes to the optimum Σ_{i≤R} σ_i². The
ledgers compute retained energy from the factors themselves in float64 against the exact
‖D‖², and tests/test_extract.py bounds the randomised result against the exact SVD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sa3ckpt.ops.library.combine import RANDOMIZED_ABOVE, randomized_svd
from sa3ckpt.ops.library.combine import _lowrank_svd as lowrank_svd

EXACT = "exact"
RANDOMISED = "randomised"
POWER_ITERATIONS = 4  # QR-stabilised power iterations (combine uses 3)


def oversample_for(rank: int) -> int:
    """Extra sketch columns: as many as the rank (at least 10), so the sketch is 2R wide.

    Measured on medium shapes with a flat spectrum (σ_i = i^-0.5, benchmarks/extract_svd.py):
    combine's R + 10 with 3 iterations loses 0.3-0.45% of the optimal energy at R = 64-128;
    a 2R sketch with 4 iterations loses ~0.003-0.02%, at a fraction of an exact SVD's time.
    """
    return max(10, rank)


ENERGY_START = 64  # first sketch width tried when a randomised energy search starts


@dataclass(frozen=True)
class Truncated:
    """The leading singular triplets of a matrix and how they were computed."""

    u: np.ndarray  # (m, k)
    s: np.ndarray  # (k,)
    vt: np.ndarray  # (k, n)
    method: str  # EXACT | RANDOMISED


def top_svd(
    d: np.ndarray,
    k: int,
    *,
    exact_up_to: int = RANDOMIZED_ABOVE,
    oversample: int | None = None,
    iterations: int = POWER_ITERATIONS,
) -> Truncated:
    """The top-k SVD of `d`: exact (LAPACK) up to min(shape) `exact_up_to`, else randomised."""
    k = min(k, min(d.shape))
    if min(d.shape) <= exact_up_to:
        u, s, vt = np.linalg.svd(d, full_matrices=False)
        return Truncated(u[:, :k], s[:k], vt[:k], EXACT)
    extra = oversample_for(k) if oversample is None else oversample
    u, s, vt = randomized_svd(d, k, oversample=extra, iterations=iterations)
    return Truncated(u, s, vt, RANDOMISED)


def rank_for_energy(s: np.ndarray, total: float, energy: float) -> int | None:
    """The smallest r with Σ_{i≤r} s_i² >= energy·total, or None when the s given fall short."""
    if total <= 0:
        return 1
    cumulative = np.cumsum(np.asarray(s, np.float64) ** 2)
    reached = np.nonzero(cumulative >= energy * total * (1 - 1e-12))[0]
    return int(reached[0]) + 1 if reached.size else None


def svd_for_energy(
    d: np.ndarray, energy: float, *, exact_up_to: int = RANDOMIZED_ABOVE
) -> tuple[Truncated, int]:
    """Enough leading triplets of `d` to reach `energy`, and the smallest rank that does.

    Exact targets take one full SVD. Randomised ones sketch at width 64, 128, ... until the
    sketch's energy reaches the goal (or the width reaches min(shape), where the exact SVD
    is taken): the sketch never overstates energy (it is a projection), so the rank found
    reaches the goal in the exactly computed energy too.
    """
    total = float(np.sum(d * d))
    full = min(d.shape)
    width = ENERGY_START
    while full > exact_up_to and width < full:
        found = top_svd(d, width, exact_up_to=exact_up_to)
        rank = rank_for_energy(found.s, total, energy)
        if rank is not None:
            return found, rank
        width *= 2
    found = top_svd(d, full, exact_up_to=full)
    return found, rank_for_energy(found.s, total, energy) or full


def balanced_factors(t: Truncated, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, A) = (U_r √S_r, √S_r V_rᵀ), zero-padded to `rank` columns when fewer exist."""
    r = min(rank, len(t.s))
    b = np.zeros((t.u.shape[0], rank))
    a = np.zeros((rank, t.vt.shape[1]))
    root = np.sqrt(t.s[:r])
    b[:, :r] = t.u[:, :r] * root
    a[:r] = root[:, None] * t.vt[:r]
    return b, a


def product_energy(b: np.ndarray, a: np.ndarray) -> float:
    """‖B A‖_F² exactly in float64 without forming B A: trace((BᵀB)(AAᵀ))."""
    b64, a64 = np.asarray(b, np.float64), np.asarray(a, np.float64)
    return float(np.sum((b64.T @ b64) * (a64 @ a64.T)))


def residual_energy(d: np.ndarray, b: np.ndarray, a: np.ndarray) -> float:
    """‖D − B A‖_F² in float64 (forms B A once: the size of D, which is in memory anyway)."""
    diff = d - np.asarray(b, np.float64) @ np.asarray(a, np.float64)
    return float(np.sum(diff * diff))


__all__ = [
    "EXACT",
    "RANDOMISED",
    "RANDOMIZED_ABOVE",
    "Truncated",
    "balanced_factors",
    "lowrank_svd",
    "product_energy",
    "randomized_svd",
    "rank_for_energy",
    "residual_energy",
    "svd_for_energy",
    "top_svd",
]
