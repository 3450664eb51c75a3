"""Pilot tests of the merge screen: prefill, strengths, refusals and a real merge."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from textual.widgets import Input, ProgressBar, RadioSet

from tests.tui.helpers import DATA, choose_in_tree, settle, static_text, tree_ready
from tui.app import Sa3ckptApp
from tui.badge import StatusBadge
from tui.merge_screen import MergeScreen
from tui.strength import AdapterRow, StrengthInput

BASE = "bases/tiny-small.official.safetensors"
ADAPTER = "adapters/tiny-small/lora.safetensors"


async def preview_then_merge(pilot) -> None:
    """ctrl+r previews (the stack report and ledger preview), a second ctrl+r merges."""
    await pilot.press("ctrl+r")
    await settle(pilot)
    assert not pilot.app.screen.query_one("#merge-progress", ProgressBar).display
    await pilot.press("ctrl+r")
    await settle(pilot)


async def open_merge(pilot, app: Sa3ckptApp) -> MergeScreen:
    await settle(pilot)
    await pilot.press("m")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, MergeScreen)
    return screen


def test_merge_end_to_end_writes_output_and_shows_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(BASE, tmp_path / "base.safetensors")
    shutil.copy(ADAPTER, tmp_path / "lora.safetensors")
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        app = Sa3ckptApp("lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_merge(pilot, app)
            rows = list(screen.query(AdapterRow))
            assert [r.path for r in rows] == ["lora.safetensors"]  # the loaded adapter
            screen.query_one("#base", Input).value = "base.safetensors"
            screen.query_one("#output", Input).value = "merged.safetensors"
            screen.query_one(StrengthInput).focus()
            await pilot.press("down", "down", "up")  # 1.0 -> 0.9 -> 0.8 -> 0.9
            assert rows[0].strength_text == "0.9"
            await preview_then_merge(pilot)
            ledger = static_text(app, "#ledger-text")
            assert "40/40 adapter targets merged" in ledger
            assert "runtime semantics" in ledger
            assert static_text(app, "#merge-error").strip() == ""
            assert len(load_file("merged.safetensors")) == 47
            assert screen.query_one("#merge-progress", ProgressBar).display  # stays at 100%
            await pilot.press("escape")  # back in the browser, the new file is listed
            tree = await tree_ready(pilot)
            await settle(pilot)
            names = {n.data.path.name for n in tree.root.children if n.data is not None}
            assert "merged.safetensors" in names
            assert tree.cursor_node is not None and tree.cursor_node.data is not None
            assert tree.cursor_node.data.path.name == "merged.safetensors"  # selected, not top
            await pilot.press("enter")  # Enter opens the merge result
            await settle(pilot)
            assert "merged.safetensors" in static_text(app, "#overview-body")

    asyncio.run(scenario())


def test_merge_refuses_an_input_as_output_before_running() -> None:
    before = os.stat(BASE).st_mtime_ns

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_merge(pilot, app)
            screen.query_one("#base", Input).value = BASE
            screen.query_one("#output", Input).value = BASE
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert not [w for w in app.workers if w.group == "merge"]  # nothing started
            error = static_text(app, "#merge-error")
            assert f"output {BASE} is an input" in error
            screen.query_one("#output", Input).value = "./" + ADAPTER
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert "is an input" in static_text(app, "#merge-error")

    asyncio.run(scenario())
    assert os.stat(BASE).st_mtime_ns == before


def test_merge_error_from_the_library_is_one_line(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-medium/lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_merge(pilot, app)
            screen.query_one("#base", Input).value = BASE  # a tiny-small base: does not fit
            screen.query_one("#output", Input).value = str(tmp_path / "out.safetensors")
            await pilot.click("#run-merge")
            await settle(pilot)
            error = static_text(app, "#merge-error").strip()
            assert "do not fit" in error
            assert "\n" not in error
            assert "nothing was written" in static_text(app, "#ledger-text")
            assert not screen.query_one("#merge-progress", ProgressBar).display  # stopped
            assert not screen.query_one("#run-merge").disabled  # a fixed form can run again
            assert not (tmp_path / "out.safetensors").exists()

    asyncio.run(scenario())


def test_merge_prefills_base_from_highlighted_file_and_switches_semantics() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("bases")
        async with app.run_test(size=(80, 24)) as pilot:
            tree = await tree_ready(pilot)
            node = next(
                n for n in tree.root.children if n.data and n.data.path.name == Path(BASE).name
            )
            tree.move_cursor(node)
            screen = await open_merge(pilot, app)
            assert screen.query_one("#base", Input).value == BASE
            assert screen.query_one("#output", Input).value == (
                "bases/tiny-small.official.merged.safetensors"
            )
            assert "runtime:" in static_text(app, "#semantics-help")
            screen.query_one(RadioSet).focus()
            await pilot.press("right", "enter")
            await pilot.pause()
            assert screen.semantics == "delta"
            assert "delta: W0 + Σ" in static_text(app, "#semantics-help")

    asyncio.run(scenario())


def test_adapters_are_added_stepped_and_removed() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_merge(pilot, app)
            assert not screen.query(AdapterRow)
            assert screen.query_one("#no-adapters").display
            field = screen.query_one("#adapter-path", Input)
            field.focus()
            field.value = ADAPTER
            await pilot.press("enter")
            await pilot.pause()
            rows = list(screen.query(AdapterRow))
            assert [r.path for r in rows] == [ADAPTER]
            assert not screen.query_one("#no-adapters").display
            await pilot.click(".plus")
            await pilot.pause()
            assert rows[0].strength_text == "1.1"
            await pilot.click(".minus")
            await pilot.pause()
            assert rows[0].strength_text == "1.0"
            strength = screen.query_one(StrengthInput)
            strength.focus()
            strength.value = ""
            await pilot.press("-", "0", ".", "5")  # a minus is typed, never a step
            assert strength.strength == -0.5
            await pilot.press("down")
            assert strength.value == "-0.6"
            await pilot.click(".remove")
            await pilot.pause()
            assert not screen.query(AdapterRow)
            assert screen.query_one("#no-adapters").display
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, MergeScreen)

    asyncio.run(scenario())


def test_merge_screen_opens_from_a_chosen_base_without_adapters() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("bases")
        async with app.run_test(size=(80, 24)) as pilot:
            await choose_in_tree(pilot, "tiny-small.mlx.safetensors")
            assert "base checkpoint" in static_text(app, "#overview-body")
            assert "mlx naming" in static_text(app, "#overview-body")
            assert app.screen.query_one("#overview-badge", StatusBadge).status == "base"
            assert "rules apply to adapters" in static_text(app, "#validation-summary")
            tree = await tree_ready(pilot)
            tree.move_cursor(tree.root)  # the highlight is not a base: use the chosen one
            screen = await open_merge(pilot, app)
            assert screen.query_one("#base", Input).value == "bases/tiny-small.mlx.safetensors"
            assert not screen.query(AdapterRow)

    asyncio.run(scenario())


async def retype(pilot, field: StrengthInput, text: str) -> None:
    """Clear the field and type `text` key by key, as a user would."""
    field.focus()
    field.value = ""
    await pilot.press(*text)
    await pilot.pause()


def test_strength_field_reads_exactly_what_the_cli_reads(tmp_path: Path) -> None:
    out = str(tmp_path / "out.safetensors")

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_merge(pilot, app)
            screen.query_one("#base", Input).value = BASE
            screen.query_one("#output", Input).value = out
            row = screen.query_one(AdapterRow)
            field = row.query_one(StrengthInput)
            for text, value in [("1e-3", 1e-3), ("-0.5", -0.5), ("+2E+1", 20.0), (".5", 0.5)]:
                await retype(pilot, field, text)
                assert field.value == text  # every character typed as-is
                assert field.strength == value
                assert row.error_text == "" and not field.has_class("-invalid")
            await retype(pilot, field, "1e999")
            assert field.value == "1e999" and field.strength is None
            assert row.error_text == "strength '1e999' is not a finite number"
            assert field.has_class("-invalid")
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert not [w for w in app.workers if w.group == "merge"]  # refused before a thread
            assert f"strength '1e999' of {ADAPTER} is not a finite number" in static_text(
                app, "#merge-error"
            )
            await retype(pilot, field, "abc")
            assert field.value == "abc" and field.strength is None
            assert row.error_text.startswith("strength 'abc' is not a number: write a plain")
            await pilot.press("down")  # unreadable: stepping restarts from 0
            assert field.value == "-0.1" and row.error_text == ""
            await retype(pilot, field, "1e-3")
            await pilot.press("up")
            assert field.value == "0.101"
            await pilot.press("down", "down")
            assert field.value == "-0.099"
            keys = {b.binding.key: b.binding.description for b in screen.active_bindings.values()}
            assert keys["up"] == "+0.1" and keys["down"] == "−0.1"  # shown in the footer

    asyncio.run(scenario())


def test_a_negative_strength_merges(tmp_path: Path) -> None:
    out = tmp_path / "neg.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_merge(pilot, app)
            screen.query_one("#base", Input).value = BASE
            screen.query_one("#output", Input).value = str(out)
            await retype(pilot, screen.query_one(StrengthInput), "-1e-1")
            await preview_then_merge(pilot)
            assert static_text(app, "#merge-error").strip() == ""
            assert "40/40 adapter targets merged" in static_text(app, "#ledger-text")

    asyncio.run(scenario())
    assert len(load_file(out)) == 47


def test_a_failed_merge_stops_the_bar_and_a_retry_restarts_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    out = tmp_path / "out.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(str(bad))
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            screen = await open_merge(pilot, app)
            screen.query_one("#adapter-path", Input).value = str(bad)
            await screen.action_add_adapter()
            await pilot.pause()
            screen.query_one("#base", Input).value = BASE
            screen.query_one("#output", Input).value = str(out)
            await pilot.press("ctrl+r")
            await settle(pilot)
            bar = screen.query_one("#merge-progress", ProgressBar)
            error = static_text(app, "#merge-error").strip()
            assert error and "\n" not in error
            assert not bar.display  # no "--%" animating after the failure
            assert "nothing was written" in static_text(app, "#ledger-text")
            for row in screen.query(AdapterRow):
                row.post_message(AdapterRow.RemoveRequested(row))
            await pilot.pause()
            screen.query_one("#adapter-path", Input).value = ADAPTER
            await screen.action_add_adapter()
            await pilot.pause()
            await preview_then_merge(pilot)
            assert bar.display and bar.percentage == 1.0
            assert static_text(app, "#merge-error").strip() == ""

    asyncio.run(scenario())
    assert out.is_file()


def test_merge_into_a_closed_folder_keeps_the_selection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(BASE, tmp_path / "base.safetensors")
    shutil.copy(ADAPTER, tmp_path / "lora.safetensors")
    (tmp_path / "merged").mkdir()
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        app = Sa3ckptApp("lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            tree = await tree_ready(pilot)
            await settle(pilot)
            assert tree.cursor_node is not None and tree.cursor_node.data is not None
            assert tree.cursor_node.data.path.name == "lora.safetensors"
            screen = await open_merge(pilot, app)
            screen.query_one("#base", Input).value = "base.safetensors"
            screen.query_one("#output", Input).value = "merged/out.safetensors"
            await preview_then_merge(pilot)
            await pilot.press("escape")
            await settle(pilot)
            node = tree.cursor_node
            assert node is not None and node.data is not None
            assert node.data.path.name == "lora.safetensors"  # not moved to the top

    asyncio.run(scenario())
    assert (tmp_path / "merged" / "out.safetensors").is_file()


def test_fixture_base_is_untouched() -> None:
    assert (DATA / BASE).is_file()
