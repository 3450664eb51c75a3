"""Where an .npz member's array bytes lie in the archive file, when they lie there plainly.

A merge reads row tiles of a base tensor with pread (`io.tensor_rows.FileRows`) and copies
untouched tensors byte for byte, given the file and offset of the tensor's raw little-endian
bytes (`BaseCheckpoint.stored_bytes`). An .npz member holds them plainly when it is stored
uncompressed (ZIP_STORED, as `np.savez`, MLX and this tool write them) and its .npy header
says C order with a little-endian (or one-byte) dtype; the offset is the member's local
header offset, plus the local header with its name and extra field (whose length can differ
from the central directory's copy, so it is read from the local header itself), plus the
.npy header. Anything else (compressed, encrypted, Fortran order, big-endian, an odd
header) gives None, and the tensor is read whole through zipfile as before.
"""

from __future__ import annotations

import math
import struct
import sys
import zipfile

import numpy as np

LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # fixed part of a zip local file header
LOCAL_SIGNATURE = b"PK\x03\x04"
ENCRYPTED = 0x1  # general purpose flag bit 0

NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _plain_dtype(dtype: np.dtype) -> bool:
    """Whether the dtype's bytes are the raw little-endian values a merge reads."""
    if dtype.hasobject or dtype.fields is not None:
        return False
    order = dtype.byteorder
    return order in ("<", "|") or (order == "=" and sys.byteorder == "little")


def stored_array_offset(path: str, member: zipfile.ZipInfo) -> int | None:
    """Absolute offset in `path` of `member`'s array bytes, or None if they are not stored
    plainly there (see the module docstring)."""
    if member.compress_type != zipfile.ZIP_STORED or member.flag_bits & ENCRYPTED:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(member.header_offset)
            fixed = f.read(LOCAL_HEADER.size)
            if len(fixed) != LOCAL_HEADER.size:
                return None
            fields = LOCAL_HEADER.unpack(fixed)
            if fields[0] != LOCAL_SIGNATURE:
                return None
            start = member.header_offset + LOCAL_HEADER.size + fields[-2] + fields[-1]
            f.seek(start)
            read_header = NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
            if read_header is None:
                return None
            shape, fortran_order, dtype = read_header(f)
            data = f.tell()
    except (OSError, ValueError):  # unreadable here: the whole-tensor read says why
        return None
    nbytes = dtype.itemsize * math.prod(shape)
    if (fortran_order and len(shape) > 1) or not _plain_dtype(dtype):
        return None
    if data + nbytes > start + member.file_size:  # the member is shorter than its array
        return None
    return data
