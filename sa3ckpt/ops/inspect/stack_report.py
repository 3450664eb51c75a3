"""What a stack of adapters will do to each target, predicted before anything is written.

Stacked DoRA/BoRA adapters can flip the sign of a row (or column) of a merged weight: the
magnitudes set each row's norm, and combined over a stack (summed by `delta`, chained by
`runtime` and `blend`) they can come out negative even when no adapter's own magnitude is.
On the seconds conditioner Linear such a flip reverses a global gain and renders NaN
(upstream excludes that layer from stacks). This module predicts, per target:

- the signed row / column magnitude the stack ends with, under the chosen semantics, and how
  many rows / columns come out negative (flipped against the base);
- each adapter's own negative magnitudes;
- the drift c = m / baked_vnorm_row where an adapter carries baked norms (trained adapters
  sit near 0.98, overfit ones at 0.24-0.51);
- a stack of two or more DoRA/BoRA adapters on the seconds conditioner Linear.

The predictions read only magnitudes, strengths and (for the semantics that use them) the
base's row / column norms; they are exact for chains of one norm direction and an estimate
where directions mix (the other direction's rescale is not followed). `merge` warns with
them (and refuses under --strict), `inspect --stats` reports the per-adapter parts, and the
TUI can show the same report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt.adapters.formulas import NORM_STEPS
from sa3ckpt.adapters.types import AdapterType
from sa3ckpt.names.modules import SECONDS_CONDITIONER

# Warning thresholds, as fractions of a magnitude vector's rows / columns. Upstream warns
# when more than 1% of rows flip sign; a drift below 0.5 in most rows marks an overfit adapter.
FLIP_FRACTION = 0.01
NEGATIVE_FRACTION = 0.01
DRIFT_LOW = 0.5
DRIFT_FRACTION = 0.5
SECONDS_MIN_STACK = 2  # DoRA/BoRA adapters on the seconds Linear that make a stack

BAKED = "baked_vnorm_row"


@dataclass(frozen=True)
class StackMember:
    """One adapter on one target, as the report needs it: position, type, strength, tensors.

    index is the adapter's 1-based position on the command line; params need only hold the
    magnitudes (and baked_vnorm_row), any shape (legacy 2-D magnitudes are flattened).
    """

    index: int
    label: str
    kind: AdapterType
    strength: float
    params: Mapping[str, np.ndarray]

    def magnitudes(self) -> list[tuple[str, str, np.ndarray]]:
        """(param, direction, float64 vector) for each magnitude the type's normaliser uses."""
        return [
            (param, direction, np.asarray(self.params[param], np.float64).reshape(-1))
            for param, direction in NORM_STEPS[self.kind.norm]
            if param in self.params
        ]


# ------------------------------------------------------------------ signed stack magnitudes

# One prediction rule per semantics: the adapters' (magnitude, strength) on one direction,
# in stack order, and the base's norms on it (None when not read) -> the signed magnitude each
# row / column ends with (negative: flipped against the base), or None when the rule needs
# the base norms and they were not given.
Steps = Sequence[tuple[np.ndarray, float]]
Predictor = Callable[[Steps, np.ndarray | None], np.ndarray | None]


def _runtime(steps: Steps, base: np.ndarray | None) -> np.ndarray | None:
    """Chain with stored magnitudes: each sets |norm| and multiplies the direction's sign."""
    signed = np.ones_like(steps[0][0])
    for magnitude, _strength in steps:
        signed = np.sign(signed) * magnitude
    return signed


def _blend(steps: Steps, base: np.ndarray | None) -> np.ndarray | None:
    """Chain with mag(s) = n + s(m − n), n the incoming weight's norms (|previous mag|)."""
    if base is None:
        return None
    sign = np.ones_like(base)
    norms = base
    mag = base
    for magnitude, strength in steps:
        mag = norms + strength * (magnitude - norms)
        sign = sign * np.sign(mag)
        norms = np.abs(mag)
    return sign * np.abs(mag)


def _delta(steps: Steps, base: np.ndarray | None) -> np.ndarray | None:
    """Sum of faded effects: n0 + Σ s_i (m_i − n0), every term against the base's norms."""
    if base is None:
        return None
    out = base.copy()
    for magnitude, strength in steps:
        out += strength * (magnitude - base)
    return out


PREDICTORS: dict[str, Predictor] = {"runtime": _runtime, "blend": _blend, "delta": _delta}
NEEDS_BASE_NORMS = frozenset({"blend", "delta"})


# ------------------------------------------------------------------ the report


