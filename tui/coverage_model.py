"""The coverage grid as data: which target sits in which cell, and how each cell looks.

Separate from the widget so that the mapping (block x module -> target) and the colour scale
can be tested without a terminal, and so both tables of the coverage view share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text

from sa3ckpt.names.modules import block_target, short_block_module, short_label
from sa3ckpt.ops.inspect import CoverageMap, StatsReport

# Column heads are the shared abbreviations of names.modules (the detail pane names them fully).
LEGEND = "qkv/sao self-attn · caq/ckv/cao cross-attn · ff0/ff2 feed-fwd · le0/le2 local"

HEAT_GLYPHS = "▁▂▄▆█"
HEAT_COLOURS = ("#4a7fc1", "#3aa6a0", "#8cc152", "#f6bb42", "#e9573f")
PRESENT = Text("●", style="green")
ABSENT = Text("·", style="bright_black")


@dataclass(frozen=True)
class Cell:
    """One target's place in the view and what the stats say about it."""

    target: str
    present: bool


def module_head(suffix: str) -> str:
    """Column heading for a per-block module suffix."""
    return short_block_module(suffix)


def short_name(target: str) -> str:
    """A top-level or conditioner target as a short row label (sa3.cpp stem when known)."""
    return short_label(target)


def block_rows(coverage_map: CoverageMap) -> list[tuple[int, list[Cell]]]:
    """(block index, the nine cells of that block) in block order."""
    modules = coverage_map.modules
    return [
        (
            row.block,
            [
                Cell(block_target(row.block, module), bool(present))
                for module, present in zip(modules, row.present, strict=True)
            ],
        )
        for row in coverage_map.blocks
    ]


def extra_rows(coverage_map: CoverageMap) -> list[tuple[str, Cell]]:
    """Top-level then conditioner targets, each with its short label."""
    extras = {**coverage_map.top_level, **coverage_map.conditioner}
    return [(short_name(t), Cell(t, bool(present))) for t, present in extras.items()]


def max_norm(stats: StatsReport | None) -> float:
    """The largest finite update norm over all targets (0.0 when there is none)."""
    if not stats:
        return 0.0
    norms = [
        r.update_norm
        for r in stats.targets.values()
        if r.update_norm is not None and math.isfinite(r.update_norm)
    ]
    return max(norms, default=0.0)


def heat_level(norm: float, top: float) -> int:
    """0..4: where `norm` falls between zero and the largest norm of the adapter."""
    if top <= 0:
        return 0
    return min(len(HEAT_GLYPHS) - 1, max(0, math.ceil(len(HEAT_GLYPHS) * norm / top) - 1))


def cell_text(cell: Cell, stats: StatsReport | None, top: float) -> Text:
    """● present / · absent; with stats a bar coloured by update norm, ○ no effect, ! NaN/Inf."""
    if not cell.present:
        return ABSENT
    row = stats.targets.get(cell.target) if stats else None
    if row is None:
        return PRESENT
    if row.nonfinite:
        return Text("!", style="bold red")
    if row.zero_effect:
        return Text("○", style="yellow")
    norm = row.update_norm
    if norm is None:
        return PRESENT
    level = heat_level(norm, top)
    return Text(HEAT_GLYPHS[level], style=HEAT_COLOURS[level])


def heat_legend(top: float) -> Text:
    """'update norm ▁▂▄▆█ 0 … 0.538' in the same colours as the cells."""
    text = Text("update norm ")
    for glyph, colour in zip(HEAT_GLYPHS, HEAT_COLOURS, strict=True):
        text.append(glyph, style=colour)
    text.append(f" up to {top:.4g}  ○ no effect  ! NaN/Inf")
    return text
