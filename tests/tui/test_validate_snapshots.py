"""SVG snapshots at 80x24: the validation tab with options set, and a codec file's overview.

Deterministic as tests/tui/test_snapshots.py: the app starts on a fixture path relative to
fixtures/data, every worker has finished before the picture is taken.
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Checkbox, Select

from tests.tui.helpers import settle
from tui.app import Sa3ckptApp

SIZE = (80, 24)


def test_validation_options_snapshot(snap_compare) -> None:
    """strict on and --model tiny-small on a file whose family only --model can tell."""

    async def run_before(pilot: Pilot[object]) -> None:
        await settle(pilot)
        await pilot.press("v")
        await settle(pilot)
        pilot.app.screen.query_one("#validation-strict", Checkbox).value = True
        await settle(pilot)
        pilot.app.screen.query_one("#validation-model", Select).value = "tiny-small"
        await settle(pilot)

    app = Sa3ckptApp("official-xs/tiny-small/lora-xs.layers-0.safetensors")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_validation_strict_fail_snapshot(snap_compare) -> None:
    """strict alone: the family-undetermined warning fails the verdict, as exit code 1."""

    async def run_before(pilot: Pilot[object]) -> None:
        await settle(pilot)
        await pilot.press("v")
        await settle(pilot)
        pilot.app.screen.query_one("#validation-strict", Checkbox).value = True
        await settle(pilot)

    app = Sa3ckptApp("official-xs/tiny-small/lora-xs.layers-0.safetensors")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_codec_overview_snapshot(snap_compare) -> None:
    app = Sa3ckptApp("kinds/tiny-same-s.encoder.safetensors")
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: settle(pilot))
