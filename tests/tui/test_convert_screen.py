"""Pilot tests of the convert screen: opened from the browser, every target the library
offers for the input's kind, the read-back verification shown, refusals inline."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from textual.widgets import Checkbox, Input, ProgressBar, RadioButton, RadioSet

from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.formats import ADAPTER, BASE, CONVERT_OUTPUTS, identify
from sa3ckpt.io.gguf_facts import conditioner_beside
from sa3ckpt.ops.convert import adapters as convert_module
from sa3ckpt.ops.convert.adapters import convert_adapter
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.ops.convert.targets import targets_for
from tests.tui.helpers import DATA, settle, static_text, tree_ready
from tui.app import Sa3ckptApp
from tui.combine_screen import CombineScreen
from tui.convert_screen import ConvertScreen
from tui.strength import AdapterRow

LORA = "adapters/tiny-small/lora.safetensors"
# diffusers' convs are 1-wide: the tiny-small family's k=3 preprocess_conv has no diffusers form.
MEDIUM_LORA = "adapters/tiny-medium/lora.safetensors"
BORA = "adapters/tiny-small/bora.safetensors"
BASE_FILE = "bases/tiny-small.official.safetensors"
# A complete DiT (q/k norms included): what a diffusers folder's config is derived from.
FULL_BASE = "bases/tiny-small.official-full.safetensors"
# Targets without a slot for the seconds conditioner the lora fixture adapts.
NO_CONDITIONER = {"sa3cpp", "diffusers"}


async def open_convert(pilot, app: Sa3ckptApp) -> ConvertScreen:
    await settle(pilot)
    await pilot.press("x")
    await settle(pilot)
    screen = app.screen
    assert isinstance(screen, ConvertScreen)
    return screen


def offered(screen: ConvertScreen) -> list[str]:
    """The target names the radio set shows, read from its buttons' labels."""
    buttons = screen.query_one("#target", RadioSet).query(RadioButton)
    return [str(b.label).split()[0] for b in buttons]


async def pick_target(pilot, screen: ConvertScreen, name: str) -> None:
    index = offered(screen).index(name)
    list(screen.query_one("#target", RadioSet).query(RadioButton))[index].value = True
    await settle(pilot)


async def run(pilot) -> None:
    await pilot.press("ctrl+r")
    await settle(pilot)


def visible(screen: ConvertScreen, selector: str) -> bool:
    return all(w.display for w in screen.query_one(selector).ancestors_with_self if w.parent)


def test_x_opens_convert_with_the_selection_and_the_adapter_targets() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(LORA)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_convert(pilot, app)
            assert screen.query_one("#input", Input).value == LORA
            assert "lora adapter, sa3 keys" in static_text(app, "#input-kind")
            names = [t.name for t in targets_for(ADAPTER)]
            assert offered(screen) == names == [k[1] for k in CONVERT_OUTPUTS if k[0] == ADAPTER]
            assert "official" not in offered(screen)  # a base-only target
            labels = [str(b.label) for b in screen.query(RadioButton)]
            assert any("sa3.cpp" in label for label in labels)  # each with its reader
            assert "sa3: official PyTorch loader" in static_text(app, "#target-note")
            for option in ("#base", "#bases", "#dora-variant", "#allow-nonfinite", "#force"):
                assert visible(screen, option), option
            for option in ("#drop-unmapped", "#max-shard-size"):
                assert not visible(screen, option), option  # base options are hidden
            assert screen.query_one("#output", Input).value == (
                "adapters/tiny-small/lora.sa3.safetensors"
            )
            await pick_target(pilot, screen, "peft")  # a folder: no suffix
            assert screen.query_one("#output", Input).value == "adapters/tiny-small/lora.peft"

    asyncio.run(scenario())


