"""convert_base: exact official <-> MLX conversions, containers, dtypes, refusals, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.convert.bases import BaseConvertLedger, convert_base
from sa3ckpt.synth import SynthBase, synth_base
from sa3ckpt.targets import FAMILIES

FAMILIES_UNDER_TEST = ("tiny-small", "tiny-medium")
PADDING_KEY = "cond.padding_embedding"
MLX_ONLY_KEY = "cond.unknown_array"  # a `cond.*` array of no module sa3ckpt knows
PROMPT_KEY = "conditioner.conditioners.prompt.model.shared.weight"


def _synth(name: str = "tiny-small") -> SynthBase:
    return synth_base(FAMILIES[name], seed=0)


def _write(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> Path:
    write_safetensors(path, tensors, metadata)
    return path


def _load(path: Path) -> dict[str, np.ndarray]:
    with open_base(path) as base:
        return {key: base.read(key) for key in base.tensors}


def _assert_bit_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert got[key].tobytes() == value.tobytes(), key


def _temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_official_to_mlx_equals_synth_mlx(tmp_path: Path, family: str) -> None:
    synth = _synth(family)
    src = _write(tmp_path / "base.safetensors", synth.official_tensors("F16"))
    ledger = convert_base(src, tmp_path / "mlx.safetensors", to="mlx")
    _assert_bit_equal(_load(tmp_path / "mlx.safetensors"), synth.mlx_tensors("F16"))
    assert ledger.from_naming == "official" and ledger.to_naming == "mlx"
    assert ledger.tensors == len(synth.official_tensors())
    assert ledger.transposed == 2  # pre/post Conv1d
    assert ledger.renamed == ledger.tensors
    assert ledger.worst_rel_error == 0.0 and ledger.cast == 0 and ledger.dropped == []


@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_mlx_to_official_round_trip_is_bit_exact(tmp_path: Path, family: str) -> None:
    official = _synth(family).official_tensors("F16")
    src = _write(tmp_path / "base.safetensors", official)
    convert_base(src, tmp_path / "mlx.safetensors", to="mlx")
    ledger = convert_base(
        tmp_path / "mlx.safetensors", tmp_path / "back.safetensors", to="official"
    )
    back = _load(tmp_path / "back.safetensors")
    _assert_bit_equal(back, official)
    assert any(key.endswith("pre_norm.gamma") for key in back)  # RMSNorm gamma restored
    mlx_conv = _load(tmp_path / "mlx.safetensors")["preprocess_conv.weight"]
    conv = back["model.model.preprocess_conv.weight"]
    assert conv.shape == (mlx_conv.shape[0], mlx_conv.shape[2], mlx_conv.shape[1])
    assert ledger.transposed == 2 and ledger.worst_rel_error == 0.0


def test_mlx_to_official_direct_from_synth(tmp_path: Path) -> None:
    synth = _synth()
    src = _write(tmp_path / "mlx.safetensors", synth.mlx_tensors("F32"))
    convert_base(src, tmp_path / "official.safetensors", to="official")
    _assert_bit_equal(_load(tmp_path / "official.safetensors"), synth.official_tensors("F32"))


def test_npz_output_readable_and_convertible_back(tmp_path: Path) -> None:
    synth = _synth()
    src = _write(tmp_path / "base.safetensors", synth.official_tensors("F16"))
    ledger = convert_base(src, tmp_path / "mlx.npz", to="mlx")
    assert ledger.container == "npz"
    with np.load(tmp_path / "mlx.npz") as npz:
        loaded = {key: npz[key] for key in npz.files}
    _assert_bit_equal(loaded, synth.mlx_tensors("F16"))
    back = convert_base(tmp_path / "mlx.npz", tmp_path / "back.bin", to="official")
    assert back.container == "safetensors" and back.input_container == "npz"
    _assert_bit_equal(_load(tmp_path / "back.bin"), synth.official_tensors("F16"))


def test_container_override_and_same_naming(tmp_path: Path) -> None:
    official = _synth().official_tensors("F16")
    src = _write(tmp_path / "base.safetensors", official, {"note": "kept"})
    ledger = convert_base(src, tmp_path / "copy.safetensors", to="official", container="npz")
    assert ledger.renamed == 0 and ledger.transposed == 0
    with open_base(tmp_path / "copy.safetensors") as base:
        assert base.container == "npz"
    _assert_bit_equal(_load(tmp_path / "copy.safetensors"), official)
    convert_base(src, tmp_path / "meta.safetensors", to="official")
    with open_base(tmp_path / "meta.safetensors") as base:
        assert base.metadata == {"note": "kept"}


@pytest.mark.parametrize(
    ("name", "np_dtype", "eps"),
    [("fp32", np.float32, 0.0), ("bf16", ml_dtypes.bfloat16, 2.0**-8)],
)
def test_dtype_cast(tmp_path: Path, name: str, np_dtype: object, eps: float) -> None:
    synth = _synth()
    src = _write(tmp_path / "base.safetensors", synth.official_tensors("F16"))
    ledger = convert_base(src, tmp_path / "mlx.safetensors", to="mlx", dtype=name)
    got = _load(tmp_path / "mlx.safetensors")
    want = synth.mlx_tensors("F16")
    assert ledger.cast == len(want)
    for key, value in want.items():
        assert got[key].dtype == np.dtype(np_dtype), key
        ref = value.astype(np.float64)
        err = np.abs(got[key].astype(np.float64) - ref)
        assert np.all(err <= np.abs(ref) * eps), key
    if eps == 0.0:
        assert ledger.worst_rel_error == 0.0
    else:
        assert 0.0 < ledger.worst_rel_error <= eps


def test_fp32_to_fp16_round_trip_within_one_rounding(tmp_path: Path) -> None:
    synth = _synth()
    src = _write(tmp_path / "base.safetensors", synth.official_tensors("F32"))
    ledger = convert_base(src, tmp_path / "mlx.safetensors", to="mlx", dtype="fp16")
    want = {k: v.astype(np.float16) for k, v in synth.mlx_tensors("F32").items()}
    _assert_bit_equal(_load(tmp_path / "mlx.safetensors"), want)
    assert 0.0 < ledger.worst_rel_error <= 2.0**-11


def test_integer_tensors_are_not_cast(tmp_path: Path) -> None:
    tensors = _synth().official_tensors("F16")
    tensors["model.model.step_counter.count"] = np.arange(4, dtype=np.int64)
    src = _write(tmp_path / "base.safetensors", tensors)
    ledger = convert_base(src, tmp_path / "mlx.safetensors", to="mlx", dtype="fp32")
    assert _load(tmp_path / "mlx.safetensors")["step_counter.count"].dtype == np.int64
    assert ledger.cast == len(tensors) - 1


def test_unmapped_official_keys_error_then_drop(tmp_path: Path) -> None:
    tensors = _synth().official_tensors("F16")
    tensors[PROMPT_KEY] = np.ones((4, 12), dtype=np.float16)
    tensors["pretransform.model.decoder.weight"] = np.ones((2, 2), dtype=np.float16)
    src = _write(tmp_path / "base.safetensors", tensors)
    with pytest.raises(IncompatibleError, match="2 tensors have no mlx spelling"):
        convert_base(src, tmp_path / "mlx.safetensors", to="mlx")
    assert not (tmp_path / "mlx.safetensors").exists()
    ledger = convert_base(src, tmp_path / "mlx.safetensors", to="mlx", drop_unmapped=True)
    assert sorted(ledger.dropped) == sorted([PROMPT_KEY, "pretransform.model.decoder.weight"])
    assert ledger.tensors == len(tensors) - 2
    assert PROMPT_KEY in "\n".join(ledger.lines())


def test_mlx_only_array_has_no_official_spelling(tmp_path: Path) -> None:
    tensors = _synth().mlx_tensors("F16")
    tensors[MLX_ONLY_KEY] = np.zeros((12,), dtype=np.float16)
    src = _write(tmp_path / "mlx.safetensors", tensors)
    with pytest.raises(IncompatibleError, match=MLX_ONLY_KEY):
        convert_base(src, tmp_path / "official.safetensors", to="official")
    ledger = convert_base(src, tmp_path / "official.safetensors", to="official", drop_unmapped=True)
    assert ledger.dropped == [MLX_ONLY_KEY]
    # Same naming keeps it: nothing needs a new spelling.
    kept = convert_base(src, tmp_path / "same.npz", to="mlx")
    assert kept.dropped == [] and kept.tensors == len(tensors)


def test_padding_embedding_converts_to_official(tmp_path: Path) -> None:
    """issue 14: `cond.padding_embedding` is the prompt conditioner's, both ways."""
    tensors = _synth().mlx_tensors("F16")
    tensors[PADDING_KEY] = np.arange(12, dtype=np.float16)
    src = _write(tmp_path / "mlx.safetensors", tensors)
    ledger = convert_base(src, tmp_path / "official.safetensors", to="official")
    assert ledger.dropped == []
    back = _load(tmp_path / "official.safetensors")
    official = back["conditioner.conditioners.prompt.padding_embedding"]
    assert official.tobytes() == tensors[PADDING_KEY].tobytes()


