"""Adapter type detection from a checkpoint's tensors, cross-checked against its metadata.

The tensors are the truth about what a file can do; `lora_config.adapter_type` is what the
writer claimed. We report both, resolve aliases (`dora` by magnitude shape), and turn every
disagreement into a finding instead of silently preferring one side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from sa3ckpt.adapters.types import ADAPTER_TYPES, ALIASES

# Required parameter sets -> the type family they indicate. `magnitude` alone cannot tell
# rows from cols; its length against (fan_out, fan_in) decides (see _orientation).
_SIGNATURES: dict[frozenset[str], str] = {
    frozenset({"lora_A", "lora_B"}): "lora",
    frozenset({"lora_A", "lora_B", "magnitude"}): "dora-{orient}",
    frozenset({"lora_A", "lora_B", "magnitude_r", "magnitude_c"}): "bora",
    frozenset({"M_xs"}): "lora-xs",
    frozenset({"M_xs", "magnitude"}): "dora-{orient}-xs",
    frozenset({"M_xs", "magnitude_r", "magnitude_c"}): "bora-xs",
}
_EXTRAS = frozenset({"U", "V", "baked_vnorm_row"})


@dataclass(frozen=True)
class Finding:
    """Something detection noticed: a stable code, a severity and one line of text."""

    code: str
    severity: str  # "error" | "warning" | "info"
    message: str


@dataclass
class TypeDetection:
    """The resolved adapter type and how it was decided."""

    adapter_type: str | None
    from_tensors: str | None
    from_config: str | None  # as written in lora_config (may be an alias or unknown)
    evidence: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def _orientation(shape: tuple[int, ...], fan: tuple[int, int] | None) -> str | None:
    """rows / cols from a magnitude's shape; None when the shape cannot tell."""
    if len(shape) == 2:
        if shape[1] == 1 and shape[0] != 1:
            return "rows"
        if shape[0] == 1 and shape[1] != 1:
            return "cols"
        if fan is None:
            return None
        shape = (shape[0] * shape[1],)
    if fan is None or len(shape) != 1:
        return None
    fan_out, fan_in = fan
    if fan_out == fan_in:
        return None
    if shape[0] == fan_out:
        return "rows"
    if shape[0] == fan_in:
        return "cols"
    return None


def fan_from_params(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int] | None:
    """(fan_out, fan_in) as a target's own tensors reveal it (lora A/B or XS bases)."""
    if "lora_B" in shapes and "lora_A" in shapes:
        return shapes["lora_B"][0], shapes["lora_A"][-1]
    if "U" in shapes and "V" in shapes:
        return shapes["U"][0], shapes["V"][0]
    return None


def _target_type(
    shapes: Mapping[str, tuple[int, ...]], fan: tuple[int, int] | None
) -> tuple[str | None, str]:
    """(type or None, reason) for one target's parameter shapes."""
    required = frozenset(shapes) - _EXTRAS
    pattern = _SIGNATURES.get(required)
    if pattern is None:
        return None, f"parameter set {sorted(shapes)} matches no adapter type"
    if "{orient}" not in pattern:
        return pattern, "parameter set"
    orient = _orientation(tuple(shapes["magnitude"]), fan or fan_from_params(shapes))
    if orient is None:
        return pattern.replace("{orient}", "?"), "magnitude shape cannot tell rows from cols"
    return pattern.format(orient=orient), f"magnitude runs along {orient}"


