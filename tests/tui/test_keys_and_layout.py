"""Pilot tests of issue 18 items 5 and 6: keys from anywhere, the tree's root and width,
the coverage grid's height, and one size convention with the CLI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from textual.widgets import DataTable, TabbedContent

from sa3ckpt.cli import main as cli_main
from sa3ckpt.ops.inspect.report_model import BlockRow
from sa3ckpt.sizes import human_size
from sa3ckpt.targets.families import FAMILIES
from tests.tui.helpers import DATA, settle, static_text, tree_ready
from tui.app import Sa3ckptApp
from tui.browser_screen import BrowserScreen
from tui.coverage_view import GRID_MIN, CoverageView, grid_height
from tui.file_tree import AdapterTree, root_label
from tui.merge_screen import MergeScreen

SIZES = [(80, 24), (160, 45)]
ADAPTER = "adapters/tiny-small/lora.safetensors"
TABLES = ["#coverage-grid", "#coverage-extras", "#validation-table"]


async def focus_table(pilot, selector: str) -> None:
    """Show the table's tab and put focus in the table, as a user clicking into it would."""
    screen = pilot.app.screen
    tab = "coverage" if selector.startswith("#coverage") else "validation"
    screen.query_one(TabbedContent).active = tab
    await pilot.pause()
    table = screen.query_one(selector, DataTable)
    table.focus()
    # focus() is applied by a later callback, and hiding the old pane moves focus too: on a
    # loaded machine one pause may not see both settle, so wait (bounded) for the table
    for _ in range(200):
        await pilot.pause()
        if pilot.app.focused is table:
            break
        table.focus()
        await pilot.pause(0.01)
    assert pilot.app.focused is table


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("table", TABLES)
def test_tab_keys_work_while_focus_is_in_a_table(table: str, size: tuple[int, int]) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            views = app.screen.query_one(TabbedContent)
            for key, tab in (("o", "overview"), ("c", "coverage"), ("v", "validation")):
                await focus_table(pilot, table)
                await pilot.press(key)
                await settle(pilot)
                assert views.active == tab, (key, table)
                focused = app.focused
                assert focused is not None and views.get_pane(tab) in focused.ancestors

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES)
def test_stats_rerun_merge_and_tree_keys_work_from_a_table(size: tuple[int, int]) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            screen = app.screen
            coverage = screen.query_one(CoverageView)
            await focus_table(pilot, "#validation-table")
            await pilot.press("s")
            await settle(pilot)
            assert coverage.stats is not None
            assert screen.query_one(TabbedContent).active == "coverage"

            await focus_table(pilot, "#coverage-grid")
            await pilot.press("r")
            await settle(pilot)
            assert screen.query_one(TabbedContent).active == "validation"

            for key in ("t", "escape"):
                await focus_table(pilot, "#coverage-extras")
                await pilot.press(key)
                await pilot.pause()
                assert isinstance(app.focused, AdapterTree), key

            await focus_table(pilot, "#coverage-grid")
            await pilot.press("m")
            await settle(pilot)
            assert isinstance(app.screen, MergeScreen)

    asyncio.run(scenario())


def test_footer_shows_the_way_back_to_the_tree() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await focus_table(pilot, "#coverage-grid")
            shown = {
                key: binding.binding.description
                for key, binding in app.active_bindings.items()
                if binding.binding.show
            }
            assert shown.get("t") == "Tree"
            assert {"o", "c", "v", "s", "r", "m", "q"} <= set(shown)

    asyncio.run(scenario())


def test_root_label_names_the_folder() -> None:
    assert root_label(".") == DATA.name
    assert root_label("adapters/tiny-small") == "tiny-small"
    assert root_label("adapters/tiny-small/..") == "adapters"
    assert root_label("/") == "/"