@dataclass(frozen=True)
class Count:
    """`count` of `of` rows or columns (fraction kept for thresholds and JSON)."""

    count: int
    of: int

    @property
    def fraction(self) -> float:
        return self.count / self.of if self.of else 0.0


@dataclass(frozen=True)
class NegativeMagnitude:
    adapter: int
    param: str
    negative: Count


@dataclass(frozen=True)
class Drift:
    """c = m / baked_vnorm_row of one adapter on one target."""

    adapter: int
    below_half: Count
    negative: Count
    median: float
    minimum: float


@dataclass(frozen=True)
class StackWarning:
    """One warning: a rule id (see WARNING_RULES), the target, and one line for people."""

    rule: str
    target: str
    message: str


WARNING_RULES: dict[str, str] = {
    "sign-flip": f"more than {FLIP_FRACTION:.0%} of a target's rows/columns flip sign",
    "negative-magnitude": f"more than {NEGATIVE_FRACTION:.0%} of an adapter's magnitudes < 0",
    "drift": f"more than {DRIFT_FRACTION:.0%} of rows with m / baked_vnorm_row < {DRIFT_LOW}",
    "seconds-stack": f"{SECONDS_MIN_STACK}+ DoRA/BoRA adapters on {SECONDS_CONDITIONER}",
}


@dataclass
class TargetStack:
    """The predictions for one target (only targets with a DoRA/BoRA adapter are reported)."""

    target: str
    adapters: list[int]
    flipped: dict[str, Count] = field(default_factory=dict)
    negative: list[NegativeMagnitude] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)


