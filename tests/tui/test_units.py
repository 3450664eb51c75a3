"""The TUI's pure helpers: paths, wording, the coverage model, strengths and the merge plan."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from sa3ckpt.ops.inspect.report import inspect_path
from sa3ckpt.ops.inspect.report_model import RankReport, StatsReport, TargetStats
from sa3ckpt.strengths import StrengthError
from sa3ckpt.strengths import parse_strength as cli_strength
from tests.tui.helpers import settle, static_text
from tui.app import Sa3ckptApp
from tui.coverage_model import (
    HEAT_GLYPHS,
    Cell,
    block_rows,
    cell_text,
    extra_rows,
    heat_level,
    max_norm,
    short_name,
)
from tui.formatting import counts, human_size, rank_text, shape
from tui.merge_plan import PlanError, make_plan, suggested_output
from tui.overview_rows import overview_rows
from tui.paths import display_path, is_openable, looks_like_base, shown_in_browser
from tui.strength import format_strength, parse_strength, strength_error

BASE = "bases/tiny-small.official.safetensors"
ADAPTER = "adapters/tiny-small/lora.safetensors"


def test_paths_classify_checkpoints_bases_and_peft_folders() -> None:
    assert shown_in_browser(Path("adapters"))
    assert shown_in_browser(Path(ADAPTER))
    assert not shown_in_browser(Path("MANIFEST.json"))
    assert is_openable("adapters/tiny-small/peft-dora")
    assert not is_openable("adapters/tiny-small")
    assert looks_like_base(BASE)
    assert looks_like_base("bases/tiny-small.mlx.safetensors")
    assert not looks_like_base(ADAPTER)
    assert not looks_like_base("adapters/tiny-small/lora.bare.safetensors")  # MLX-like keys
    assert not looks_like_base("adapters/tiny-small/lora.mlx.safetensors")
    assert not looks_like_base("malformed/truncated.safetensors")


def test_display_path_is_relative_below_the_working_folder(tmp_path: Path) -> None:
    assert display_path(Path(ADAPTER).resolve()) == ADAPTER
    assert display_path(tmp_path / "x") == str(tmp_path / "x")


def test_formatting() -> None:
    assert human_size(512) == "512 B"
    assert human_size(22416) == "21.9 KiB"
    assert counts({"F16": 80, "F32": 2}) == "F16 ×80, F32 ×2"
    assert shape((4, 12)) == "4×12"
    assert rank_text(RankReport(config=4, tensors=[4])) == "4"
    assert rank_text(RankReport(config=4, tensors=[8])) == "4 (tensors: 8)"
    assert rank_text(RankReport(config=None, tensors=[8])) == "8 (from tensors)"


def test_overview_rows_escape_file_text_and_never_parse_markup() -> None:
    report = dataclasses.replace(
        inspect_path(ADAPTER), metadata={"note[1]": "[bold red]hi\x1b[2J\nnext"}
    )
    rows = dict((label or "metadata+", value.plain) for label, value in overview_rows(report))
    assert rows["metadata"] == "note[1] = [bold red]hi\\x1b[2J\\x0anext"
    assert rows["type"] == "lora"
    assert rows["alpha"] == "8  (scale 2)"


def test_coverage_model_maps_cells_to_targets() -> None:
    coverage_map = inspect_path(ADAPTER).coverage_map
    assert coverage_map is not None
    rows = block_rows(coverage_map)
    assert [block for block, _ in rows] == [0, 1, 2]
    assert rows[1][1][0] == Cell("model.transformer.layers.1.self_attn.to_qkv", True)
    extras = extra_rows(coverage_map)
    assert extras[0] == ("time_embed.0", Cell("model.to_timestep_embed.0", True))
    assert extras[-1][0] == "cond.seconds_total"
    assert short_name("model.transformer.project_in") == "proj_in"


def test_heat_scale_and_cell_looks() -> None:
    assert heat_level(0.0, 1.0) == 0
    assert heat_level(1.0, 1.0) == len(HEAT_GLYPHS) - 1
    assert heat_level(0.5, 0.0) == 0
    stats = StatsReport(
        strength=1.0,
        targets={
            "a": TargetStats(update_norm=2.0, delta_norm=None, nonfinite={}, zero_effect=False),
            "b": TargetStats(None, None, nonfinite={"lora_A": 3}, zero_effect=False),
            "c": TargetStats(update_norm=0.0, delta_norm=None, nonfinite={}, zero_effect=True),
        },
        update_norm_total=2.0,
        zero_effect_targets=1,
        nonfinite_tensors=1,
        cannot_compute=None,
    )
    top = max_norm(stats)
    assert top == 2.0
    assert cell_text(Cell("a", True), stats, top).plain == HEAT_GLYPHS[-1]
    assert cell_text(Cell("b", True), stats, top).plain == "!"
    assert cell_text(Cell("c", True), stats, top).plain == "○"
    assert cell_text(Cell("a", False), stats, top).plain == "·"
    assert cell_text(Cell("a", True), None, 0.0).plain == "●"


def test_strength_text() -> None:
    assert format_strength(1.0) == "1.0"
    assert format_strength(0.7000000001) == "0.7"
    assert format_strength(-0.1) == "-0.1"
    assert parse_strength("0.5") == 0.5
    assert parse_strength("-") is None
    assert parse_strength("nan") is None
    # the CLI's parser, so the field takes and refuses what `merge a.safetensors:X` does
    for text, value in [("1e-3", 1e-3), ("-0.5", -0.5), ("+.5", 0.5), ("2E+1", 20.0)]:
        assert parse_strength(text) == value and strength_error(text) is None
    for text in ["1e999", "abc", "1_0", "inf", "", " 1", "0x1", "١"]:
        assert parse_strength(text) is None
        with pytest.raises(StrengthError) as refused:
            cli_strength(text)
        assert strength_error(text) == str(refused.value)
    assert strength_error("1e999") == "strength '1e999' is not a finite number"


def test_merge_plan_checks(tmp_path: Path) -> None:
    out = str(tmp_path / "out.safetensors")
    plan = make_plan(BASE, [(ADAPTER, "0.5")], out, "delta")
    assert plan.adapters[0].strength == 0.5 and plan.semantics == "delta"
    plan = make_plan(BASE, [(ADAPTER, "-1e-3"), (ADAPTER, "1e-3")], out, "runtime")
    assert [a.strength for a in plan.adapters] == [-1e-3, 1e-3]
    cases = [
        (("", [(ADAPTER, "1")], out, "runtime"), "choose a base"),
        (("nope.safetensors", [(ADAPTER, "1")], out, "runtime"), "is not a file"),
        ((BASE, [], out, "runtime"), "at least one adapter"),
        ((BASE, [(ADAPTER, "x")], out, "runtime"), "is not a number"),
        ((BASE, [(ADAPTER, "1e999")], out, "runtime"), f"'1e999' of {ADAPTER} is not a finite"),
        ((BASE, [(ADAPTER, "1_0")], out, "runtime"), "write a plain decimal"),
        ((BASE, [(ADAPTER, "1")], "", "runtime"), "choose an output"),
        ((BASE, [(ADAPTER, "1")], BASE, "runtime"), "is an input"),
        ((BASE, [(ADAPTER, "1")], ADAPTER, "runtime"), "is an input"),
        ((BASE, [(ADAPTER, "1")], str(tmp_path), "runtime"), "is a folder"),
        ((BASE, [(ADAPTER, "1")], out, "sideways"), "unknown semantics"),
    ]
    for args, message in cases:
        with pytest.raises(PlanError, match=message):
            make_plan(*args)
    Path(out).write_bytes(b"")
    with pytest.raises(PlanError, match="exists"):
        make_plan(BASE, [(ADAPTER, "1")], out, "runtime")
    assert suggested_output(BASE) == "bases/tiny-small.official.merged.safetensors"
    assert suggested_output("") == ""


def test_hostile_metadata_is_shown_escaped_in_the_app(tmp_path: Path) -> None:
    with safe_open(ADAPTER, "np") as handle:
        metadata = dict(handle.metadata())
    metadata["comment"] = "[link=http://x]click[/link]\x1b]0;pwned\x07"
    hostile = tmp_path / "hostile.safetensors"
    save_file(load_file(ADAPTER), str(hostile), metadata=metadata)

    async def scenario() -> None:
        app = Sa3ckptApp(str(hostile))
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot)
            body = static_text(app, "#overview-body")
            assert "[link=http://x]click[/link]\\x1b]0;pwned\\x07" in body

    asyncio.run(scenario())


def test_npz_base_is_summarised_not_reported_malformed(tmp_path: Path) -> None:
    import numpy as np

    from tui.loading import load_checkpoint

    npz = tmp_path / "base.npz"
    np.savez(npz, **load_file(BASE))
    loaded = load_checkpoint(str(npz))
    assert loaded.is_base and loaded.error is None and loaded.validation is None
    assert loaded.base is not None
    assert loaded.base["container"] == "npz" and loaded.base["naming"] == "official"
    assert loaded.base["tensors"] == 47
