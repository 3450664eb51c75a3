"""The command palette lists every screen action; `sa3ckpt tui` starts the app lazily."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys

import pytest
from textual.widgets import TabbedContent

from sa3ckpt.cli import cmd_tui
from sa3ckpt.errors import MalformedFileError
from tests.tui.helpers import settle
from tui.app import Sa3ckptApp, split_start
from tui.browser_screen import BrowserScreen
from tui.commands import ScreenActions
from tui.coverage_view import CoverageView
from tui.merge_screen import MergeScreen


def test_palette_has_an_entry_for_every_browser_and_merge_action() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small/lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            titles = {e.title for e in ScreenActions(app.screen).entries()}
            described = {b.description for b in BrowserScreen.BINDINGS}  # type: ignore[union-attr]
            assert titles == described
            await pilot.press("m")
            await pilot.pause()
            entries = list(ScreenActions(app.screen).entries())
            assert {e.title for e in entries} == {"Back", "Run merge", "Preview", "Compare", "Add"}
            assert all("(key: " in e.help for e in entries)

    asyncio.run(scenario())


def test_palette_runs_the_stats_action() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small/lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"stats")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
            await settle(pilot)
            assert app.screen.query_one(TabbedContent).active == "coverage"
            assert app.screen.query_one(CoverageView).stats is not None

    asyncio.run(scenario())


def test_palette_opens_merge() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"merge")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, MergeScreen)

    asyncio.run(scenario())


def test_start_path_splits_into_folder_and_selection() -> None:
    assert split_start("adapters/tiny-small") == ("adapters/tiny-small", None)
    assert split_start("adapters/tiny-small/peft-lora") == (
        "adapters/tiny-small",
        "adapters/tiny-small/peft-lora",
    )
    assert split_start("bases/tiny-small.mlx.safetensors") == (
        "bases",
        "bases/tiny-small.mlx.safetensors",
    )
    assert split_start("x.safetensors") == (".", "x.safetensors")


def test_cli_parser_defaults_to_the_current_folder() -> None:
    parser = argparse.ArgumentParser()
    cmd_tui.add_arguments(parser)
    assert parser.parse_args([]).path == "."
    assert parser.parse_args(["bases"]).path == "bases"


def test_cli_refuses_a_missing_path() -> None:
    # exit 3 like inspect of a missing path (issue 13), no longer a usage error
    with pytest.raises(MalformedFileError, match="no such file or folder"):
        cmd_tui.run(argparse.Namespace(path="does-not-exist"))


def test_cli_module_does_not_import_textual() -> None:
    code = (
        "import sys, sa3ckpt.cli.cmd_tui; "
        "assert not [m for m in sys.modules if m.split('.')[0] in ('textual', 'tui')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_run_starts_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []

    def fake_run(self: Sa3ckptApp) -> None:
        started.append(self.root_path)

    monkeypatch.setattr(Sa3ckptApp, "run", fake_run)
    assert cmd_tui.run(argparse.Namespace(path="adapters")) == 0
    assert started == ["adapters"]
