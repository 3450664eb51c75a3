"""The positional .npz writer and npz members read where they lie (issue 26).

`NpzPositionalWriter` must write the very bytes `NpzStreamWriter` (zipfile + write_array)
writes for the same arrays, whatever order its parts arrive in, including the zip64 fields
zipfile adds past 2 GiB (exercised here by lowering zipfile's limit for both writers);
`stored_array_offset` must find the array bytes of uncompressed members and refuse the rest.
"""

from __future__ import annotations

import itertools
import os
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from sa3ckpt import dtypes
from sa3ckpt.io import npz_writer
from sa3ckpt.io.base_checkpoint import NpzStreamWriter, open_base
from sa3ckpt.io.npz_members import stored_array_offset
from sa3ckpt.io.npz_writer import NpzPositionalWriter
from sa3ckpt.io.tensor_rows import PositionalWriter


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "blocks.0.attn.to_q.weight": rng.standard_normal((6, 5)).astype(np.float16),
        "blocks.0.attn.to_k.weight": rng.standard_normal((4, 3, 2)).astype(ml_dtypes.bfloat16),
        "norm.bias": rng.standard_normal(7).astype(np.float32),
        "steps": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([1, 0, 3], np.uint8),
        "empty": np.zeros((0, 4), np.float32),
        "naïve": np.ones((2, 2), np.float32),  # a non-ASCII name: zipfile's UTF-8 flag
    }


def _specs(arrays: dict[str, np.ndarray]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(k, dtypes.code_for(v.dtype), v.shape) for k, v in arrays.items()]


