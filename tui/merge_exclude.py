"""The --exclude list of the merge form: a field that adds `[ADAPTER=]PATTERN` specs, and rows.

A spec is read by the CLI's own parser (`ops.exclusions`) against the adapters in the form
(`N=` counts them from 1, `PATH=` names one as listed), so a typo shows the CLI's reason
under the field while typing, and an unreadable spec is never added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Input, Static

from tui.merge_plan import exclude_error
from tui.safe_text import plain


class CliExclude(Validator):
    """Marks the field invalid for a spec the CLI would refuse with the current adapters."""

    def __init__(self, paths: Callable[[], Sequence[str]]) -> None:
        super().__init__()
        self._paths = paths

    def validate(self, value: str) -> ValidationResult:
        if not value.strip():
            return self.success()  # an empty field adds nothing; it is not an error
        reason = exclude_error(value.strip(), self._paths())
        return self.success() if reason is None else self.failure(reason)


class ExcludeRow(Horizontal):
    """One added --exclude spec and a ✕ that removes it."""

    class RemoveRequested(Message):
        def __init__(self, row: ExcludeRow) -> None:
            super().__init__()
            self.row = row

    DEFAULT_CSS = """
    ExcludeRow {
        height: 1;
        .exclude-spec { width: 1fr; }
        Button { min-width: 3; width: 3; }
    }
    """

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec

    def compose(self) -> ComposeResult:
        yield Static(plain(f"--exclude {self.spec}"), classes="exclude-spec")
        yield Button(
            "✕", classes="remove", compact=True, variant="error", tooltip="remove this --exclude"
        )

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.RemoveRequested(self))


class ExcludeList(Vertical):
    """The field, its inline error and the specs added so far (in the order given)."""

    DEFAULT_CSS = """
    ExcludeList {
        height: auto;
        #exclude-line { height: 1; }
        .field-label { width: 10; text-style: bold; }
        #exclude-pattern { width: 1fr; }
        #add-exclude { min-width: 7; margin-left: 1; }
        #exclude-error { color: $error; height: auto; display: none; }
        ExcludeRow { padding-left: 10; }
    }
    """

    def __init__(self, paths: Callable[[], Sequence[str]]) -> None:
        super().__init__(id="excludes")
        self._paths = paths

    def compose(self) -> ComposeResult:
        with Horizontal(id="exclude-line"):
            yield Static("exclude", classes="field-label")
            yield Input(
                placeholder="[ADAPTER=]PATTERN, e.g. seconds_total or 2=layers.[0-3].",
                id="exclude-pattern",
                validators=[CliExclude(self._paths)],
                validate_on=["changed", "submitted"],
                compact=True,
            )
            yield Button("add", id="add-exclude", compact=True)
        yield Static(id="exclude-error")

    @property
    def specs(self) -> tuple[str, ...]:
        return tuple(row.spec for row in self.query(ExcludeRow))

    @property
    def error_text(self) -> str:
        return str(self.query_one("#exclude-error", Static).content)

    def show_error(self, reason: str | None) -> None:
        error = self.query_one("#exclude-error", Static)
        error.update(plain(reason or ""))
        error.display = reason is not None

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "exclude-pattern":
            return
        text = event.value.strip()
        self.show_error(exclude_error(text, self._paths()) if text else None)

    async def add(self) -> bool:
        """Add the typed spec (True), or show why the CLI would refuse it (False)."""
        field = self.query_one("#exclude-pattern", Input)
        spec = field.value.strip()
        if not spec:
            self.show_error("type a pattern first, e.g. seconds_total")
            return False
        reason = exclude_error(spec, self._paths())
        if reason is not None:
            self.show_error(reason)
            return False
        await self.mount(ExcludeRow(spec))
        field.value = ""
        self.show_error(None)
        return True

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "exclude-pattern":
            event.stop()
            await self.add()

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "add-exclude":
            event.stop()
            await self.add()

    async def on_exclude_row_remove_requested(self, event: ExcludeRow.RemoveRequested) -> None:
        event.stop()
        await event.row.remove()
