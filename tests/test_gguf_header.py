"""The GGUF header parser over byte sources (io.gguf_header) agrees with gguf-py's GGUFReader.

GGUFReader is the format's reference reader (llama.cpp's own); ours reads only the front of
the file, so the same header can be read by byte ranges from a URL. Both are run on files
written by gguf-py's writer with every KV value type, arrays (nested and empty), tensors of
several ggml types and a custom alignment, and on sa3ckpt's own adapter GGUFs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from sa3ckpt.io.bytesource import LocalFile  # noqa: E402
from sa3ckpt.io.gguf_adapter import _read_kv  # noqa: E402
from sa3ckpt.io.gguf_header import GgufFormatError, parse_header  # noqa: E402
from tests.conftest import SMALL  # noqa: E402


def _reference(path: Path) -> tuple[dict[str, object], dict[str, str], dict, int]:
    reader = gguf.GGUFReader(path, "r")
    kv, kv_types = _read_kv(gguf, reader)
    tensors = {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors}
    return kv, kv_types, tensors, int(reader.data_offset)


def _ours(path: Path) -> tuple[dict[str, object], dict[str, str], dict, int]:
    with LocalFile(str(path)) as source:
        parsed = parse_header(gguf, source)
    return parsed.kv, parsed.kv_types, parsed.tensors, parsed.data_offset


def _foreign(path: Path, alignment: int | None) -> None:
    vt = gguf.GGUFValueType
    writer = gguf.GGUFWriter(path, arch="sa3-lora")
    if alignment is not None:
        writer.add_uint32("general.alignment", alignment)
    writer.add_key_value("t.u8", 200, vt.UINT8)
    writer.add_key_value("t.i8", -5, vt.INT8)
    writer.add_key_value("t.u16", 60000, vt.UINT16)
    writer.add_key_value("t.i16", -3000, vt.INT16)
    writer.add_key_value("t.i32", -(2**31), vt.INT32)
    writer.add_key_value("t.f32", 0.1, vt.FLOAT32)
    writer.add_key_value("t.bool", True, vt.BOOL)
    writer.add_key_value("t.u64", 2**63 + 5, vt.UINT64)
    writer.add_key_value("t.i64", -(2**62), vt.INT64)
    writer.add_key_value("t.f64", 1e-300, vt.FLOAT64)
    writer.add_key_value("t.str", "ünïcode ✓", vt.STRING)
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.strs", ["a", "bc", ""])
    writer.add_array("t.empty", [])
    writer.add_tensor("a.f32", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("b.f16", np.ones((5,), np.float16))
    writer.add_tensor("c.i32", np.arange(7, dtype=np.int32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("alignment", [None, 64])
def test_every_value_type_agrees_with_ggufreader(tmp_path: Path, alignment: int | None) -> None:
    path = tmp_path / "foreign.gguf"
    _foreign(path, alignment)
    assert _ours(path) == _reference(path)


def test_sa3ckpt_adapter_gguf_agrees(tmp_path: Path) -> None:
    from sa3ckpt.cli import main

    out = tmp_path / "a.gguf"
    src = SMALL / "dora-rows.safetensors"
    assert main(["convert", str(src), "-o", str(out), "--to", "sa3cpp", "--drop-conditioner"]) == 0
    assert _ours(out) == _reference(out)


def test_every_truncation_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "foreign.gguf"
    _foreign(path, None)
    data = path.read_bytes()
    _, _, _, data_offset = _reference(path)
    for cut in range(8, data_offset + 40, 7):
        bad = tmp_path / "cut.gguf"
        bad.write_bytes(data[:cut])
        with LocalFile(str(bad)) as source, pytest.raises(GgufFormatError):
            parse_header(gguf, source)
