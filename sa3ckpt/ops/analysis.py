"""Header-level analysis of an adapter source: dialect, config, type, family, coverage, shapes.

inspect reports it and validate judges it; both see the same facts, computed once, without
reading tensor data. Nothing here raises on a bad adapter: every problem is recorded so that
validate can report all of them at once.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from sa3ckpt.adapters.config import ConfigError, LoraConfig
from sa3ckpt.adapters.detect import TypeDetection, detect_type
from sa3ckpt.adapters.types import ADAPTER_TYPES, AdapterType
from sa3ckpt.io.sources import AdapterSource, TensorEntry
from sa3ckpt.names.adapter_keys import DialectGuess, KeyGroups, detect_and_group
from sa3ckpt.names.modules import to_sa3cpp_stem
from sa3ckpt.names.select import peft_selects
from sa3ckpt.targets.detect import FamilyDetection, PartialShape, detect_family
from sa3ckpt.targets.families import FAMILIES, Family, family_for_base_model

# Which parameter reveals which side of the weight: (param, axis of its shape, side).
_FAN_OUT_FROM = (("lora_B", 0), ("U", 0), ("magnitude_r", 0), ("baked_vnorm_row", 0))
_FAN_IN_FROM = (("lora_A", 1), ("V", 0), ("magnitude_c", 0))
# Where the rank can be read: (param, axis).
_RANK_FROM = (("lora_A", 0), ("lora_B", 1), ("M_xs", 0), ("M_xs", 1), ("U", 1), ("V", 1))


@dataclass
class Coverage:
    """Targets the recorded include/exclude select in the family vs those in the file."""

    family: str
    expected: list[str]
    present: list[str]
    missing: list[str]
    unselected: list[str]  # in the file, known to the family, but not selected by the patterns

    def line(self) -> str:
        return (
            f"{len(self.expected)} expected, {len(self.present)} present, "
            f"{len(self.missing)} missing"
        )


@dataclass
class Analysis:
    """Everything the header says about an adapter, and every inconsistency found in it."""

    source: AdapterSource
    dialect: DialectGuess
    groups: KeyGroups
    config: LoraConfig | None
    config_error: str | None
    detection: TypeDetection | None
    ranks: Counter[int]
    family: Family | None
    family_detection: FamilyDetection | None
    family_evidence: list[str] = field(default_factory=list)
    family_forced: bool = False
    unknown_targets: list[str] = field(default_factory=list)
    shape_problems: list[str] = field(default_factory=list)
    param_problems: list[str] = field(default_factory=list)
    coverage: Coverage | None = None
    dtypes: Counter[str] = field(default_factory=Counter)

    @property
    def adapter_type(self) -> str | None:
        return self.detection.adapter_type if self.detection else None

    @property
    def kind(self) -> AdapterType | None:
        """The resolved type's row; None when no (known) type was resolved."""
        return ADAPTER_TYPES.get(self.adapter_type or "")

    @property
    def rank(self) -> int | None:
        if self.config is not None:
            return self.config.rank
        return self.ranks.most_common(1)[0][0] if self.ranks else None

    def entry(self, target: str, param: str) -> TensorEntry:
        return self.source.entries[self.groups.targets[target][param]]


def _param_shapes(
    source: AdapterSource, groups: KeyGroups
) -> dict[str, dict[str, tuple[int, ...]]]:
    return {
        target: {param: source.entries[key].shape for param, key in params.items()}
        for target, params in groups.targets.items()
    }


def _side(shapes: dict[str, tuple[int, ...]], table: tuple[tuple[str, int], ...]) -> int | None:
    for param, axis in table:
        shape = shapes.get(param)
        if shape is not None and len(shape) > axis:
            return shape[axis]
    return None


def _observations(shapes: dict[str, dict[str, tuple[int, ...]]]) -> list[tuple[str, PartialShape]]:
    obs = []
    for target, params in shapes.items():
        side = (_side(params, _FAN_OUT_FROM), _side(params, _FAN_IN_FROM))
        if side != (None, None):
            obs.append((target, side))
    return obs


def _ranks(shapes: dict[str, dict[str, tuple[int, ...]]]) -> Counter[int]:
    found: Counter[int] = Counter()
    for params in shapes.values():
        seen = {params[p][axis] for p, axis in _RANK_FROM if p in params and len(params[p]) > axis}
        found.update(seen)
    return found