def test_a_base_is_offered_the_base_targets_and_base_options() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(BASE_FILE)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_convert(pilot, app)
            assert "base checkpoint, official naming" in static_text(app, "#input-kind")
            assert offered(screen) == [t.name for t in targets_for(BASE)]
            assert {"sa3", "bare", "peft"}.isdisjoint(offered(screen))
            assert visible(screen, "#max-shard-size") and visible(screen, "#drop-unmapped")
            assert not visible(screen, "#base") and not visible(screen, "#allow-nonfinite")
            screen.query_one("#input", Input).value = LORA  # typing another input re-reads it
            await settle(pilot)
            assert offered(screen) == [t.name for t in targets_for(ADAPTER)]
            assert screen.query_one("#output", Input).value.endswith("lora.sa3.safetensors")

    asyncio.run(scenario())


def test_targets_peft_layers_cannot_express_are_not_offered() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(BORA)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_convert(pilot, app)
            assert offered(screen) == [t.name for t in targets_for(ADAPTER, "bora")]
            assert "peft" not in offered(screen) and "diffusers" not in offered(screen)
            note = static_text(app, "#target-note")
            assert "not offered: peft, diffusers (PEFT cannot express bora" in note

    asyncio.run(scenario())


@pytest.mark.parametrize("target", [t.name for t in targets_for(ADAPTER)])
def test_each_adapter_target_writes_what_the_library_reads_back(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(DATA / MEDIUM_LORA, tmp_path / "lora.safetensors")
    monkeypatch.chdir(tmp_path)
    source = load_adapter("lora.safetensors")

    async def scenario() -> None:
        app = Sa3ckptApp("lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_convert(pilot, app)
            await pick_target(pilot, screen, target)
            output = screen.query_one("#output", Input).value
            if target in NO_CONDITIONER:
                screen.query_one("#drop-conditioner", Checkbox).value = True
            await run(pilot)
            assert static_text(app, "#convert-error").strip() == ""
            verdict = static_text(app, "#verify-text")
            assert verdict.startswith("verification PASSED: ")
            # The same library call, to a second output, gives the same ledger.
            expected = convert_adapter(
                "lora.safetensors",
                "again",
                to=target,
                drop_conditioner=target in NO_CONDITIONER,
            )
            shown = static_text(app, "#ledger-text").replace(output, "again")
            assert shown == "\n".join(expected.lines())
            assert f"{expected.targets} targets read back" in verdict
            assert f"allowed for {expected.code}" in verdict
            rebuilt = load_adapter(output)  # the library reads the written output back
            dropped = 1 if target in NO_CONDITIONER else 0
            assert len(rebuilt.tensors) == len(source.tensors) - dropped
            assert rebuilt.adapter_type == "lora"
            assert screen.query_one("#convert-progress", ProgressBar).percentage == 1.0

    asyncio.run(scenario())


@pytest.mark.parametrize("target", [t.name for t in targets_for(BASE)])
def test_each_base_target_writes_a_base_the_library_opens(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(DATA / FULL_BASE, tmp_path / "base.safetensors")
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        app = Sa3ckptApp("base.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_convert(pilot, app)
            await pick_target(pilot, screen, target)
            output = screen.query_one("#output", Input).value
            await run(pilot)
            assert static_text(app, "#convert-error").strip() == ""
            expected = convert_base("base.safetensors", "again" + output[len("base") :], to=target)
            verdict = static_text(app, "#verify-text")
            assert verdict == (
                f"verification PASSED: {expected.tensors} tensors checked against the input, "
                "bit-exact"
            )
            shown = static_text(app, "#ledger-text").replace(output, expected.output_path)
            # an sa3.cpp base's conditioner sidecar is named after the DiT output
            sidecar = (conditioner_beside(output), conditioner_beside(expected.output_path))
            shown = shown.replace(*sidecar)
            assert shown == "\n".join(expected.lines())
            found = identify(output)
            assert found.kind == BASE and found.naming == target
            pair = sidecar[0] if target == "sa3cpp" else None
            with open_base(output, conditioner=pair) as base:
                assert len(base.tensors) == expected.tensors
                assert base.naming == target
            assert screen.query_one("#convert-progress", ProgressBar).percentage == 1.0

    asyncio.run(scenario())


def test_an_existing_output_needs_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(DATA / LORA, tmp_path / "lora.safetensors")
    (tmp_path / "lora.mlx.safetensors").write_bytes(b"keep me")
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        app = Sa3ckptApp("lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_convert(pilot, app)
            await pick_target(pilot, screen, "mlx")
            assert screen.query_one("#output", Input).value == "lora.mlx.safetensors"
            await run(pilot)
            error = static_text(app, "#convert-error")
            assert error == "output lora.mlx.safetensors already exists: tick force to replace it"
            assert (tmp_path / "lora.mlx.safetensors").read_bytes() == b"keep me"
            assert not screen.query_one("#convert-progress", ProgressBar).display
            screen.query_one("#force", Checkbox).value = True
            await run(pilot)
            assert static_text(app, "#convert-error").strip() == ""
            assert static_text(app, "#verify-text").startswith("verification PASSED")
            assert load_adapter("lora.mlx.safetensors").adapter_type == "lora"

    asyncio.run(scenario())


def test_a_failed_verification_is_shown_with_its_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 rounds fp16 values by ~1e-3; held to 1e-9 the read-back must fail, loudly."""
    shutil.copy(DATA / LORA, tmp_path / "lora.safetensors")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(convert_module.TOLERANCE, "BF16", 1e-9)

    async def scenario() -> None:
        app = Sa3ckptApp("lora.safetensors")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_convert(pilot, app)
            dtype = screen.query_one("#dtype", RadioSet)
            bf16 = next(b for b in dtype.query(RadioButton) if str(b.label) == "bf16")
            bf16.value = True
            await run(pilot)
            verdict = static_text(app, "#verify-text")
            assert verdict.startswith("verification FAILED: worst relative error ")
            assert "> 1e-09 allowed; nothing was written" in verdict
            assert "\n" not in static_text(app, "#convert-error").strip()
            assert "nothing was written" in static_text(app, "#ledger-text")
            assert not os.path.exists("lora.sa3.safetensors")

    asyncio.run(scenario())


def test_an_unreadable_input_offers_nothing_and_says_why() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(LORA)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_convert(pilot, app)
            screen.query_one("#input", Input).value = "malformed/truncated.safetensors"
            await settle(pilot)
            assert not list(screen.query("#targets RadioButton"))
            kind = static_text(app, "#input-kind")
            assert kind.startswith("cannot convert malformed/truncated.safetensors")
            await run(pilot)
            assert static_text(app, "#convert-error") == kind
            assert not [w for w in app.workers if w.group == "convert"]  # nothing started

    asyncio.run(scenario())


def test_after_a_convert_the_browser_lists_and_selects_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(DATA / LORA, tmp_path / "lora.safetensors")
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        app = Sa3ckptApp("lora.safetensors")
        async with app.run_test(size=(160, 45)) as pilot:
            screen = await open_convert(pilot, app)
            await pick_target(pilot, screen, "sa3cpp")
            screen.query_one("#drop-conditioner", Checkbox).value = True
            await run(pilot)
            await pilot.press("escape")
            tree = await tree_ready(pilot)
            await settle(pilot)
            node = tree.cursor_node
            assert node is not None and node.data is not None
            assert node.data.path.name == "lora.sa3cpp.gguf"

    asyncio.run(scenario())


def test_ctrl_b_leaves_convert_for_combine_with_the_input() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(LORA)
        async with app.run_test(size=(80, 24)) as pilot:
            await open_convert(pilot, app)
            await pilot.press("ctrl+b")
            await settle(pilot)
            assert isinstance(app.screen, CombineScreen)
            assert [r.path for r in app.screen.query(AdapterRow)] == [LORA]

    asyncio.run(scenario())
