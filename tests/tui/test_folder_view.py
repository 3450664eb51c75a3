"""Pilot tests of the folder view: opening it, sorting by each key, the data checks, Enter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from tests.tui.helpers import make_runs_folder, settle, static_text, tree_ready
from tui.app import Sa3ckptApp
from tui.browser_screen import BrowserScreen
from tui.commands import ScreenActions
from tui.folder_view import COLUMNS, FolderScreen


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The runs folder, entered so the app shows short relative paths."""
    folder = make_runs_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    return folder


async def open_folder(pilot, name: str | None = None) -> FolderScreen:  # type: ignore[no-untyped-def]
    """Highlight the folder `name` in the tree (None: stay on the root), press f, wait."""
    tree = await tree_ready(pilot)
    if name is not None:
        node = next(n for n in tree.root.children if n.data and n.data.path.name == name)
        tree.move_cursor(node)
        await pilot.pause()
    await pilot.press("f")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, FolderScreen)
    return screen


def shown(screen: FolderScreen, column: str) -> list[str]:
    """The cells of one column, top to bottom, as the DataTable holds them."""
    table = screen.query_one(DataTable)
    index = [key for key, *_ in COLUMNS].index(column)
    return [str(table.get_cell_at(Coordinate(i, index))) for i in range(table.row_count)]


def test_f_opens_the_audit_table_of_the_folder(runs: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("runs")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_folder(pilot)
            assert screen.folder == "runs"
            assert screen.query_one(DataTable).row_count == 7
            names = [r.name for r in screen.rows]
            assert names[:2] == ["best.safetensors", "dora-rank2.safetensors"]
            assert shown(screen, "name")[:2] == ["best", "dora-rank2"]  # .safetensors dropped
            summary = static_text(app, "#folder-summary")
            assert "7 rows: 1 malformed, 1 flagged, 5 ok" in summary
            assert "by name" in summary
            flagged = next(r for r in screen.rows if r.status == "flagged")
            assert flagged.name == "run-r128/lora-step=0.safetensors"
            assert shown(screen, "status")[screen.rows.index(flagged)] == "name-rank"
            assert shown(screen, "status")[0] == "ok"

    asyncio.run(scenario())


def test_a_subfolder_and_a_file_open_their_folder(runs: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("runs")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_folder(pilot, "run-r16")
            assert screen.folder == "runs/run-r16"
            assert [r.step for r in screen.rows] == [900, 9000, 10000]  # natural name order
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, BrowserScreen)
            screen = await open_folder(pilot, "best.safetensors")
            assert screen.folder == "runs"

    asyncio.run(scenario())


def test_sort_keys_order_numerically(runs: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("runs")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_folder(pilot)
            await pilot.press("s")
            await pilot.pause()
            steps = [r.step for r in screen.rows]
            assert steps == [0, 900, 9000, 9000, 10000, None, None]
            assert shown(screen, "step") == ["0", "900", "9000", "9000", "10000", "-", "-"]
            assert "by step" in static_text(app, "#folder-summary")
            await pilot.press("s")  # again: reversed
            await pilot.pause()
            assert [r.step for r in screen.rows] == steps[::-1]
            assert "by step, reversed" in static_text(app, "#folder-summary")
            await pilot.press("r")
            await pilot.pause()
            assert [r.rank for r in screen.rows] == [2, 8, 16, 16, 16, 16, None]
            await pilot.press("t")
            await pilot.pause()
            types = [r.adapter_type for r in screen.rows]
            assert types == ["dora-rows", "lora", "lora", "lora", "lora", "lora", None]
            await pilot.press("c")
            await pilot.pause()
            statuses = [r.status for r in screen.rows]
            assert statuses == ["malformed", "flagged", "ok", "ok", "ok", "ok", "ok"]
            await pilot.press("n")
            await pilot.pause()
            assert screen.rows[0].name == "best.safetensors"

    asyncio.run(scenario())


def test_clicking_a_header_sorts(runs: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("runs")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_folder(pilot)
            table = screen.query_one(DataTable)
            x = 0
            for key, *_ in COLUMNS:
                column = table.columns[key]  # type: ignore[index]
                if key == "rank":
                    break
                x += column.get_render_width(table)
            await pilot.click(DataTable, offset=(x + 2, 0))
            await pilot.pause()
            assert screen.sort == "rank"
            assert [r.rank for r in screen.rows] == [2, 8, 16, 16, 16, 16, None]

    asyncio.run(scenario())


def test_data_checks_flag_duplicates_and_zero_effect(runs: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("runs")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_folder(pilot)
            assert "d: data checks" in static_text(app, "#folder-summary")
            await pilot.press("d")
            await settle(pilot)
            assert screen.table is not None and screen.table.hashed and screen.table.deep
            codes = {r.name: [f.code for f in r.flags] for r in screen.rows}
            assert codes["best.safetensors"] == ["duplicate"]
            assert codes["run-r16/lora-step=9000-epoch=3.safetensors"] == ["duplicate"]
            assert codes["run-r128/lora-step=0.safetensors"] == ["name-rank", "zero-effect"]
            assert "data checks done" in static_text(app, "#folder-summary")

    asyncio.run(scenario())


def test_detail_line_spells_out_the_highlighted_row(runs: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("runs")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_folder(pilot)
            await pilot.press("c")  # malformed first, then the flagged row
            await pilot.pause()
            assert "best.safetensors" in static_text(app, "#folder-detail")  # the cursor stays
            assert screen.highlighted == "runs/best.safetensors"
            await pilot.press("ctrl+home")
            await pilot.pause()
            assert "file is 3 bytes" in static_text(app, "#folder-detail")
            await pilot.press("down")
            await pilot.pause()
            detail = static_text(app, "#folder-detail")
            assert "run-r128/lora-step=0.safetensors" in detail
            assert "name 'run-r128' claims rank 128, the adapter is rank 8" in detail
            assert screen.highlighted == "runs/run-r128/lora-step=0.safetensors"

    asyncio.run(scenario())


def test_enter_opens_the_row_in_the_browser(runs: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("runs")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_folder(pilot)
            await pilot.press("s")
            await pilot.press("ctrl+home", "down")  # step 0, then step 900
            await pilot.pause()
            assert screen.highlighted == "runs/run-r16/lora-step=900-epoch=1.safetensors"
            await pilot.press("enter")
            await settle(pilot)
            assert isinstance(app.screen, BrowserScreen)
            assert static_text(app, "#overview-path") == "lora-step=900-epoch=1.safetensors"
            body = static_text(app, "#overview-body")
            fields = {line.split()[0]: line.split()[1:] for line in body.splitlines() if line}
            assert fields["type"] == ["lora"] and fields["rank"] == ["16"]

    asyncio.run(scenario())


def test_f_works_from_a_tab_and_the_palette_lists_it(runs: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await tree_ready(pilot)
            titles = {e.title for e in ScreenActions(app.screen).entries()}
            assert "Folder" in titles
            await pilot.press("v", "tab")  # focus into the validation tab
            await pilot.pause()
            await pilot.press("f")
            await settle(pilot)
            assert isinstance(app.screen, FolderScreen) and app.screen.folder == "runs"
            folder_titles = {e.title for e in ScreenActions(app.screen).entries()}
            assert {
                "Step",
                "Rank",
                "Type",
                "Status",
                "Name",
                "Data checks",
                "Back",
            } <= folder_titles

    asyncio.run(scenario())
