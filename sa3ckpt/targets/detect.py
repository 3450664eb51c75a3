"""Family detection from observed (target, shape) pairs, with the evidence for the verdict.

Observations come from whatever a file reveals: full (fan_out, fan_in) for base weights and
lora A/B, only one side for magnitudes, nothing for M_xs. Unknown sides are None and never
count for or against a family.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sa3ckpt.targets.families import FAMILIES, PUBLISHED_FAMILIES, Family

PartialShape = tuple[int | None, int | None]


@dataclass(frozen=True)
class FamilyScore:
    """How one family explains the observations."""

    family: str
    matched: int
    mismatched: int
    unknown: int
    first_mismatch: str | None
    first_unknown: str | None

    @property
    def consistent(self) -> bool:
        return self.matched > 0 and self.mismatched == 0 and self.unknown == 0


@dataclass(frozen=True)
class FamilyDetection:
    """The detected family (None when no family, or more than one, fits) and why."""

    family: str | None
    evidence: tuple[str, ...]
    scores: tuple[FamilyScore, ...]
    ambiguous: tuple[str, ...] = ()


def _fmt(shape: PartialShape) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def _score(fam: Family, observations: Sequence[tuple[str, PartialShape]]) -> FamilyScore:
    matched = mismatched = unknown = 0
    first_mismatch = first_unknown = None
    for name, shape in observations:
        target = fam.by_name.get(name)
        if target is None:
            unknown += 1
            first_unknown = first_unknown or name
            continue
        if any(
            seen is not None and seen != want
            for seen, want in zip(shape, target.shape, strict=True)
        ):
            mismatched += 1
            if first_mismatch is None:
                first_mismatch = f"{name}: file {_fmt(shape)} vs {fam.name} {target.shape}"
        else:
            matched += 1
    return FamilyScore(fam.name, matched, mismatched, unknown, first_mismatch, first_unknown)


def detect_family(
    observations: Iterable[tuple[str, PartialShape]],
    candidates: Sequence[str] = PUBLISHED_FAMILIES,
) -> FamilyDetection:
    """Pick the one candidate family whose target table explains every observation."""
    obs = list(observations)
    scores = tuple(_score(FAMILIES[name], obs) for name in candidates)
    consistent = [s for s in scores if s.consistent]
    evidence: list[str] = []
    for s in scores:
        if s.consistent:
            evidence.append(f"{s.family}: all {s.matched} observed shapes match")
        else:
            parts = [f"{s.family}: {s.matched} match"]
            if s.mismatched:
                parts.append(f"{s.mismatched} shape mismatches (e.g. {s.first_mismatch})")
            if s.unknown:
                parts.append(f"{s.unknown} unknown targets (e.g. {s.first_unknown})")
            evidence.append(", ".join(parts))
    if len(consistent) == 1:
        return FamilyDetection(consistent[0].family, tuple(evidence), scores)
    if len(consistent) > 1:
        names = tuple(s.family for s in consistent)
        evidence.append(f"ambiguous: shapes fit {', '.join(names)} equally")
        return FamilyDetection(None, tuple(evidence), scores, ambiguous=names)
    if not obs:
        evidence.append("no target shapes observed")
    return FamilyDetection(None, tuple(evidence), scores)
