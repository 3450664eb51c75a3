"""Family detection from everything a file reveals about its targets, with the evidence.

Evidence comes in three strengths, and every piece counts:
- shapes: full (fan_out, fan_in) for base weights and lora A/B, one side for U, V and
  one-sided magnitudes; unknown sides are None and never count for or against a family;
- lengths whose side is not known (a DoRA `magnitude` before the type is resolved: rows give
  fan_out, cols fan_in), which must equal one of the target's two sides;
- the target names themselves: a target a family does not have rules the family out (block
  indices past 19 exist only in medium), even when nothing reveals a shape (XS `M_xs`).
When several families still fit, two tie-breaks are tried in order: the `base_model` the file
claims, then which family's include/exclude selection is exactly the file's target set. When
none decides, the family is undetermined: the result lists the families that fit and the
caller checks what it can without one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from sa3ckpt.targets.families import FAMILIES, PUBLISHED_FAMILIES, Family, family_for_base_model

PartialShape = tuple[int | None, int | None]


@dataclass(frozen=True)
class TargetEvidence:
    """What a file says about one target's weight: its known sides and side-less lengths."""

    target: str
    shape: PartialShape = (None, None)
    either: tuple[int, ...] = ()  # each equals fan_out or fan_in; which one is not known

    @property
    def has_shape(self) -> bool:
        return self.shape != (None, None) or bool(self.either)


Observation = TargetEvidence | tuple[str, PartialShape]
# family -> the targets its include/exclude selection would hold (None: cannot say)
Selection = Callable[[Family], Collection[str] | None]


@dataclass(frozen=True)
class FamilyScore:
    """How one family explains the observations.

    matched: targets whose observed shape fits; named: targets the family has but whose file
    tensors reveal no shape; mismatched / unknown: targets that rule the family out.
    """

    family: str
    matched: int
    mismatched: int
    unknown: int
    first_mismatch: str | None
    first_unknown: str | None
    named: int = 0

    @property
    def consistent(self) -> bool:
        return self.matched + self.named > 0 and self.mismatched == 0 and self.unknown == 0


@dataclass(frozen=True)
class FamilyDetection:
    """The detected family and why.

    family is None when no family fits (`fits` empty: the shapes are wrong for every family)
    or when several fit and nothing decides (`ambiguous`: the family is undetermined).
    decided_by says which evidence picked the family: "targets" (their shapes and names),
    "base_model" or "selection".
    """

    family: str | None
    evidence: tuple[str, ...]
    scores: tuple[FamilyScore, ...]
    ambiguous: tuple[str, ...] = ()
    fits: tuple[str, ...] = ()
    decided_by: str | None = None

    @property
    def undetermined(self) -> bool:
        return self.family is None and bool(self.ambiguous)


def _fmt(shape: PartialShape) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def _as_evidence(observation: Observation) -> TargetEvidence:
    if isinstance(observation, TargetEvidence):
        return observation
    name, shape = observation
    return TargetEvidence(name, shape)


def _fits(seen: TargetEvidence, want: tuple[int, int]) -> bool:
    sides_ok = all(s is None or s == w for s, w in zip(seen.shape, want, strict=True))
    return sides_ok and all(length in want for length in seen.either)


def _describe(seen: TargetEvidence) -> str:
    text = _fmt(seen.shape)
    if seen.either:
        text += " with side-less lengths " + ", ".join(map(str, seen.either))
    return text


def _score(fam: Family, observations: Sequence[TargetEvidence]) -> FamilyScore:
    matched = mismatched = unknown = named = 0
    first_mismatch = first_unknown = None
    for seen in observations:
        target = fam.by_name.get(seen.target)
        if target is None:
            unknown += 1
            first_unknown = first_unknown or seen.target
        elif not seen.has_shape:
            named += 1
        elif _fits(seen, target.shape):
            matched += 1
        else:
            mismatched += 1
            if first_mismatch is None:
                first_mismatch = (
                    f"{seen.target}: file {_describe(seen)} vs {fam.name} {target.shape}"
                )
    return FamilyScore(fam.name, matched, mismatched, unknown, first_mismatch, first_unknown, named)


def _score_line(s: FamilyScore) -> str:
    if s.consistent:
        if s.matched and s.named:
            return (
                f"{s.family}: all {s.matched} observed shapes match, "
                f"{s.named} more targets exist (no shape in the file)"
            )
        if s.matched:
            return f"{s.family}: all {s.matched} observed shapes match"
        return f"{s.family}: all {s.named} targets exist (no shape in the file)"
    parts = [f"{s.family}: {s.matched} match"]
    if s.mismatched:
        parts.append(f"{s.mismatched} shape mismatches (e.g. {s.first_mismatch})")
    if s.unknown:
        parts.append(f"{s.unknown} unknown targets (e.g. {s.first_unknown})")
    return ", ".join(parts)


def _by_base_model(fits: Sequence[str], base_model: str | None) -> tuple[str | None, str | None]:
    """(family, evidence line) from the claimed base_model, when it names one that fits."""
    if not base_model:
        return None, None
    named = family_for_base_model(base_model)
    if named is None:
        return None, f"base_model {base_model!r} names no known family"
    if named.name not in fits:
        return None, f"base_model {base_model!r} names {named.name}, which the targets rule out"
    return named.name, f"base_model {base_model!r} names {named.name}"


def _by_selection(
    fits: Sequence[str], present: set[str], selects: Selection | None
) -> tuple[str | None, str | None]:
    """(family, evidence line) when exactly one family's selection is the file's target set."""
    if selects is None:
        return None, None
    exact = [name for name in fits if set(selects(FAMILIES[name]) or ()) == present]
    if len(exact) == 1:
        return exact[0], (
            f"include/exclude select exactly the file's {len(present)} targets only in {exact[0]}"
        )
    return None, None


def detect_family(
    observations: Iterable[Observation],
    candidates: Sequence[str] = PUBLISHED_FAMILIES,
    *,
    base_model: str | None = None,
    selects: Selection | None = None,
) -> FamilyDetection:
    """Pick the candidate family that the file's targets, shapes and claims point to.

    observations: one per target (a TargetEvidence, or a plain (target, partial shape) pair);
    a target with no shape still counts by name. base_model and selects break ties between
    families that all fit (see the module docstring).
    """
    obs = [_as_evidence(o) for o in observations]
    scores = tuple(_score(FAMILIES[name], obs) for name in candidates)
    fits = tuple(s.family for s in scores if s.consistent)
    evidence = [_score_line(s) for s in scores]
    if len(fits) == 1:
        return FamilyDetection(fits[0], tuple(evidence), scores, fits=fits, decided_by="targets")
    if not fits:
        if not obs:
            evidence.append("no target shapes observed")
        return FamilyDetection(None, tuple(evidence), scores)
    evidence.append(f"ambiguous: the targets fit {', '.join(fits)} equally")
    present = {o.target for o in obs}
    for basis, (picked, line) in (
        ("base_model", _by_base_model(fits, base_model)),
        ("selection", _by_selection(fits, present, selects)),
    ):
        if line is not None:
            evidence.append(line)
        if picked is not None:
            return FamilyDetection(picked, tuple(evidence), scores, fits=fits, decided_by=basis)
    return FamilyDetection(None, tuple(evidence), scores, ambiguous=fits, fits=fits)
