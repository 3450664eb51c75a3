"""SVG snapshots of the merge screen's options and of a preview at 80x24.

Deterministic like tests/tui/test_snapshots.py: paths relative to fixtures/data, every
worker finished before the picture, no blinking cursors. The output path is never
written (only previews run here).
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Checkbox, Input

from tests.tui.test_snapshots import SIZE, ready
from tui.app import Sa3ckptApp

BASE = "bases/tiny-small.official.safetensors"
DORA_ROWS = "adapters/tiny-small/dora-rows.safetensors"
DORA_COLS = "adapters/tiny-small/dora-cols.safetensors"
OUTPUT = "merged/tiny-small.dora-stack.safetensors"


async def dora_stack_form(pilot: Pilot[object]) -> None:
    """The merge screen with the two-DoRA stack on the fixture base."""
    await ready(pilot, "m")
    screen = pilot.app.screen
    screen.query_one("#base", Input).value = BASE
    screen.query_one("#output", Input).value = OUTPUT
    screen.query_one("#adapter-path", Input).value = DORA_COLS
    await screen.action_add_adapter()  # type: ignore[attr-defined]
    await ready(pilot)


def test_merge_options_snapshot(snap_compare) -> None:
    """The form scrolled to the options: fp32, --only dit, one --exclude, strict ticked."""

    async def run_before(pilot: Pilot[object]) -> None:
        await dora_stack_form(pilot)
        screen = pilot.app.screen
        for radio, presses in (("#dtype", 2), ("#only", 1)):
            screen.query_one(radio).focus()
            await pilot.press(*["right"] * presses, "enter")
        field = screen.query_one("#exclude-pattern", Input)
        field.focus()
        await pilot.press(*"2=seconds_total", "enter")
        await pilot.press(*"3=layers")  # not added: the CLI's reason shows under the field
        screen.query_one("#strict", Checkbox).focus()
        await pilot.press("space")
        await ready(pilot)

    assert snap_compare(Sa3ckptApp(DORA_ROWS), terminal_size=SIZE, run_before=run_before)


def test_merge_preview_snapshot(snap_compare) -> None:
    """ctrl+o on a two-DoRA stack: the seconds-conditioner warning first, then the plan."""

    async def run_before(pilot: Pilot[object]) -> None:
        await dora_stack_form(pilot)
        await ready(pilot, "ctrl+o")

    assert snap_compare(Sa3ckptApp(DORA_ROWS), terminal_size=SIZE, run_before=run_before)