@dataclass
class StackReport:
    """Per-target predictions and the warnings drawn from them.

    semantics is None when no sign-flip prediction was asked for (a single adapter in
    inspect); flips_predicted says whether the base norms the semantics needs were there.
    """

    semantics: str | None
    flips_predicted: bool
    targets: dict[str, TargetStack] = field(default_factory=dict)
    warnings: list[StackWarning] = field(default_factory=list)
    thresholds: dict[str, str] = field(default_factory=lambda: dict(WARNING_RULES))

    def lines(self) -> list[str]:
        flips = sum(c.count for t in self.targets.values() for c in t.flipped.values())
        head = f"stack report: {len(self.targets)} targets with DoRA/BoRA magnitudes"
        if self.semantics is not None:
            head += (
                f", {flips} rows/columns predicted to flip sign ({self.semantics})"
                if self.flips_predicted
                else f" (sign flips under {self.semantics} not predicted: no base norms)"
            )
        negative = sum(n.negative.count for t in self.targets.values() for n in t.negative)
        drifts = [d for t in self.targets.values() for d in t.drift]
        head += f"; {negative} negative magnitude values"
        if drifts:
            low = sum(d.below_half.count for d in drifts)
            rows = sum(d.below_half.of for d in drifts)
            head += f"; drift on {len(drifts)} baked targets: {low}/{rows} rows below {DRIFT_LOW}"
        return [head] + [f"warning: {w.message}" for w in self.warnings]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON: its fields, recursively (inspect's JSON mirrors fields too)."""
        return dataclasses.asdict(self)


def _negatives(member: StackMember) -> list[NegativeMagnitude]:
    return [
        NegativeMagnitude(member.index, param, Count(int(np.sum(m < 0)), m.size))
        for param, _direction, m in member.magnitudes()
    ]


def _drift(member: StackMember) -> Drift | None:
    """Drift of a rows adapter with baked norms (dora-rows, dora-rows-xs), else None."""
    if member.kind.norm != "rows" or BAKED not in member.params:
        return None
    magnitude = np.asarray(member.params["magnitude"], np.float64).reshape(-1)
    baked = np.asarray(member.params[BAKED], np.float64).reshape(-1)
    if baked.shape != magnitude.shape:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        c = magnitude / baked
    rows = c.size
    return Drift(
        member.index,
        below_half=Count(int(np.sum(c < DRIFT_LOW)), rows),
        negative=Count(int(np.sum(magnitude < 0)), rows),
        median=float(np.median(c)) if rows else 0.0,
        minimum=float(np.min(c)) if rows else 0.0,
    )


def _flips(
    members: Sequence[StackMember],
    semantics: str,
    base: Mapping[str, np.ndarray] | None,
) -> dict[str, Count] | None:
    """Per direction, rows/columns whose stack magnitude is negative; None: not predicted."""
    steps: dict[str, list[tuple[np.ndarray, float]]] = {}
    for member in members:
        for _param, direction, magnitude in member.magnitudes():
            steps.setdefault(direction, []).append((magnitude, member.strength))
    out: dict[str, Count] = {}
    for direction, chain in steps.items():
        norms = None if base is None else base.get(direction)
        if norms is not None:
            norms = np.asarray(norms, np.float64).reshape(-1)
        signed = PREDICTORS[semantics](chain, norms)
        if signed is None:
            return None
        out[direction] = Count(int(np.sum(signed < 0)), signed.size)
    return out


def target_stack(
    target: str,
    members: Sequence[StackMember],
    semantics: str | None,
    base_norms: Mapping[str, np.ndarray] | None = None,
) -> tuple[TargetStack | None, bool, list[StackWarning]]:
    """(the target's predictions or None, flips predicted, warnings) for one target.

    Adapters at strength 0 are left out: DoRA/BoRA bypass exactly there (runtime, blend)
    and contribute nothing (delta).
    """
    active = [m for m in members if m.kind.is_weight_decomposed and m.strength != 0]
    if not active:
        return None, True, []
    report = TargetStack(target, [m.index for m in active])
    warnings: list[StackWarning] = []
    for member in active:
        for neg in _negatives(member):
            report.negative.append(neg)
            if neg.negative.fraction > NEGATIVE_FRACTION:
                warnings.append(
                    StackWarning(
                        "negative-magnitude",
                        target,
                        f"{target}: adapter {member.index} ({member.label}) has "
                        f"{neg.negative.count}/{neg.negative.of} negative {neg.param} values",
                    )
                )
        drift = _drift(member)
        if drift is not None:
            report.drift.append(drift)
            if drift.below_half.fraction > DRIFT_FRACTION:
                warnings.append(
                    StackWarning(
                        "drift",
                        target,
                        f"{target}: adapter {member.index} ({member.label}) drifted: "
                        f"{drift.below_half.count}/{drift.below_half.of} rows with "
                        f"m/baked < {DRIFT_LOW} (median {drift.median:.3f}; overfit?)",
                    )
                )
    predicted = True
    if semantics is not None:
        flips = _flips(active, semantics, base_norms)
        if flips is None:
            predicted = False
        else:
            report.flipped = flips
            for direction, count in flips.items():
                if count.fraction > FLIP_FRACTION:
                    warnings.append(
                        StackWarning(
                            "sign-flip",
                            target,
                            f"{target}: {count.count}/{count.of} {direction} flip sign under "
                            f"{semantics} semantics (adapters "
                            f"{', '.join(str(m.index) for m in active)})",
                        )
                    )
    if target == SECONDS_CONDITIONER and len(active) >= SECONDS_MIN_STACK:
        warnings.append(
            StackWarning(
                "seconds-stack",
                target,
                f"{target}: {len(active)} DoRA/BoRA adapters stacked on the seconds conditioner "
                "(summed rescales can flip a global gain sign: NaN renders); upstream excludes "
                "it: --exclude seconds_total",
            )
        )
    return report, predicted, warnings


def stack_report(
    stacks: Mapping[str, Sequence[StackMember]],
    semantics: str | None,
    base_norms: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> StackReport:
    """The report over every target: `stacks` maps target -> its adapters in stack order.

    base_norms maps target -> {"rows": row norms, "cols": column norms} of the base weight
    (2-D canonical view); the semantics in NEEDS_BASE_NORMS need them to predict flips.
    """
    if semantics is not None and semantics not in PREDICTORS:
        raise ValueError(f"no sign prediction for semantics {semantics!r}")
    out = StackReport(semantics, True)
    for target, members in stacks.items():
        norms = None if base_norms is None else base_norms.get(target)
        report, predicted, warnings = target_stack(target, members, semantics, norms)
        if report is None:
            continue
        out.targets[target] = report
        out.flips_predicted = out.flips_predicted and predicted
        out.warnings += warnings
    return out


def base_norms_of(w2d: np.ndarray) -> dict[str, np.ndarray]:
    """Row and column L2 norms of a canonical 2-D weight, float64 (what the predictors take).

    The definition, for an array in memory: a merge streams the same norms from the base
    file tile by tile (`ops.merge.base_norms`, equal up to the float64 summation order)."""
    w = np.asarray(w2d, np.float32)
    return {
        "rows": np.sqrt(np.einsum("ij,ij->i", w, w, dtype=np.float64)),
        "cols": np.sqrt(np.einsum("ij,ij->j", w, w, dtype=np.float64)),
    }
