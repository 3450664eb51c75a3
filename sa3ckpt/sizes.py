"""Byte counts for people: one formatter, so the CLI and the TUI print a size the same way."""

from __future__ import annotations

import math

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'; bytes stay exact below 1 KiB (binary units, like the format limits)."""
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # unreachable; keeps type checkers calm


# Units a size argument may carry: decimal (the Hub's and diffusers' "10GB") and binary.
_PARSE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """'10GB' -> 10**9 * 10, '512MiB' -> 512 * 2**20, '4096' -> 4096; ValueError otherwise."""
    stripped = text.strip().upper().replace(" ", "")
    number = stripped.rstrip("KMGTIB")
    unit = stripped[len(number) :]
    if unit not in _PARSE_UNITS or not number:
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 500MB, 10GB, 2GiB)")
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"not a size: {text!r} (e.g. 4096, 500MB, 10GB, 2GiB)")
    size = int(value * _PARSE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"a size must be positive, not {text!r}")
    return size
