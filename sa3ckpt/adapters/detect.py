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
from sa3ckpt.findings import Finding

# The types a target's tensors allow, in ADAPTER_TYPES order (rows before cols).
Candidates = tuple[str, ...]


def _signatures() -> dict[frozenset[str], Candidates]:
    """Required parameter set -> the types that share it. `magnitude` alone cannot tell
    dora-rows from dora-cols; its length against (fan_out, fan_in) decides (_orientation)."""
    table: dict[frozenset[str], Candidates] = {}
    for kind in ADAPTER_TYPES.values():
        table[kind.signature] = (*table.get(kind.signature, ()), kind.name)
    return table


_SIGNATURES = _signatures()
DEFAULT_ORIENTATION = "rows"  # what an open DoRA orientation is assumed to be (adapters.md)
_EXTRAS = frozenset(p for kind in ADAPTER_TYPES.values() for p in kind.optional)


@dataclass
class TypeDetection:
    """The resolved adapter type and how it was decided.

    from_tensors is the type the tensors alone prove (None when they cannot tell it);
    candidates are every type the tensors allow (two when a DoRA orientation is open).
    orientation_guessed: the one rule every route asks before writing a DoRA orientation.
    An open orientation is settled by, in order, the tensors (a non-square magnitude, with
    the fans the file or the family table gives) and an explicit lora_config type; only
    when neither settles it is the documented default assumed, and this is True (convert
    then asks for --dora-variant instead of writing a guess).
    """

    adapter_type: str | None
    from_tensors: str | None
    from_config: str | None  # as written in lora_config (may be an alias or unknown)
    evidence: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    candidates: Candidates = ()
    orientation_guessed: bool = False

    @property
    def orientation_open(self) -> bool:
        """The tensors leave rows vs cols open (square layers, or XS without fans); the
        lora_config may still settle it (see orientation_guessed)."""
        return len(self.candidates) > 1


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


def _target_candidates(
    shapes: Mapping[str, tuple[int, ...]], fan: tuple[int, int] | None
) -> tuple[Candidates, str]:
    """(the types one target's parameter shapes allow, reason); () when none fits."""
    required = frozenset(shapes) - _EXTRAS
    candidates = _SIGNATURES.get(required, ())
    if not candidates:
        return (), f"parameter set {sorted(shapes)} matches no adapter type"
    if len(candidates) == 1:
        return candidates, "parameter set"
    orient = _orientation(tuple(shapes["magnitude"]), fan or fan_from_params(shapes))
    if orient is None:
        return candidates, "magnitude shape cannot tell rows from cols"
    chosen = tuple(c for c in candidates if ADAPTER_TYPES[c].norm == orient)
    return chosen, f"magnitude runs along {orient}"


def resolve_config_type(
    name: str | None, tensor_type: str | None
) -> tuple[str | None, list[Finding]]:
    """Canonical type for a lora_config adapter_type, resolving aliases with a finding.

    tensor_type: the type the tensors prove, if they prove one.
    """
    if name is None:
        return None, []
    if name in ADAPTER_TYPES:
        return name, []
    if name in ALIASES:
        fallback = ADAPTER_TYPES[ALIASES[name]]
        resolved = fallback.name
        how = "by default"
        # `dora` / `dora-xs`: the magnitude shape decides rows vs cols when it can.
        proven = ADAPTER_TYPES.get(tensor_type or "")
        if proven is not None and proven.is_dora and fallback.is_dora and proven.xs == fallback.xs:
            resolved = proven.name
            how = "by magnitude shape"
        return resolved, [
            Finding.of(
                "legacy-alias",
                f"adapter_type {name!r} is a legacy alias; resolved to {resolved!r} {how}",
            )
        ]
    known = ", ".join(ADAPTER_TYPES)
    return None, [Finding.of("unknown-type", f"unknown adapter_type {name!r} (known: {known})")]


def detect_type(
    params: Mapping[str, Mapping[str, tuple[int, ...]]],
    config_type: str | None,
    fans: Mapping[str, tuple[int, int]] | None = None,
) -> TypeDetection:
    """Decide the adapter type from per-target parameter shapes and the claimed type.

    params: target -> param -> shape. fans: optional target -> (fan_out, fan_in) from the
    model's target table, needed for XS magnitudes (nothing else in an XS file reveals fans).
    """
    votes: Counter[Candidates] = Counter()
    unknown: list[str] = []
    for target, shapes in params.items():
        candidates, reason = _target_candidates(shapes, (fans or {}).get(target))
        if candidates:
            votes[candidates] += 1
        else:
            unknown.append(f"{target}: {reason}")
    detection = TypeDetection(None, None, config_type)
    # Open dora votes merge into a definite orientation when any target settles it.
    definite = {c[0]: n for c, n in votes.items() if len(c) == 1}
    open_votes = sum(n for c, n in votes.items() if len(c) > 1)
    if len(definite) > 1:
        mix = ", ".join(f"{k} x{n}" for k, n in sorted(definite.items()))
        detection.findings.append(
            Finding.of("mixed-types", f"targets disagree on the adapter type: {mix}")
        )
    tensor_type: str | None = None
    if definite:
        tensor_type = max(definite, key=lambda k: definite[k])
        detection.candidates = (tensor_type,)
        detection.evidence.append(
            f"tensors: {definite[tensor_type] + open_votes}/{len(params)} targets look like "
            f"{tensor_type}"
        )
    elif votes:
        detection.candidates = next(iter(votes))
        either = "|".join(detection.candidates)
        detection.evidence.append(f"tensors: {either} (every magnitude is square-ambiguous)")
    detection.from_tensors = tensor_type
    for line in unknown[:3]:
        detection.findings.append(Finding.of("inconsistent-tensors", line))
    if len(unknown) > 3:
        detection.findings.append(
            Finding.of("inconsistent-tensors", f"... and {len(unknown) - 3} more targets")
        )

    config_resolved, alias_findings = resolve_config_type(config_type, tensor_type)
    detection.findings.extend(alias_findings)
    if config_type is not None:
        detection.evidence.append(f"lora_config: adapter_type {config_type!r}")

    if detection.orientation_open:
        # Square layers only: the claim (or the documented default) decides.
        # Only an explicit type settles it: a legacy alias resolved by default is a guess.
        if config_resolved in detection.candidates and config_type in ADAPTER_TYPES:
            tensor_type = config_resolved
        else:
            tensor_type = next(
                c for c in detection.candidates if ADAPTER_TYPES[c].norm == DEFAULT_ORIENTATION
            )
            detection.orientation_guessed = True
            detection.findings.append(
                Finding.of(
                    "ambiguous-orientation",
                    f"square layers only: cannot tell rows from cols, assuming {tensor_type!r}",
                )
            )
    if tensor_type and config_resolved and tensor_type != config_resolved:
        detection.findings.append(
            Finding.of(
                "type-disagreement",
                f"lora_config says {config_resolved!r} but the tensors are {tensor_type!r}",
            )
        )
    detection.adapter_type = tensor_type or config_resolved
    return detection