def test_colliding_output_keys_are_refused(tmp_path: Path) -> None:
    tensors = _synth().official_tensors("F16")
    gamma = "model.model.transformer.layers.0.pre_norm.gamma"
    tensors["model.model.transformer.layers.0.pre_norm.weight"] = tensors[gamma]
    src = _write(tmp_path / "base.safetensors", tensors)
    with pytest.raises(IncompatibleError, match="written twice"):
        convert_base(src, tmp_path / "mlx.safetensors", to="mlx")


def test_refuses_input_as_output(tmp_path: Path) -> None:
    src = _write(tmp_path / "base.safetensors", _synth().official_tensors("F16"))
    before = src.read_bytes()
    for force in (False, True):
        with pytest.raises(UsageError):
            convert_base(src, src, to="mlx", force=force)
    assert src.read_bytes() == before
    assert _temp_files(tmp_path) == []


def test_refuses_existing_output_unless_force(tmp_path: Path) -> None:
    src = _write(tmp_path / "base.safetensors", _synth().official_tensors("F16"))
    out = tmp_path / "mlx.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(UsageError, match="exists"):
        convert_base(src, out, to="mlx")
    assert out.read_bytes() == b"old"
    convert_base(src, out, to="mlx", force=True)
    assert "transformer.layers.0.pre_norm.weight" in _load(out)


