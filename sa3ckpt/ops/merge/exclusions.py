"""`--exclude [ADAPTER=]PATTERN`: leave targets out of a merge, in every adapter or in one.

PATTERN is the official include/exclude syntax (`names.select`): a substring of the
canonical target name after `[a-b]` range expansion, e.g. `seconds_total` or
`transformer.layers.[0-3].`. Without a prefix it applies to every adapter; `N=PATTERN`
applies to the N-th adapter on the command line (1-based) and `PATH=PATTERN` to the adapter
given as exactly PATH. Target names never contain `=`, so the text before the last `=` is
the adapter. A prefix made only of digits is an index (write `./7` for a file named 7).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.errors import UsageError
from sa3ckpt.names.select import expand_ranges


@dataclass(frozen=True)
class Exclusion:
    """One --exclude: as typed, its pattern, and the adapter it is for (None: every one)."""

    spec: str
    pattern: str
    adapter: int | None
    expanded: tuple[str, ...]  # the literal substrings the pattern stands for

    def applies_to(self, index: int) -> bool:
        return self.adapter is None or self.adapter == index

    def matches(self, target: str) -> bool:
        return any(s in target for s in self.expanded)


@dataclass(frozen=True)
class Excluded:
    """A target left out of one adapter, and the --exclude that did it."""

    target: str
    adapter: int
    path: str
    spec: str

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "adapter": self.adapter,
            "path": self.path,
            "exclude": self.spec,
        }


def _adapter_of(prefix: str, spec: str, paths: Sequence[str], flag: str) -> int:
    if prefix.isdigit():
        index = int(prefix)
        if not 1 <= index <= len(paths):
            raise UsageError(
                f"{flag} {spec!r}: adapter {index} does not exist (1..{len(paths)} given)"
            )
        return index
    matches = [i for i, p in enumerate(paths, 1) if p == prefix]
    if not matches:
        raise UsageError(
            f"{flag} {spec!r}: {prefix!r} is neither an adapter number (1..{len(paths)}) "
            "nor an adapter path as given"
        )
    if len(matches) > 1:
        raise UsageError(f"{flag} {spec!r}: {prefix} is given {len(matches)} times; use N=")
    return matches[0]


def parse_exclusion(spec: str, paths: Sequence[str], *, flag: str = "--exclude") -> Exclusion:
    """One `[ADAPTER=]PATTERN` (UsageError for an empty pattern, bad range or unknown adapter).

    `flag` names the option in the messages: `--strength-map` selects targets with this same
    syntax (`ops.strength_map`), so the syntax has this one parser.
    """
    prefix, sep, pattern = spec.rpartition("=")
    adapter = _adapter_of(prefix, spec, paths, flag) if sep else None
    if not pattern:
        raise UsageError(f"{flag} {spec!r} has no pattern")
    try:
        expanded = tuple(expand_ranges(pattern))
    except ValueError as exc:
        raise UsageError(f"{flag} {spec!r}: {exc}") from None
    return Exclusion(spec, pattern, adapter, expanded)


def parse_exclusions(specs: Sequence[str], paths: Sequence[str]) -> list[Exclusion]:
    return [parse_exclusion(s, paths) for s in specs]


def apply_exclusions(
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    paths: Sequence[str],
    exclusions: Sequence[Exclusion],
) -> tuple[list[tuple[AdapterCheckpoint, float]], list[Excluded], list[str]]:
    """(checkpoints without their excluded targets, what was excluded, unused --exclude specs).

    The checkpoints are shallow copies with fewer targets, so everything downstream (the
    plan, the kernel, the stack report) sees the stack as merged.
    """
    out: list[tuple[AdapterCheckpoint, float]] = []
    excluded: list[Excluded] = []
    used: set[str] = set()
    for index, ((ckpt, strength), path) in enumerate(zip(ckpts, paths, strict=True), 1):
        kept = {}
        for target, params in ckpt.tensors.items():
            hits = [e for e in exclusions if e.applies_to(index) and e.matches(target)]
            used.update(e.spec for e in hits)
            if hits:
                excluded.append(Excluded(target, index, path, hits[0].spec))
            else:
                kept[target] = params
        out.append((dataclasses.replace(ckpt, tensors=kept) if exclusions else ckpt, strength))
    unused = [e.spec for e in exclusions if e.spec not in used]
    return out, excluded, unused
