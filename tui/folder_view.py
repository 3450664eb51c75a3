"""The folder view: the audit table of a folder of adapters, sortable, with its checks.

A folder of training runs is read in a thread worker by the library's audit table
(`sa3ckpt.ops.inspect.audit`, header-only; `d` re-reads it with the data checks: hashes for
duplicates, lora_B / M_xs for zero effect), so the screen never blocks. Rows sort by step,
rank, type, status or name with a key or a click on the column header (again: reversed),
using the library's sort keys, so numbers sort as numbers here too. The highlighted row's
checks are spelled out below the table; Enter opens that file in the browser's views.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from sa3ckpt.ops.inspect import (
    BASE,
    FLAGGED,
    MALFORMED,
    OK,
    AuditRow,
    AuditTable,
    audit_paths,
    sort_rows,
)
from sa3ckpt.sizes import human_size
from tui.paths import display_path, is_openable
from tui.safe_text import joined, plain

STATUS_STYLE = {OK: "green", FLAGGED: "bold yellow", MALFORMED: "bold magenta", BASE: "cyan"}
NAME_WIDTH = 30  # the detail line below the table shows the whole name
SAFETENSORS = ".safetensors"


def folder_of(highlighted: Path | None, root: str) -> str:
    """The folder to audit: a highlighted folder itself, else the folder holding the
    highlighted file or PEFT folder, else the browser's root."""
    if highlighted is None:
        return root
    if highlighted.is_dir() and not is_openable(highlighted):
        return os.fspath(highlighted)
    return os.fspath(highlighted.parent)


