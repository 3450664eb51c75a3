"""What a checkpoint's name and its folders claim: rank, step, epoch (the audit table's input).

Training runs name their outputs `run-r16/lora-step=9000-epoch=3.safetensors`,
`checkpoint-step_9000`, `name-000003.safetensors` (kohya's epoch suffix). The audit table sorts
by these numbers (numerically: 900 < 9000 < 10000) and checks them against the content. Only
clear patterns are read, each a row of `PATTERNS`; an ambiguous short form like `-s9000` or
`e3` is not, because a name that only looks like a claim must not produce a false alarm.

A token boundary is any character other than a letter or a digit (`-`, `_`, `.`, `=`, space,
the start or the end), matched case-insensitively.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_B = r"(?<![a-z0-9])"  # the claim starts a token
_E = r"(?![a-z0-9])"  # and ends one


@dataclass(frozen=True)
class Pattern:
    """One way a name states a number: what it claims and the regex (group 1: the number)."""

    claims: str  # "rank" | "step" | "epoch"
    example: str
    regex: re.Pattern[str]


PATTERNS: tuple[Pattern, ...] = (
    Pattern("rank", "r16, r_16, r=16", re.compile(_B + r"r[-_=]?(\d+)" + _E)),
    Pattern("rank", "rank16, rank-16", re.compile(_B + r"rank[-_=]?(\d+)" + _E)),
    Pattern("rank", "dim16 (kohya network_dim)", re.compile(_B + r"dim[-_=]?(\d+)" + _E)),
    Pattern(
        "step", "step=9000, step_9000, global_step9000", re.compile(_B + r"steps?[-_=]?(\d+)" + _E)
    ),
    Pattern("step", "9000steps, 9000-steps", re.compile(_B + r"(\d+)[-_]?steps?" + _E)),
    Pattern("epoch", "epoch=3, epoch_3, epochs3", re.compile(_B + r"epochs?[-_=]?(\d+)" + _E)),
    Pattern("epoch", "ep3, ep-3", re.compile(_B + r"ep[-_=]?(\d+)" + _E)),
    Pattern("epoch", "name-000003 (kohya's 6-digit epoch suffix)", re.compile(r"-(\d{6})$")),
)
CLAIMS = ("rank", "step", "epoch")


@dataclass(frozen=True)
class Claim:
    """A number a name states: which, its value, and the name part that said it."""

    claims: str
    value: int
    source: str  # the name (file stem or folder) it was read from


def stem(name: str) -> str:
    """A file name without its checkpoint suffix (`a.b.safetensors` -> `a.b`)."""
    base, dot, suffix = name.rpartition(".")
    return base if dot and suffix.lower() in _SUFFIXES else name


_SUFFIXES = frozenset({"safetensors", "gguf", "ckpt", "pt", "pth", "npz"})


def claims_in(name: str) -> dict[str, Claim]:
    """The first claim of each kind in one name part (a file stem or a folder name)."""
    text = stem(name)
    lowered = text.lower()
    found: dict[str, Claim] = {}
    taken: list[tuple[int, int]] = []  # digits already read by an earlier pattern
    for pattern in PATTERNS:
        if pattern.claims in found:
            continue
        for match in pattern.regex.finditer(lowered):
            start, end = match.span(1)
            if any(start < e and s < end for s, e in taken):
                continue  # `step-000100` is a step, not also kohya's epoch 100
            found[pattern.claims] = Claim(pattern.claims, int(match.group(1)), text)
            taken.append((start, end))
            break
    return found


@dataclass(frozen=True)
class NameClaims:
    """Claims of the checkpoint's own name and of each folder between it and the root."""

    own: dict[str, Claim]
    folders: list[dict[str, Claim]]  # nearest folder first

    def value(self, claims: str) -> Claim | None:
        """The claim that names this checkpoint: its own name first, then the nearest folder."""
        for part in (self.own, *self.folders):
            if claims in part:
                return part[claims]
        return None

    def all(self, claims: str) -> list[Claim]:
        """Every claim of a kind, own name first (the checks test each one)."""
        return [part[claims] for part in (self.own, *self.folders) if claims in part]


def name_claims(relative: str) -> NameClaims:
    """Claims of a path relative to the audited root (`run-r16/lora-step=9000.safetensors`)."""
    parts = [p for p in relative.replace(os.sep, "/").split("/") if p and p != "."]
    if not parts:
        return NameClaims({}, [])
    return NameClaims(claims_in(parts[-1]), [claims_in(p) for p in reversed(parts[:-1])])


_NATURAL = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders digit runs by value: `run-900` < `run-9000` < `run-10000`."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.lower())
        for part in _NATURAL.split(text)
        if part
    )