def _choose_family(
    analysis: Analysis, shapes: dict[str, dict[str, tuple[int, ...]]], model: str
) -> None:
    if model != "auto":
        analysis.family = FAMILIES[model]
        analysis.family_forced = True
        analysis.family_evidence.append(f"--model {model}")
        return
    detection = detect_family(_observations(shapes), candidates=list(FAMILIES))
    analysis.family_detection = detection
    analysis.family_evidence.extend(detection.evidence)
    if detection.family is not None:
        analysis.family = FAMILIES[detection.family]
        return
    # Nothing in the tensors tells (e.g. XS without bases): the recorded base_model may.
    claimed = analysis.config.base_model if analysis.config else None
    by_name = family_for_base_model(claimed) if claimed else None
    candidates = detection.ambiguous or tuple(FAMILIES)
    if by_name is not None and by_name.name in candidates and not _contradicted(detection, by_name):
        analysis.family = by_name
        analysis.family_evidence.append(f"base_model {claimed!r} names {by_name.name}")


def _contradicted(detection: FamilyDetection, fam: Family) -> bool:
    score = next((s for s in detection.scores if s.family == fam.name), None)
    return score is not None and (score.mismatched > 0 or score.unknown > 0)


def _check_against_family(
    analysis: Analysis, shapes: dict[str, dict[str, tuple[int, ...]]]
) -> None:
    fam, kind, rank = analysis.family, analysis.kind, analysis.rank
    assert fam is not None
    for target, params in shapes.items():
        spec = fam.target(target)
        if spec is None:
            analysis.unknown_targets.append(target)
            continue
        if kind is None or rank is None:
            continue
        for param, shape in params.items():
            if param not in kind.params:
                continue
            want = kind.param_shape(param, *spec.shape, rank)
            legacy_ok = len(shape) == 2 and len(want) == 1 and sorted(shape) == sorted((1, want[0]))
            if tuple(shape) != want and not legacy_ok:
                analysis.shape_problems.append(
                    f"{target}.{param}: file {tuple(shape)} vs {fam.name} {want}"
                )


def _check_param_sets(analysis: Analysis, shapes: dict[str, dict[str, tuple[int, ...]]]) -> None:
    kind = analysis.kind
    if kind is None:
        return
    allowed = set(kind.params)
    for target, params in shapes.items():
        missing = [p for p in kind.required if p not in params]
        extra = [p for p in params if p not in allowed]
        if missing:
            analysis.param_problems.append(
                f"{target}: missing {', '.join(missing)} for {kind.name}"
            )
        if extra:
            analysis.param_problems.append(f"{target}: {', '.join(extra)} not used by {kind.name}")
        if ("U" in params) != ("V" in params):
            analysis.param_problems.append(f"{target}: XS bases need both U and V")


def _coverage(analysis: Analysis) -> Coverage | None:
    fam, config = analysis.family, analysis.config
    if fam is None or config is None:
        return None
    peft_modules = config.extra.get("peft_target_modules")
    try:
        if peft_modules is not None:  # PEFT folders select by their own rule
            expected = [t.name for t in fam.targets if peft_selects(t.name, peft_modules)]
        else:
            expected = [t.name for t in fam.selected(config.include, config.exclude)]
    except (ValueError, re.error):
        return None
    if analysis.dialect.dialect == "sa3cpp":  # sa3.cpp has no stem for the conditioner
        expected = [t for t in expected if to_sa3cpp_stem(t) is not None]
    present = [t for t in analysis.groups.targets if fam.target(t) is not None]
    present_set = set(present)
    expected_set = set(expected)
    return Coverage(
        family=fam.name,
        expected=expected,
        present=[t for t in expected if t in present_set],
        missing=[t for t in expected if t not in present_set],
        unselected=[t for t in present if t not in expected_set],
    )


def analyze(source: AdapterSource, model: str = "auto") -> Analysis:
    """Analyse an adapter source header-only; `model` is a family name or "auto"."""
    dialect, groups = detect_and_group(source.entries)
    config, config_error = None, None
    if source.config_text is None:
        config_error = f"no lora_config ({source.config_origin} absent)"
    else:
        try:
            config = LoraConfig.from_json(source.config_text)
        except ConfigError as exc:
            config_error = str(exc)
    shapes = _param_shapes(source, groups)
    analysis = Analysis(
        source=source,
        dialect=dialect,
        groups=groups,
        config=config,
        config_error=config_error,
        detection=None,
        ranks=_ranks(shapes),
        family=None,
        family_detection=None,
        dtypes=Counter(entry.dtype for entry in source.entries.values()),
    )
    _choose_family(analysis, shapes, model)
    fans = None
    if analysis.family is not None:
        fans = {t: analysis.family.by_name[t].shape for t in shapes if t in analysis.family.by_name}
    if shapes:
        analysis.detection = detect_type(shapes, config.adapter_type if config else None, fans)
    _check_param_sets(analysis, shapes)
    if analysis.family is not None:
        _check_against_family(analysis, shapes)
    analysis.coverage = _coverage(analysis)
    return analysis
