"""Header-level analysis of an adapter source: dialect, config, type, family, coverage, shapes.

inspect reports it and validate judges it; both see the same facts, computed once, without
reading tensor data. Nothing here raises on a bad adapter: every problem is recorded so that
validate can report all of them at once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sa3ckpt.adapters.config import ConfigError, LoraConfig
from sa3ckpt.adapters.detect import TypeDetection, detect_type
from sa3ckpt.adapters.family_fans import (
    FAN_IN_FROM,
    FAN_OUT_FROM,
    agreed_fans,
    checked_families,
    detect_shapes_family,
    expected_targets,
    side,
)
from sa3ckpt.adapters.types import ADAPTER_TYPES, AdapterType
from sa3ckpt.io.sources import AdapterSource, TensorEntry
from sa3ckpt.layout import FactorLayout, factor_layout
from sa3ckpt.names.adapter_keys import DialectGuess, KeyGroups, detect_and_group
from sa3ckpt.targets.detect import FamilyDetection
from sa3ckpt.targets.families import FAMILIES, Family

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
    rank_problems: list[str] = field(default_factory=list)
    coverage: Coverage | None = None
    dtypes: Counter[str] = field(default_factory=Counter)
    # How the dialect stores Conv1d adapter tensors (PEFT: as convolutions); None: canonically.
    factor_layout: FactorLayout | None = None

    @property
    def adapter_type(self) -> str | None:
        return self.detection.adapter_type if self.detection else None

    @property
    def kind(self) -> AdapterType | None:
        """The resolved type's row; None when no (known) type was resolved."""
        return ADAPTER_TYPES.get(self.adapter_type or "")

    @property
    def family_candidates(self) -> tuple[str, ...]:
        """The families the file fits when nothing decides between them (else empty)."""
        if self.family is not None or self.family_detection is None:
            return ()
        return self.family_detection.ambiguous

    @property
    def family_undetermined(self) -> bool:
        """Several families fit and nothing in the file tells which: not an error."""
        return bool(self.family_candidates)

    def checked_families(self) -> tuple[Family, ...]:
        """The family shapes are checked against, or every candidate when undetermined."""
        if self.family is not None:
            return (self.family,)  # detected or forced by --model
        return checked_families(self.family_detection)

    @property
    def rank(self) -> int | None:
        if self.config is not None:
            return self.config.rank
        return self.ranks.most_common(1)[0][0] if self.ranks else None

    def entry(self, target: str, param: str) -> TensorEntry:
        return self.source.entries[self.groups.targets[target][param]]

    def canonical(self, param: str, array: Any) -> Any:
        """A tensor as read from the file -> its canonical shape (folds PEFT convolutions)."""
        layout = self.factor_layout
        return array if layout is None else layout.to_canonical(param, array)


def _param_shapes(
    source: AdapterSource, groups: KeyGroups, layout: FactorLayout | None = None
) -> dict[str, dict[str, tuple[int, ...]]]:
    """Shapes per target and param: as stored, or canonical when `layout` folds them."""
    return {
        target: {
            param: layout.canonical_shape(param, source.entries[key].shape)
            if layout is not None
            else tuple(source.entries[key].shape)
            for param, key in params.items()
        }
        for target, params in groups.targets.items()
    }


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
    config = analysis.config
    detection = detect_shapes_family(
        shapes,
        config.base_model if config else None,
        selects=lambda fam: expected_targets(fam, config, analysis.dialect.dialect),
    )
    analysis.family_detection = detection
    analysis.family_evidence.extend(detection.evidence)
    if detection.family is not None:
        analysis.family = FAMILIES[detection.family]


