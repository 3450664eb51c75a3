"""One adapter in the merge list: its path and a strength you can type or step by 0.1.

The strength field takes `+` and `-` as steps rather than characters because stepping is the
common edit; a minus sign can still be typed into an empty field to enter a negative value.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.validation import Number
from textual.widgets import Button, Input, Static

from tui.safe_text import plain

STEP = 0.1


def format_strength(value: float) -> str:
    """0.7000000001 -> '0.7'; whole numbers keep one decimal ('1.0')."""
    text = f"{round(value, 4):g}"
    return text if any(c in text for c in ".en") else f"{text}.0"


def parse_strength(text: str) -> float | None:
    """The typed strength, or None when it is not a finite number."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class StrengthInput(Input):
    """A number field where + / - (and up / down) step the value by 0.1."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "step(1)", "+0.1", key_display="↑/+"),
        Binding("down", "step(-1)", "-0.1", key_display="↓/-"),
    ]

    def __init__(self, value: float = 1.0, **kwargs: Any) -> None:
        super().__init__(
            format_strength(value),
            restrict=r"-?[0-9]*\.?[0-9]*",
            validators=[Number()],
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

    async def on_key(self, event: events.Key) -> None:
        """Take + and - before Input inserts them (a leading '-' in an empty field is typed)."""
        if event.character == "+" or (event.character == "-" and self.value):
            event.stop()
            event.prevent_default()
            self.action_step(1 if event.character == "+" else -1)


class AdapterRow(Horizontal):
    """Path, − button, strength field, + button and a remove button."""

    class RemoveRequested(Message):
        """The row's ✕ was pressed; its list decides what else changes when it goes."""

        def __init__(self, row: AdapterRow) -> None:
            super().__init__()
            self.row = row

    DEFAULT_CSS = """
    AdapterRow {
        height: 1;
        .adapter-path { width: 1fr; }
        StrengthInput { width: 8; margin: 0 1; }
        Button { min-width: 3; width: 3; }
        .remove { margin-left: 1; }
    }
    """

    def __init__(self, path: str, strength: float = 1.0) -> None:
        super().__init__()
        self.path = path
        self._initial = strength

    def compose(self) -> ComposeResult:
        yield Static(plain(self.path), classes="adapter-path")
        yield Button("−", classes="minus", compact=True, tooltip="strength −0.1")
        yield StrengthInput(self._initial)
        yield Button("+", classes="plus", compact=True, tooltip="strength +0.1")
        yield Button("✕", classes="remove", compact=True, variant="error", tooltip="remove")

    @property
    def strength_text(self) -> str:
        return self.query_one(StrengthInput).value

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.has_class("remove"):
            self.post_message(self.RemoveRequested(self))
        else:
            self.query_one(StrengthInput).action_step(1 if event.button.has_class("plus") else -1)
