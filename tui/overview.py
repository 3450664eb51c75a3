"""The overview tab: what the selected checkpoint is, with its validation badge."""

from __future__ import annotations

import os

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from tui.badge import StatusBadge, kind_status
from tui.loading import Loaded
from tui.overview_rows import Row, base_rows, other_rows, overview_rows
from tui.safe_text import plain

HINT = "Pick an adapter file or PEFT folder on the left (Enter) to inspect it."


def _grid(rows: list[Row]) -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True, min_width=8)
    table.add_column(ratio=1, overflow="fold")
    for label, value in rows:
        table.add_row(Text(label, style="bold cyan"), value)
    return table


class OverviewPanel(VerticalScroll):
    """Title line (badge + path) above a label/value grid; shows errors as one line."""

    DEFAULT_CSS = """
    OverviewPanel {
        padding: 0 1;
        #overview-title { height: 1; margin-bottom: 1; }
        #overview-path { width: 1fr; padding-left: 1; text-style: bold; }
        #overview-body { height: auto; }
    }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="overview-title"):
            yield StatusBadge(id="overview-badge")
            yield Static(id="overview-path")
        yield Static(Text(HINT, style="dim"), id="overview-body")

    def show_loading(self, path: str) -> None:
        self.query_one("#overview-path", Static).update(plain(os.path.basename(path)))
        self.query_one(StatusBadge).status = "loading"
        self.query_one("#overview-body", Static).update(Text("loading…", style="dim"))

    def show(self, loaded: Loaded) -> None:
        self.query_one("#overview-path", Static).update(plain(os.path.basename(loaded.path)))
        badge = self.query_one(StatusBadge)
        options, result = loaded.validation_options, loaded.validation
        badge.status = options.status(result) if result else "none"
        other_kind = loaded.not_a_dit_adapter
        if other_kind is not None:  # a base, codec weights, a codec adapter: say which
            badge.status = kind_status(other_kind)
        body = self.query_one("#overview-body", Static)
        if loaded.other is not None:
            body.update(_grid(other_rows(loaded.other)))
        elif loaded.base is not None:
            badge.status = "base"
            body.update(_grid(base_rows(loaded.base, loaded.kind)))
        elif loaded.report is None:
            message = Text("cannot read this file: ", style="bold red")
            message.append_text(plain(loaded.error or "unknown error"))
            body.update(_grid([("path", plain(loaded.path)), ("error", message)]))
        else:
            body.update(_grid(overview_rows(loaded.report)))
        self.scroll_home(animate=False)
