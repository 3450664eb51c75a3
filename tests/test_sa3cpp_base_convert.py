"""convert BASE --to sa3cpp and back, proven with the real gguf package.

The DiT and conditioner GGUFs are compared field by field with what sa3.cpp's converters
would write for the same official checkpoint (tests/sa3cpp_reference.py, built from the
documented facts only); round trips official -> sa3cpp -> official are bit-exact.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.ops.convert import convert_base
from sa3ckpt.ops.inspect import inspect_file
from tests.sa3cpp_reference import (
    fields,
    tensors,
    write_reference_conditioner,
    write_reference_dit,
)

gguf = pytest.importorskip("gguf")

BASES = DATA_DIR / "bases"
INV_FREQ = "model.model.transformer.rotary_pos_emb.inv_freq"


def _official(family: str) -> Path:
    return BASES / f"{family}.official-full.safetensors"


def _f32_official(tmp_path: Path, family: str) -> Path:
    """The fixture official base widened to F32 (exact), as an F32 checkpoint."""
    out = tmp_path / f"{family}.f32.safetensors"
    convert_base(_official(family), out, to="official", dtype="fp32")
    return out


def _read_all(path: Path) -> dict[str, np.ndarray]:
    handle = open_safetensors(str(path))
    try:
        return {k: handle.read(k) for k in handle.header.tensors}
    finally:
        handle.close()


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def test_dit_and_conditioner_match_sa3cpps_converters_field_by_field(tmp_path: Path) -> None:
    src = _f32_official(tmp_path, "tiny-medium")
    ours = tmp_path / "ours.gguf"
    ledger = convert_base(src, ours, to="sa3cpp")
    ref, ref_cond = tmp_path / "ref.gguf", tmp_path / "ref-cond.gguf"
    write_reference_dit(src, "tiny-medium", "tiny-medium", ref)
    write_reference_conditioner(src, "tiny-medium", "tiny-medium", ref_cond)
    cond = tmp_path / "ours-conditioner.gguf"
    assert cond.is_file() and ledger.no_home == [INV_FREQ]
    for mine, theirs in ((ours, ref), (cond, ref_cond)):
        assert fields(mine) == fields(theirs)  # every KV: key, value, GGUF type, in order
        got, want = tensors(mine), tensors(theirs)
        assert set(got) == set(want)
        for name, (kind, ne, data) in want.items():
            assert got[name][:2] == (kind, ne), name
            assert _bits(got[name][2]) == _bits(data), name


def test_f16_encoding_keeps_vectors_and_memory_tokens_f32_and_values_exact(
    tmp_path: Path,
) -> None:
    out = tmp_path / "dit.gguf"
    convert_base(_official("tiny-medium"), out, to="sa3cpp")  # fp16 input: F16 encoding
    ref = tmp_path / "ref.gguf"
    write_reference_dit(_official("tiny-medium"), "tiny-medium", "tiny-medium", ref)
    want = tensors(ref)
    for name, (kind, ne, data) in tensors(out).items():
        expect = "F16" if len(ne) == 2 and "tokens" not in name else "F32"
        assert kind == expect, name
        assert ne == want[name][1]
        assert np.array_equal(data.astype(np.float32), want[name][2]), name  # fp16 source: exact


@pytest.mark.parametrize("family", ["tiny-medium", "tiny-small"])
def test_official_sa3cpp_official_is_bit_exact_f32(tmp_path: Path, family: str) -> None:
    src = _f32_official(tmp_path, family)
    mid, back = tmp_path / "m.gguf", tmp_path / "back.safetensors"
    convert_base(src, mid, to="sa3cpp")
    ledger = convert_base(mid, back, to="official", conditioner=tmp_path / "m-conditioner.gguf")
    assert ledger.worst_rel_error == 0.0
    original, returned = _read_all(src), _read_all(back)
    assert set(original) - set(returned) == {INV_FREQ}  # sa3.cpp recomputes it
    for key, value in returned.items():
        assert value.dtype == np.float32 and _bits(value) == _bits(original[key]), key


def test_from_fp16_the_round_trip_is_exact_back_in_fp16(tmp_path: Path) -> None:
    mid, back = tmp_path / "m.gguf", tmp_path / "back.safetensors"
    convert_base(_official("tiny-medium"), mid, to="sa3cpp", dtype="fp16")
    convert_base(
        mid, back, to="official", dtype="fp16", conditioner=tmp_path / "m-conditioner.gguf"
    )
    original, returned = _read_all(_official("tiny-medium")), _read_all(back)
    for key, value in returned.items():
        assert _bits(value) == _bits(original[key]), key


def test_an_f32_source_written_f16_is_within_one_rounding(tmp_path: Path) -> None:
    src = tmp_path / "f32.safetensors"
    rng = np.random.default_rng(3)
    from safetensors.numpy import save_file

    arrays = {
        key: value.astype(np.float32) + rng.standard_normal(value.shape).astype(np.float32) * 1e-3
        for key, value in _read_all(_official("tiny-medium")).items()
    }
    save_file(arrays, str(src))
    out = tmp_path / "dit.gguf"
    ledger = convert_base(src, out, to="sa3cpp", dtype="fp16")
    assert 0.0 < ledger.worst_rel_error <= 2.0**-11
    with open_base(out) as base:
        w = base.read("dit.0.self.qkv.weight")
    want = arrays["model.model.transformer.layers.0.self_attn.to_qkv.weight"]
    assert np.array_equal(w, want.astype(np.float16))


@pytest.mark.parametrize("naming", ["mlx", "diffusers"])
def test_mlx_and_diffusers_bases_give_the_same_gguf(tmp_path: Path, naming: str) -> None:
    src = _f32_official(tmp_path, "tiny-medium")
    other = tmp_path / f"other.{naming}.safetensors"
    convert_base(src, other, to=naming, drop_unmapped=True)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    convert_base(src, a, to="sa3cpp")
    convert_base(other, b, to="sa3cpp", variant="tiny-medium", drop_unmapped=True)
    got, want = tensors(b), tensors(a)
    for name, value in got.items():
        assert value[:2] == want[name][:2] and _bits(value[2]) == _bits(want[name][2]), name
    back = tmp_path / f"back.{naming}.safetensors"
    convert_base(b, back, to=naming)
    for key, value in _read_all(back).items():
        assert _bits(value) == _bits(_read_all(other)[key]), key


def test_training_base_marker_and_identity_from_the_file_name(tmp_path: Path) -> None:
    src = tmp_path / "stable-audio-3-medium-base.safetensors"
    src.write_bytes(_f32_official(tmp_path, "tiny-medium").read_bytes())
    out = tmp_path / "stable-audio-3-medium-base-dit-1.5B-v1.0-F32.gguf"
    convert_base(src, out, to="sa3cpp")
    kv = {k: (v, t) for k, v, t in fields(out)}
    assert kv["dit.training_base"] == (True, "BOOL")
    assert kv["general.finetune"] == ("medium-base", "STRING")
    assert kv["general.basename"] == ("stable-audio-3-medium-base-dit", "STRING")
    assert kv["general.base_model.0.repo_url"][0].endswith("stabilityai/stable-audio-3-medium-base")
    cond = tmp_path / "stable-audio-3-medium-conditioner-v1.0-F32.gguf"
    assert {k: v for k, v, _ in fields(cond)}["general.finetune"] == "medium"
    report = inspect_file(out)
    facts = report.sa3cpp[0]  # type: ignore[union-attr]
    assert facts["training_base"] is True and facts["problems"] == []
    plain = tmp_path / "plain.gguf"
    convert_base(src, plain, to="sa3cpp", training_base=False, variant="small-sfx")
    kv = {k: v for k, v, _ in fields(plain)}
    assert "dit.training_base" not in kv and kv["general.finetune"] == "small-sfx"


def test_quantised_gguf_is_read_with_the_gguf_dequantiser(tmp_path: Path) -> None:
    src = _f32_official(tmp_path, "tiny-medium")
    f32 = tmp_path / "f32.gguf"
    convert_base(src, f32, to="sa3cpp")
    quant = tmp_path / "q8.gguf"
    reader = gguf.GGUFReader(str(f32))
    writer = gguf.GGUFWriter(str(quant), arch="sa3-dit")
    for key, fld in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            writer.add_key_value(key, fld.contents(), fld.types[0])
    q8 = gguf.GGMLQuantizationType.Q8_0
    for t in reader.tensors:
        shape = tuple(reversed([int(d) for d in t.shape]))
        value = np.array(t.data).reshape(shape)
        if t.name == "dit.0.ff.proj.weight":  # (128, 16): rows of 16 do not fill 32 ...
            value = value.T.copy()  # ... (16, 128) does: only for this test's own file
        if len(shape) == 2 and value.shape[-1] % 32 == 0:
            writer.add_tensor(t.name, gguf.quants.quantize(value, q8), raw_dtype=q8)
        else:
            writer.add_tensor(t.name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    back = tmp_path / "back.safetensors"
    ledger = convert_base(quant, back, to="official", drop_unmapped=True)
    assert any("Q8_0" in note and "dequantised" in note for note in ledger.notes)
    raw = {t.name: t for t in gguf.GGUFReader(str(quant)).tensors}
    key = "model.model.transformer.layers.0.ff.ff.0.proj.weight"
    want = gguf.quants.dequantize(np.array(raw["dit.0.ff.proj.weight"].data), q8).reshape(16, 128)
    assert np.array_equal(_read_all(back)[key], want)


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--to sa3cpp writes gguf-model"):
        convert_base(_official("tiny-medium"), tmp_path / "x.safetensors", to="sa3cpp")
    with pytest.raises(UsageError, match="F32 or F16"):
        convert_base(_official("tiny-medium"), tmp_path / "x.gguf", to="sa3cpp", dtype="bf16")
    assert not list(tmp_path.iterdir())


def test_cli_convert_to_and_from_sa3cpp(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    run = [sys.executable, "-m", "sa3ckpt", "convert", "--quiet"]
    done = subprocess.run(
        [*run, str(_official("tiny-small")), "--to", "sa3cpp", "-o", str(out), "--dtype", "fp32"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "kernel > 1 kept 3-D" in done.stdout
    back = tmp_path / "back.npz"
    sidecar = str(tmp_path / "m-conditioner.gguf")
    done = subprocess.run(
        [*run, str(out), "--conditioner", sidecar, "--to", "mlx", "-o", str(back)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    with np.load(back) as npz:
        assert "cond.seconds_total_weight" in npz.files


def test_an_incomplete_dit_is_an_incompatible_input_naming_the_file(tmp_path: Path) -> None:
    """A base holding only the adapter targets' weights cannot give sa3.cpp's KVs: exit 4 with
    the input's path, as `--to diffusers` says it (was exit 2 without the file; found by the
    route matrix)."""
    partial = DATA_DIR / "bases" / "tiny-small.official.safetensors"
    out = tmp_path / "x.gguf"
    with pytest.raises(IncompatibleError, match=r"tiny-small\.official\.safetensors is not a "):
        convert_base(str(partial), str(out), to="sa3cpp")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["tiny-medium", "tiny-small"])
def test_committed_gguf_fixtures_are_what_convert_writes(tmp_path: Path, family: str) -> None:
    """fixtures/data/bases/<family>.sa3cpp(-conditioner).gguf: the official-full base through
    `convert --to sa3cpp`, byte for byte (the generator writes them without the CLI)."""
    out = tmp_path / f"{family}.sa3cpp.gguf"
    convert_base(_official(family), out, to="sa3cpp")
    for name in (out.name, f"{family}.sa3cpp-conditioner.gguf"):
        assert (tmp_path / name).read_bytes() == (BASES / name).read_bytes(), name
