"""Pilot tests of the validation tab's options (--strict, --model) and of opening files that
are not SA3 DiT adapters (codec weights, codec adapters, DiT-only and conditioner files)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from textual.pilot import Pilot
from textual.widgets import Checkbox, DataTable, Select

from sa3ckpt.cli import build_parser
from sa3ckpt.ops.inspect.checkpoint_kind import identify_kind
from tests.helpers import run_cli
from tests.tui.helpers import choose_in_tree, settle, static_text
from tui import browser_screen
from tui.app import Sa3ckptApp
from tui.badge import StatusBadge
from tui.validation_options import ValidationOptions, model_choices
from tui.validation_view import ValidationView

# fits every family equally: family-undetermined (a warning) unless --model picks one
UNDETERMINED = "official-xs/tiny-small/lora-xs.layers-0.safetensors"
CLI_VERDICT = {0: "pass", 1: "fail"}


def cli_verdict(path: str, options: ValidationOptions) -> str:
    """PASS/FAIL as `sa3ckpt validate` decides it, from its exit code."""
    result = run_cli("validate", path, *options.cli_args().split())
    return CLI_VERDICT[result.returncode]


def _badge(app: Sa3ckptApp, name: str) -> str:
    return app.screen.query_one(f"#{name}-badge", StatusBadge).status


async def _toggle_strict(pilot: Pilot[object]) -> None:
    pilot.app.screen.query_one("#validation-strict", Checkbox).focus()
    await pilot.press("space")
    await settle(pilot)


async def _pick_model(pilot: Pilot[object], model: str) -> None:
    """Open the model list with Enter and walk to `model` with the arrow keys, as a user."""
    select = pilot.app.screen.query_one("#validation-model", Select)
    select.focus()
    await pilot.press("enter")
    await pilot.pause()
    steps = model_choices().index(model) - model_choices().index(str(select.value))
    await pilot.press(*(["down"] * steps if steps > 0 else ["up"] * -steps))
    await pilot.press("enter")
    await settle(pilot)


def test_model_choices_are_the_clis() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    validate = sub.choices["validate"]  # type: ignore[index]
    model = next(a for a in validate._actions if a.dest == "model")
    assert tuple(model.choices) == model_choices()


def test_strict_and_model_change_the_verdict_as_the_cli_exit_code_does() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp(UNDETERMINED)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("v")
            await settle(pilot)
            view = app.screen.query_one(ValidationView)
            seen = []
            assert view.options == ValidationOptions()
            seen.append((view.options, _badge(app, "validation")))
            assert static_text(app, "#validation-computed") == "verdict with --model auto"

            await _toggle_strict(pilot)
            assert view.options == ValidationOptions(strict=True)
            seen.append((view.options, _badge(app, "validation")))
            assert "--strict" in static_text(app, "#validation-computed")
            assert _badge(app, "overview") == _badge(app, "validation")

            await _pick_model(pilot, "tiny-small")
            assert view.options == ValidationOptions(strict=True, model="tiny-small")
            seen.append((view.options, _badge(app, "validation")))
            computed = static_text(app, "#validation-computed")
            assert "--model tiny-small" in computed and "--strict" in computed
            table = app.screen.query_one("#validation-table", DataTable)
            rules = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
            assert "family-undetermined" not in rules

            assert [verdict for _, verdict in seen] == ["pass", "fail", "pass"]
            for options, verdict in seen:
                assert cli_verdict(UNDETERMINED, options) == verdict

    asyncio.run(scenario())


def test_a_wrong_model_fails_like_the_cli_and_options_survive_another_file() -> None:
    async def scenario() -> None:
        app = Sa3ckptApp("official-xs/tiny-small")
        async with app.run_test(size=(100, 30)) as pilot:
            await choose_in_tree(pilot, "lora-xs.safetensors")
            await pilot.press("v")
            await settle(pilot)
            assert _badge(app, "validation") == "pass"
            await _pick_model(pilot, "tiny-medium")
            options = ValidationOptions(model="tiny-medium")
            assert _badge(app, "validation") == "fail"
            assert cli_verdict("official-xs/tiny-small/lora-xs.safetensors", options) == "fail"

            await choose_in_tree(pilot, "bora-xs.safetensors")  # another file, same session
            view = app.screen.query_one(ValidationView)
            assert view.options == options
            assert str(app.screen.query_one("#validation-model", Select).value) == "tiny-medium"
            assert "--model tiny-medium" in static_text(app, "#validation-computed")
            loaded = app.screen._loaded
            assert loaded is not None and loaded.validation_options == options
            expected = cli_verdict("official-xs/tiny-small/bora-xs.safetensors", options)
            assert _badge(app, "validation") == expected == "fail"

    asyncio.run(scenario())


def test_revalidation_runs_in_a_thread_worker_with_the_options(monkeypatch) -> None:
    calls: list[tuple[bool, ValidationOptions]] = []
    real = browser_screen.run_validation

    def recording(path: str, options: ValidationOptions):
        calls.append((threading.current_thread() is threading.main_thread(), options))
        return real(path, options)

    monkeypatch.setattr(browser_screen, "run_validation", recording)

    async def scenario() -> None:
        app = Sa3ckptApp(UNDETERMINED)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            await pilot.press("v")
            await settle(pilot)
            assert calls == []  # the first verdict came with the load
            await _toggle_strict(pilot)
            await pilot.press("r")  # the rerun key keeps the options
            await settle(pilot)
            strict = ValidationOptions(strict=True)
            assert calls == [(False, strict), (False, strict)]  # off the UI thread
            assert _badge(app, "validation") == "fail"

    asyncio.run(scenario())


ODD_FILES = [
    "kinds/tiny-same-s.encoder.safetensors",
    "kinds/tiny-same-l.decoder.safetensors",
    "kinds/tiny-same-s.autoencoder.safetensors",
    "kinds/codec-lora.decoder.safetensors",
    "kinds/codec-lora.encoder-keys.safetensors",
    "kinds/dit_tiny-small_f16.npz",
    "kinds/tiny-same-s_encoder_f32.npz",  # the MLX runtime encoder file
    "kinds/tiny-small.official-no-conditioner.safetensors",
    "kinds/tiny-small.conditioner-only.safetensors",
    "bases/tiny-small.official-full.safetensors",
]


@pytest.mark.parametrize("path", ODD_FILES)
def test_opening_a_file_that_is_not_a_dit_adapter_says_what_it_is(path: str) -> None:
    kind = identify_kind(path)

    async def scenario() -> None:
        app = Sa3ckptApp(path)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            body = static_text(app, "#overview-body")
            assert "cannot read" not in body and "error" not in body
            assert kind.label in body.replace("\n", " ").replace("  ", " ") or kind.label in body
            expected_badge = "base" if kind.row.base else kind.row.badge.lower()
            assert _badge(app, "overview") == expected_badge != "malformed"
            await pilot.press("v")
            await settle(pilot)
            assert _badge(app, "validation") == expected_badge
            table = app.screen.query_one("#validation-table", DataTable)
            assert table.row_count == 0  # no list of confusing errors
            detail = static_text(app, "#validation-detail-text")
            assert detail.startswith(f"not an SA3 DiT adapter: {kind.label}")
            await pilot.press("r", "c", "s")  # nothing to rerun, no coverage, no stats
            await settle(pilot)
            assert _badge(app, "validation") == expected_badge

    asyncio.run(scenario())
