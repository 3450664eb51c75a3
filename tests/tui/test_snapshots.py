"""SVG snapshots of the main screens at 80x24 (pytest-textual-snapshot).

Deterministic by construction: the app starts on a fixture file given as a path relative
to fixtures/data (the autouse fixture changes into it), every worker has finished before
the picture is taken, and input cursors do not blink.
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from tests.tui.helpers import settle
from tui.app import Sa3ckptApp
from tui.strength import StrengthInput

SIZE = (80, 24)


async def ready(pilot: Pilot[object], *keys: str) -> None:
    """Wait for the start file, press `keys`, wait again, and stop cursor blinking."""
    await settle(pilot)
    for key in keys:
        await pilot.press(key)
        await settle(pilot)
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


def test_overview_snapshot(snap_compare) -> None:
    app = Sa3ckptApp("adapters/tiny-small/peft-dora")
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: ready(pilot))


def test_coverage_snapshot(snap_compare) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        await ready(pilot, "s")
        pilot.app.screen.query_one("#coverage-grid", DataTable).focus()
        await pilot.press("down", "right", "right")
        await settle(pilot)

    app = Sa3ckptApp("adapters/tiny-small/dora-rows.underfit.safetensors")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_validation_snapshot(snap_compare) -> None:
    app = Sa3ckptApp("adapters/tiny-small/lora.zero-effect.safetensors")
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: ready(pilot, "v"))


def test_merge_snapshot(snap_compare) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        await ready(pilot, "m")
        pilot.app.screen.query_one("#base", Input).value = "bases/tiny-small.official.safetensors"
        pilot.app.screen.query_one("#output", Input).value = "merged/tiny-small.lora.safetensors"
        await ready(pilot)

    app = Sa3ckptApp("adapters/tiny-small/lora.safetensors")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_merge_strength_error_snapshot(snap_compare) -> None:
    """A strength the CLI refuses: the field turns red and the CLI's reason shows under it."""

    async def run_before(pilot: Pilot[object]) -> None:
        await ready(pilot, "m")
        pilot.app.screen.query_one("#base", Input).value = "bases/tiny-small.official.safetensors"
        pilot.app.screen.query_one("#output", Input).value = "merged/tiny-small.lora.safetensors"
        field = pilot.app.screen.query_one(StrengthInput)
        field.focus()
        field.value = ""
        await pilot.press(*"1e999")
        await ready(pilot)

    app = Sa3ckptApp("adapters/tiny-small/lora.safetensors")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
