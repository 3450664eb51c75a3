"""Byte counts for people: one formatter, so the CLI and the TUI print a size the same way."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'; bytes stay exact below 1 KiB (binary units, like the format limits)."""
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # unreachable; keeps type checkers calm