def _shape_problems(
    fam: Family,
    kind: AdapterType,
    rank: int,
    stored: dict[str, dict[str, tuple[int, ...]]],
    layout: FactorLayout | None,
) -> dict[tuple[str, str], str]:
    """(target, param) -> what is wrong with its shape against `fam`'s target table.

    Shapes are compared as the file's dialect stores them: a dialect with a factor layout
    (PEFT) keeps Conv1d adapter tensors as convolutions, so there a Conv1d target's lora_A
    must be (r, in, k), not the canonical (r, in*k): the library the file is for would
    refuse the canonical shape.
    """
    problems: dict[tuple[str, str], str] = {}
    for target, params in stored.items():
        spec = fam.target(target)
        if spec is None:
            continue
        conv_layout = layout if layout is not None and spec.layer_kind == "conv1d" else None
        for param, shape in params.items():
            if param not in kind.params:
                continue
            want = kind.param_shape(param, *spec.shape, rank)
            if conv_layout is not None:
                want = conv_layout.stored_shape(param, want, spec.kernel_size)
            legacy_ok = (
                conv_layout is None
                and len(shape) == 2
                and len(want) == 1
                and sorted(shape) == sorted((1, want[0]))
            )
            if tuple(shape) != want and not legacy_ok:
                where = f"{fam.name} {conv_layout.name}" if conv_layout else fam.name
                problems[(target, param)] = (
                    f"{target}.{param}: file {tuple(shape)} vs {where} {want}"
                )
    return problems


def _check_against_family(
    analysis: Analysis, stored: dict[str, dict[str, tuple[int, ...]]]
) -> None:
    """Stored shapes against the family, or (undetermined) problems every candidate family
    sees."""
    families = analysis.checked_families()
    if analysis.family is not None:
        analysis.unknown_targets.extend(t for t in stored if analysis.family.target(t) is None)
    kind, rank = analysis.kind, analysis.rank
    if not families or kind is None or rank is None:
        return
    found = [_shape_problems(fam, kind, rank, stored, analysis.factor_layout) for fam in families]
    common = set(found[0]).intersection(*found[1:])
    analysis.shape_problems.extend(msg for key, msg in found[0].items() if key in common)


def _target_rank(params: dict[str, tuple[int, ...]]) -> int | None:
    seen = [params[p][axis] for p, axis in _RANK_FROM if p in params and len(params[p]) > axis]
    return max(seen) if seen else None


def _check_rank_bounds(analysis: Analysis, shapes: dict[str, dict[str, tuple[int, ...]]]) -> None:
    """A rank above min(fan_out, fan_in) of its target: more directions than the layer has.

    The bound is the family's target shape; when undetermined, the largest bound any candidate
    allows (so only a rank every candidate rejects is reported); with no family at all, the
    shape the tensors show when they reveal both sides.
    """
    families = analysis.checked_families()
    for target, params in shapes.items():
        rank = _target_rank(params) or analysis.rank
        if rank is None:
            continue
        sides = [fam.by_name[target].shape for fam in families if target in fam.by_name]
        if not families:
            fan_out, fan_in = side(params, FAN_OUT_FROM), side(params, FAN_IN_FROM)
            if fan_out is not None and fan_in is not None:
                sides = [(fan_out, fan_in)]
        if not sides:
            continue
        bound = max(min(shape) for shape in sides)
        if rank > bound:
            analysis.rank_problems.append(f"{target}: rank {rank} > min(fan_out, fan_in) = {bound}")


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
    fam = analysis.family
    if fam is None:
        return None
    expected = expected_targets(fam, analysis.config, analysis.dialect.dialect)
    if expected is None:
        return None
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
    layout = factor_layout(dialect.dialect)
    stored = _param_shapes(source, groups)
    shapes = _param_shapes(source, groups, layout)  # canonical: what detection works on
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
        factor_layout=layout,
    )
    _choose_family(analysis, shapes, model)
    if shapes:
        families = analysis.checked_families()
        fans = agreed_fans(families, shapes) if families else None
        analysis.detection = detect_type(shapes, config.adapter_type if config else None, fans)
    _check_param_sets(analysis, shapes)
    _check_against_family(analysis, stored)
    _check_rank_bounds(analysis, shapes)
    analysis.coverage = _coverage(analysis)
    return analysis
