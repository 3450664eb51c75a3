"""Pilot test of the merge form's strength-map field: inline parse errors, the library's merge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from textual.widgets import Input

from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from tests.tui.helpers import DATA, settle, static_text
from tests.tui.test_merge_screen import BASE, DORA_COLS, DORA_ROWS, merge_form, type_into
from tui.app import Sa3ckptApp

MAP = "layers.[0-1].=0.5,cross_attn=1.7,2=postprocess_conv=0"


def _error(screen) -> str:  # type: ignore[no-untyped-def]
    widget = screen.query_one("#strength-map-error")
    return str(widget.content) if widget.display else ""


def test_strength_map_field_errors_inline_and_merges_as_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "mapped.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(DORA_ROWS)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await merge_form(pilot, app, out, DORA_COLS)
            await type_into(pilot, screen, "#strength-map", "3=layers=0.5")
            assert _error(screen) == (
                "--strength-map '3=layers': adapter 3 does not exist (1..2 given)"
            )
            await pilot.press("ctrl+r")  # refused before any work, with the same words
            await settle(pilot)
            assert "adapter 3 does not exist" in static_text(app, "#merge-error")
            await type_into(pilot, screen, "#strength-map", "cross_attn=x")
            assert "is not a number" in _error(screen)
            screen.query_one("#strength-map", Input).value = MAP
            await pilot.pause()
            assert _error(screen) == ""
            await pilot.press("ctrl+r")  # preview: lists the strength per target
            await settle(pilot)
            preview = static_text(app, "#ledger-text")
            assert "strength at model.postprocess_conv: adapter 1 1, adapter 2 0" in preview
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert "adapter targets merged" in static_text(app, "#ledger-text")

    asyncio.run(scenario())
    again = tmp_path / "cli.safetensors"
    merge_checkpoint(
        str(DATA / BASE),
        [AdapterArg(str(DATA / DORA_ROWS), 1.0), AdapterArg(str(DATA / DORA_COLS), 1.0)],
        str(again),
        options=MergeOptions(strength_map=[MAP]),
    )
    got, want = load_file(str(out)), load_file(str(again))
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_make_plan_passes_the_map_and_refuses_a_bad_one(tmp_path: Path) -> None:
    import pytest

    from tui.merge_plan import PlanError, make_plan

    out = str(tmp_path / "out.safetensors")
    rows = [(str(DATA / DORA_ROWS), "1")]
    plan = make_plan(str(DATA / BASE), rows, out, strength_map=MAP.replace("2=", "1="))
    assert plan.merge_options().strength_map == (MAP.replace("2=", "1="),)
    assert make_plan(str(DATA / BASE), rows, out).merge_options().strength_map == ()
    with pytest.raises(PlanError, match="adapter 2 does not exist"):
        make_plan(str(DATA / BASE), rows, out, strength_map=MAP)
