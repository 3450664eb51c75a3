"""`--strength-map`: per-target (per-block) strength factors for a merge, as block weights.

A map is comma-separated entries `[ADAPTER=]PATTERN=FACTOR`, e.g.
`layers.[0-7].=0.5,cross_attn=0.8,2=seconds_total=0`. `[ADAPTER=]PATTERN` is exactly
`--exclude`'s syntax and parser (`ops.exclusions`: the official include/exclude substring
match after `[a-b]` range expansion; no prefix = every adapter, `N=` the N-th adapter from 1,
`PATH=` the adapter given as PATH). FACTOR is a plain finite decimal (`sa3ckpt.strengths`).
Commas inside a range group (`layers.[0,4-7].`) belong to the pattern.

Each entry multiplies the strength of the adapters it applies to at every target it matches;
when several entries match one target, ALL of them multiply (`layers.[0-7].=0.5` and
`cross_attn=0.8` give 0.4 on layers.3.cross_attn.to_q): entries are axes (depth, layer kind,
adapter) that compose, the way a block-weight user reads a row of weights and a per-layer
tweak together; the result never depends on the entries' order. A target no entry matches
keeps the adapter's strength. The per-target strength is just the strength given to the
formulas of the chosen semantics (runtime, blend or delta) for that target; 0 leaves the
target's weight exactly the base's. An entry that matches no target that would be merged is
an error naming it (exit 2), as is the same `[ADAPTER=]PATTERN` given twice (it would square).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sa3ckpt.errors import UsageError
from sa3ckpt.ops.merge.exclusions import Exclusion, parse_exclusion
from sa3ckpt.strengths import StrengthError, parse_strength

FLAG = "--strength-map"


@dataclass(frozen=True)
class StrengthEntry:
    """One `[ADAPTER=]PATTERN=FACTOR`: as typed, the target selector and the factor."""

    spec: str
    selector: Exclusion
    factor: float


@dataclass(frozen=True)
class TargetStrength:
    """The strength each adapter gets at one target, and the entries that made it."""

    target: str
    strengths: tuple[float | None, ...]  # per adapter (None: the adapter lacks the target)
    entries: tuple[tuple[str, ...], ...]  # per adapter: the specs that multiplied it

    def line(self) -> str:
        parts = []
        for index, (value, specs) in enumerate(zip(self.strengths, self.entries, strict=True), 1):
            if value is None:
                continue
            why = f" ({' × '.join(specs)})" if specs else ""
            parts.append(f"adapter {index} {value:g}{why}")
        return f"strength at {self.target}: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "strengths": list(self.strengths),
            "entries": [list(e) for e in self.entries],
        }


@dataclass(frozen=True)
class StrengthMap:
    """A parsed `--strength-map` (entries in the order given)."""

    entries: tuple[StrengthEntry, ...] = ()
    specs: tuple[str, ...] = field(default=())  # each --strength-map value as typed

    def __bool__(self) -> bool:
        return bool(self.entries)

    def factor(self, index: int, target: str) -> tuple[float, tuple[str, ...]]:
        """(product of the factors of every entry matching adapter `index` at `target`, specs)."""
        value, used = 1.0, []
        for entry in self.entries:
            if entry.selector.applies_to(index) and entry.selector.matches(target):
                value *= entry.factor
                used.append(entry.spec)
        return value, tuple(used)

    def resolve(
        self, targets: Sequence[str], stacks: Sequence[tuple[set[str], float]]
    ) -> dict[str, TargetStrength]:
        """Per target the strength of each adapter (stacks[i]: adapter i+1's targets and
        strength); UsageError naming an entry that matches no target here."""
        out: dict[str, TargetStrength] = {}
        used: set[str] = set()
        for target in targets:
            strengths: list[float | None] = []
            entries: list[tuple[str, ...]] = []
            for index, (held, strength) in enumerate(stacks, 1):
                if target not in held:
                    strengths.append(None)
                    entries.append(())
                    continue
                factor, specs = self.factor(index, target)
                used.update(specs)
                strengths.append(strength * factor)
                entries.append(specs)
            out[target] = TargetStrength(target, tuple(strengths), tuple(entries))
        unused = [e.spec for e in self.entries if e.spec not in used]
        if unused:
            raise UsageError(
                f"{FLAG} entry {unused[0]!r} matches no target that would be merged "
                "(check the pattern, its adapter, --exclude and --only)"
            )
        return out


def split_entries(text: str) -> list[str]:
    """Split a map on the commas outside `[...]` range groups."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_entry(spec: str, paths: Sequence[str]) -> StrengthEntry:
    """One `[ADAPTER=]PATTERN=FACTOR` (UsageError naming it when it is not one)."""
    selector_text, sep, value_text = spec.rpartition("=")
    if not sep or not selector_text:
        raise UsageError(f"{FLAG} entry {spec!r} is not [ADAPTER=]PATTERN=FACTOR")
    try:
        factor = parse_strength(value_text.strip(), of=f"{FLAG} entry {spec!r}")
    except StrengthError as exc:
        raise UsageError(str(exc)) from None
    selector = parse_exclusion(selector_text.strip(), paths, flag=FLAG)
    return StrengthEntry(spec, selector, factor)


def parse_strength_map(specs: Sequence[str], paths: Sequence[str]) -> StrengthMap:
    """Every `--strength-map` value (repeatable; each a comma-separated list of entries)."""
    entries: list[StrengthEntry] = []
    seen: dict[tuple[int | None, str], str] = {}
    for text in specs:
        for spec in split_entries(text):
            if not spec:
                raise UsageError(
                    f"{FLAG} {text!r} has an empty entry (two commas, or a trailing one)"
                )
            entry = parse_entry(spec, paths)
            key = (entry.selector.adapter, entry.selector.pattern)
            if key in seen:
                raise UsageError(
                    f"{FLAG} entries {seen[key]!r} and {spec!r} select the same targets; "
                    "give one factor (matching entries multiply)"
                )
            seen[key] = spec
            entries.append(entry)
    return StrengthMap(tuple(entries), tuple(specs))
