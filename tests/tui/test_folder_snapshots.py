"""SVG snapshot of the folder view at 80x24 (pytest-textual-snapshot).

The runs folder is generated into a temporary folder that the test enters, so the app shows
the same short relative names on every machine; the files are deterministic (fixed seeds).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot

from tests.tui.helpers import make_runs_folder, settle, tree_ready
from tui.app import Sa3ckptApp

SIZE = (80, 24)


def test_folder_view_snapshot(
    snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_runs_folder(tmp_path)
    monkeypatch.chdir(tmp_path)

    async def run_before(pilot: Pilot[object]) -> None:
        await settle(pilot)
        await tree_ready(pilot)
        await pilot.press("f")
        await settle(pilot)
        await pilot.press("s", "ctrl+home")  # by step, cursor on the flagged step-0 save
        await settle(pilot)

    app = Sa3ckptApp("runs")
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