def _raw(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes()


def _reference(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    with NpzStreamWriter(path) as writer:
        for key, value in arrays.items():
            writer.write(key, value)
    return path.read_bytes()


def _write_in_parts(writer: NpzPositionalWriter, arrays: dict[str, np.ndarray], order: str) -> None:
    """Each tensor in three parts: in order, or (order="shuffled") tensors reversed and
    each tensor's parts last first, so every CRC must be read back."""
    keys = list(arrays) if order == "in-order" else list(reversed(arrays))
    for key in keys:
        raw = _raw(arrays[key])
        cuts = [0, len(raw) // 3, 2 * len(raw) // 3, len(raw)]
        parts = list(itertools.pairwise(cuts))
        if order == "shuffled":
            parts.reverse()
        for a, b in parts:
            writer.write_at(key, a, memoryview(raw)[a:b])


@pytest.mark.parametrize("order", ["in-order", "shuffled", "whole", "copied"])
def test_positional_npz_is_byte_identical_to_the_stream_writer(tmp_path: Path, order: str) -> None:
    arrays = _arrays()
    want = _reference(tmp_path / "ref.npz", arrays)
    np.savez(tmp_path / "numpy.npz", **arrays)  # what NumPy itself writes, too
    assert (tmp_path / "numpy.npz").read_bytes() == want
    out = tmp_path / "pos.npz"
    source = tmp_path / "source.bin"
    with NpzPositionalWriter(out, _specs(arrays)) as writer:
        assert isinstance(writer, PositionalWriter)
        if order == "whole":
            for key, value in arrays.items():
                writer.write(key, value)
        elif order == "copied":  # copy_from a file holding each tensor's bytes
            source.write_bytes(b"".join(_raw(v) for v in arrays.values()))
            fd = os.open(source, os.O_RDONLY)
            try:
                at = 0
                for key, value in arrays.items():
                    writer.copy_from(key, fd, at)
                    at += value.nbytes
            finally:
                os.close(fd)
        else:
            _write_in_parts(writer, arrays, order)
    assert out.read_bytes() == want
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None  # every CRC checks out
    loaded = np.load(out)
    for key, value in arrays.items():
        assert loaded[key].shape == value.shape
        assert _raw(loaded[key]) == _raw(value)


def test_zip64_fields_match_zipfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past zipfile's zip64 limit (sizes, header offsets, the central directory's offset and
    size, the member count) both writers add the same zip64 fields and end records."""
    for module in (zipfile, npz_writer):
        monkeypatch.setattr(module, "ZIP64_LIMIT", 150)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 3)
    monkeypatch.setattr(npz_writer, "FILECOUNT_LIMIT", 3)
    arrays = _arrays()
    want = _reference(tmp_path / "ref.npz", arrays)
    assert b"PK\x06\x06" in want  # the zip64 end record is there
    out = tmp_path / "pos.npz"
    with NpzPositionalWriter(out, _specs(arrays)) as writer:
        _write_in_parts(writer, arrays, "in-order")
    assert out.read_bytes() == want


def test_mlx_reads_the_positional_npz(tmp_path: Path) -> None:
    mx = pytest.importorskip("mlx.core")
    arrays = {k: v for k, v in _arrays().items() if k not in ("empty", "naïve", "mask")}
    arrays["blocks.0.attn.to_k.weight"] = arrays["blocks.0.attn.to_k.weight"].astype(np.float32)
    out = tmp_path / "pos.npz"
    with NpzPositionalWriter(out, _specs(arrays)) as writer:
        _write_in_parts(writer, arrays, "shuffled")
    loaded = mx.load(str(out))
    for key, value in arrays.items():
        assert np.array_equal(np.array(loaded[key]), value)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_write_leaves_nothing(tmp_path: Path, exc_type: type) -> None:
    arrays = _arrays()
    key = next(iter(arrays))
    with pytest.raises(exc_type), NpzPositionalWriter(tmp_path / "out.npz", _specs(arrays)) as w:
        w.write_at(key, 0, _raw(arrays[key])[:4])
        raise exc_type
    assert os.listdir(tmp_path) == []


def test_a_missing_tensor_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    arrays = _arrays()
    with (
        pytest.raises(ValueError, match="not written"),
        NpzPositionalWriter(tmp_path / "out.npz", _specs(arrays)) as writer,
    ):
        for key, value in list(arrays.items())[1:]:
            writer.write(key, value)
    assert os.listdir(tmp_path) == []


def test_misuse_is_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    with (
        pytest.raises(ValueError, match="outside"),
        NpzPositionalWriter(tmp_path / "out.npz", _specs(arrays)) as writer,
    ):
        writer.write_at("norm.bias", 20, b"\0" * 12)
    with (
        pytest.raises(ValueError, match="does not match"),
        NpzPositionalWriter(tmp_path / "out.npz", _specs(arrays)) as writer,
    ):
        writer.write("norm.bias", np.zeros(7, np.float16))
    with pytest.raises(ValueError, match="not open"):
        NpzPositionalWriter(tmp_path / "out.npz", _specs(arrays)).write_at("norm.bias", 0, b"")
    assert os.listdir(tmp_path) == []


# --- reading: where a member's array bytes lie ---------------------------------------------


def _offsets(path: Path) -> dict[str, int | None]:
    with zipfile.ZipFile(path) as archive:
        return {
            info.filename.removesuffix(".npy"): stored_array_offset(str(path), info)
            for info in archive.infolist()
        }


def test_uncompressed_members_are_located(tmp_path: Path) -> None:
    arrays = {k: v for k, v in _arrays().items() if k != "naïve"}
    ours = tmp_path / "ours.npz"
    _reference(ours, arrays)
    numpy_savez = tmp_path / "numpy.npz"
    np.savez(numpy_savez, **{k: v for k, v in arrays.items() if v.dtype != ml_dtypes.bfloat16})
    for path in (ours, numpy_savez):
        data = path.read_bytes()
        found = _offsets(path)
        for key, offset in found.items():
            assert offset is not None, key
            raw = _raw(arrays[key])
            assert data[offset : offset + len(raw)] == raw


def test_mlx_written_members_are_located(tmp_path: Path) -> None:
    mx = pytest.importorskip("mlx.core")
    arrays = {"w": np.arange(12, dtype=np.float16).reshape(3, 4), "b": np.ones(5, np.float32)}
    path = tmp_path / "mlx.npz"
    mx.savez(str(path), **{k: mx.array(v) for k, v in arrays.items()})
    data = path.read_bytes()
    for key, offset in _offsets(path).items():
        assert offset is not None
        raw = _raw(arrays[key])
        assert data[offset : offset + len(raw)] == raw


def test_members_not_stored_plainly_are_read_whole(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, w=w)
    assert _offsets(compressed) == {"w": None}
    other = tmp_path / "other.npz"
    np.savez(other, fortran=np.asfortranarray(w), big=w.astype(">f4"), vector=w[0])
    found = _offsets(other)
    assert found["fortran"] is None and found["big"] is None and found["vector"] is not None


def test_a_base_npz_gives_stored_bytes_only_for_plain_members(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from fixtures.generate import DATA_DIR

    tensors = load_file(str(DATA_DIR / "bases" / "tiny-small.mlx.safetensors"))
    plain, packed = tmp_path / "plain.npz", tmp_path / "packed.npz"
    _reference(plain, tensors)
    np.savez_compressed(packed, **tensors)
    key = next(k for k, v in tensors.items() if v.ndim == 2)
    with open_base(plain) as base:
        where = base.stored_bytes(key)
        assert where is not None and where[0] == str(plain)
        with open(plain, "rb") as f:
            f.seek(where[1])
            assert f.read(tensors[key].nbytes) == _raw(tensors[key])
    with open_base(packed) as base:
        assert base.stored_bytes(key) is None
        assert _raw(base.read(key)) == _raw(tensors[key])


def test_a_merge_into_an_npz_base_reads_no_whole_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiles are read where they lie and untouched tensors copied as bytes: the whole-tensor
    read of an npz member is not used (its output is checked against the reference kernel
    in tests/test_merge_kernel_routes.py)."""
    from safetensors.numpy import load_file

    from fixtures.generate import DATA_DIR
    from sa3ckpt.io import base_checkpoint
    from sa3ckpt.ops.merge import MergeOptions, merge_checkpoint
    from sa3ckpt.strengths import AdapterArg

    base = tmp_path / "base.npz"
    _reference(base, load_file(str(DATA_DIR / "bases" / "tiny-small.mlx.safetensors")))
    adapters = DATA_DIR / "adapters" / "tiny-small"
    stack = [
        AdapterArg(str(adapters / "dora-rows.safetensors"), 0.7),
        AdapterArg(str(adapters / "lora.safetensors"), 0.5),
    ]
    whole: list[str] = []
    real = base_checkpoint._read_npz_member
    monkeypatch.setattr(
        base_checkpoint,
        "_read_npz_member",
        lambda path, archive, key: whole.append(key) or real(path, archive, key),
    )
    ledger = merge_checkpoint(str(base), stack, str(tmp_path / "out.npz"), MergeOptions())
    assert ledger.merged and ledger.copied and whole == []
    with zipfile.ZipFile(tmp_path / "out.npz") as archive:
        assert archive.testzip() is None
