"""The strict safetensors reader/writer: round trips, compatibility, laziness and rejection."""

from __future__ import annotations

import json
import os
import struct
import time
import types
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy as st_numpy

from fixtures.malformed import malformed_corpus
from sa3ckpt import dtypes
from sa3ckpt.errors import MalformedFileError, UsageError
from sa3ckpt.io import bytesource
from sa3ckpt.io import safetensors as st
from sa3ckpt.io.safetensors import (
    SafetensorsStreamWriter,
    TensorInfo,
    open_safetensors,
    read_header,
    write_safetensors,
)

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _sample(code: str, shape: tuple[int, ...] = (3, 5), seed: int = 0) -> np.ndarray:
    """Deterministic values of ``code`` covering signs, fractions and (for floats) specials."""
    rng = np.random.default_rng(seed)
    dt = dtypes.numpy_dtype(code)
    n = int(np.prod(shape))
    if code == "BOOL":
        return (rng.integers(0, 2, n) == 1).reshape(shape)
    if dtypes.is_floating(code):
        values = rng.standard_normal(n).astype(np.float32) * 3
        if n >= 3:
            values[:3] = [0.0, -0.0, 0.5]
        return dtypes.cast(values, code).reshape(shape)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, n, dtype=dt, endpoint=True).reshape(shape)


def _bits(array: np.ndarray) -> np.ndarray:
    """Bit patterns, so bf16/f8/NaN/-0.0 compare exactly."""
    return np.ascontiguousarray(array).view(_UINT[array.dtype.itemsize])


def _assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    assert np.array_equal(_bits(a), _bits(b))


def _read_all(path: Path) -> dict[str, np.ndarray]:
    with open_safetensors(path) as f:
        return {name: f.array(name).copy() for name in f}


ALL_CODES = list(dtypes.DTYPES)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("code", ALL_CODES)
def test_round_trip_every_dtype(tmp_path: Path, code: str) -> None:
    arrays = {
        "matrix": _sample(code, (3, 5)),
        "scalar": _sample(code, (), seed=1),
        "empty": _sample(code, (0, 4)),
        "vector": _sample(code, (7,), seed=2),
    }
    path = tmp_path / "x.safetensors"
    write_safetensors(path, arrays)
    header = read_header(path)
    assert list(header.tensors) == list(arrays)
    for name, array in arrays.items():
        info = header.tensors[name]
        assert info.dtype == code
        assert info.shape == array.shape
        assert info.nbytes == array.nbytes
        assert info.numel == array.size
    back = _read_all(path)
    for name, array in arrays.items():
        _assert_same(back[name], array)


def test_bf16_bit_exact_for_every_pattern(tmp_path: Path) -> None:
    bf = np.arange(1 << 16, dtype=np.uint16).view(ml_dtypes.bfloat16).reshape(256, 256)
    path = tmp_path / "bf.safetensors"
    write_safetensors(path, {"all": bf})
    with open_safetensors(path) as f:
        got = f.array("all")
        assert got.dtype == np.dtype(ml_dtypes.bfloat16)
        assert np.array_equal(got.view(np.uint16), bf.view(np.uint16))


def test_zero_d_and_zero_size(tmp_path: Path) -> None:
    path = tmp_path / "z.safetensors"
    arrays = {
        "s": np.float32(2.5),
        "e1": np.zeros((0,), np.float16),
        "e2": np.zeros((3, 0, 2), np.int64),
        "t": np.array(7, dtype=np.int8),
    }
    write_safetensors(path, arrays)
    with open_safetensors(path) as f:
        assert f.array("s").shape == ()
        assert float(f.array("s")) == 2.5
        assert f.array("e1").shape == (0,)
        assert f.array("e2").shape == (3, 0, 2)
        assert f.array("e2").dtype == np.int64
        assert int(f.array("t")) == 7
        assert f.info("e2").nbytes == 0
        assert f.info("s").numel == 1
        assert not f.array("e1").flags.writeable


def test_only_empty_tensors_and_no_tensors(tmp_path: Path) -> None:
    path = tmp_path / "e.safetensors"
    write_safetensors(path, {"a": np.zeros((0,), np.float32), "b": np.zeros((0, 2), np.uint8)})
    header = read_header(path)
    assert header.data_bytes == 0
    assert header.file_size == header.data_offset
    write_safetensors(path, {})
    assert read_header(path).tensors == {}
    assert st_numpy.load_file(str(path)) == {}


