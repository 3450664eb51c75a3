"""What `sa3ckpt verify` measured and what it concludes: the numbers, the verdict, the hints.

Four outputs of the same inputs are compared (all float32 runs): BASE as loaded (y_base),
BASE with the adapters live (y_live), the live model with every weight rounded to the dtype
MERGED stores it in (y_floor), and MERGED as loaded (y_merged). The rounding floor
‖y_floor − y_live‖ / ‖y_live‖ is what an exact merge written in MERGED's dtype must differ by;
a merge passes when ‖y_merged − y_live‖ / ‖y_live‖ ≤ K · floor + EPSILON. The verdict is
inconclusive (not a pass) when the adapters themselves change the output by no more than that
limit, since then a MERGED that is only BASE would pass too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_TOLERANCE = 2.0
"""K: a correct merge measures about 1× the floor (its weights are the live ones rounded
once); 2× leaves room for the merge kernel rounding a weight the other way at a tie."""
EPSILON = 1e-4
"""Added to the limit: float32 evaluation noise. The merge's NumPy kernel and the live MLX
formulas agree to float32 rounding, not bit for bit; through a real-size small DiT that
measured 3.2e-6 (dora-rows r16, fp32 MERGED, where this is the whole limit), so 1e-4 leaves
30× room and is under a tenth of an fp16 floor (1.2e-3 there)."""
ALONG_DIRECTION = 0.3
"""A change from BASE counts as "mostly along the adapters' direction" when at most this share
of it is orthogonal to the live adapters' change: then another strength is the likely cause
(the DiT is not linear in the strength, so half the strength already leaves ~20% off it)."""

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


def _flat(outputs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(o, np.float64).reshape(-1) for o in outputs])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖ (inf when b is zero and a is not)."""
    num, den = float(np.linalg.norm(a - b)), float(np.linalg.norm(b))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


@dataclass(frozen=True)
class Numbers:
    """Every measured quantity (relative Frobenius norms over all cases unless said)."""

    difference: float  # ‖y_merged − y_live‖ / ‖y_live‖
    rounding_floor: float  # ‖y_floor − y_live‖ / ‖y_live‖
    threshold: float  # K · rounding_floor + EPSILON
    effect: float  # ‖y_live − y_base‖ / ‖y_base‖: what the adapters do
    base_difference: float  # ‖y_base − y_live‖ / ‖y_live‖: what a no-op merge would measure
    merged_vs_base: float  # ‖y_merged − y_base‖ / ‖y_base‖
    merged_change: float  # ‖y_merged − y_base‖ / ‖y_live‖: comparable with the threshold
    apparent_scale: float | None  # <y_m − y_b, y_l − y_b> / ‖y_l − y_b‖²
    off_direction: float | None  # share of y_m − y_b orthogonal to y_l − y_b
    merged_finite: bool
    cases: list[dict[str, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """difference / rounding floor (None for a zero floor, e.g. an fp32 MERGED)."""
        return self.difference / self.rounding_floor if self.rounding_floor > 0 else None

    @property
    def strength_resolution(self) -> float | None:
        """The smallest relative strength error the limit lets through, about limit / effect."""
        return self.threshold / self.base_difference if self.base_difference > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "difference": self.difference,
            "rounding_floor": self.rounding_floor,
            "ratio_to_floor": self.ratio,
            "threshold": self.threshold,
            "effect": self.effect,
            "base_difference": self.base_difference,
            "merged_vs_base": self.merged_vs_base,
            "merged_change": self.merged_change,
            "apparent_scale": self.apparent_scale,
            "off_direction": self.off_direction,
            "strength_resolution": self.strength_resolution,
            "merged_finite": self.merged_finite,
            "cases": self.cases,
        }


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def measure(
    y_base: Sequence[np.ndarray],
    y_live: Sequence[np.ndarray],
    y_floor: Sequence[np.ndarray],
    y_merged: Sequence[np.ndarray],
    tolerance: float,
    case_names: Sequence[dict[str, Any]],
) -> Numbers:
    """The numbers of one verify run from the four models' outputs (per case, in order)."""
    b, live, flo, m = (_flat(y) for y in (y_base, y_live, y_floor, y_merged))
    finite = bool(np.isfinite(m).all())
    floor = _rel(flo, live)
    d_live, d_merged = live - b, m - b
    live_sq = float(np.dot(d_live, d_live))
    scale = float(np.dot(d_merged, d_live)) / live_sq if live_sq > 0 and finite else None
    off = None
    if scale is not None and float(np.linalg.norm(d_merged)) > 0:
        residual = d_merged - scale * d_live
        off = float(np.linalg.norm(residual) / np.linalg.norm(d_merged))
    cases = [
        {
            **name,
            "difference": _finite_or_inf(_rel(_flat([ym]), _flat([yl]))),
            "rounding_floor": _rel(_flat([yf]), _flat([yl])),
            "effect": _rel(_flat([yl]), _flat([yb])),
        }
        for name, yb, yl, yf, ym in zip(case_names, y_base, y_live, y_floor, y_merged, strict=True)
    ]
    return Numbers(
        difference=_finite_or_inf(_rel(m, live)) if finite else math.inf,
        rounding_floor=floor,
        threshold=tolerance * floor + EPSILON,
        effect=_rel(live, b),
        base_difference=_rel(b, live),
        merged_vs_base=_finite_or_inf(_rel(m, b)) if finite else math.inf,
        merged_change=float(np.linalg.norm(d_merged) / np.linalg.norm(live))
        if finite
        else math.inf,
        apparent_scale=scale,
        off_direction=off,
        merged_finite=finite,
        cases=cases,
    )


def verdict_of(numbers: Numbers) -> str:
    if not numbers.merged_finite or numbers.difference > numbers.threshold:
        return FAIL
    if numbers.base_difference <= numbers.threshold:
        return INCONCLUSIVE
    return PASS


def failure_hints(numbers: Numbers) -> list[str]:
    """What the shape of a failure suggests, most specific first."""
    if not numbers.merged_finite:
        return ["MERGED's output has NaN/Inf: its weights do (see `sa3ckpt inspect --stats`)"]
    if numbers.merged_change <= numbers.threshold:
        return [
            "MERGED computes what BASE computes: the adapters are not in it (did the merge "
            "report 0 targets merged, or was MERGED written from another base?)"
        ]
    scale, off = numbers.apparent_scale, numbers.off_direction
    if scale is None or off is None:
        return []
    if off <= ALONG_DIRECTION:
        return [
            f"MERGED's change from BASE is {fmt(scale)}× the live adapters' change, mostly in "
            f"their direction ({off:.0%} off it): merged at other strengths (or with "
            "--exclude/--only) than given here?"
        ]
    return [
        f"MERGED's change from BASE is {fmt(scale)}× the live adapters' change with {off:.0%} of "
        "it in another direction: other adapters, another --semantics, other XS bases, or "
        "another base?"
    ]


def fmt(value: float | None) -> str:
    """Three significant digits, trailing zeros kept (1.00×, 0.00119)."""
    return "-" if value is None else f"{value:#.3g}".rstrip(".")


__all__ = [
    "DEFAULT_TOLERANCE",
    "EPSILON",
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "Numbers",
    "failure_hints",
    "fmt",
    "measure",
    "verdict_of",
]
