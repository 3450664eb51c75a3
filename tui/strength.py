"""One adapter in the merge list: its path and a strength you can type or step by 0.1.

A strength field reads exactly what the CLI reads (`sa3ckpt.strengths`): every character is
typed as-is (`-`, `+`, `e` are part of `-0.5` and `1e-3`), a value the CLI refuses shows the
CLI's reason under the field, and stepping lives on the arrow keys and the −/+ buttons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widget import Widget
from textual.widgets import Button, Input, Static

from sa3ckpt import strengths
from tui.safe_text import plain

STEP = 0.1


def format_strength(value: float) -> str:
    """0.7000000001 -> '0.7'; whole numbers keep one decimal ('1.0')."""
    text = f"{round(value, 4):g}"
    return text if any(c in text for c in ".en") else f"{text}.0"


def strength_error(text: str) -> str | None:
    """The CLI's reason for refusing `text` as a strength, or None when it reads."""
    try:
        strengths.parse_strength(text)
    except strengths.StrengthError as exc:
        return str(exc)
    return None


def parse_strength(text: str) -> float | None:
    """The typed strength as the CLI reads it, or None when the CLI would refuse it."""
    try:
        return strengths.parse_strength(text)
    except strengths.StrengthError:
        return None


class CliStrength(Validator):
    """Marks the field invalid (red) for any text the CLI would refuse, with its reason."""

    def validate(self, value: str) -> ValidationResult:
        reason = strength_error(value)
        return self.success() if reason is None else self.failure(reason)


class StrengthInput(Input):
    """A strength field: type any number the CLI takes; ↑ / ↓ step the value by 0.1."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "step(1)", "+0.1", key_display="↑"),
        Binding("down", "step(-1)", "−0.1", key_display="↓"),
    ]

    def __init__(self, value: float = 1.0, **kwargs: Any) -> None:
        super().__init__(
            format_strength(value),
            validators=[CliStrength()],
            validate_on=["changed", "submitted"],
            compact=True,
            **kwargs,
        )

    @property
    def strength(self) -> float | None:
        return parse_strength(self.value)

    def action_step(self, direction: int) -> None:
        """Move the value by one step; an unreadable value restarts from 0."""
        current = self.strength if self.strength is not None else 0.0
        self.value = format_strength(current + direction * STEP)
        self.cursor_position = len(self.value)


class AdapterRow(Vertical):
    """Path, − button, strength field, + button, a remove button; the field's error below."""

    class RemoveRequested(Message):
        """The row's ✕ was pressed; its list decides what else changes when it goes."""

        def __init__(self, row: AdapterRow) -> None:
            super().__init__()
            self.row = row

    DEFAULT_CSS = """
    AdapterRow {
        height: auto;
        .adapter-line { height: 1; }
        .adapter-path { width: 1fr; }
        StrengthInput { width: 10; margin: 0 1; }
        Button { min-width: 3; width: 3; }
        .remove { margin-left: 1; }
        .strength-error { color: $error; height: auto; display: none; }
    }
    """

    def __init__(self, path: str, strength: float = 1.0) -> None:
        super().__init__()
        self.path = path
        self._initial = strength

    def compose(self) -> ComposeResult:
        with Horizontal(classes="adapter-line"):
            yield Static(plain(self.path), classes="adapter-path")
            yield Button("−", classes="minus", compact=True, tooltip="strength −0.1 (↓)")
            yield StrengthInput(self._initial)
            yield Button("+", classes="plus", compact=True, tooltip="strength +0.1 (↑)")
            yield Button("✕", classes="remove", compact=True, variant="error", tooltip="remove")
        yield Static(classes="strength-error")

    @property
    def strength_text(self) -> str:
        return self.query_one(StrengthInput).value

    @property
    def error_text(self) -> str:
        """The parse error shown under the field ('' while the strength reads)."""
        return str(self.query_one(".strength-error", Static).content)

    def on_input_changed(self, event: Input.Changed) -> None:
        """Show the CLI's reason under the field while the text is not a strength."""
        reason = strength_error(event.value)
        error = self.query_one(".strength-error", Static)
        error.update(plain(reason or ""))
        error.display = reason is not None

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.has_class("remove"):
            self.post_message(self.RemoveRequested(self))
        else:
            self.query_one(StrengthInput).action_step(1 if event.button.has_class("plus") else -1)


async def add_typed_adapter(screen: Widget, show_error: Callable[[str], None]) -> bool:
    """Mount a row for the path typed in `#adapter-path` under `#adapters` and clear the field.

    The one way the merge and combine forms grow their adapter list, so both refuse an empty
    field with the same words; False (the reason shown) when nothing was added.
    """
    field = screen.query_one("#adapter-path", Input)
    path = field.value.strip()
    if not path:
        show_error("type an adapter path first")
        return False
    await screen.query_one("#adapters").mount(AdapterRow(path))
    field.value = ""
    show_error("")
    return True
