"""Pilot test of the combine screen's mean method: rank off, the library's soup, its refusal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from textual.widgets import Input, RadioButton, RadioSet

from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.library.combine import METHODS
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.tui.helpers import settle, static_text
from tests.tui.test_combine_screen import add_adapter, open_combine, set_weight
from tui.app import Sa3ckptApp
from tui.strength import AdapterRow

FAM = FAMILIES["tiny-small"]


def _write(folder: Path, name: str, kind: str, seed: int) -> str:
    adapter = synth_adapter(FAM, kind, rank=4, alpha=8, seed=seed, extra_config={"step": seed})
    path = folder / f"{name}.safetensors"
    write_safetensors(path, adapter.file_tensors(), adapter.metadata())
    return name + ".safetensors"


def test_combine_mean_of_one_run_and_its_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = _write(tmp_path, "run-step1", "dora-rows", 1)
    second = _write(tmp_path, "run-step2", "dora-rows", 2)
    other = _write(tmp_path, "lora", "lora", 3)

    async def scenario() -> None:
        app = Sa3ckptApp(first)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = await open_combine(pilot, app)
            await add_adapter(pilot, screen, second)
            set_weight(list(screen.query(AdapterRow))[1], "3")
            methods = screen.query_one("#method", RadioSet)
            list(methods.query(RadioButton))[METHODS.index("mean")].value = True
            await settle(pilot)
            assert screen.query_one("#rank", Input).disabled  # one run: its rank is kept
            assert "mean: the weighted average" in static_text(app, "#method-note")
            output = screen.query_one("#output", Input).value
            assert output == "run-step1.combined-mean.safetensors"
            await pilot.press("ctrl+r")
            await settle(pilot)
            assert static_text(app, "#combine-error").strip() == ""
            assert "into a rank-4 dora-rows" in static_text(app, "#ledger-text")
            written, a, b = (load_adapter(p) for p in (output, first, second))
            assert written.adapter_type == "dora-rows" and written.config.rank == 4
            target = next(iter(a.tensors))
            for name, value in written.tensors[target].items():
                want = (
                    np.asarray(a.tensors[target][name], np.float64)
                    + 3 * np.asarray(b.tensors[target][name], np.float64)
                ) / 4
                assert np.array_equal(value, want.astype(np.float16)), name
            await add_adapter(pilot, screen, other)  # another type: refused inline
            screen.query_one("#output", Input).value = "refused.safetensors"
            await pilot.press("ctrl+r")
            await settle(pilot)
            error = static_text(app, "#combine-error")
            assert "not checkpoints of one run" in error and "adapter types" in error
            assert not (tmp_path / "refused.safetensors").exists()

    asyncio.run(scenario())
