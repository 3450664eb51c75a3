"""sa3.cpp model GGUFs as bases, the io and names layer: names, layouts, KVs, types.

Names are checked against a transcription of sa3.cpp's converter rename table
(tests/sa3cpp_reference.py); files are read with the real gguf package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.errors import IncompatibleError
from sa3ckpt.io.base_checkpoint import GgufOutput, open_base, stream_writer
from sa3ckpt.io.formats import BASE, identify
from sa3ckpt.io.gguf_base import GgufSpec
from sa3ckpt.io.gguf_facts import (
    Identity,
    conditioner_beside,
    general_kv,
    identity_from_kv,
    identity_from_name,
    size_label,
    tensor_type,
)
from sa3ckpt.io.safetensors import read_header
from sa3ckpt.layout import SQUEEZED_CONV1D, stored_layout, target_layout
from sa3ckpt.names.base_keys import detect_base_naming, parse_base_key, translate_base_key
from tests.sa3cpp_reference import CONDITIONER_MAP, rename

gguf = pytest.importorskip("gguf")

BASES = DATA_DIR / "bases"
FAMILIES = ("tiny-small", "tiny-medium")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_official_key_gets_the_sa3cpp_converter_name(family: str) -> None:
    keys = read_header(str(BASES / f"{family}.official-full.safetensors")).tensors
    for key in keys:
        want = CONDITIONER_MAP.get(key) or rename(key)
        got = translate_base_key(key, (), "official", "sa3cpp")
        assert got == want, key
        if got is not None:
            assert translate_base_key(got, (), "sa3cpp", "official") == key
    names = [n for n in (translate_base_key(k, (), "official", "sa3cpp") for k in keys) if n]
    assert detect_base_naming(names) == "sa3cpp"


def test_other_namings_do_not_claim_sa3cpp_names_nor_it_theirs() -> None:
    assert detect_base_naming(["dit.0.self.qkv.weight", "dit.pre_conv.weight"]) == "sa3cpp"
    assert parse_base_key("dit.0.self.qkv.lora_A", "sa3cpp") == (
        "model.transformer.layers.0.self_attn.to_qkv",
        "lora_A",
    )  # a leaf is a leaf; adapter keys are told apart by names.adapter_keys first
    assert parse_base_key("dit.0.nonsense.weight", "sa3cpp") is None
    assert parse_base_key("transformer.layers.0.self_attn.to_qkv.weight", "sa3cpp") is None


def test_kernel_one_conv_is_squeezed_and_other_kernels_keep_their_taps() -> None:
    assert target_layout("sa3cpp", "conv1d", (8, 8), 1) is SQUEEZED_CONV1D
    assert target_layout("sa3cpp", "conv1d", (8, 24), 3).name == "torch-conv1d"
    assert target_layout("official", "conv1d", (8, 8), 1).stored_shape((8, 8), 1) == (8, 8, 1)
    squeezed = stored_layout("sa3cpp", (8, 8), "model.preprocess_conv")
    assert squeezed is SQUEEZED_CONV1D and squeezed.layer_kind == "conv1d"
    assert squeezed.kernel_size((8, 8)) == 1
    with pytest.raises(ValueError, match="kernel size 1"):
        squeezed.from_canonical(np.zeros((8, 24)), 3)
    assert stored_layout("sa3cpp", (8, 8), "model.transformer.project_in").name == "linear"


def test_facts_size_labels_identities_and_file_names() -> None:
    assert [size_label(n) for n in (1_452_000_000, 460_000_000, 280_000_000, 17_000)] == [
        "1.5B",
        "0.5B",
        "0.3B",
        "17K",
    ]
    base = Identity("medium", training_base=True)
    assert base.finetune == "medium-base" and base.model == "stable-audio-3-medium-base"
    kv = {k: v for k, v, _ in general_kv(base, "dit", 1_450_000_000)}
    assert kv["dit.training_base"] is True and kv["general.finetune"] == "medium-base"
    assert kv["general.basename"] == "stable-audio-3-medium-base-dit"
    assert kv["general.base_model.0.version"] == "b32993f73c3bdc3864043a72d8032606bba737c8"
    assert identity_from_kv(kv) == base
    cond = {k: v for k, v, _ in general_kv(base, "conditioner", None)}
    assert cond["general.finetune"] == "medium" and "general.size_label" not in cond
    assert identity_from_name("stable-audio-3-small-sfx-base-dit-0.5B-v1.0-F16.gguf") == Identity(
        "small-sfx", True
    )
    assert identity_from_name("model.safetensors") is None
    assert conditioner_beside("/m/stable-audio-3-medium-dit-1.5B-v1.0-F16.gguf") == (
        "/m/stable-audio-3-medium-conditioner-v1.0-F32.gguf"
    )
    assert conditioner_beside("/m/x.gguf") == "/m/x-conditioner.gguf"
    assert tensor_type("dit.0.self.qkv.weight", (80, 16), "F16") == "F16"
    assert tensor_type("dit.0.pre_norm.gamma", (16,), "F16") == "F32"
    assert tensor_type("dit.memory_tokens", (4, 16), "F16") == "F32"
    assert tensor_type("dit.0.self.qkv.weight", (80, 16), "F32") == "F32"


def _write(path: Path, tensors: dict[str, np.ndarray], types: dict[str, str], source=None) -> None:
    spec = GgufSpec("sa3-dit", (("dit.dim", 16, "UINT32"),), types, source)
    specs = [(k, "F32", a.shape) for k, a in tensors.items()]
    with stream_writer("gguf", path, specs, {"note": "x"}, gguf=GgufOutput(spec)) as w:
        for k, a in tensors.items():
            w.write(k, a)


def _dit_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "dit.proj_in.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "dit.0.self.qkv.weight": rng.standard_normal((96, 32)).astype(np.float32),
        "dit.0.pre_norm.gamma": rng.standard_normal(32).astype(np.float32),
    }


def test_stream_writer_types_kv_and_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = _dit_tensors(rng)
    out = tmp_path / "dit.gguf"
    _write(out, tensors, {"dit.0.self.qkv.weight": "F16", "dit.proj_in.weight": "Q8_0"})
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == "sa3-dit"
    assert reader.fields["dit.dim"].types[0].name == "UINT32"
    assert reader.fields["sa3ckpt.metadata.note"].contents() == "x"
    found = {t.name: (t.tensor_type.name, [int(d) for d in t.shape]) for t in reader.tensors}
    assert found == {
        "dit.proj_in.weight": ("Q8_0", [32, 64]),  # ggml ne: innermost first
        "dit.0.self.qkv.weight": ("F16", [32, 96]),
        "dit.0.pre_norm.gamma": ("F32", [32]),
    }
    assert identify(out).kind == BASE and identify(out).naming == "sa3cpp"
    with open_base(out) as base:
        assert base.container == "gguf" and base.naming == "sa3cpp"
        assert base.metadata == {"note": "x"}
        assert base.tensors["dit.proj_in.weight"].dtype == "F32"  # read dequantised
        assert base.tensors["dit.0.self.qkv.weight"].dtype == "F16"
        qkv = base.read("dit.0.self.qkv.weight")
        assert qkv.dtype == np.float16
        assert np.array_equal(qkv, tensors["dit.0.self.qkv.weight"].astype(np.float16))
        assert np.array_equal(base.read("dit.0.pre_norm.gamma"), tensors["dit.0.pre_norm.gamma"])
        q = base.read("dit.proj_in.weight")
        raw = np.array(reader.tensors[0].data)
        want = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(64, 32)
        assert np.array_equal(q, want)
        assert 0 < np.abs(q - tensors["dit.proj_in.weight"]).max() < 0.05


def test_untouched_quantised_tensors_keep_their_bytes_and_changed_ones_are_requantised(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    src = tmp_path / "src.gguf"
    _write(src, _dit_tensors(rng), {"dit.proj_in.weight": "Q8_0", "dit.0.self.qkv.weight": "Q4_0"})
    out = tmp_path / "out.gguf"
    with open_base(src) as base:
        assert base.gguf is not None
        spec = base.gguf.spec(base.gguf.dit)  # type: ignore[arg-type]
        changed = base.read("dit.0.self.qkv.weight") + 0.5
        specs = [(k, i.dtype, i.shape) for k, i in base.tensors.items()]
        with stream_writer("gguf", out, specs, {}, gguf=GgufOutput(spec)) as w:
            for k in base.tensors:
                w.write(k, changed if k == "dit.0.self.qkv.weight" else base.read(k))
    a = {t.name: t for t in gguf.GGUFReader(str(src)).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert np.array_equal(
        np.array(a["dit.proj_in.weight"].data), np.array(b["dit.proj_in.weight"].data)
    )
    assert b["dit.0.self.qkv.weight"].tensor_type.name == "Q4_0"
    want = gguf.quants.quantize(changed.astype(np.float32), gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(np.array(b["dit.0.self.qkv.weight"].data), want)
    assert gguf.GGUFReader(str(out)).fields["dit.dim"].contents() == 16


def test_a_type_without_a_quantiser_is_refused_with_the_reason_and_nothing_written(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    tensors = {"dit.0.self.qkv.weight": rng.standard_normal((4, 256)).astype(np.float32)}
    out = tmp_path / "k.gguf"
    with pytest.raises(IncompatibleError, match="no Q4_K quantiser"):
        _write(out, tensors, {"dit.0.self.qkv.weight": "Q4_K"})
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_block_misfit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    tensors = {"dit.0.self.qkv.weight": np.zeros((4, 20), np.float32)}
    with pytest.raises(IncompatibleError, match="Q8_0 blocks of 32"):
        _write(tmp_path / "m.gguf", tensors, {"dit.0.self.qkv.weight": "Q8_0"})
    assert list(tmp_path.iterdir()) == []


def test_adapter_gguf_is_still_an_adapter(tmp_path: Path) -> None:
    from sa3ckpt.ops.convert import convert_adapter

    out = tmp_path / "lora.gguf"
    convert_adapter(
        str(DATA_DIR / "adapters" / "tiny-medium" / "lora.safetensors"),
        str(out),
        to="sa3cpp",
        drop_conditioner=True,
    )
    assert identify(out).kind == "adapter" and identify(out).naming == "sa3cpp"
