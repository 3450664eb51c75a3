"""The coverage tab: blocks x the nine per-block modules, then top-level and conditioner rows.

Two tables share one detail pane: the grid for the per-block modules and a list for the
targets outside the blocks (they do not fit nine columns). Stats recolour the cells in
place; the tables are rebuilt, keeping the cursor, because the data set is small.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from sa3ckpt.ops.inspect import StatsReport
from tui.coverage_model import (
    LEGEND,
    Cell,
    block_rows,
    cell_text,
    extra_rows,
    heat_legend,
    max_norm,
    module_head,
)
from tui.formatting import coverage_line, norm
from tui.loading import Loaded
from tui.target_detail import target_detail

CELL = 4  # grid column width: a three-letter head and a space
GRID_MIN = 11  # header + 10 block rows: what fits beside the other parts at 80x24
# Lines the other parts keep: status (2), extras list (header + 2 rows), detail (7).
OTHERS = 2 + 3 + 7


def grid_height(available: int) -> int:
    """The grid's most lines: all the view's height the other parts do not need."""
    return max(GRID_MIN, available - OTHERS)


def centred(text: Text) -> Text:
    """A copy of a one-glyph cell text, centred in its column."""
    copy = text.copy()
    copy.justify = "center"
    return copy


class CoverageView(Vertical):
    """Grid, extras list and the highlighted target's detail."""

    DEFAULT_CSS = """
    CoverageView {
        #coverage-status { height: auto; max-height: 2; padding: 0 1; }
        #coverage-grid { height: auto; max-height: 11; }  /* then grid_height */
        #coverage-extras { height: 1fr; min-height: 3; }
        #coverage-detail { height: 7; border-top: solid $primary-muted; padding: 0 1; }
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._loaded: Loaded | None = None
        self._stats: StatsReport | None = None
        self._grid_cells: dict[tuple[int, int], Cell] = {}
        self._extra_cells: list[Cell] = []
        self._current: Cell | None = None

    def compose(self) -> ComposeResult:
        yield Static(
            Text("select an adapter to see its coverage", style="dim"), id="coverage-status"
        )
        yield DataTable(id="coverage-grid", cursor_type="cell", zebra_stripes=True, cell_padding=0)
        yield DataTable(id="coverage-extras", cursor_type="row")
        with VerticalScroll(id="coverage-detail"):
            yield Static(Text(LEGEND, style="dim"), id="coverage-detail-text")

    def on_resize(self, event: events.Resize) -> None:
        """A taller terminal shows more block rows (a medium family's 24 at 45 lines)."""
        self.query_one("#coverage-grid", DataTable).styles.max_height = grid_height(
            event.size.height
        )

    @property
    def stats(self) -> StatsReport | None:
        return self._stats

    def show(self, loaded: Loaded | None) -> None:
        """A newly loaded checkpoint: rebuild from its coverage map, forget old stats."""
        self._loaded, self._stats, self._current = loaded, None, None
        self._rebuild()
        self._set_detail(Text(LEGEND, style="dim"))

    def show_stats(self, stats: StatsReport) -> None:
        """Recolour the cells by update norm and refresh the detail pane."""
        self._stats = stats
        self._rebuild()
        if self._current is not None:
            self._detail_for(self._current)

    def _status_text(self) -> Text:
        loaded = self._loaded
        if loaded is None:
            return Text("select an adapter to see its coverage", style="dim")
        if loaded.is_base:
            return Text("a base checkpoint has no adapter coverage", style="dim")
        other = loaded.not_a_dit_adapter
        if other is not None:
            return Text(f"{other.label}: not an SA3 DiT adapter, no coverage", style="dim")
        if loaded.report is None or loaded.report.coverage_map is None:
            reason = "unreadable file" if loaded.report is None else "model family unknown"
            return Text(f"no coverage map ({reason})", style="yellow")
        if self._stats is not None:
            return heat_legend(max_norm(self._stats))
        return Text(f"{coverage_line(loaded.report)} · s: update norms")

    def _rebuild(self) -> None:
        self.query_one("#coverage-status", Static).update(self._status_text())
        grid = self.query_one("#coverage-grid", DataTable)
        extras = self.query_one("#coverage-extras", DataTable)
        grid_cursor, extras_cursor = grid.cursor_coordinate, extras.cursor_coordinate
        grid.clear(columns=True)
        extras.clear(columns=True)
        self._grid_cells, self._extra_cells = {}, []
        report = self._loaded.report if self._loaded else None
        coverage_map = report.coverage_map if report else None
        if coverage_map is None:
            return
        top = max_norm(self._stats)
        for module in coverage_map.modules:
            grid.add_column(Text(module_head(module), justify="center"), key=module, width=CELL)
        for row_index, (block, cells) in enumerate(block_rows(coverage_map)):
            grid.add_row(
                *(centred(cell_text(c, self._stats, top)) for c in cells),
                key=str(block),
                label=Text(f"{block} ", justify="right"),
            )
            for col_index, cell in enumerate(cells):
                self._grid_cells[(row_index, col_index)] = cell
        extras.add_column("outside the blocks", key="target")
        extras.add_column("", key="cell")
        extras.add_column("norm", key="norm")
        for label, cell in extra_rows(coverage_map):
            row = self._stats.targets.get(cell.target) if self._stats else None
            extras.add_row(
                Text(label),
                cell_text(cell, self._stats, top),
                Text(norm(row.update_norm) if row else ""),
                key=cell.target,
            )
            self._extra_cells.append(cell)
        grid.cursor_coordinate = grid_cursor
        extras.cursor_coordinate = extras_cursor

    def _set_detail(self, text: Text) -> None:
        self.query_one("#coverage-detail-text", Static).update(text)

    def _detail_for(self, cell: Cell) -> None:
        self._current = cell
        tensors = self._loaded.tensors.get(cell.target, []) if self._loaded else []
        self._set_detail(target_detail(cell.target, cell.present, tensors, self._stats))

    def _grid_cursor(self, table: DataTable[Text], coordinate: Coordinate) -> None:
        cell = self._grid_cells.get((coordinate.row, coordinate.column))
        if cell is not None:
            self._detail_for(cell)

    def _extras_cursor(self, row: int) -> None:
        if 0 <= row < len(self._extra_cells):
            self._detail_for(self._extra_cells[row])

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """The detail follows the table the user is in."""
        if event.widget.id == "coverage-grid":
            grid = self.query_one("#coverage-grid", DataTable)
            self._grid_cursor(grid, grid.cursor_coordinate)
        elif event.widget.id == "coverage-extras":
            self._extras_cursor(self.query_one("#coverage-extras", DataTable).cursor_row)

    def on_data_table_cell_highlighted(self, event: DataTable.CellHighlighted) -> None:
        if event.data_table.id == "coverage-grid" and event.data_table.has_focus:
            self._grid_cursor(event.data_table, event.coordinate)

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        if event.data_table.id == "coverage-grid":
            self._grid_cursor(event.data_table, event.coordinate)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "coverage-extras" and event.data_table.has_focus:
            self._extras_cursor(event.cursor_row)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "coverage-extras":
            self._extras_cursor(event.cursor_row)