def test_metadata_and_order_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    meta = {"format": "pt", "note": "ünïcødé ✓", "empty": "", "json": '{"a": [1, 2]}'}
    names = ["zeta", "alpha", "mid.weight", "Ünicode/ñame"]
    write_safetensors(path, [(n, np.full((2,), i, np.float32)) for i, n in enumerate(names)], meta)
    with open_safetensors(path) as f:
        assert f.metadata == meta
        assert f.keys() == names
        assert list(f) == names
        assert len(f) == 4
        assert "alpha" in f
        assert "missing" not in f
        assert f.array("mid.weight").tolist() == [2.0, 2.0]
    offsets = [read_header(path).tensors[n].begin for n in names]
    assert offsets == sorted(offsets)  # laid out in the given order


def test_no_metadata_means_empty_dict(tmp_path: Path) -> None:
    path = tmp_path / "n.safetensors"
    write_safetensors(path, {"a": np.zeros(2, np.float32)})
    assert read_header(path).metadata == {}
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert "__metadata__" not in json.loads(raw[8 : 8 + n])


def test_header_is_padded_to_multiple_of_eight(tmp_path: Path) -> None:
    for i in range(9):
        path = tmp_path / f"p{i}.safetensors"
        write_safetensors(path, {"x" * (i + 1): np.zeros(1, np.float64)}, {"k": "v" * i})
        header = read_header(path)
        assert header.header_bytes % 8 == 0
        assert header.data_offset % 8 == 0
        raw = path.read_bytes()[8 : header.data_offset]
        assert raw.rstrip(b" ") == raw.rstrip()  # padding is spaces only
        json.loads(raw)


def test_non_contiguous_and_big_endian_inputs(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    arrays = {
        "transposed": base.T,
        "strided": base[::2, ::3],
        "big_endian": np.arange(5, dtype=">i4"),
        "big_f64": np.linspace(0, 1, 4).astype(">f8"),
    }
    path = tmp_path / "nc.safetensors"
    write_safetensors(path, arrays)
    back = _read_all(path)
    assert np.array_equal(back["transposed"], base.T)
    assert np.array_equal(back["strided"], base[::2, ::3])
    assert back["big_endian"].dtype == np.dtype("<i4")
    assert back["big_endian"].tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(back["big_f64"], np.linspace(0, 1, 4))
    raw = path.read_bytes()
    info = read_header(path).tensors["big_endian"]
    start = read_header(path).data_offset + info.begin
    assert raw[start : start + 8] == struct.pack("<ii", 0, 1)


# --------------------------------------------------------------------------- compatibility

STD_CODES = [c for c in ALL_CODES if c not in ("BF16", "F8_E4M3", "F8_E5M2")]


def test_official_reader_loads_our_files(tmp_path: Path) -> None:
    arrays = {f"t_{code}": _sample(code, (2, 3), seed=i) for i, code in enumerate(ALL_CODES)}
    arrays["scalar"] = np.float32(1.5)
    arrays["empty"] = np.zeros((0, 3), np.float16)
    path = tmp_path / "ours.safetensors"
    write_safetensors(path, arrays, {"who": "sa3ckpt"})

    with safetensors.safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"who": "sa3ckpt"}
        assert sorted(f.keys()) == sorted(arrays)
    # The numpy backend has no bf16/f8; compare raw bytes for every tensor instead.
    raw = {name: view for name, view in safetensors.deserialize(path.read_bytes())}
    for name, array in arrays.items():
        assert raw[name]["dtype"] == dtypes.code_for(array.dtype)
        assert list(raw[name]["shape"]) == list(np.shape(array))
        assert bytes(raw[name]["data"]) == np.ascontiguousarray(array).tobytes()

    std_path = tmp_path / "std.safetensors"
    std = {f"t_{c}": arrays[f"t_{c}"] for c in STD_CODES}
    write_safetensors(std_path, std)
    loaded_std = st_numpy.load_file(str(std_path))
    for name, array in std.items():
        _assert_same(loaded_std[name], array)


