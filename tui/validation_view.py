"""The validation tab: the verdict, its options, one row per finding, and the highlighted
finding's fix.

The options (`--strict`, `--model`) are the session's: they stay as set when another file
is chosen, every validation runs with them, and the tab says which options the verdict on
screen was computed with (a re-run is in a worker, so the two can differ for a moment).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Checkbox, DataTable, Label, Select, Static

from sa3ckpt.findings import Finding
from sa3ckpt.ops.inspect import KindReport
from sa3ckpt.ops.validate import FileResult
from tui.badge import StatusBadge, kind_status
from tui.safe_text import plain
from tui.validation_options import ValidationOptions, model_choices

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


def computed_with(options: ValidationOptions) -> Text:
    """The line saying which options the verdict on screen was computed with."""
    text = Text("verdict with ", style="dim")
    text.append(options.describe(), style="bold")
    return text


class ValidationView(Vertical):
    """Badge and counts, the options, a findings table (severity, rule, message) and a hint
    pane."""

    DEFAULT_CSS = """
    ValidationView {
        #validation-head { height: 1; padding: 0 1; }
        #validation-summary { width: 1fr; padding-left: 1; }
        #validation-options { height: 1; padding: 0 1; }
        #validation-strict { width: auto; margin-right: 2; }
        #validation-model-label { width: auto; padding-right: 1; }
        #validation-model { width: 22; }
        #validation-computed { height: 1; padding: 0 1; }
        #validation-table { height: 1fr; }
        #validation-detail { height: 7; border-top: solid $primary-muted; padding: 0 1; }
    }
    """

    class OptionsChanged(Message):
        """The user changed --strict or --model: the selection is to be validated again."""

        def __init__(self, options: ValidationOptions) -> None:
            super().__init__()
            self.options = options

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._findings: list[Finding] = []
        self._options = ValidationOptions()

    @property
    def options(self) -> ValidationOptions:
        """The session's validation options, as the controls show them."""
        return self._options

    def compose(self) -> ComposeResult:
        with Horizontal(id="validation-head"):
            yield StatusBadge(id="validation-badge")
            yield Static(id="validation-summary")
        with Horizontal(id="validation-options"):
            yield Checkbox(
                "strict",
                self._options.strict,
                id="validation-strict",
                compact=True,
                tooltip="--strict: warnings fail the verdict too",
            )
            yield Label("model", id="validation-model-label")
            yield Select(
                [(name, name) for name in model_choices()],
                value=self._options.model,
                allow_blank=False,
                type_to_search=False,  # letters are the screen's keys
                id="validation-model",
                compact=True,
                tooltip="--model: the family the adapter is checked against",
            )
        yield Static(id="validation-computed")
        table: DataTable[Text] = DataTable(id="validation-table", cursor_type="row")
        table.add_columns("sev", "rule", "message")
        yield table
        with VerticalScroll(id="validation-detail"):
            yield Static(Text("r re-runs validation", style="dim"), id="validation-detail-text")

    @on(Checkbox.Changed, "#validation-strict")
    @on(Select.Changed, "#validation-model")
    def _options_changed(self, event: Checkbox.Changed | Select.Changed) -> None:
        event.stop()
        model = self.query_one("#validation-model", Select).value
        strict = self.query_one("#validation-strict", Checkbox).value
        options = ValidationOptions(strict=strict, model=str(model))
        if options != self._options:
            self._options = options
            self.post_message(self.OptionsChanged(options))

    def set_options(self, options: ValidationOptions) -> None:
        """Set the controls (and the session options) without asking for a re-run."""
        self._options = options
        self.query_one("#validation-strict", Checkbox).value = options.strict
        self.query_one("#validation-model", Select).value = options.model

    def show_loading(self) -> None:
        self.query_one(StatusBadge).status = "loading"
        self.query_one("#validation-summary", Static).update(Text("validating…", style="dim"))
        self.query_one("#validation-computed", Static).update(
            computed_with(self._options).append("…", style="dim")
        )

    def show(
        self,
        result: FileResult | None,
        error: str | None = None,
        options: ValidationOptions | None = None,
    ) -> None:
        """Fill the table from a validation result computed with `options` (or show why
        there is none)."""
        options = options or ValidationOptions()
        self.query_one("#validation-computed", Static).update(computed_with(options))
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
        badge.status = options.status(result)
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

    def show_base(self, kind: KindReport | None = None) -> None:
        """Bases are not judged by the adapter rules; say so instead of a misleading FAIL."""
        self.query_one(StatusBadge).status = "base"
        self.query_one("#validation-summary", Static).update(
            Text("base checkpoint: the rules apply to adapters", style="dim")
        )
        self._clear_table()
        detail = _kind_detail(kind) if kind is not None else Text("")
        detail.append("press m to merge adapters into this base", style="dim")
        self._set_detail(detail)

    def show_kind(self, kind: KindReport) -> None:
        """Any other file that is not an SA3 DiT adapter: what it is, in one line."""
        self.query_one(StatusBadge).status = kind_status(kind)
        self.query_one("#validation-summary", Static).update(
            plain(f"not an SA3 DiT adapter: {kind.label}", "bold")
        )
        self._clear_table()
        self._set_detail(_kind_detail(kind))

    def _clear_table(self) -> None:
        self.query_one("#validation-table", DataTable).clear()
        self.query_one("#validation-computed", Static).update(
            Text("the adapter rules do not apply to this file", style="dim")
        )
        self._findings = []

    def _set_detail(self, text: Text) -> None:
        self.query_one("#validation-detail-text", Static).update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self._findings):
            self._set_detail(finding_detail(self._findings[event.cursor_row]))


def _kind_detail(kind: KindReport) -> Text:
    """The library's line on what the file is, for the detail pane."""
    text = plain(kind.not_a_dit_adapter(), "bold")
    text.append("\n")
    return text
