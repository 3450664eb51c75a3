"""The format registry: what each kind of file is, and its two reads agreeing with each other."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io import formats
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.formats import (
    ADAPTER,
    BASE,
    PICKLE,
    UNKNOWN,
    identify,
    is_base_checkpoint,
    load_raw,
    open_adapter_source,
)
from sa3ckpt.io.legacy_pickle import PickleRefusedError
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.validate import validate_path

SMALL = DATA_DIR / "adapters" / "tiny-small"
BASES = DATA_DIR / "bases"


def _peft_keyed_file(tmp_path: Path) -> Path:
    """A single safetensors file whose keys are PEFT's (no adapter_config.json beside it)."""
    with open_adapter_source(SMALL / "peft-lora") as source:
        tensors = {k: np.array(source.array(k)) for k in source.entries}
    path = tmp_path / "peft-keys.safetensors"
    write_safetensors(path, tensors, {})
    return path


@pytest.mark.parametrize(
    ("stem", "naming"), [("lora", "sa3"), ("lora.bare", "bare"), ("lora.mlx", "mlx")]
)
def test_adapter_files(stem: str, naming: str) -> None:
    found = identify(SMALL / f"{stem}.safetensors")
    assert (found.kind, found.format, found.naming) == (ADAPTER, "safetensors", naming)
    assert found.is_adapter and not found.is_base


def test_peft_keys_in_a_plain_file(tmp_path: Path) -> None:
    path = _peft_keyed_file(tmp_path)
    found = identify(path)
    assert (found.kind, found.format, found.naming) == (ADAPTER, "safetensors", "peft")
    with pytest.raises(MalformedFileError, match="peft keys"):
        load_adapter(path)  # plain files hold sa3/bare/mlx keys; PEFT is a folder


def test_peft_folder() -> None:
    found = identify(SMALL / "peft-lora")
    assert (found.kind, found.format, found.naming) == (ADAPTER, "peft", "peft")


def test_folder_that_is_not_peft(tmp_path: Path) -> None:
    found = identify(tmp_path)
    assert found.kind == UNKNOWN and "not a PEFT adapter" in found.reason
    with pytest.raises(MalformedFileError, match="not a PEFT adapter"):
        open_adapter_source(tmp_path)


@pytest.mark.parametrize("naming", ["official", "mlx"])
def test_base_safetensors(naming: str) -> None:
    path = BASES / f"tiny-small.{naming}.safetensors"
    found = identify(path)
    assert (found.kind, found.format, found.naming) == (BASE, "safetensors", naming)
    assert is_base_checkpoint(path)


def test_base_npz(tmp_path: Path) -> None:
    with open_base(BASES / "tiny-small.mlx.safetensors") as base:
        arrays = {k: base.read(k) for k in base.tensors}
    path = tmp_path / "base.npz"
    np.savez(path, **arrays)
    found = identify(path)
    assert (found.kind, found.format, found.naming) == (BASE, "npz", "mlx")
    with pytest.raises(MalformedFileError, match="holds base checkpoints, not adapters"):
        load_adapter(path)


def test_pickle_is_identified_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "old.bin"  # by content, not by suffix
    path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    found = identify(path)
    assert (found.kind, found.format) == (PICKLE, "pickle")
    for read in (open_adapter_source, load_raw, load_adapter, load_checkpoint):
        with pytest.raises(PickleRefusedError):
            read(path)


def test_unknown_files(tmp_path: Path) -> None:
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(b"\x01\x02 not a checkpoint")
    other = tmp_path / "other.safetensors"
    write_safetensors(other, {"encoder.weight": np.zeros((2, 2), np.float16)}, {})
    odd_npz = tmp_path / "odd.npz"
    np.savez(odd_npz, encoder=np.zeros(2))
    cases = {
        noise: "header length",
        other: "no adapter or base tensor keys",
        odd_npz: "no base tensor keys",
        tmp_path / "missing.safetensors": "no such file",
    }
    for path, reason in cases.items():
        found = identify(path)
        assert found.kind == UNKNOWN and reason in found.reason, (path, found)
        assert not is_base_checkpoint(path)
    truncated = identify(DATA_DIR / "malformed" / "truncated.safetensors")
    assert truncated.kind == UNKNOWN and truncated.format == "safetensors"


def test_bare_adapter_keys_are_not_a_base() -> None:
    """Bare adapter keys also parse as MLX base names; adapter keys decide first."""
    assert formats.classify_keys(["transformer.layers.0.self_attn.to_qkv.weight"]) == (BASE, "mlx")
    with open_adapter_source(SMALL / "lora.bare.safetensors") as source:
        assert formats.classify_keys(source.entries) == (ADAPTER, "bare")


