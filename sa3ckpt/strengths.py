"""The one parser of `ADAPTER[:STRENGTH]` arguments and of typed strengths.

merge and combine take adapters as `path:0.7`; the TUI's strength fields take the number
alone. Both must agree on what a strength is, and a typo must not turn into something else:
`a.safetensors:abc` used to be looked up as a file named `a.safetensors:abc` (exit 3, "not
found"), and Python's `float` accepts `1_0`, `nan`, `inf` and non-ASCII digits. A strength
here is a plain decimal or exponent float (`0.7`, `-1.5`, `.5`, `2e-1`) that is finite; any
other suffix after the last `:` is a usage error naming it, unless the whole argument is an
existing path (a file may have a colon in its name) or the suffix holds a path separator
(`C:/x/a.safetensors`: the colon of a Windows drive, not a strength).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from sa3ckpt.errors import UsageError

STRENGTH_PATTERN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
"""A plain decimal or exponent float: no `_` separators, no hex, no nan/inf words."""

_PATH_SEPARATORS = ("/", "\\")


class StrengthError(UsageError):
    """A strength that is not a plain finite number (exit 2); `text` is what was typed."""

    def __init__(self, text: str, message: str) -> None:
        self.text = text
        super().__init__(message)


@dataclass(frozen=True)
class AdapterArg:
    """One `ADAPTER[:STRENGTH]` argument."""

    path: str
    strength: float


def parse_strength(text: str, *, of: str | None = None) -> float:
    """The strength `text` as a float; raises StrengthError naming it (and `of`, its adapter)."""
    where = f" of {of}" if of else ""
    if not STRENGTH_PATTERN.fullmatch(text):
        shown = repr(text) if text else "(empty)"
        raise StrengthError(
            text,
            f"strength {shown}{where} is not a number: write a plain decimal such as 0.7, "
            "-1.5 or 2e-1",
        )
    value = float(text)
    if not math.isfinite(value):  # 1e999 matches the pattern but overflows to inf
        raise StrengthError(text, f"strength {text!r}{where} is not a finite number")
    return value


def _holds_separator(text: str) -> bool:
    return any(sep in text for sep in _PATH_SEPARATORS)


def parse_adapter_arg(
    text: str, default: float = 1.0, *, exists: Callable[[str], bool] = os.path.lexists
) -> AdapterArg:
    """`path:0.7` -> (path, 0.7); `path` -> (path, default).

    The whole argument wins when it names an existing path. Otherwise the part after the last
    `:` must be a strength (StrengthError, exit 2), except that a part holding a path
    separator belongs to the path. A path that itself ends in a strength (`a:5:6`) is two
    strengths, also refused, unless that path exists.
    """
    if exists(text):
        return AdapterArg(text, default)
    path, sep, tail = text.rpartition(":")
    if not sep or _holds_separator(tail):
        return AdapterArg(text, default)
    if not path:
        raise UsageError(f"adapter argument {text!r} has no path before the ':'")
    value = parse_strength(tail, of=path)
    _, inner_sep, inner_tail = path.rpartition(":")
    if inner_sep and STRENGTH_PATTERN.fullmatch(inner_tail) and not exists(path):
        raise StrengthError(
            tail,
            f"adapter argument {text!r} has two strengths ({inner_tail!r} and {tail!r}): "
            "give one, as ADAPTER:STRENGTH",
        )
    return AdapterArg(path, value)
