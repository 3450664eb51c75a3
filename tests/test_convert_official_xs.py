"""Issue 25's regression: an official-style -xs DoRA file converts without --dora-variant.

An official SA3 save of a dora-rows-xs / dora-cols-xs adapter holds M_xs and magnitudes only
(no U/V, no base_model), so its tensors alone cannot tell rows from cols; its lora_config's
explicit adapter_type, and the family's target shapes, settle the orientation. inspect and
validate already used that; convert asked for --dora-variant anyway. These tests run the
issue's own commands (in process, through the CLI's main) on the tiny-small family, blocks
0-1, and read the outputs back.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import official_xs_file
from sa3ckpt.adapters.checkpoint import checkpoint_from_raw
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.cli import main
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import BASE_OFFICIAL

FAM = FAMILIES["tiny-small"]
XS_DORA = ("dora-rows-xs", "dora-cols-xs")


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _official(tmp_path: Path, type_name: str, config: dict[str, object] | None = None) -> Path:
    adapter = synth_adapter(FAM, type_name, rank=4, alpha=8, seed=25, include=["layers.[0-1]."])
    tensors, metadata = official_xs_file(adapter)
    if config is not None:
        metadata = {"lora_config": json.dumps({**json.loads(metadata["lora_config"]), **config})}
    path = tmp_path / f"{type_name}.safetensors"
    write_safetensors(path, tensors, metadata)
    assert not any(k.endswith((".U", ".V")) for k in tensors)
    assert "base_model" not in metadata["lora_config"]
    return path


@pytest.mark.parametrize("type_name", XS_DORA)
def test_inspect_and_validate_name_the_official_type(tmp_path: Path, type_name: str) -> None:
    src = _official(tmp_path, type_name)
    code, out, _ = _cli("inspect", "--json", str(src))
    assert code == 0 and type_name in out
    code, _, err = _cli("validate", "--strict", str(src))
    assert code == 0, err


@pytest.mark.parametrize("type_name", XS_DORA)
def test_convert_to_bare_needs_no_variant(tmp_path: Path, type_name: str) -> None:
    src = _official(tmp_path, type_name)
    out = tmp_path / "x.safetensors"
    code, _, err = _cli("convert", str(src), "-o", str(out), "--to", "bare")
    assert code == 0, err
    back, before = load_adapter(out), load_adapter(src)
    assert back.adapter_type == type_name == back.config.adapter_type
    for target, params in before.tensors.items():
        for name, value in params.items():
            np.testing.assert_array_equal(np.asarray(back.tensors[target][name]), value)


@pytest.mark.parametrize("type_name", XS_DORA)
def test_convert_to_sa3cpp_needs_no_variant(tmp_path: Path, type_name: str) -> None:
    src = _official(tmp_path, type_name)
    out = tmp_path / "x.gguf"
    args = ("--to", "sa3cpp", "--base", str(BASE_OFFICIAL), "--drop-conditioner")
    code, _, err = _cli("convert", str(src), "-o", str(out), *args)
    assert code == 0, err
    back = load_adapter(out)
    assert back.adapter_type == type_name
    before = load_adapter(src)
    target = next(t for t in before.tensors if t in back.tensors)
    np.testing.assert_allclose(
        np.asarray(back.tensors[target]["magnitude"], np.float32),
        before.tensors[target]["magnitude"],
        rtol=1e-3,
    )


@pytest.mark.parametrize("type_name", XS_DORA)
def test_the_family_shapes_settle_a_legacy_alias(tmp_path: Path, type_name: str) -> None:
    """`dora-xs` (no orientation) without base_model: the family table inspect detects
    (magnitude lengths against its fans) settles it for convert too."""
    src = _official(tmp_path, type_name, {"adapter_type": "dora-xs"})
    code, out, _ = _cli("inspect", "--json", str(src))
    assert code == 0 and f'"{type_name}"' in out
    dst = tmp_path / "x.safetensors"
    code, _, err = _cli("convert", str(src), "-o", str(dst), "--to", "sa3")
    assert code == 0, err
    assert load_adapter(dst).adapter_type == type_name


def test_nothing_settles_square_only_alias_without_a_variant(tmp_path: Path) -> None:
    """Square layers, a legacy `dora` alias, no family: the one case that still asks."""
    square = [t.name for t in FAM.targets if t.shape[0] == t.shape[1]]
    adapter = synth_adapter(FAM, "dora-cols", include=square, extra_config={"adapter_type": "dora"})
    src = tmp_path / "square.safetensors"
    write_safetensors(src, adapter.file_tensors(), adapter.metadata())
    code, _, err = _cli("convert", str(src), "-o", str(tmp_path / "o.safetensors"), "--to", "sa3")
    assert code == 2 and "--dora-variant rows|cols" in err
    detection = checkpoint_from_raw(adapter.file_tensors(), adapter.metadata()["lora_config"], {})
    assert detection.detection is not None and detection.detection.orientation_guessed
