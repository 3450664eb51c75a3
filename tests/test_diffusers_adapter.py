"""The diffusers adapter dialect without the library: file layout, metadata, row order,
conditioner handling, refusals, and reading it back (the real-library checks are in
test_diffusers_interop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.io.diffusers_lora import LORA_WEIGHTS, METADATA_KEY, SIDECAR_WEIGHTS
from sa3ckpt.io.formats import identify
from sa3ckpt.io.safetensors import open_safetensors, write_safetensors
from sa3ckpt.layout import reorder_row_blocks
from sa3ckpt.names.modules import SECONDS_CONDITIONER
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import run_cli

FAM = FAMILIES["tiny-medium"]  # differential: its to_qkv rows are reordered
BASE = str(DATA_DIR / "bases" / "tiny-medium.official.safetensors")
QKV = "model.transformer.layers.1.self_attn.to_qkv"


def _fixture(stem: str) -> str:
    return str(DATA_DIR / "adapters" / "tiny-medium" / f"{stem}.safetensors")


def _convert(src: str, out: Path, *extra: str) -> dict[str, object]:
    result = run_cli("convert", src, "-o", str(out), "--to", "diffusers", "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _header(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    with open_safetensors(path) as f:
        tensors = {k: np.array(f.array(k)) for k in f}
        packed = json.loads(f.metadata[METADATA_KEY])
    return tensors, packed


@pytest.mark.parametrize("stem", ["lora", "dora-rows", "lora-xs", "dora-rows-xs"])
def test_round_trip_through_diffusers(tmp_path: Path, stem: str) -> None:
    src = load_adapter(_fixture(stem))
    out = tmp_path / "lora"
    xs = ["--base", BASE] if stem.endswith("-xs") else []
    ledger = _convert(_fixture(stem), out, "--include-conditioner", "--dtype", "fp32", *xs)
    plain = stem.removesuffix("-xs")
    assert ledger["adapter_type"] == stem and ledger["targets"] == len(src.tensors)
    assert sorted(p.name for p in out.iterdir()) == sorted([LORA_WEIGHTS, SIDECAR_WEIGHTS])

    tensors, packed = _header(out / LORA_WEIGHTS)
    assert packed["transformer.r"] == src.config.rank
    assert packed["transformer.lora_alpha"] == src.config.alpha
    assert packed["transformer.use_dora"] is (plain == "dora-rows")
    assert packed["transformer.use_rslora"] is False
    modules = packed["transformer.target_modules"]
    assert "transformer_blocks.1.self_attn.to_qkv" in modules and "proj_in" in modules
    assert "exclude_modules" not in json.dumps(packed)  # every block's ff.proj_in is targeted
    assert all(k.startswith("transformer.") for k in tensors)
    side, side_packed = _header(out / SIDECAR_WEIGHTS)
    assert set(side) >= {"duration_embedder.linear.lora_A.weight"}
    assert side_packed["duration_embedder.target_modules"] == ["linear"]

    # medium's to_qkv: lora_B rows [q|k|v|q2|k2] -> [q|q2|k|k2|v]; lora_A as it was
    if not stem.endswith("-xs"):
        b = np.asarray(src.tensors[QKV]["lora_B"], np.float32)
        stored_b = tensors["transformer.transformer_blocks.1.self_attn.to_qkv.lora_B.weight"]
        assert np.array_equal(stored_b, reorder_row_blocks(b, (0, 3, 1, 4, 2)))
        assert not np.array_equal(stored_b, b)
    conv_a = tensors["transformer.preprocess_conv.lora_A.weight"]
    assert conv_a.ndim == 3 and conv_a.shape[2] == 1  # PEFT's Conv1d layer layout

    back = load_adapter(out)
    assert back.adapter_type == plain
    assert set(back.tensors) == set(src.tensors)
    if not stem.endswith("-xs"):
        for target, params in src.tensors.items():
            for name, value in params.items():
                got = np.asarray(back.tensors[target][name], np.float32)
                assert np.array_equal(np.asarray(value, np.float32), got), (target, name)

    sa3 = tmp_path / "back.safetensors"
    result = run_cli("convert", str(out), "-o", str(sa3), "--to", "sa3")
    assert result.returncode == 0, result.stderr
    assert identify(out).naming == "diffusers" and identify(out).format == "diffusers-lora"
    assert identify(out / LORA_WEIGHTS).naming == "diffusers"


def test_conditioner_needs_a_decision(tmp_path: Path) -> None:
    refused = run_cli("convert", _fixture("lora"), "-o", str(tmp_path / "a"), "--to", "diffusers")
    assert refused.returncode == 2
    assert "--include-conditioner" in refused.stderr and "--drop-conditioner" in refused.stderr
    assert not (tmp_path / "a").exists()

    ledger = _convert(_fixture("lora"), tmp_path / "b", "--drop-conditioner")
    dropped = ledger["dropped"]
    assert isinstance(dropped, list)
    assert any(SECONDS_CONDITIONER in d and "lost" in d for d in dropped)
    assert [p.name for p in (tmp_path / "b").iterdir()] == [LORA_WEIGHTS]
    assert SECONDS_CONDITIONER not in load_adapter(tmp_path / "b").tensors

    wrong = run_cli(
        "convert", _fixture("lora"), "-o", str(tmp_path / "c"), "--to", "sa3",
        "--include-conditioner",
    )  # fmt: skip
    assert wrong.returncode == 2


@pytest.mark.parametrize("stem", ["dora-cols", "bora"])
def test_types_peft_layers_cannot_hold_are_refused(tmp_path: Path, stem: str) -> None:
    result = run_cli(
        "convert", _fixture(stem), "-o", str(tmp_path / "x"), "--to", "diffusers",
        "--drop-conditioner",
    )  # fmt: skip
    assert result.returncode == 2 and "cannot express" in result.stderr


def test_output_is_a_folder(tmp_path: Path) -> None:
    result = run_cli(
        "convert", _fixture("lora"), "-o", str(tmp_path / "x.safetensors"), "--to", "diffusers",
        "--drop-conditioner",
    )  # fmt: skip
    assert result.returncode == 2 and "folder" in result.stderr


def test_top_level_proj_in_alone_excludes_the_feed_forwards(tmp_path: Path) -> None:
    synth = synth_adapter(FAM, "lora", include=["transformer.project_in"])
    assert list(synth.tensors) == ["model.transformer.project_in"]
    src = tmp_path / "one.safetensors"
    write_safetensors(src, synth.file_tensors(), synth.metadata())
    _convert(str(src), tmp_path / "out")
    _, packed = _header(tmp_path / "out" / LORA_WEIGHTS)
    assert packed["transformer.target_modules"] == ["proj_in"]
    # PEFT reads a list entry as a name suffix: `proj_in` would also adapt ff.proj_in.
    assert packed["transformer.exclude_modules"] == [
        f"transformer_blocks.{n}.ff.proj_in" for n in range(FAM.topology.depth)
    ]


def test_lone_file_without_metadata_reads_as_diffusers_assumes(tmp_path: Path) -> None:
    out = tmp_path / "lora"
    _convert(_fixture("lora"), out, "--drop-conditioner")
    with open_safetensors(out / LORA_WEIGHTS) as f:
        tensors = {k: np.array(f.array(k)) for k in f}
    bare = tmp_path / LORA_WEIGHTS
    write_safetensors(bare, tensors)  # no lora_adapter_metadata at all
    ckpt = load_adapter(bare)
    assert ckpt.config.alpha == ckpt.config.rank  # diffusers' own default without metadata
    assert ckpt.ledger is not None
    assert any("lora_alpha = r" in line for line in ckpt.ledger.repairs)
    inspected = run_cli("inspect", str(bare), "--json")
    assert inspected.returncode == 0, inspected.stderr
