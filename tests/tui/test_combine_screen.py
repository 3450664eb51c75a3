"""Pilot tests of the combine screen, its keys, and the pieces convert and combine share."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from textual.widgets import Checkbox, Footer, Input, RadioButton, RadioSet

from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.io.diffusers_folder import DEFAULT_MAX_SHARD_SIZE
from sa3ckpt.io.formats import ADAPTER, BASE, CONVERT_OUTPUTS
from sa3ckpt.ops.convert.adapters import ADAPTER_TARGETS
from sa3ckpt.ops.convert.bases import NAMINGS
from sa3ckpt.ops.convert.targets import TARGETS, targets_for
from sa3ckpt.ops.library.combine import METHODS, combine
from sa3ckpt.sizes import parse_size
from sa3ckpt.strengths import AdapterArg
from tests.tui.helpers import DATA, settle, static_text, tree_ready
from tui.app import Sa3ckptApp
from tui.combine_plan import suggested_output as combine_output
from tui.combine_screen import CombineScreen
from tui.convert_plan import DEFAULT_SHARD_TEXT, suggested_output
from tui.footer_fit import palette_width, shown_keys_width
from tui.strength import AdapterRow, StrengthInput

LORA = "adapters/tiny-small/lora.safetensors"
# Two rank-4 loras of the tiny-medium family, whose narrowest target (8 wide) holds rank 8.
MEDIUM_LORA = "adapters/tiny-medium/lora.safetensors"
MEDIUM_LAYERS0 = "adapters/tiny-medium/lora.layers-0.safetensors"


async def open_combine(pilot, app: Sa3ckptApp) -> CombineScreen:
    await settle(pilot)
    await pilot.press("b")
    await settle(pilot)
    screen = app.screen
    assert isinstance(screen, CombineScreen)
    return screen


async def add_adapter(pilot, screen: CombineScreen, path: str) -> None:
    field = screen.query_one("#adapter-path", Input)
    field.focus()
    field.value = path
    await pilot.press("enter")
    await settle(pilot)


def set_weight(row: AdapterRow, text: str) -> None:
    row.query_one(StrengthInput).value = text


def test_combine_cat_of_two_loras_matches_the_library_and_is_selected_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(DATA / MEDIUM_LORA, tmp_path / "lora.safetensors")
    shutil.copy(DATA / MEDIUM_LAYERS0, tmp_path / "layers0.safetensors")
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        app = Sa3ckptApp("lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_combine(pilot, app)
            assert [r.path for r in screen.query(AdapterRow)] == ["lora.safetensors"]
            await add_adapter(pilot, screen, "layers0.safetensors")
            rows = list(screen.query(AdapterRow))
            set_weight(rows[0], "0.5")
            set_weight(rows[1], "-2e-1")  # typed as the CLI takes it
            output = screen.query_one("#output", Input).value
            assert output == "lora.combined-cat.safetensors"
            assert screen.query_one("#rank", Input).disabled  # cat: the ranks add up
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert static_text(app, "#combine-error").strip() == ""
            expected = combine(
                [AdapterArg("lora.safetensors", 0.5), AdapterArg("layers0.safetensors", -0.2)],
                "again.safetensors",
                method="cat",
            )
            shown = static_text(app, "#ledger-text").replace(output, "again.safetensors")
            assert shown == "\n".join(expected.lines())
            written = load_adapter(output)
            assert written.adapter_type == "lora"
            assert written.config.rank == expected.rank
            assert set(written.tensors) == set(expected.targets)
            await pilot.press("escape")
            tree = await tree_ready(pilot)
            await settle(pilot)
            node = tree.cursor_node
            assert node is not None and node.data is not None
            assert node.data.path.name == output

    asyncio.run(scenario())


def test_combine_methods_are_the_library_s_and_svd_takes_a_rank(tmp_path: Path) -> None:
    out = tmp_path / "svd.safetensors"

    async def scenario() -> None:
        app = Sa3ckptApp(LORA)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_combine(pilot, app)
            methods = screen.query_one("#method", RadioSet)
            assert [str(b.label) for b in methods.query(RadioButton)] == list(METHODS)
            list(methods.query(RadioButton))[METHODS.index("svd")].value = True
            await settle(pilot)
            rank = screen.query_one("#rank", Input)
            assert not rank.disabled
            suggested = screen.query_one("#output", Input).value
            assert suggested.endswith("lora.combined-svd.safetensors")
            screen.query_one("#output", Input).value = str(out)
            await pilot.press("ctrl+r")  # svd without a rank: the library's refusal, inline
            await settle(pilot)
            assert "--method svd needs --rank R" in static_text(app, "#combine-error")
            rank.value = "two"
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert static_text(app, "#combine-error") == "rank 'two' is not a positive integer"
            rank.value = "2"
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert static_text(app, "#combine-error").strip() == ""
            assert "into a rank-2 lora" in static_text(app, "#ledger-text")
            assert load_adapter(str(out)).config.rank == 2

    asyncio.run(scenario())


def test_combine_refusals_are_one_line(tmp_path: Path) -> None:
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"keep me")

    async def scenario() -> None:
        app = Sa3ckptApp(LORA)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_combine(pilot, app)
            row = screen.query_one(AdapterRow)
            set_weight(row, "1e999")
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert "is not a finite number" in static_text(app, "#combine-error")
            assert not [w for w in app.workers if w.group == "combine"]
            set_weight(row, "1")
            screen.query_one("#output", Input).value = str(existing)
            await pilot.press("ctrl+r")
            await settle(pilot)
            error = static_text(app, "#combine-error")
            assert error == f"output {existing} already exists: tick force to replace it"
            assert existing.read_bytes() == b"keep me"
            screen.query_one("#force", Checkbox).value = True
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert static_text(app, "#combine-error").strip() == ""
            assert load_adapter(str(existing)).adapter_type == "lora"

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
def test_browser_footer_shows_convert_and_fits(size: tuple[int, int]) -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(LORA)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            footer = app.screen.query_one(Footer)
            keys = [k for k in footer.query("FooterKey") if "-command-palette" not in k.classes]
            assert "x" in {k.key for k in keys}  # type: ignore[attr-defined]
            right = max(k.region.right for k in keys)
            assert right <= size[0]
            fits = shown_keys_width(app.screen) + palette_width(app) <= size[0]
            assert footer.show_command_palette == fits
            assert fits == (size[0] == 160)  # the palette key steps aside at 80 columns only
            if fits:
                palette = footer.query_one(".-command-palette")
                assert palette.region.x >= right  # covers no key

    asyncio.run(scenario())


def test_convert_targets_table_covers_the_registry() -> None:
    assert set(TARGETS) == set(CONVERT_OUTPUTS)
    assert {t.name for t in targets_for(ADAPTER)} == set(ADAPTER_TARGETS)
    assert {t.name for t in targets_for(BASE)} == set(NAMINGS)
    assert all(t.reader and t.limit for t in TARGETS.values())


def test_suggested_outputs() -> None:
    by_name = {t.name: t for t in targets_for(ADAPTER)}
    assert suggested_output("a/x.safetensors", by_name["sa3cpp"]) == "a/x.sa3cpp.gguf"
    assert suggested_output("a/peft-lora/", by_name["sa3"]) == "a/peft-lora.sa3.safetensors"
    assert suggested_output("a/x.safetensors", by_name["diffusers"]) == "a/x.diffusers"
    assert suggested_output(" ", by_name["sa3"]) == ""
    base = {t.name: t for t in targets_for(BASE)}
    assert suggested_output("b.safetensors", base["diffusers"]) == "b.diffusers"
    assert suggested_output("b.npz", base["official"]) == "b.official.safetensors"
    assert combine_output("a/x.safetensors", "svd") == "a/x.combined-svd.safetensors"
    assert parse_size(DEFAULT_SHARD_TEXT) == DEFAULT_MAX_SHARD_SIZE
