"""Pilot tests of the merge screen: prefill, strengths, refusals and a real merge."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from textual.widgets import Button, Checkbox, Input, ProgressBar, RadioButton, RadioSet

from sa3ckpt.adapters.xs_bases import svd_bases
from sa3ckpt.io.safetensors import read_header
from sa3ckpt.names import official_base_key
from sa3ckpt.names.modules import SECONDS_CONDITIONER
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import PROVENANCE_KEY, AdapterArg, merge_checkpoint
from sa3ckpt.targets import FAMILIES
from tests.helpers import BASE_FAMILY, base_2d
from tests.tui.helpers import DATA, choose_in_tree, settle, static_text, tree_ready
from tui.app import Sa3ckptApp
from tui.badge import StatusBadge
from tui.merge_exclude import ExcludeList
from tui.merge_plan import PlanError, make_plan
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


# --------------------------------------------------------------------------- every option

DORA_ROWS = "adapters/tiny-small/dora-rows.safetensors"
DORA_COLS = "adapters/tiny-small/dora-cols.safetensors"


async def merge_form(pilot, app: Sa3ckptApp, out: Path, *more: str) -> MergeScreen:
    """The merge screen with the fixture base, `out` and the start adapter plus `more`."""
    screen = await open_merge(pilot, app)
    screen.query_one("#base", Input).value = BASE
    screen.query_one("#output", Input).value = str(out)
    for path in more:
        screen.query_one("#adapter-path", Input).value = path
        await screen.action_add_adapter()
    await pilot.pause()
    return screen


async def choose(pilot, screen: MergeScreen, radio_id: str, label: str) -> None:
    """Press the radio button labelled `label` with the keyboard, as a user would."""
    radio = screen.query_one(f"#{radio_id}", RadioSet)
    labels = [str(b.label) for b in radio.query(RadioButton)]
    radio.focus()
    await pilot.pause()
    await pilot.press(*["right"] * labels.index(label), "enter")
    await pilot.pause()
    assert labels[radio.pressed_index] == label


async def tick(pilot, screen: MergeScreen, flag: str) -> None:
    """Toggle a flag checkbox from the keyboard (focus scrolls the form to it)."""
    box = screen.query_one(f"#{flag}", Checkbox)
    before = box.value
    box.focus()
    await pilot.press("space")
    await pilot.pause()
    assert box.value is not before


async def type_into(pilot, screen: MergeScreen, selector: str, text: str) -> None:
    field = screen.query_one(selector, Input)
    field.focus()
    field.value = ""
    await pilot.press(*text)
    await pilot.pause()


def _target_key(target: str) -> str:
    return official_base_key(target)


def test_dtype_fp32_writes_f32_tensors(tmp_path: Path) -> None:
    out = tmp_path / "fp32.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out)
            await choose(pilot, screen, "dtype", "fp32")
            await preview_then_merge(pilot)
            assert static_text(app, "#merge-error").strip() == ""

    asyncio.run(scenario())
    base = read_header(DATA / BASE).tensors
    merged = read_header(out).tensors
    floating = [k for k, t in base.items() if t.dtype in {"F16", "BF16", "F32"}]
    assert floating and all(merged[k].dtype == "F32" for k in floating)
    assert all(merged[k].dtype == t.dtype for k, t in base.items() if k not in floating)


def test_only_conditioner_merges_only_that_target(tmp_path: Path) -> None:
    out = tmp_path / "cond.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out)
            await choose(pilot, screen, "only", "conditioner")
            await pilot.press("ctrl+o")
            await settle(pilot)
            preview = static_text(app, "#ledger-text")
            assert "would merge 1/1 adapter targets" in preview
            assert "1 to merge, 0 missing from base, 39 skipped, 0 excluded" in preview
            await pilot.press("ctrl+r")  # previewed already: this press merges
            await settle(pilot)
            assert "1/1 adapter targets merged" in static_text(app, "#ledger-text")

    asyncio.run(scenario())
    base, merged = load_file(DATA / BASE), load_file(out)
    changed = {k for k in base if not np.array_equal(base[k], merged[k])}
    assert changed == {_target_key(SECONDS_CONDITIONER)}


def test_exclude_pattern_leaves_targets_bit_exact_and_preview_counts_match(
    tmp_path: Path,
) -> None:
    out = tmp_path / "excluded.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(DORA_ROWS)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out, DORA_COLS)
            await type_into(pilot, screen, "#exclude-pattern", "layers.[0-1].")
            await pilot.press("enter")
            await type_into(pilot, screen, "#exclude-pattern", "2=seconds_total")
            await pilot.click("#add-exclude")
            await pilot.pause()
            assert screen.query_one(ExcludeList).specs == ("layers.[0-1].", "2=seconds_total")
            await pilot.press("ctrl+r")
            await settle(pilot)
            preview = static_text(app, "#ledger-text")
            planned = re.search(r"would merge (\d+)/(\d+) adapter targets", preview)
            assert planned is not None
            excluded = preview.count("\nexcluded ")
            assert "stack report: no warnings" in preview  # seconds: one DoRA left on it
            await pilot.press("ctrl+r")
            await settle(pilot)
            ledger = static_text(app, "#ledger-text")
            assert f"{planned[1]}/{planned[2]} adapter targets merged" in ledger
            assert ledger.count("\nexcluded ") == excluded == 2 * 18 + 1

    asyncio.run(scenario())
    base, merged = load_file(DATA / BASE), load_file(out)
    untouched = [k for k in base if ".layers.0." in k or ".layers.1." in k]
    assert untouched and all(np.array_equal(base[k], merged[k]) for k in untouched)
    assert not np.array_equal(
        base[_target_key(SECONDS_CONDITIONER)], merged[_target_key(SECONDS_CONDITIONER)]
    )  # adapter 1 still merges there


def test_bad_exclude_pattern_shows_the_cli_reason_inline() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, Path("unused.safetensors"))
            excludes = screen.query_one(ExcludeList)
            field = screen.query_one("#exclude-pattern", Input)
            await type_into(pilot, screen, "#exclude-pattern", "3=layers")
            reason = "--exclude '3=layers': adapter 3 does not exist (1..1 given)"
            assert excludes.error_text == reason
            assert field.has_class("-invalid")
            await pilot.press("enter")  # refused: not added
            assert excludes.specs == () and field.value == "3=layers"
            await type_into(pilot, screen, "#exclude-pattern", "1=")
            assert excludes.error_text == "--exclude '1=' has no pattern"
            await type_into(pilot, screen, "#exclude-pattern", "layers.[3-1].")
            assert excludes.error_text.startswith("--exclude 'layers.[3-1].': ")
            screen.query_one("#adapter-path", Input).value = DORA_ROWS
            await screen.action_add_adapter()
            await type_into(pilot, screen, "#exclude-pattern", "2=layers.0.")
            assert excludes.error_text == "" and not field.has_class("-invalid")
            await pilot.press("enter")
            assert excludes.specs == ("2=layers.0.",)
            rows = list(screen.query(AdapterRow))
            rows[1].post_message(AdapterRow.RemoveRequested(rows[1]))  # the adapter it names
            await pilot.pause()
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert not [w for w in app.workers if w.group == "merge"]  # refused before a thread
            assert static_text(app, "#merge-error") == (
                "--exclude '2=layers.0.': adapter 2 does not exist (1..1 given)"
            )
            await pilot.click("ExcludeRow .remove")
            await pilot.pause()
            assert excludes.specs == ()

    asyncio.run(scenario())


def test_an_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out)
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert not [w for w in app.workers if w.group == "merge"]
            assert static_text(app, "#merge-error") == (
                f"output {out} exists; tick 'force' to replace it, or choose a new file"
            )
            assert out.read_bytes() == b"keep me"
            await tick(pilot, screen, "force")
            await pilot.pause()
            assert screen.query_one("#force", Checkbox).value
            await preview_then_merge(pilot)
            assert static_text(app, "#merge-error").strip() == ""
            assert "40/40 adapter targets merged" in static_text(app, "#ledger-text")

    asyncio.run(scenario())
    assert len(load_file(out)) == 47  # replaced by the merge


def test_preview_shows_the_seconds_warning_and_strict_blocks_the_merge(tmp_path: Path) -> None:
    out = tmp_path / "stacked.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(DORA_ROWS)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out, DORA_COLS)
            await tick(pilot, screen, "strict")
            await pilot.press("ctrl+r")  # first press: the preview
            await settle(pilot)
            preview = static_text(app, "#ledger-text")
            assert preview.startswith("1 stack report warning, read before merging:")
            assert "stacked on the seconds conditioner" in preview
            assert "blocked by strict: --strict: the stack report has 1 warnings" in preview
            refusal = static_text(app, "#merge-error")
            assert refusal.startswith("--strict: the stack report has 1 warnings (first: ")
            assert refusal.endswith("nothing was written")
            assert str(screen.query_one("#run-merge", Button).label) == "merge"
            await pilot.press("ctrl+r")  # second press: still refused, nothing runs
            await settle(pilot)
            assert static_text(app, "#merge-error") == refusal
            assert not out.exists()
            await tick(pilot, screen, "strict")  # without strict: the warning is shown, then merges
            await pilot.pause()
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert "(with strict ticked this merge would be refused)" in static_text(
                app, "#ledger-text"
            )
            assert str(screen.query_one("#run-merge", Button).label) == "confirm"
            await pilot.press("ctrl+r")
            await settle(pilot)
            ledger = static_text(app, "#ledger-text")
            assert "40/40 adapter targets merged" in ledger
            assert "warning: " + SECONDS_CONDITIONER in ledger

    asyncio.run(scenario())
    assert out.is_file()


def test_strict_with_the_seconds_target_excluded_merges(tmp_path: Path) -> None:
    out = tmp_path / "strict.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(DORA_ROWS)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out, DORA_COLS)
            await tick(pilot, screen, "strict")
            await type_into(pilot, screen, "#exclude-pattern", "seconds_total")
            await pilot.press("enter")
            await preview_then_merge(pilot)
            assert static_text(app, "#merge-error").strip() == ""
            assert "39/39 adapter targets merged" in static_text(app, "#ledger-text")

    asyncio.run(scenario())
    assert out.is_file()


def test_a_changed_form_is_previewed_again_before_it_merges(tmp_path: Path) -> None:
    out = tmp_path / "changed.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(ADAPTER)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out)
            button = screen.query_one("#run-merge", Button)
            await pilot.press("ctrl+o")
            await settle(pilot)
            assert str(button.label) == "confirm"
            await choose(pilot, screen, "semantics", "delta")
            assert str(button.label) == "merge"  # the preview was of another form
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert not out.exists()
            assert "delta semantics" in static_text(app, "#ledger-text")
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert "delta semantics" in static_text(app, "#ledger-text")

    asyncio.run(scenario())
    assert json.loads(read_header(out).metadata[PROVENANCE_KEY])["semantics"] == "delta"


def official_svd_bases_pt(path: Path, columns: int) -> None:
    """An official svd_bases.pt (a torch pickle: merge reads it only with allow pickle)."""
    torch = pytest.importorskip("torch")
    bases = {}
    for target in FAMILIES[BASE_FAMILY].targets:
        u, v = svd_bases(base_2d(target).astype(np.float16), columns)
        bases[official_base_key(target.name)] = {"U": torch.from_numpy(u), "V": torch.from_numpy(v)}
    torch.save(bases, path)


def test_bases_file_and_allow_pickle_reach_the_merge(tmp_path: Path) -> None:
    pt = tmp_path / "svd_bases.pt"
    official_svd_bases_pt(pt, 6)
    out = tmp_path / "xs.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp("adapters/tiny-small/lora-xs.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out)
            screen.query_one("#bases", Input).value = str(tmp_path / "nope.pt")
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert (
                static_text(app, "#merge-error") == f"bases file {tmp_path}/nope.pt is not a file"
            )
            screen.query_one("#bases", Input).value = str(pt)
            await pilot.press("ctrl+r")
            await settle(pilot)
            error = static_text(app, "#merge-error")
            assert "allow" in error and "\n" not in error  # a pickle needs the opt-in
            assert "nothing was written" in static_text(app, "#ledger-text")
            await tick(pilot, screen, "allow-pickle")
            await preview_then_merge(pilot)
            assert static_text(app, "#merge-error").strip() == ""
            ledger = static_text(app, "#ledger-text")
            assert f"XS bases loaded from {pt} (official svd_bases.pt): 40 targets" in ledger

    asyncio.run(scenario())
    assert out.is_file()


def test_compare_shows_the_per_pair_spread_for_this_stack() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(DORA_ROWS)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, Path("never.safetensors"), DORA_COLS)
            assert "ctrl+t compares" in static_text(app, "#semantics-spread")
            await pilot.press("ctrl+t")
            await settle(pilot)
            spread = static_text(app, "#semantics-spread")
            comparison = merge_checkpoint(
                BASE,
                [AdapterArg(DORA_ROWS, 1.0), AdapterArg(DORA_COLS, 1.0)],
                None,
                options=MergeOptions(compare=True),
            ).comparison
            assert comparison is not None
            for pair, doc in comparison.to_json()["pairs"].items():
                assert f"{pair} {doc['max_relative']:.2%} of ‖W0‖" in spread
            report = static_text(app, "#ledger-text")
            for line in comparison.lines():  # the per-pair maximum and the top targets
                assert line.strip() in report
            keys = {b.binding.key for b in screen.active_bindings.values()}
            assert {"ctrl+o", "ctrl+t", "ctrl+r"} <= keys
            await retype(pilot, screen.query(StrengthInput).first(), "0.5")
            assert "ctrl+t compares" in static_text(app, "#semantics-spread")  # stale: reset

    asyncio.run(scenario())
    assert not (DATA / "never.safetensors").exists()


def test_make_plan_checks_every_option_with_the_library(tmp_path: Path) -> None:
    out = str(tmp_path / "out.safetensors")
    rows = [(ADAPTER, "1")]
    plan = make_plan(BASE, rows, out, "blend", dtype="fp32", only="dit", exclude=("1=layers",))
    assert plan.merge_options() == MergeOptions(
        semantics="blend", dtype="fp32", only="dit", exclude=("1=layers",)
    )
    assert plan.merge_options(compare=True).compare
    for flags, message in [
        ({"dtype": "fp8"}, "unknown output dtype 'fp8'"),
        ({"only": "vae"}, "--only takes dit or conditioner, not 'vae'"),
        ({"exclude": ("2=layers",)}, "adapter 2 does not exist"),
        ({"exclude": ("",)}, "has no pattern"),
        ({"bases": "nope.safetensors"}, "bases file nope.safetensors is not a file"),
    ]:
        with pytest.raises(PlanError, match=re.escape(message)):
            make_plan(BASE, rows, out, **flags)
    Path(out).write_bytes(b"")
    with pytest.raises(PlanError, match="tick 'force'"):
        make_plan(BASE, rows, out)
    assert make_plan(BASE, rows, out, force=True).options.force
    with pytest.raises(PlanError, match="is an input"):
        make_plan(BASE, rows, BASE, force=True)  # force never replaces an input
