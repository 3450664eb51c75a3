"""Command palette entries generated from the current screen's key bindings.

Deriving the entries from BINDINGS means every action a key can run is also in the
palette, with the binding's tooltip as help, and the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider


@dataclass(frozen=True)
class PaletteEntry:
    """One screen action as the palette shows it."""

    title: str
    help: str
    run: Callable[[], Any]


class ScreenActions(Provider):
    """One entry per described, enabled binding of the screen the palette came from.

    The screen's own bindings kept off a full footer (show=False) are listed too: the
    palette is where a key that did not fit can still be found.
    """

    def entries(self) -> Iterator[PaletteEntry]:
        seen: set[str] = set()
        own = type(self.screen).__dict__.get("BINDINGS", [])
        for active in self.screen.active_bindings.values():
            binding = active.binding
            listed = binding.show or binding in own  # not Textual's hidden focus/copy keys
            if active.node is not self.screen or not (listed and binding.description):
                continue
            if not active.enabled or binding.action in seen:
                continue
            seen.add(binding.action)
            key = self.app.get_key_display(binding)
            yield PaletteEntry(
                binding.description,
                f"{active.tooltip or binding.description} (key: {key})",
                partial(self.app.run_action, binding.action, active.node),
            )

    async def discover(self) -> Hits:
        for entry in self.entries():
            yield DiscoveryHit(entry.title, entry.run, help=entry.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for entry in self.entries():
            score = matcher.match(f"{entry.title} {entry.help}")
            if score > 0:
                yield Hit(score, matcher.highlight(entry.title), entry.run, help=entry.help)
