"""The PASS / FAIL / MALFORMED badge, coloured so the verdict is readable at a glance.

A base checkpoint gets a neutral BASE badge instead: the rules judge adapters, and a
FAIL for "not an adapter" would read as a broken file.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

# status -> (label, CSS class); unknown statuses render neutrally.
_LOOK = {
    "pass": ("PASS", "-pass"),
    "fail": ("FAIL", "-fail"),
    "malformed": ("MALFORMED", "-malformed"),
    "base": ("BASE", "-base"),
    "loading": ("…", "-pending"),
    "none": ("-", "-pending"),
}


class StatusBadge(Static):
    """Shows one validation status; set `status` to change it."""

    DEFAULT_CSS = """
    StatusBadge {
        width: auto;
        padding: 0 1;
        text-style: bold;
        &.-pass { background: $success; color: $text; }
        &.-fail { background: $error; color: $text; }
        &.-malformed { background: $warning; color: $background; }
        &.-base { background: $primary; color: $text; }
        &.-pending { background: $panel; color: $text-muted; }
    }
    """

    status: reactive[str] = reactive("none")

    def watch_status(self, status: str) -> None:
        label, css = _LOOK.get(status, (status.upper(), "-pending"))
        for _, other in _LOOK.values():
            self.remove_class(other)
        self.add_class(css)
        self.update(Text(label))
