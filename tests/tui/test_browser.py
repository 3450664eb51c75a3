"""Pilot tests of the browser screen: choosing files, the three tabs, stats and re-validation."""

from __future__ import annotations

import asyncio
import threading

from textual.widgets import DataTable, TabbedContent

from tests.tui.helpers import choose_in_tree, settle, static_text, tree_ready
from tui import browser_screen
from tui.app import Sa3ckptApp
from tui.badge import StatusBadge
from tui.browser_screen import BrowserScreen
from tui.coverage_view import CoverageView
from tui.loading import load_checkpoint


def test_choosing_a_file_in_the_tree_shows_its_type() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small")
        async with app.run_test(size=(80, 24)) as pilot:
            await choose_in_tree(pilot, "dora-rows.safetensors")
            body = static_text(app, "#overview-body")
            assert "dora-rows" in body
            assert "tiny-small" in body
            assert "F16" in body
            assert "adapters/tiny-small/dora-rows.safetensors" in body  # the path row
            assert static_text(app, "#overview-path") == "dora-rows.safetensors"
            assert app.screen.query_one("#overview-badge", StatusBadge).status == "pass"

    asyncio.run(scenario())


def test_tree_lists_only_checkpoints_and_marks_peft_folders() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small")
        async with app.run_test(size=(80, 24)) as pilot:
            tree = await tree_ready(pilot)
            names = [n.data.path.name for n in tree.root.children if n.data is not None]
            assert "peft-lora" in names
            assert all(name.startswith("peft") or name.endswith(".safetensors") for name in names)
            await choose_in_tree(pilot, "peft-lora")
            assert "peft" in static_text(app, "#overview-body")

    asyncio.run(scenario())


def test_unreadable_file_shows_one_line_error_and_malformed() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("malformed/truncated.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            body = static_text(app, "#overview-body")
            assert "cannot read this file:" in body
            assert "truncated" in body
            assert app.screen.query_one("#overview-badge", StatusBadge).status == "malformed"
            await pilot.press("v")
            await pilot.pause()
            assert app.screen.query_one(TabbedContent).active == "validation"
            table = app.screen.query_one("#validation-table", DataTable)
            assert table.row_count == 1
            assert "malformed" in str(table.get_row_at(0)[1])
            assert app.screen.query_one("#validation-badge", StatusBadge).status == "malformed"

    asyncio.run(scenario())


def test_coverage_grid_has_blocks_by_nine_modules() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small/lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("c")
            await pilot.pause()
            grid = app.screen.query_one("#coverage-grid", DataTable)
            assert len(grid.columns) == 9
            assert grid.row_count == 3  # tiny-small has three blocks
            extras = app.screen.query_one("#coverage-extras", DataTable)
            assert extras.row_count == 13  # 12 top-level targets + the seconds conditioner
            grid.focus()
            await pilot.press("right", "enter")
            await pilot.pause()
            detail = static_text(app, "#coverage-detail-text")
            assert "model.transformer.layers.0.self_attn.to_out" in detail
            assert "lora_A" in detail and "lora_B" in detail and "F16" in detail

    asyncio.run(scenario())


def test_stats_key_loads_norms_into_the_grid() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small/lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            view = app.screen.query_one(CoverageView)
            assert view.stats is None
            await pilot.press("s")
            assert app.screen.query_one(TabbedContent).active == "coverage"
            await settle(pilot)
            assert view.stats is not None
            assert not view.loading
            assert "update norm" in static_text(app, "#coverage-status")
            app.screen.query_one("#coverage-grid", DataTable).focus()
            await pilot.pause()
            assert "update ‖c·ΔW‖" in static_text(app, "#coverage-detail-text")

    asyncio.run(scenario())


def test_r_reruns_validation(monkeypatch) -> None:
    calls: list[str] = []
    real = browser_screen.run_validation

    def counting(path: str, *options):  # options: the tab's --strict/--model
        calls.append(path)
        return real(path, *options)

    monkeypatch.setattr(browser_screen, "run_validation", counting)

    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small/lora.bare.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("r")
            await settle(pilot)
            assert calls == ["adapters/tiny-small/lora.bare.safetensors"]
            assert app.screen.query_one(TabbedContent).active == "validation"
            table = app.screen.query_one("#validation-table", DataTable)
            rules = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
            assert "bare-keys" in rules
            assert "fix:" in static_text(app, "#validation-detail-text")

    asyncio.run(scenario())


def test_loading_runs_in_a_worker_and_keeps_the_ui_responsive(monkeypatch) -> None:
    release = threading.Event()

    def slow_load(path: str, *options):
        release.wait(10)
        return load_checkpoint(path, *options)

    monkeypatch.setattr(browser_screen, "load_checkpoint", slow_load)

    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small/lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert "loading" in static_text(app, "#overview-body")
            await pilot.press("v")  # the UI still takes keys while the file loads
            await pilot.pause()
            assert app.screen.query_one(TabbedContent).active == "validation"
            release.set()
            await settle(pilot)
            assert "lora" in static_text(app, "#overview-body")

    asyncio.run(scenario())


def test_stats_and_rerun_are_disabled_until_something_is_chosen() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small")
        async with app.run_test(size=(80, 24)) as pilot:
            await tree_ready(pilot)
            screen = app.screen
            assert isinstance(screen, BrowserScreen)
            assert screen.check_action("load_stats", ()) is None
            await choose_in_tree(pilot, "lora.safetensors")
            assert screen.check_action("load_stats", ()) is True

    asyncio.run(scenario())
