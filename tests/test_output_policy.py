"""The one output-path policy: --force, never over an input, folder outputs, temp cleanup."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.io.atomic import (
    REFUSED_DIRECTORY,
    REFUSED_EXISTS,
    REFUSED_INPUT,
    OutputRefused,
    StagedOutput,
    check_output_path,
)
from sa3ckpt.io.sources import is_peft_dir
from sa3ckpt.names.modules import BLOCK_MODULE_SHORT, BLOCK_MODULES
from sa3ckpt.ops.convert.adapters import convert_adapter
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.ops.library.combine import combine
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from sa3ckpt.sizes import human_size
from tests.helpers import run_cli
from tui.coverage_model import module_head
from tui.formatting import human_size as tui_human_size
from tui.merge_plan import PlanError, make_plan

SMALL = DATA_DIR / "adapters" / "tiny-small"
LORA = str(SMALL / "lora.safetensors")
BASE = str(DATA_DIR / "bases" / "tiny-small.official.safetensors")


def _refusal(path: Path | str, **kwargs: object) -> str:
    with pytest.raises(OutputRefused) as info:
        check_output_path(path, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def test_force_is_needed_to_replace(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep")
    assert _refusal(out, overwrite=False) == REFUSED_EXISTS
    check_output_path(out, overwrite=True)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert _refusal(dangling, overwrite=False) == REFUSED_EXISTS


def test_inputs_by_any_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"src")
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    hard = tmp_path / "hard.safetensors"
    os.link(src, hard)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for out in (src, link, hard, "../in.safetensors", "../sub/../in.safetensors"):
        # even with --force: the input check comes first
        assert _refusal(out, inputs=[src], overwrite=True) == REFUSED_INPUT, out
    assert _refusal(src, inputs=[link]) == REFUSED_INPUT


def test_inside_an_input_folder(tmp_path: Path) -> None:
    folder = tmp_path / "peft"
    shutil.copytree(SMALL / "peft-lora", folder)
    inside = folder / "adapter_model.safetensors"
    assert _refusal(inside, inputs=[folder]) == REFUSED_INPUT
    assert _refusal(folder / "new.safetensors", inputs=[folder]) == REFUSED_INPUT
    # a folder output that holds an input would be deleted when replaced
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "adapter_config.json").write_text("{}")
    held = outer / "in.safetensors"
    held.write_bytes(b"x")
    assert _refusal(outer, inputs=[held], directory=True, replaceable=is_peft_dir) == REFUSED_INPUT
    check_output_path(tmp_path / "beside.safetensors", inputs=[folder])


def test_directories(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _refusal(plain) == REFUSED_DIRECTORY  # a file never replaces a folder
    # a folder output replaces only a folder of its own kind, and only with --force
    assert _refusal(plain, directory=True, replaceable=is_peft_dir) == REFUSED_DIRECTORY
    peft = tmp_path / "peft"
    shutil.copytree(SMALL / "peft-lora", peft)
    assert _refusal(peft, directory=True, replaceable=is_peft_dir, overwrite=False) == (
        REFUSED_EXISTS
    )
    check_output_path(peft, directory=True, replaceable=is_peft_dir, overwrite=True)


def test_staged_folder_replaces_old_folder_and_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text("old")
    with StagedOutput(out, directory=True, replaceable=is_peft_dir) as staged:
        os.mkdir(staged.temp_path)
        Path(staged.temp_path, "adapter_config.json").write_text("new")
    assert (out / "adapter_config.json").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]
    shutil.rmtree(out)
    out.write_bytes(b"a file")
    with StagedOutput(out, directory=True, replaceable=is_peft_dir) as staged:
        os.mkdir(staged.temp_path)
    assert out.is_dir() and sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_staged_output_cleans_up(tmp_path: Path, exc_type: type[BaseException]) -> None:
    out = tmp_path / "out"
    with pytest.raises(exc_type), StagedOutput(out, directory=True) as staged:
        os.mkdir(staged.temp_path)
        Path(staged.temp_path, "part").write_bytes(b"half")
        raise exc_type
    assert os.listdir(tmp_path) == []


def test_staged_output_rechecks_at_commit(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    staged = StagedOutput(out, overwrite=False)
    Path(staged.temp_path).write_bytes(b"mine")
    out.write_bytes(b"theirs")  # appeared while we were writing
    with pytest.raises(OutputRefused):
        staged.commit()
    assert out.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["out.bin"]


def test_every_command_uses_the_policy(tmp_path: Path) -> None:
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep")
    calls = {
        "convert": lambda **kw: convert_adapter(LORA, str(out), to="sa3", **kw),
        "merge": lambda **kw: merge_checkpoint(
            BASE, [AdapterArg(LORA, 1.0)], str(out), MergeOptions(**kw)
        ),
        "combine": lambda **kw: combine([AdapterArg(LORA, 1.0)], str(out), **kw),
        "convert_base": lambda **kw: convert_base(BASE, str(out), to="mlx", **kw),
    }
    for name, call in calls.items():
        with pytest.raises(OutputRefused, match="--force") as info:
            call()
        assert info.value.reason == REFUSED_EXISTS, name
    assert out.read_bytes() == b"keep"
    with pytest.raises(PlanError, match="exists"):
        make_plan(BASE, [(LORA, "1")], str(out), "runtime")
    link = tmp_path / "base-link.safetensors"
    link.symlink_to(BASE)
    with pytest.raises(OutputRefused) as info:
        convert_base(BASE, str(link), to="mlx", force=True)
    assert info.value.reason == REFUSED_INPUT
    with pytest.raises(PlanError, match="is an input"):
        make_plan(BASE, [(LORA, "1")], str(link), "runtime")


def test_convert_peft_folder_with_force(tmp_path: Path) -> None:
    """Was refused as "is a directory" although convert's own commit meant to replace it."""
    out = tmp_path / "peft"
    convert_adapter(LORA, str(out), to="peft")
    with pytest.raises(OutputRefused, match="--force"):
        convert_adapter(LORA, str(out), to="peft")
    convert_adapter(str(SMALL / "dora-rows.safetensors"), str(out), to="peft", force=True)
    assert '"use_dora": true' in (out / "adapter_config.json").read_text()
    assert sorted(os.listdir(tmp_path)) == ["peft"]
    with pytest.raises(OutputRefused) as info:
        convert_adapter(str(out), str(out / "x.safetensors"), to="sa3")
    assert info.value.reason == REFUSED_INPUT


def test_cli_and_tui_share_sizes_and_abbreviations(tmp_path: Path) -> None:
    assert tui_human_size is human_size
    assert human_size(512) == "512 B" and human_size(3 * 1024**2) == "3.0 MiB"
    assert list(BLOCK_MODULE_SHORT) == [m.canonical for m in BLOCK_MODULES]
    assert len(set(BLOCK_MODULE_SHORT.values())) == len(BLOCK_MODULE_SHORT)
    result = run_cli("inspect", LORA)
    assert result.returncode == 0
    assert human_size(os.path.getsize(LORA)) in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.strip().startswith("block"))
    assert header.split()[1:] == [module_head(m.canonical) for m in BLOCK_MODULES]
