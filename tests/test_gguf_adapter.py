"""sa3.cpp GGUF adapters: exact round trips, GGUF types, ggml shape order, strictness, atomicity."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from sa3ckpt.errors import MalformedFileError, OutputError, UsageError  # noqa: E402
from sa3ckpt.io.gguf_adapter import (  # noqa: E402
    GGUF_MISSING,
    GgufAdapter,
    is_gguf,
    read_gguf_adapter,
    read_gguf_header,
    write_gguf_adapter,
)

KV = {"adapter_type": "dora-rows", "rank": 4, "alpha": 8.5, "n_targets": 2}


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "dit.0.self.qkv.lora_A": rng.standard_normal((4, 6), dtype=np.float32),
        "dit.0.self.qkv.lora_B": rng.standard_normal((9, 4), dtype=np.float32),
        "dit.0.self.qkv.magnitude": rng.standard_normal(9, dtype=np.float32),
        "dit.pre_conv.lora_A": rng.standard_normal((4, 3, 5), dtype=np.float32),
        "dit.1.ff.out.M_xs": np.array([[np.nan, -0.0], [np.inf, 1e-45]], dtype=np.float32),
        "dit.1.ff.out.magnitude_r": np.arange(8, dtype=np.float32),  # 32 bytes: no padding
    }


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _write(path: Path, tensors: dict[str, np.ndarray] | None = None, **kw: object) -> None:
    args: dict[str, object] = {**KV, **kw}
    write_gguf_adapter(path, _tensors() if tensors is None else tensors, **args)  # type: ignore[arg-type]


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    out = tmp_path / "a.gguf"
    src = _tensors()
    _write(out, src)
    got = read_gguf_adapter(out)
    assert isinstance(got, GgufAdapter)
    assert got.path == str(out)
    assert list(got.tensors) == list(src)  # file order = input order
    for name, arr in src.items():
        back = got.tensors[name]
        assert back.dtype == np.float32
        assert back.shape == arr.shape
        assert back.tobytes() == arr.tobytes()  # NaN, -0.0 and subnormals included
        assert back.flags.writeable  # a copy, not a read-only view of the file's memory map
    assert _listing(tmp_path) == ["a.gguf"]


def test_kv_fields_have_the_gguf_types_sa3cpp_expects(tmp_path: Path) -> None:
    out = tmp_path / "a.gguf"
    _write(out, extra_kv={"sa3ckpt.source": "x.safetensors", "count": 7, "ratio": 0.1})
    got = read_gguf_adapter(out)
    assert got.kv["general.architecture"] == "sa3-lora"
    assert got.kv["lora.adapter_type"] == "dora-rows"
    assert got.kv["lora.rank"] == 4 and isinstance(got.kv["lora.rank"], int)
    assert got.kv["lora.alpha"] == 8.5 and isinstance(got.kv["lora.alpha"], float)
    assert got.kv["lora.n_targets"] == 2
    assert got.kv["sa3ckpt.source"] == "x.safetensors"
    assert got.kv["count"] == 7
    assert got.kv["ratio"] == 0.1
    assert not any(k.startswith("GGUF.") for k in got.kv)
    assert got.kv_types["lora.rank"] == "UINT32"
    assert got.kv_types["lora.n_targets"] == "UINT32"
    assert got.kv_types["lora.alpha"] == "FLOAT32"
    assert got.kv_types["lora.adapter_type"] == "STRING"
    # Cross-check the raw field types with gguf's own reader.
    reader = gguf.GGUFReader(out)
    vt = gguf.GGUFValueType
    assert reader.fields["lora.rank"].types == [vt.UINT32]
    assert reader.fields["lora.n_targets"].types == [vt.UINT32]
    assert reader.fields["lora.alpha"].types == [vt.FLOAT32]
    assert reader.fields["lora.adapter_type"].types == [vt.STRING]
    assert reader.fields["general.architecture"].contents() == "sa3-lora"


def test_alpha_is_stored_as_float32(tmp_path: Path) -> None:
    out = tmp_path / "a.gguf"
    _write(out, alpha=0.1)
    assert read_gguf_adapter(out).kv["lora.alpha"] == float(np.float32(0.1))


def test_ggml_ne_is_the_reversed_numpy_shape(tmp_path: Path) -> None:
    out = tmp_path / "a.gguf"
    src = _tensors()
    _write(out, src)
    reader = gguf.GGUFReader(out)
    raw = out.read_bytes()
    assert {t.name for t in reader.tensors} == set(src)
    for t in reader.tensors:
        arr = src[t.name]
        assert [int(d) for d in t.shape] == list(reversed(arr.shape))
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        # The bytes are the row-major numpy bytes: ne[0] (innermost) is the last numpy axis.
        assert raw[t.data_offset : t.data_offset + arr.nbytes] == arr.tobytes()


def test_header_only_read(tmp_path: Path) -> None:
    out = tmp_path / "a.gguf"
    src = _tensors()
    _write(out, src)
    kv, infos = read_gguf_header(out)
    assert kv["lora.rank"] == 4
    assert infos == {name: (arr.shape, "F32") for name, arr in src.items()}


@pytest.mark.parametrize("dtype", [np.float16, np.float64, "bfloat16"])
def test_other_float_inputs_are_written_as_f32(tmp_path: Path, dtype: object) -> None:
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    src = np.array([[1.5, -2.25, 3.0], [0.1, 65504.0, -0.0]]).astype(np_dtype)
    out = tmp_path / "a.gguf"
    _write(out, {"dit.proj_in.lora_A": src})
    reader = gguf.GGUFReader(out)
    assert reader.tensors[0].tensor_type == gguf.GGMLQuantizationType.F32
    back = read_gguf_adapter(out).tensors["dit.proj_in.lora_A"]
    assert back.dtype == np.float32
    assert back.tobytes() == src.astype(np.float32).tobytes()


def test_bad_arguments_raise_value_error_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "a.gguf"
    bad_calls = [
        {"tensors": {"x.lora_A": np.arange(4, dtype=np.int32)}},
        {"tensors": {"x.lora_A": np.float32(1.0)}},
        {"tensors": {"x.lora_A": np.zeros((1, 1, 1, 1, 1), np.float32)}},
        {"tensors": {"x" * 64: np.zeros(2, np.float32)}},
        {"tensors": {"": np.zeros(2, np.float32)}},
        {"rank": 0},
        {"rank": True},
        {"n_targets": -1},
        {"alpha": float("nan")},
        {"alpha": 1e39},
        {"adapter_type": ""},
        {"extra_kv": {"lora.rank": 3}},
        {"extra_kv": {"general.architecture": "llama"}},
        {"extra_kv": {"k": [1, 2]}},
    ]
    for kw in bad_calls:
        tensors = kw.pop("tensors", _tensors())
        with pytest.raises(ValueError):
            _write(out, tensors, **kw)  # type: ignore[arg-type]
    assert _listing(tmp_path) == []


def _truncations(path: Path) -> list[int]:
    reader = gguf.GGUFReader(path)
    last = reader.tensors[-1]
    size = path.stat().st_size
    del reader
    return [2, 4, 10, 24, 60, last.data_offset + 4, size - 1]


def test_truncated_files_are_malformed(tmp_path: Path) -> None:
    good = tmp_path / "good.gguf"
    _write(good)
    data = good.read_bytes()
    for cut in _truncations(good):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        for reader in (read_gguf_adapter, read_gguf_header):
            with pytest.raises(MalformedFileError) as info:
                reader(bad)
            assert info.value.path == str(bad)
            assert "\n" not in info.value.cause
            assert info.value.exit_code == 3


def test_empty_missing_and_non_gguf_files_are_malformed(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    other = tmp_path / "x.safetensors"
    other.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for path, cause in [
        (empty, "empty"),
        (other, "bad magic"),
        (tmp_path / "missing.gguf", "No such file"),
        (tmp_path, "directory"),
    ]:
        with pytest.raises(MalformedFileError, match=cause):
            read_gguf_adapter(path)
    assert not is_gguf(empty) and not is_gguf(other) and not is_gguf(tmp_path / "missing")


def test_corrupt_header_is_malformed(tmp_path: Path) -> None:
    good = tmp_path / "good.gguf"
    _write(good)
    data = bytearray(good.read_bytes())
    data[16:24] = (2**40).to_bytes(8, "little")  # absurd kv count
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(MalformedFileError, match="corrupt"):
        read_gguf_adapter(bad)


def _write_foreign(path: Path, arch: str, tensor: np.ndarray) -> None:
    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_tensor("dit.proj_in.lora_A", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_wrong_or_missing_architecture_is_malformed(tmp_path: Path) -> None:
    llama = tmp_path / "llama.gguf"
    _write_foreign(llama, "llama", np.zeros((2, 3), np.float32))
    assert is_gguf(llama)
    with pytest.raises(MalformedFileError, match="llama"):
        read_gguf_adapter(llama)
    with pytest.raises(MalformedFileError, match="llama"):
        read_gguf_header(llama)
    kv, infos = read_gguf_header(llama, require_arch=False)
    assert kv["general.architecture"] == "llama"
    assert infos == {"dit.proj_in.lora_A": ((2, 3), "F32")}

    none = tmp_path / "none.gguf"
    _write_foreign(none, "", np.zeros((2, 3), np.float32))  # GGUFWriter skips an empty arch
    with pytest.raises(MalformedFileError, match=r"no general\.architecture"):
        read_gguf_adapter(none)


def test_tensor_neither_f32_nor_f16_is_malformed_and_named(tmp_path: Path) -> None:
    # Issue 13 changed F16 from malformed to accepted (sa3.cpp's inference loader reads it);
    # any other type (F64 here) is still refused by name.
    path = tmp_path / "f64.gguf"
    _write_foreign(path, "sa3-lora", np.zeros((2, 3), np.float64))
    with pytest.raises(MalformedFileError, match=r"dit\.proj_in\.lora_A.*F64.*F32 or F16"):
        read_gguf_adapter(path)
    _, infos = read_gguf_header(path)  # inspection reports it instead
    assert infos["dit.proj_in.lora_A"] == ((2, 3), "F64")


def test_f16_tensor_is_read_widened_exactly(tmp_path: Path) -> None:
    path = tmp_path / "f16.gguf"
    values = np.array([[0.5, -2.0, 65504.0], [1e-7, 0.0, -0.0]], np.float16)
    _write_foreign(path, "sa3-lora", values)
    got = read_gguf_adapter(path)
    assert got.tensor_types == {"dit.proj_in.lora_A": "F16"}
    back = got.tensors["dit.proj_in.lora_A"]
    assert back.dtype == np.float32 and np.array_equal(back, values.astype(np.float32))


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc_type: type[BaseException]
) -> None:
    def half_then_fail(self: object, **_: object) -> None:
        self.write_ti_data_to_file()  # type: ignore[attr-defined]
        raise exc_type("disk on fire")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", half_then_fail)
    with pytest.raises(exc_type):
        _write(tmp_path / "a.gguf")
    assert _listing(tmp_path) == []


def test_failure_mid_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "a.gguf"
    out.write_bytes(b"old")

    def fail(self: object, **_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OutputError, match=r"a\.gguf: No space left on device"):  # exit 5
        _write(out)
    assert out.read_bytes() == b"old"
    assert _listing(tmp_path) == ["a.gguf"]


def test_refuses_to_overwrite_an_input_or_existing_file(tmp_path: Path) -> None:
    src = tmp_path / "in.gguf"
    _write(src)
    before = src.read_bytes()
    with pytest.raises(UsageError, match="same file"):
        _write(src, inputs=[src])
    link = tmp_path / "link.gguf"
    link.symlink_to(src)
    with pytest.raises(UsageError, match="same file"):
        _write(link, inputs=[src])
    with pytest.raises(UsageError, match="exists"):
        _write(src, overwrite=False)
    assert src.read_bytes() == before
    assert _listing(tmp_path) == ["in.gguf", "link.gguf"]


def test_overwrite_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "a.gguf"
    _write(out, rank=4)
    _write(out, rank=8)
    assert read_gguf_adapter(out).kv["lora.rank"] == 8
    assert _listing(tmp_path) == ["a.gguf"]


def test_missing_gguf_package_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.gguf"
    _write(good)
    monkeypatch.setitem(sys.modules, "gguf", None)
    for call in (
        lambda: _write(tmp_path / "new.gguf"),
        lambda: read_gguf_adapter(good),
        lambda: read_gguf_header(good),
    ):
        with pytest.raises(UsageError) as info:
            call()
        assert str(info.value) == GGUF_MISSING
        assert info.value.exit_code == 2
    assert is_gguf(good)  # the magic check needs no gguf
    assert _listing(tmp_path) == ["good.gguf"]