@pytest.mark.parametrize("size", SIZES)
def test_root_node_of_dot_has_a_label_and_enter_keeps_it_open(size: tuple[int, int]) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(".")
        async with app.run_test(size=size) as pilot:
            tree = await tree_ready(pilot)
            assert tree.root.label.plain == DATA.name
            listed = len(tree.root.children)
            tree.focus()
            tree.move_cursor(tree.root)
            await pilot.press("enter")
            await pilot.pause()
            await tree_ready(pilot)
            assert tree.root.is_expanded
            assert len(tree.root.children) == listed
            assert tree.root.label.plain == DATA.name  # a reload keeps the name too
            tree.reload()
            await pilot.pause()
            await tree_ready(pilot)
            assert tree.root.label.plain == DATA.name

    asyncio.run(scenario())


LONG_NAME = "lora.a-long-descriptive-name-for-a-training-run-step-12000.safetensors"


@pytest.mark.parametrize("size", SIZES)
def test_tree_pane_uses_the_width(tmp_path: Path, size: tuple[int, int]) -> None:
    shutil.copy(DATA / ADAPTER, tmp_path / LONG_NAME)

    async def scenario() -> None:
        app = Sa3ckptApp(str(tmp_path))
        async with app.run_test(size=size) as pilot:
            tree = await tree_ready(pilot)
            await pilot.pause()
            width = tree.outer_size.width
            assert 35 <= width <= size[0] // 2  # the tabs keep at least half the screen
            assert app.screen.query_one(TabbedContent).outer_size.width >= size[0] - width
            if size[0] == 160:
                assert width > 35
                assert tree.virtual_size.width <= tree.size.width  # the long name is whole

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES)
def test_tree_pane_keeps_35_columns_for_short_names(size: tuple[int, int]) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small")
        async with app.run_test(size=size) as pilot:
            tree = await tree_ready(pilot)
            await pilot.pause()
            assert tree.outer_size.width == 35
            assert tree.virtual_size.width <= tree.size.width

    asyncio.run(scenario())


def test_grid_height_rule() -> None:
    assert grid_height(0) == GRID_MIN
    assert grid_height(21) == GRID_MIN
    assert grid_height(42) > 25


@pytest.mark.parametrize("size", SIZES)
def test_coverage_grid_uses_the_height_for_a_medium_family(size: tuple[int, int]) -> None:
    """The medium family's 24 blocks: all of them at 45 lines, a scrolled 10 at 24 lines."""
    depth = FAMILIES["medium"].topology.depth

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            screen = app.screen
            assert isinstance(screen, BrowserScreen)
            loaded = screen._loaded
            assert loaded is not None and loaded.report is not None
            small = loaded.report.coverage_map
            assert small is not None
            medium = dataclasses.replace(
                small, blocks=[BlockRow(b, [True] * len(small.modules)) for b in range(depth)]
            )
            report = dataclasses.replace(loaded.report, coverage_map=medium)
            await pilot.press("c")
            screen.query_one(CoverageView).show(dataclasses.replace(loaded, report=report))
            await pilot.pause()
            await pilot.pause()
            grid = screen.query_one("#coverage-grid", DataTable)
            assert grid.row_count == depth
            shown_rows = grid.size.height - 1  # less the header
            if size[1] == 45:
                assert shown_rows >= depth
            else:
                assert shown_rows == GRID_MIN - 1
            assert screen.query_one("#coverage-extras", DataTable).size.height >= 3

    asyncio.run(scenario())


@pytest.mark.parametrize("size", SIZES)
def test_sizes_use_the_cli_convention(size: tuple[int, int], capsys) -> None:
    """The overview's size is the one `sa3ckpt inspect` prints (binary units, KiB)."""
    nbytes = os.path.getsize(DATA / ADAPTER)
    cli_main(["inspect", ADAPTER])
    assert human_size(nbytes) in capsys.readouterr().out

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            body = static_text(app, "#overview-body")
            assert human_size(nbytes) in body
            assert "KiB" in human_size(nbytes)
            assert " KB" not in body

    asyncio.run(scenario())