def test_suffix_tables_come_from_the_rows() -> None:
    assert set(formats.ADAPTER_SUFFIXES) == {".safetensors", ".ckpt", ".pt", ".pth", ".gguf"}
    assert set(formats.CHECKPOINT_SUFFIXES) == {*formats.ADAPTER_SUFFIXES, ".npz"}
    assert [f.name for f in formats.FORMATS][-1] == "safetensors"  # the strict fallback


def _agree(path: Path | str) -> None:
    """Header view and full read: same keys, shapes, config and metadata."""
    raw = load_raw(path)
    with open_adapter_source(path) as source:
        assert source.format == raw.format
        assert set(source.entries) == set(raw.tensors)
        for key, entry in source.entries.items():
            assert entry.shape == raw.tensors[key].shape, key
        assert source.metadata == raw.metadata
        header_config = json.loads(source.config_text) if source.config_text else None
    full_config = json.loads(raw.config_text) if raw.config_text else None
    if header_config is not None:
        header_config.pop("peft_target_modules", None)  # coverage analysis only
    assert header_config == full_config


@pytest.mark.parametrize("stem", ["lora", "lora.bare", "lora.mlx", "dora-rows-xs"])
def test_reads_agree_safetensors(stem: str) -> None:
    _agree(SMALL / f"{stem}.safetensors")


@pytest.mark.parametrize("stem", ["peft-lora", "peft-dora", "peft-rslora"])
def test_reads_agree_peft(stem: str) -> None:
    _agree(SMALL / stem)
    assert load_raw(SMALL / stem).metadata == {"format": "pt"}  # was {} in the full read


def test_reads_agree_gguf(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from sa3ckpt.ops.convert.adapters import convert_adapter

    out = tmp_path / "a.gguf"
    convert_adapter(str(SMALL / "lora.safetensors"), str(out), to="sa3cpp", drop_conditioner=True)
    assert (identify(out).kind, identify(out).naming) == (ADAPTER, "sa3cpp")
    _agree(out)
    raw = load_raw(out)
    assert "general.architecture" not in raw.metadata  # container structure, not metadata
    assert not any(k.startswith("lora.") for k in raw.metadata)
    assert load_adapter(out).config.rank == json.loads(raw.config_text)["rank"]


def test_gguf_without_lora_fields_is_unconfigured_in_both_reads(tmp_path: Path) -> None:
    """Was: config None in the header view but a different error in the full load."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "no-rank.gguf"
    writer = gguf.GGUFWriter(str(path), arch="sa3-lora")
    writer.add_key_value("lora.adapter_type", "lora", gguf.GGUFValueType.STRING)
    writer.add_key_value("lora.alpha", 8.0, gguf.GGUFValueType.FLOAT32)
    writer.add_tensor("dit.0.self.qkv.lora_A", np.zeros((4, 8), np.float32))
    writer.add_tensor("dit.0.self.qkv.lora_B", np.zeros((24, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_adapter_source(path) as source:
        assert source.config_text is None
    assert load_raw(path).config_text is None
    # Was "GGUF lora.* fields absent" although only lora.rank is: the message names it.
    with pytest.raises(MalformedFileError, match=r"no lora_config \(GGUF lora\.rank absent\)"):
        load_adapter(path)
    rules = [f.rule for f in validate_path(str(path)).findings]
    assert "config-missing" in rules


def test_pickle_reads_agree(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with open_adapter_source(SMALL / "lora.safetensors") as source:
        state = {k: torch.from_numpy(np.array(source.array(k), np.float32)) for k in source.entries}
        config = json.loads(source.config_text or "{}")
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": state, "lora_config": config, "step": 3}, path)
    raw = load_raw(path, allow_pickle=True)
    with open_adapter_source(path, allow_pickle=True) as source:
        assert set(source.entries) == set(raw.tensors) and source.metadata == raw.metadata
        assert source.config_text == raw.config_text
    assert load_adapter(path, allow_pickle=True).adapter_type == "lora"


def test_safetensors_header_length_0x80_is_not_a_pickle(tmp_path: Path) -> None:
    """Was: a header length with low byte 0x80 read as the pickle protocol marker."""
    path = tmp_path / "a.safetensors"
    with open_adapter_source(SMALL / "lora.safetensors") as source:
        tensors = {k: np.array(source.array(k)) for k in source.entries}
        metadata = {**source.metadata, "lora_config": source.config_text or ""}
    for pad in range(300):
        write_safetensors(path, tensors, {**metadata, "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with low byte 0x80")
    assert identify(path).kind == ADAPTER
    assert load_adapter(path).adapter_type == "lora"
    assert [f.rule for f in validate_path(str(path)).findings if f.rule == "pickle"] == []