def shown_name(name: str, width: int = NAME_WIDTH) -> str:
    """A relative name for the table: `.safetensors` dropped (the common case; other suffixes
    stay), then cut in the middle when long so the run folder and the step both stay."""
    if name.endswith(SAFETENSORS):
        name = name[: -len(SAFETENSORS)]
    if len(name) <= width:
        return name
    keep = width - 1
    return name[: keep // 2] + "…" + name[len(name) - (keep - keep // 2) :]


def _num(value: float | int | None) -> str:
    return "-" if value is None else f"{value:g}"


def status_cell(row: AuditRow) -> Text:
    """The status, or for a flagged row the codes of its checks (the detail line spells them)."""
    if row.flags and row.status == FLAGGED:
        return Text(",".join(dict.fromkeys(f.code for f in row.flags)), style="bold yellow")
    return Text(row.status, style=STATUS_STYLE.get(row.status, ""))


# (column key, header, cell, the sort key a header click uses or None)
Cell = Callable[[AuditRow], Text]
COLUMNS: tuple[tuple[str, str, Cell, str | None], ...] = (
    ("name", "name", lambda r: plain(shown_name(r.name)), "name"),
    ("step", "step", lambda r: Text(_num(r.step), justify="right"), "step"),
    ("epoch", "ep", lambda r: Text(_num(r.epoch), justify="right"), "epoch"),
    ("rank", "rank", lambda r: Text(_num(r.rank), justify="right"), "rank"),
    ("type", "type", lambda r: plain(r.adapter_type or "-"), "type"),
    ("status", "status / checks", status_cell, "status"),
    ("scale", "scale", lambda r: Text(_num(r.scale), justify="right"), None),
    ("targets", "tgt", lambda r: Text(_num(r.targets), justify="right"), None),
    ("family", "family", lambda r: plain(r.family or "-"), None),
    (
        "size",
        "size",
        lambda r: Text(human_size(r.size_bytes) if r.size_bytes is not None else "-"),
        None,
    ),
)
SORT_BY_COLUMN = {key: sort for key, _, _, sort in COLUMNS if sort is not None}


def row_detail(row: AuditRow) -> Text:
    """The highlighted row in full: its name, its cause if malformed, every check message."""
    lines = [plain(row.name, "bold")]
    if row.error:
        lines.append(Text.assemble((f"{row.status}: ", "bold magenta"), plain(row.error)))
    for flag in row.flags:
        lines.append(Text.assemble((f"{flag.code}: ", "bold yellow"), plain(flag.message)))
    if not row.error and not row.flags:
        lines.append(Text("no checks raised", style="dim"))
    return joined(lines)


def summary(table: AuditTable, sort: str, reverse: bool) -> Text:
    """'12 rows: 2 flagged, 10 ok · by step · d: data checks' (what ran, what d adds)."""
    counts = ", ".join(f"{n} {s}" for s, n in table.counts().items()) or "no adapters"
    order = f"by {sort}{', reversed' if reverse else ''}"
    ran = "data checks done" if table.hashed and table.deep else "d: data checks"
    return Text(f"{len(table.rows)} rows: {counts} · {order} · {ran}")


class FolderScreen(Screen[str | None]):
    """The audit table of one folder; dismisses with the path to open, or None (Esc)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "sort('step')", "Step", tooltip="Sort by step (again: reverse)"),
        Binding("r", "sort('rank')", "Rank", tooltip="Sort by rank (again: reverse)"),
        Binding("t", "sort('type')", "Type", tooltip="Sort by adapter type (again: reverse)"),
        Binding("c", "sort('status')", "Status", tooltip="Sort by status, problems first"),
        Binding("n", "sort('name')", "Name", tooltip="Sort by name (again: reverse)"),
        Binding("d", "deep", "Data checks", tooltip="Hash every file, read lora_B / M_xs"),
        Binding("escape", "back", "Back", tooltip="Back to the browser"),
    ]

    DEFAULT_CSS = """
    FolderScreen {
        #folder-title { height: 1; padding: 0 1; text-style: bold; }
        #folder-summary { height: 1; padding: 0 1; color: $text-muted; }
        #folder-table { height: 1fr; }
        #folder-detail { height: 4; border-top: solid $primary-muted; padding: 0 1; }
    }
    """

    def __init__(self, folder: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = display_path(folder)
        self.table: AuditTable | None = None
        self.sort = "name"
        self.reverse = False
        self.rows: list[AuditRow] = []  # in the order shown

    def compose(self) -> ComposeResult:
        yield Static(plain(f"folder {self.folder}"), id="folder-title")
        yield Static(Text("reading headers…", style="dim"), id="folder-summary")
        table: DataTable[Text] = DataTable(id="folder-table", cursor_type="row", zebra_stripes=True)
        for key, header, _, _ in COLUMNS:
            table.add_column(header, key=key)
        yield table
        yield Static(id="folder-detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self._audit(hashes=False)

    # --- reading ----------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="audit", exit_on_error=False)
    def _audit(self, hashes: bool) -> None:
        table = audit_paths([self.folder], hashes=hashes, deep=hashes)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show, table)

    def _show(self, table: AuditTable) -> None:
        self.table = table
        self._fill()

    def _fill(self) -> None:
        """(Re)fill the DataTable in the current order, keeping the highlighted file."""
        if self.table is None:
            return
        view = self.query_one(DataTable)
        current = self.highlighted
        rows = sort_rows(self.table.rows, self.sort)
        self.rows = rows[::-1] if self.reverse else rows
        view.clear()
        for row in self.rows:
            view.add_row(*(cell(row) for _, _, cell, _ in COLUMNS), key=row.path)
        self.query_one("#folder-summary", Static).update(
            summary(self.table, self.sort, self.reverse)
        )
        if current is not None and current in [r.path for r in self.rows]:
            view.move_cursor(row=[r.path for r in self.rows].index(current), animate=False)
        self._show_detail()

    @property
    def highlighted(self) -> str | None:
        """The path of the row under the cursor (None before the table is filled)."""
        view = self.query_one(DataTable)
        if not self.rows or view.cursor_row < 0 or view.cursor_row >= len(self.rows):
            return None
        return self.rows[view.cursor_row].path

    def _show_detail(self) -> None:
        detail = self.query_one("#folder-detail", Static)
        view = self.query_one(DataTable)
        if not self.rows:
            detail.update(Text("no adapter files in this folder", style="dim"))
        elif 0 <= view.cursor_row < len(self.rows):
            detail.update(row_detail(self.rows[view.cursor_row]))

    # --- events and actions -----------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter (or a click on a selected row): open that file in the browser's views."""
        event.stop()
        if event.row_key.value is not None:
            self.dismiss(event.row_key.value)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        sort = SORT_BY_COLUMN.get(str(event.column_key.value))
        if sort is not None:
            self.action_sort(sort)

    def action_sort(self, sort: str) -> None:
        """Sort by `sort`; the same key again reverses the order."""
        self.reverse = not self.reverse if sort == self.sort else False
        self.sort = sort
        self._fill()

    def action_deep(self) -> None:
        self.query_one("#folder-summary", Static).update(
            Text("hashing every file and reading lora_B / M_xs…", style="dim")
        )
        self._audit(hashes=True)

    def action_back(self) -> None:
        self.dismiss(None)
