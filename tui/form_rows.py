"""The rows every form screen is built of: a labelled field, a radio choice, a row of flags.

The convert, combine and merge screens are forms over the same kinds of CLI flags; building
their rows here keeps one look (compact widgets, a bold label column) and one reading of a
radio choice, instead of a copy per screen.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Checkbox, Input, RadioButton, RadioSet, Static


def field(label: str, *widgets: Widget, classes: str = "") -> Horizontal:
    """One form line: the label in the screen's label column, then its widgets."""
    return Horizontal(
        Static(label, classes="field-label"), *widgets, classes=f"field {classes}".strip()
    )


def text_input(field_id: str, placeholder: str, value: str = "") -> Input:
    """A compact one-line text field (paths, patterns, numbers typed as the CLI reads them)."""
    return Input(value, placeholder=placeholder, id=field_id, compact=True)


def radios(field_id: str, labels: Iterable[str], classes: str = "radios") -> RadioSet:
    """A compact radio choice with its first label pressed (the CLI's default first)."""
    buttons = [RadioButton(label, value=i == 0) for i, label in enumerate(labels)]
    return RadioSet(*buttons, id=field_id, classes=classes, compact=True)


def choice(radio_set: RadioSet, values: tuple[str, ...]) -> str:
    """The pressed value of a radio set built from `values` (the first when none is)."""
    index = radio_set.pressed_index
    return values[index if 0 <= index < len(values) else 0]


def flag_boxes(names: Iterable[str], classes_of: str = "") -> list[Checkbox]:
    """One checkbox per flag, id = the flag's name; `classes_of` formats each one's classes
    from its name (the convert form shows or hides a flag by its `opt-NAME` class)."""
    return [
        Checkbox(name, id=name, classes=classes_of.format(name=name), compact=True)
        for name in names
    ]
