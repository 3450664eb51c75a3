"""The text under the coverage grid: one target's tensors and, once loaded, its stats."""

from __future__ import annotations

from rich.text import Text

from sa3ckpt.ops.inspect import StatsReport, TargetStats
from tui.formatting import human_size, norm, shape
from tui.loading import TensorRow
from tui.safe_text import plain


def _stats_line(row: TargetStats) -> Text:
    text = Text("update ‖c·ΔW‖ ", style="bold")
    text.append(norm(row.update_norm))
    text.append("  ‖ΔW‖ ", style="bold")
    text.append(norm(row.delta_norm))
    text.append("\nzero effect ", style="bold")
    text.append("yes" if row.zero_effect else "no")
    nonfinite = row.nonfinite
    text.append("  NaN/Inf ", style="bold")
    if nonfinite:
        text.append_text(plain(", ".join(f"{p} {n}" for p, n in nonfinite.items()), "red"))
    else:
        text.append("none")
    return text


def target_detail(
    target: str,
    present: bool,
    tensors: list[TensorRow],
    stats: StatsReport | None,
) -> Text:
    """Name, one line per stored tensor (param, dtype, shape, bytes), then the stats line."""
    lines = [plain(target, "bold")]
    if not present:
        lines.append(Text("not in this adapter", style="dim"))
        return Text("\n").join(lines)
    width = max((len(t.param) for t in tensors), default=0)
    for t in tensors:
        line = plain(f"  {t.param:<{width}}  ", "cyan")
        line.append(f"{t.dtype:<5} {shape(t.shape):<12} {human_size(t.nbytes)}")
        lines.append(line)
    row = stats.targets.get(target) if stats else None
    if row is not None:
        lines.append(_stats_line(row))
    elif stats is None:
        lines.append(Text("press s to load stats (update norms, NaN/Inf)", style="dim"))
    return Text("\n").join(lines)
