"""What an adapter's parameter shapes say about its family, and the fans the family then gives.

One home for the evidence both readers of an adapter use: `ops.analysis` (inspect, validate,
header-only) and `adapters.checkpoint` (every route that loads tensors: convert, merge,
combine, ...). An XS DoRA file without U/V reveals no fan of its own; its magnitude lengths
against the family's target table are what settle rows vs cols, so both readers must pick
the family, and the fans, the same way, or inspect names a type that convert then calls open.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from sa3ckpt.adapters.config import LoraConfig
from sa3ckpt.names.adapter_keys import selection_name
from sa3ckpt.names.modules import to_sa3cpp_stem
from sa3ckpt.names.select import peft_selects
from sa3ckpt.targets.detect import FamilyDetection, TargetEvidence, detect_family
from sa3ckpt.targets.families import FAMILIES, Family

Shapes = Mapping[str, Mapping[str, tuple[int, ...]]]  # target -> param -> shape

# Which parameter reveals which side of the weight: (param, axis of its shape).
FAN_OUT_FROM = (("lora_B", 0), ("U", 0), ("magnitude_r", 0), ("baked_vnorm_row", 0))
FAN_IN_FROM = (("lora_A", 1), ("V", 0), ("magnitude_c", 0))
# A DoRA `magnitude` is fan_out (rows) or fan_in (cols): the type decides, and the type is
# resolved after the family, so its length counts as a side-less length.
EITHER_SIDE_FROM = (("magnitude", 0),)


def side(shapes: Mapping[str, tuple[int, ...]], table: tuple[tuple[str, int], ...]) -> int | None:
    """The first length `table` finds among one target's parameter shapes."""
    for param, axis in table:
        shape = shapes.get(param)
        if shape is not None and len(shape) > axis:
            return shape[axis]
    return None


def observations(shapes: Shapes) -> list[TargetEvidence]:
    """One piece of evidence per target: known sides, side-less lengths, or just its name."""
    obs = []
    for target, params in shapes.items():
        either = tuple(
            params[p][axis] for p, axis in EITHER_SIDE_FROM if p in params and len(params[p]) > axis
        )
        known = (side(params, FAN_OUT_FROM), side(params, FAN_IN_FROM))
        obs.append(TargetEvidence(target, known, either))
    return obs


def expected_targets(
    fam: Family, config: LoraConfig | None, dialect: str | None
) -> list[str] | None:
    """The family's targets the recorded selection covers (None when it cannot be said).

    A tie-break for family detection and the coverage report: PEFT folders select by
    their own module rule, sa3.cpp has no stem for the conditioner.
    """
    if config is None:
        return None
    peft_modules = config.extra.get("peft_target_modules")
    try:
        if peft_modules is not None:  # PEFT folders select by their own rule
            expected = [
                t.name
                for t in fam.targets
                if (name := selection_name(t.name, dialect)) is not None
                and peft_selects(name, peft_modules)
            ]
        else:
            expected = [t.name for t in fam.selected(config.include, config.exclude)]
    except (ValueError, re.error):
        return None
    if dialect == "sa3cpp":  # sa3.cpp has no stem for the conditioner
        expected = [t for t in expected if to_sa3cpp_stem(t) is not None]
    return expected


def detect_shapes_family(
    shapes: Shapes,
    base_model: str | None,
    selects: Callable[[Family], list[str] | None] | None = None,
) -> FamilyDetection:
    """The family (among every known one, tiny test families too) the shapes point to."""
    return detect_family(
        observations(shapes), candidates=list(FAMILIES), base_model=base_model, selects=selects
    )


def checked_families(detection: FamilyDetection | None) -> tuple[Family, ...]:
    """The detected family, or every family that fits when nothing decides between them."""
    if detection is None:
        return ()
    if detection.family is not None:
        return (FAMILIES[detection.family],)
    return tuple(FAMILIES[name] for name in detection.ambiguous)


def agreed_fans(families: Sequence[Family], targets: Iterable[str]) -> dict[str, tuple[int, int]]:
    """target -> (fan_out, fan_in) where every family in `families` has it with one shape."""
    fans: dict[str, tuple[int, int]] = {}
    for target in targets:
        seen = {fam.by_name[target].shape for fam in families if target in fam.by_name}
        if len(seen) == 1 and all(target in fam.by_name for fam in families):
            fans[target] = next(iter(seen))
    return fans