def resolve_config_type(
    name: str | None, tensor_type: str | None
) -> tuple[str | None, list[Finding]]:
    """Canonical type for a lora_config adapter_type, resolving aliases with a finding."""
    if name is None:
        return None, []
    if name in ADAPTER_TYPES:
        return name, []
    if name in ALIASES:
        fallback = ALIASES[name]
        resolved = fallback
        how = "by default"
        # `dora` / `dora-xs`: the magnitude shape decides rows vs cols when it can.
        shape_decides = (
            tensor_type is not None
            and tensor_type.startswith("dora-")
            and "?" not in tensor_type
            and fallback.startswith("dora-")
            and tensor_type.endswith("-xs") == fallback.endswith("-xs")
        )
        if shape_decides:
            resolved = tensor_type
            how = "by magnitude shape"
        return resolved, [
            Finding(
                "legacy-alias",
                "warning",
                f"adapter_type {name!r} is a legacy alias; resolved to {resolved!r} {how}",
            )
        ]
    known = ", ".join(ADAPTER_TYPES)
    return None, [
        Finding("unknown-type", "error", f"unknown adapter_type {name!r} (known: {known})")
    ]


def detect_type(
    params: Mapping[str, Mapping[str, tuple[int, ...]]],
    config_type: str | None,
    fans: Mapping[str, tuple[int, int]] | None = None,
) -> TypeDetection:
    """Decide the adapter type from per-target parameter shapes and the claimed type.

    params: target -> param -> shape. fans: optional target -> (fan_out, fan_in) from the
    model's target table, needed for XS magnitudes (nothing else in an XS file reveals fans).
    """
    votes: Counter[str] = Counter()
    unknown: list[str] = []
    ambiguous: list[str] = []
    for target, shapes in params.items():
        kind, reason = _target_type(shapes, (fans or {}).get(target))
        if kind is None:
            unknown.append(f"{target}: {reason}")
        elif "?" in kind:
            ambiguous.append(target)
            votes[kind] += 1
        else:
            votes[kind] += 1
    detection = TypeDetection(None, None, config_type)
    # Ambiguous dora votes merge into a definite orientation when any target settles it.
    definite = {k: n for k, n in votes.items() if "?" not in k}
    if len(definite) > 1:
        mix = ", ".join(f"{k} x{n}" for k, n in sorted(definite.items()))
        detection.findings.append(
            Finding("mixed-types", "error", f"targets disagree on the adapter type: {mix}")
        )
    if definite:
        tensor_type = max(definite, key=lambda k: definite[k])
        agreeing = definite[tensor_type] + sum(n for k, n in votes.items() if "?" in k)
        detection.evidence.append(
            f"tensors: {agreeing}/{len(params)} targets look like {tensor_type}"
        )
    elif votes:
        tensor_type = next(iter(votes))
        either = tensor_type.replace("?", "rows|cols")
        detection.evidence.append(f"tensors: {either} (every magnitude is square-ambiguous)")
    else:
        tensor_type = None
    detection.from_tensors = tensor_type
    for line in unknown[:3]:
        detection.findings.append(Finding("inconsistent-tensors", "error", line))
    if len(unknown) > 3:
        detection.findings.append(
            Finding("inconsistent-tensors", "error", f"... and {len(unknown) - 3} more targets")
        )

    config_resolved, alias_findings = resolve_config_type(config_type, tensor_type)
    detection.findings.extend(alias_findings)
    if config_type is not None:
        detection.evidence.append(f"lora_config: adapter_type {config_type!r}")

    if tensor_type and "?" in tensor_type:
        # Square layers only: the claim (or the documented default) decides.
        candidates = {tensor_type.replace("?", o) for o in ("rows", "cols")}
        # Only an explicit type settles it: a legacy alias resolved by default is a guess.
        if config_resolved in candidates and config_type in ADAPTER_TYPES:
            chosen = config_resolved
        else:
            chosen = tensor_type.replace("?", "rows")
            detection.findings.append(
                Finding(
                    "ambiguous-orientation",
                    "warning",
                    f"square layers only: cannot tell rows from cols, assuming {chosen!r}",
                )
            )
        tensor_type = chosen
    if tensor_type and config_resolved and tensor_type != config_resolved:
        detection.findings.append(
            Finding(
                "type-disagreement",
                "error",
                f"lora_config says {config_resolved!r} but the tensors are {tensor_type!r}",
            )
        )
    detection.adapter_type = tensor_type or config_resolved
    return detection