@pytest.mark.parametrize(
    "kwargs",
    [{"to": "gguf"}, {"to": "mlx", "container": "zip"}, {"to": "mlx", "dtype": "int8"}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, str]) -> None:
    src = _write(tmp_path / "base.safetensors", _synth().official_tensors("F16"))
    with pytest.raises(UsageError):
        convert_base(src, tmp_path / "out.safetensors", **kwargs)


@pytest.mark.parametrize("suffix", ["safetensors", "npz"])
def test_no_temp_files_left_on_failure(tmp_path: Path, suffix: str) -> None:
    tensors = _synth().official_tensors("F32")
    # A value fp16 cannot hold: the cast overflows and verification fails mid-stream.
    last = list(tensors)[-1]
    tensors[last] = tensors[last].copy()
    tensors[last].flat[0] = 1e6
    src = _write(tmp_path / "base.safetensors", tensors)
    out = tmp_path / f"out.{suffix}"
    with pytest.raises(IncompatibleError, match="one rounding"):
        convert_base(src, out, to="mlx", dtype="fp16")
    assert not out.exists()
    assert _temp_files(tmp_path) == []


def test_ledger_lines_and_json(tmp_path: Path) -> None:
    src = _write(tmp_path / "base.safetensors", _synth().official_tensors("F16"))
    ledger = convert_base(src, tmp_path / "mlx.npz", to="mlx")
    assert isinstance(ledger, BaseConvertLedger)
    text = "\n".join(ledger.lines())
    assert "bit-exact" in text and "2 Conv1d transposed" in text
    data = json.loads(json.dumps(ledger.to_json()))
    assert data["from"] == "official" and data["to"] == "mlx" and data["container"] == "npz"
    assert data["worst_relative_error"] == 0.0 and data["dropped"] == []
