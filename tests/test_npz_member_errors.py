"""A .npz whose member zipfile cannot decode (an unsupported compression method, found by the
fuzzer) is a malformed file with its cause, never a raw NotImplementedError."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.ops.inspect.checkpoint_kind import identify_kind

UNSUPPORTED_METHOD = 99  # no zipfile decoder: "That compression method is not supported"


def _npz_with_method(path: Path, method: int) -> None:
    """A one-member stored .npz, then the member's compression method rewritten in both the
    local header (offset 8) and the central directory entry (offset 10)."""
    member = io.BytesIO()
    np.lib.format.write_array(member, np.zeros((2, 3), np.float32))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("model.proj_in.weight.npy", member.getvalue())
    data = bytearray(buffer.getvalue())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H", data, local + 8, method)
    struct.pack_into("<H", data, central + 10, method)
    path.write_bytes(bytes(data))


def test_unsupported_compression_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    _npz_with_method(path, UNSUPPORTED_METHOD)
    with zipfile.ZipFile(path) as archive, pytest.raises(NotImplementedError):
        archive.open(archive.infolist()[0])  # what zipfile itself raises on this file
    with pytest.raises(MalformedFileError, match="compression method is not supported"):
        open_base(str(path))
    assert identify_kind(path).kind == "unknown"  # identification never raises either
