"""SVG snapshots of the convert and combine screens at 80x24 (pytest-textual-snapshot).

Deterministic as tests/tui/test_snapshots.py: relative paths, every worker finished, no
blinking cursors; the result snapshot converts a copy in a temporary folder (never into
fixtures/data) and clears the "finished" toast, whose timing is the machine's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import RadioButton, RadioSet

from tests.tui.helpers import DATA
from tests.tui.test_snapshots import SIZE, ready
from tui.app import Sa3ckptApp

LORA = "adapters/tiny-small/lora.safetensors"


def test_convert_form_snapshot(snap_compare) -> None:
    app = Sa3ckptApp(LORA)
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: ready(pilot, "x"))


def test_convert_result_snapshot(
    snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adapter converted to mlx: the read-back verification above the ledger."""
    shutil.copy(DATA / LORA, tmp_path / "lora.safetensors")
    monkeypatch.chdir(tmp_path)

    async def run_before(pilot: Pilot[object]) -> None:
        await ready(pilot, "x")
        targets = pilot.app.screen.query_one("#target", RadioSet)
        next(b for b in targets.query(RadioButton) if str(b.label).startswith("mlx")).value = True
        await ready(pilot, "ctrl+r")
        pilot.app.clear_notifications()
        await ready(pilot)

    app = Sa3ckptApp("lora.safetensors")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_combine_form_snapshot(snap_compare) -> None:
    app = Sa3ckptApp(LORA)
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: ready(pilot, "b"))
