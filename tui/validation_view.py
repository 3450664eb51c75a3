"""The validation tab: the verdict, one row per finding, and the highlighted finding's fix."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from sa3ckpt.findings import Finding
from sa3ckpt.ops.validate import FileResult
from tui.badge import StatusBadge
from tui.safe_text import plain

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SEVERITY_SHORT = {"error": "err", "warning": "warn", "info": "info"}  # leaves room for messages
MESSAGE_WIDTH = 200  # the table shows the start; the detail pane shows the whole message


def summary(result: FileResult) -> Text:
    """'2 errors · 1 warning · 0 infos' for the line beside the badge."""
    parts = []
    for severity in ("error", "warning", "info"):
        n = result.count(severity)
        style = SEVERITY_STYLE[severity] if n else "dim"
        parts.append(Text(f"{n} {severity}{'' if n == 1 else 's'}", style))
    return Text(" · ").join(parts)


def finding_detail(finding: Finding) -> Text:
    """The whole message and the rule's fix hint."""
    text = Text.assemble((finding.severity, SEVERITY_STYLE[finding.severity]), " ")
    text.append_text(plain(finding.rule, "bold"))
    text.append("\n")
    text.append_text(plain(finding.message))
    text.append("\nfix: ", style="bold green")
    text.append_text(plain(finding.hint))
    return text


class ValidationView(Vertical):
    """Badge and counts, a findings table (severity, rule, message) and a hint pane."""

    DEFAULT_CSS = """
    ValidationView {
        #validation-head { height: 1; padding: 0 1; }
        #validation-summary { width: 1fr; padding-left: 1; }
        #validation-table { height: 1fr; }
        #validation-detail { height: 7; border-top: solid $primary-muted; padding: 0 1; }
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._findings: list[Finding] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="validation-head"):
            yield StatusBadge(id="validation-badge")
            yield Static(id="validation-summary")
        table: DataTable[Text] = DataTable(id="validation-table", cursor_type="row")
        table.add_columns("sev", "rule", "message")
        yield table
        with VerticalScroll(id="validation-detail"):
            yield Static(Text("r re-runs validation", style="dim"), id="validation-detail-text")

    def show_loading(self) -> None:
        self.query_one(StatusBadge).status = "loading"
        self.query_one("#validation-summary", Static).update(Text("validating…", style="dim"))

    def show(self, result: FileResult | None, error: str | None = None) -> None:
        """Fill the table from a validation result (or show why there is none)."""
        badge = self.query_one(StatusBadge)
        head = self.query_one("#validation-summary", Static)
        table = self.query_one("#validation-table", DataTable)
        table.clear()
        self._findings = list(result.findings) if result else []
        if result is None:
            badge.status = "none"
            head.update(plain(error or "not validated", "red" if error else "dim"))
            self._set_detail(Text(""))
            return
        badge.status = result.status(False)
        head.update(summary(result))
        for finding in self._findings:
            table.add_row(
                Text(SEVERITY_SHORT[finding.severity], SEVERITY_STYLE[finding.severity]),
                plain(finding.rule),
                plain(finding.message, max_len=MESSAGE_WIDTH),
            )
        if self._findings:
            self._set_detail(finding_detail(self._findings[0]))
        else:
            self._set_detail(Text("no findings: nothing to fix", style="green"))

    def show_base(self) -> None:
        """Bases are not judged by the adapter rules; say so instead of a misleading FAIL."""
        self.query_one(StatusBadge).status = "base"
        self.query_one("#validation-summary", Static).update(
            Text("base checkpoint: the rules apply to adapters", style="dim")
        )
        self.query_one("#validation-table", DataTable).clear()
        self._findings = []
        self._set_detail(Text("press m to merge adapters into this base", style="dim"))

    def _set_detail(self, text: Text) -> None:
        self.query_one("#validation-detail-text", Static).update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self._findings):
            self._set_detail(finding_detail(self._findings[event.cursor_row]))
