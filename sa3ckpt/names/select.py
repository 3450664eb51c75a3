"""include/exclude target selection, with the official `[a-b]` numeric range expansion.

The official loader re-applies include/exclude at load time as substring matches on module
names after expanding `[a-b]` ranges (`layers.[0-3].` -> `layers.0.` ... `layers.3.`). We
match on canonical names, which contain the official module names as substrings.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

# A bracket group of numbers and ranges: `[0-3]`, `[1,4,7-9]`. Anything else in brackets is
# left literal, because module names never contain brackets and users may mean them verbatim.
_RANGE_GROUP = re.compile(r"\[(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)\]")
MAX_EXPANSIONS = 100_000


def _group_values(body: str, pattern: str) -> list[str]:
    values: list[str] = []
    for part in body.split(","):
        low_text, _, high_text = part.partition("-")
        low = int(low_text)
        high = int(high_text) if high_text else low
        if high < low:
            raise ValueError(f"range [{part}] in pattern {pattern!r} runs backwards")
        values.extend(str(n) for n in range(low, high + 1))
    return values


def expand_ranges(pattern: str) -> list[str]:
    """All literal substrings a pattern stands for (one per combination of its range groups)."""
    pieces = _RANGE_GROUP.split(pattern)
    # split() alternates literal text and captured group bodies.
    literals, groups = pieces[0::2], pieces[1::2]
    choices = [_group_values(body, pattern) for body in groups]
    total = 1
    for choice in choices:
        total *= len(choice)
    if total > MAX_EXPANSIONS:
        raise ValueError(f"pattern {pattern!r} expands to {total} strings (limit {MAX_EXPANSIONS})")
    expanded = []
    for combo in itertools.product(*choices):
        text = literals[0]
        for value, literal in zip(combo, literals[1:], strict=True):
            text += value + literal
        expanded.append(text)
    return expanded


def _expand_all(patterns: Iterable[str] | None) -> list[str]:
    return [s for p in patterns or () for s in expand_ranges(p)]


def is_selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """True when `name` matches an include substring (or include is empty) and no exclude."""
    includes = _expand_all(include)
    excludes = _expand_all(exclude)
    if includes and not any(s in name for s in includes):
        return False
    return not any(s in name for s in excludes)


def select(
    names: Iterable[str], include: Sequence[str] | None, exclude: Sequence[str] | None
) -> list[str]:
    """The names selected by include/exclude, in input order (patterns expanded once)."""
    includes = _expand_all(include)
    excludes = _expand_all(exclude)
    return [
        n
        for n in names
        if (not includes or any(s in n for s in includes)) and not any(s in n for s in excludes)
    ]


def peft_selects(name: str, target_modules: str | Sequence[str] | None) -> bool:
    """PEFT's own target_modules rule: a list matches whole trailing name components, a
    string is a regular expression that must match the full name."""
    if target_modules is None:
        return False
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)