def test_we_load_official_files(tmp_path: Path) -> None:
    arrays = {f"t_{code}": _sample(code, (4, 2), seed=i) for i, code in enumerate(ALL_CODES)}
    arrays["scalar"] = np.array(3.25, np.float64)
    arrays["empty"] = np.zeros((2, 0), np.int32)
    path = tmp_path / "official.safetensors"
    st_numpy.save_file(arrays, str(path), metadata={"format": "np", "x": "y"})
    with open_safetensors(path) as f:
        assert f.metadata == {"format": "np", "x": "y"}
        assert sorted(f.keys()) == sorted(arrays)
        for name, array in arrays.items():
            _assert_same(f.array(name), array)


def test_official_rejects_nothing_we_write_with_tricky_names(tmp_path: Path) -> None:
    path = tmp_path / "names.safetensors"
    names = ['quote"d', "back\\slash", "new\nline", "tab\tname", "日本語"]
    write_safetensors(path, {n: np.ones(1, np.float32) for n in names}, {"k\n": "v\t"})
    assert set(st_numpy.load_file(str(path))) == set(names)
    with safetensors.safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"k\n": "v\t"}
    assert _read_all(path).keys() == set(names)


# --------------------------------------------------------------------------- laziness


def _write_sparse_big(path: Path, numel: int) -> None:
    """A valid file whose single F32 tensor is ``numel`` zeros, stored sparsely."""
    header = json.dumps(
        {"big": {"dtype": "F32", "shape": [numel], "data_offsets": [0, 4 * numel]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * numel)


def test_read_header_of_huge_sparse_file_is_fast(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    numel = 1 << 28  # 1 GiB of data, never written
    _write_sparse_big(path, numel)
    start = time.perf_counter()
    header = read_header(path)
    assert time.perf_counter() - start < 1.0
    assert header.tensors["big"] == TensorInfo("big", "F32", (numel,), 0, 4 * numel)
    assert header.data_bytes == 4 * numel
    with open_safetensors(path) as f:
        big = f.array("big")
        assert big.shape == (numel,)
        assert big[:4].tolist() == [0.0] * 4
        assert float(big[-1]) == 0.0


def test_read_header_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "h.safetensors"
    write_safetensors(path, {"a": np.zeros(10_000, np.float64)}, {"k": "v"})
    counter = [0]
    real_read_at = bytesource.LocalFile.read_at

    def counting_read_at(self: bytesource.LocalFile, offset: int, count: int) -> bytes:
        data = real_read_at(self, offset, count)
        counter[0] += len(data)
        return data

    monkeypatch.setattr(bytesource.LocalFile, "read_at", counting_read_at)
    header = read_header(path)
    assert counter[0] == 8 + header.header_bytes
    assert header.header_bytes < 200


def test_mmap_is_lazy_and_arrays_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lazy.safetensors"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(5, dtype=np.int16)
    write_safetensors(path, {"a": a, "b": b})

    calls = []
    real_mmap = st.mmap.mmap

    def counting_mmap(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real_mmap(*args, **kwargs)

    fake = types.SimpleNamespace(mmap=counting_mmap, ACCESS_READ=st.mmap.ACCESS_READ)
    monkeypatch.setattr(st, "mmap", fake)
    with open_safetensors(path) as f:
        assert f.keys() == ["a", "b"]
        assert f.info("a").shape == (3, 4)
        assert f.metadata == {}
        assert calls == []
        got_a = f.array("a")
        assert len(calls) == 1
        got_b = f.array("b")
        assert len(calls) == 1
        assert np.array_equal(got_a, a)
        assert np.array_equal(got_b, b)
        assert not got_a.flags.writeable
        with pytest.raises(ValueError):
            got_a[0, 0] = 1.0


def test_unknown_name_and_closed_file(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    write_safetensors(path, {"a": np.ones(3, np.float32), "z": np.zeros(0, np.float32)})
    f = open_safetensors(path)
    with pytest.raises(KeyError):
        f.info("nope")
    with pytest.raises(KeyError):
        f.array("nope")
    kept = f.array("a")
    copied = kept.copy()
    f.close()
    f.close()  # idempotent, even with a live view
    with pytest.raises(ValueError, match="closed"):
        f.array("a")
    with pytest.raises(ValueError, match="closed"):
        f.array("z")
    assert copied.tolist() == [1.0, 1.0, 1.0]


def test_file_changed_after_header_read(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    write_safetensors(path, {"a": np.ones(3, np.float32)})
    with open_safetensors(path) as f:
        with open(path, "ab") as g:
            g.write(b"more")
        with pytest.raises(MalformedFileError, match="file size changed"):
            f.array("a")


# --------------------------------------------------------------------------- rejection

CORPUS = malformed_corpus()


def test_corpus_is_small_and_deterministic() -> None:
    assert malformed_corpus() == CORPUS
    assert len(CORPUS) >= 16
    for name, (data, cause) in CORPUS.items():
        assert name.endswith(".safetensors")
        assert len(data) < 1024
        assert cause


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_corpus_rejected(tmp_path: Path, name: str) -> None:
    data, expected = CORPUS[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(MalformedFileError) as info:
        read_header(path)
    err = info.value
    assert expected in err.cause
    assert err.path == str(path)
    assert err.exit_code == 3
    assert "\n" not in str(err)
    with pytest.raises(MalformedFileError) as again:
        open_safetensors(path)
    assert again.value.cause == err.cause


def test_os_errors_become_malformed(tmp_path: Path) -> None:
    with pytest.raises(MalformedFileError, match="No such file"):
        read_header(tmp_path / "missing.safetensors")
    with pytest.raises(MalformedFileError, match="not a regular file"):
        read_header(tmp_path)


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.safetensors"
    write_safetensors(path, {"a": np.ones(1, np.float32)})

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    # chmod does not stop root; reads go through the byte source's os.open
    monkeypatch.setattr(bytesource.os, "open", denied)
    with pytest.raises(MalformedFileError, match="Permission denied"):
        read_header(path)


def test_error_names_are_one_line(tmp_path: Path) -> None:
    header = json.dumps({"a\nb": {"dtype": "X", "shape": [], "data_offsets": [0, 0]}}).encode()
    path = tmp_path / "nl.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(MalformedFileError) as info:
        read_header(path)
    assert "\n" not in str(info.value)
    assert "'a\\nb'" in info.value.cause


def test_limits_are_enforced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "many.safetensors"
    write_safetensors(path, {f"t{i}": np.zeros(1, np.uint8) for i in range(3)})
    monkeypatch.setattr(st, "MAX_TENSORS", 2)
    with pytest.raises(MalformedFileError, match="too many tensors"):
        read_header(path)
    monkeypatch.setattr(st, "MAX_TENSORS", 3)
    read_header(path)
    monkeypatch.setattr(st, "MAX_HEADER_BYTES", 16)
    with pytest.raises(MalformedFileError, match="byte limit"):
        read_header(path)


def test_accepts_unpadded_and_space_padded_headers(tmp_path: Path) -> None:
    body = b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    for pad in (b"", b" ", b" " * 13):
        path = tmp_path / "pad.safetensors"
        path.write_bytes(struct.pack("<Q", len(body + pad)) + body + pad + b"\x01\x02")
        with open_safetensors(path) as f:
            assert f.array("a").tolist() == [1, 2]


def test_shared_zero_size_offsets_are_not_overlaps(tmp_path: Path) -> None:
    header = json.dumps(
        {
            "e0": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
            "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "e1": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
            "e2": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
        }
    ).encode()
    path = tmp_path / "z.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)
    assert list(read_header(path).tensors) == ["e0", "a", "e1", "e2"]
    bad = header.replace(b'[4, 4]}, "e2', b'[2, 2]}, "e2')
    path.write_bytes(struct.pack("<Q", len(bad)) + bad + b"\x00" * 4)
    with pytest.raises(MalformedFileError, match="overlap"):
        read_header(path)


# --------------------------------------------------------------------------- writer errors


def test_writer_rejects_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="duplicate"):
        write_safetensors(out, [("a", np.zeros(1)), ("a", np.zeros(1))])
    with pytest.raises(ValueError, match="unsupported dtype"):
        write_safetensors(out, {"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="invalid tensor name"):
        write_safetensors(out, {"__metadata__": np.zeros(1)})
    with pytest.raises(ValueError, match="invalid tensor name"):
        write_safetensors(out, {"": np.zeros(1)})
    with pytest.raises(ValueError, match="metadata"):
        write_safetensors(out, {"a": np.zeros(1)}, {"k": 1})  # type: ignore[dict-item]
    assert os.listdir(tmp_path) == []


def test_writer_refuses_inputs_and_existing(tmp_path: Path) -> None:
    src = tmp_path / "in.safetensors"
    write_safetensors(src, {"a": np.ones(2, np.float32)})
    before = src.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    with pytest.raises(UsageError):
        write_safetensors(src, {"b": np.zeros(1, np.float32)}, inputs=[src])
    with pytest.raises(UsageError):
        write_safetensors(link, {"b": np.zeros(1, np.float32)}, inputs=[src])
    with pytest.raises(UsageError, match="already exists"):
        write_safetensors(src, {"b": np.zeros(1, np.float32)}, overwrite=False)
    assert src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "link.safetensors"]


SPECS = [("a", "F32", (2, 3)), ("b", "BF16", (4,)), ("c", "I64", ())]


def _stream_arrays() -> dict[str, np.ndarray]:
    return {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16),
        "c": np.array(-9, dtype=np.int64),
    }


def test_stream_writer_happy_path(tmp_path: Path) -> None:
    out = tmp_path / "s.safetensors"
    arrays = _stream_arrays()
    with SafetensorsStreamWriter(out, SPECS, {"m": "1"}) as w:
        for name in ("a", "b", "c"):
            w.write(name, arrays[name])
        assert not out.exists()
    back = _read_all(out)
    for name, array in arrays.items():
        _assert_same(back[name], array)
    assert read_header(out).metadata == {"m": "1"}
    assert os.listdir(tmp_path) == ["s.safetensors"]


@pytest.mark.parametrize(
    ("name", "array", "match"),
    [
        ("b", np.zeros(4, ml_dtypes.bfloat16), "expected tensor 'a' next"),
        ("a", np.zeros((3, 2), np.float32), "shape"),
        ("a", np.zeros((2, 3), np.float16), "dtype F16 does not match spec F32"),
        ("a", np.zeros((2, 3), np.complex64), "unsupported dtype"),
    ],
)
def test_stream_writer_rejects_mismatch(
    tmp_path: Path, name: str, array: np.ndarray, match: str
) -> None:
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match=match), SafetensorsStreamWriter(out, SPECS) as w:
        w.write(name, array)
    assert out.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["s.safetensors"]


def test_stream_writer_missing_and_extra_tensors(tmp_path: Path) -> None:
    out = tmp_path / "s.safetensors"
    arrays = _stream_arrays()
    with pytest.raises(ValueError, match="not written"), SafetensorsStreamWriter(out, SPECS) as w:
        w.write("a", arrays["a"])
    assert os.listdir(tmp_path) == []

    with (
        pytest.raises(ValueError, match="unexpected tensor"),
        SafetensorsStreamWriter(out, SPECS) as w,
    ):
        for name in ("a", "b", "c"):
            w.write(name, arrays[name])
        w.write("d", arrays["a"])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, RuntimeError])
def test_stream_writer_interrupted_between_tensors(tmp_path: Path, exc_type: type) -> None:
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"previous")
    arrays = _stream_arrays()
    with pytest.raises(exc_type), SafetensorsStreamWriter(out, SPECS) as w:
        w.write("a", arrays["a"])
        raise exc_type()
    assert out.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["s.safetensors"]


def test_stream_writer_interrupted_mid_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s.safetensors"
    real = st._little_endian_bytes
    seen = []

    def interrupt_on_second(array: np.ndarray) -> np.ndarray:
        seen.append(array)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(array)

    monkeypatch.setattr(st, "_little_endian_bytes", interrupt_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_safetensors(out, _stream_arrays())
    assert os.listdir(tmp_path) == []


def test_stream_writer_misuse(tmp_path: Path) -> None:
    out = tmp_path / "s.safetensors"
    w = SafetensorsStreamWriter(out, SPECS)
    with pytest.raises(ValueError, match="not open"):
        w.write("a", _stream_arrays()["a"])
    with pytest.raises(ValueError):
        SafetensorsStreamWriter(out, [("a", "F99", (1,))])
    with pytest.raises(ValueError):
        SafetensorsStreamWriter(out, [("a", "F32", (-1,))])
    with pytest.raises(ValueError):
        SafetensorsStreamWriter(out, [("a", "F32", (1,)), ("a", "F32", (1,))])
    empty = SafetensorsStreamWriter(out, [])
    with empty:
        pass
    assert read_header(out).tensors == {}
    with pytest.raises(ValueError, match="only be used once"), empty:
        pass
    with pytest.raises(ValueError, match="not open"):
        empty.write("a", np.zeros(1))
