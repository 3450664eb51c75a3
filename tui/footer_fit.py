"""Keep a compact footer on one line: the palette key shows only when every key fits beside it.

Textual docks the command-palette key on the right of the footer, over whatever keys do not
fit; at 80 columns the browser's keys take the whole line, so there the palette key
(still on ctrl+p) steps aside instead of covering `q Quit`. The widths are the compact
footer's: the key, a space, the description, and one column between keys.
"""

from __future__ import annotations

from typing import Any

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

PALETTE_DESCRIPTION = "palette"  # Textual's own label for the ctrl+p key


def key_width(app: App[object], binding: Binding) -> int:
    """Columns one compact footer key takes, with the gap after it."""
    return len(app.get_key_display(binding)) + 1 + len(binding.description) + 1


def shown_keys_width(screen: Screen[Any]) -> int:
    """Columns the screen's shown, described bindings take in a compact footer."""
    seen: set[str] = set()
    width = 0
    for active in screen.active_bindings.values():
        binding = active.binding
        if not binding.show or binding.action in seen or binding.action.endswith("palette"):
            continue
        seen.add(binding.action)
        width += key_width(screen.app, binding)
    return width


def palette_width(app: App[object]) -> int:
    """The docked palette key: its key, a space, its label and its left border."""
    return (
        len(app.get_key_display(Binding(app.COMMAND_PALETTE_BINDING, "")))
        + 2
        + len(PALETTE_DESCRIPTION)
    )


def fit_palette(screen: Screen[Any], width: int) -> None:
    """Show the footer's palette key only when it covers no other key at `width` columns."""
    for footer in screen.query(Footer):
        footer.show_command_palette = shown_keys_width(screen) + palette_width(screen.app) <= width
