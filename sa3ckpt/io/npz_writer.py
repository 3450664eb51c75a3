"""An uncompressed .npz laid out up front, so merge workers write each tile at its place.

`NpzStreamWriter` (io.base_checkpoint) appends members one after another through
`zipfile`, so it takes whole tensors in order. Every size of an uncompressed archive is
known from the specs, though: this writer places each member (zip local header, .npy
header, array bytes) before any data arrives, takes bytes anywhere with `write_at` /
`copy_from` (the positional interface of `io.tensor_rows`), and finishes the archive at
close: each member's CRC-32 into its local header, then the central directory and end
records. The file is byte for byte what `NpzStreamWriter` and `np.savez` write for the same
arrays (zipfile with ZIP_STORED, allowZip64, force_zip64 per member, its default 1980-01-01
date, mode ?rw-------; `np.lib.format.write_array`'s .npy header), which a test checks.

CRC-32: a tensor's tiles come in row order from one worker, so each member's CRC is
accumulated as its bytes are written; a member whose bytes came out of order is read back
from the output at close instead. The output is committed atomically (`AtomicFile`) and
discarded on any error or interrupt.
"""

from __future__ import annotations

import io
import math
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.io.atomic import TEMPS, AtomicFile, discard_or_remove_since, output_error
from sa3ckpt.io.writeback import start_writeback

TensorSpec = tuple[str, str, tuple[int, ...]]

# What zipfile writes (CPython's zipfile, mode "w", ZIP_STORED, force_zip64=True).
ZIP64_LIMIT = (1 << 31) - 1  # above it, a size or offset moves to the zip64 extra field
FILECOUNT_LIMIT = (1 << 16) - 1
ZIP64_VERSION = 45  # "version needed to extract": every member has a zip64 local extra
UNIX = 3  # "version made by" host system (zipfile on any system but Windows)
DOS_TIME, DOS_DATE = 0, (1 << 5) | 1  # ZipInfo's default date_time, 1980-01-01 00:00:00
EXTERNAL_ATTR = 0o600 << 16  # ?rw-------, zipfile's default for a member opened to write
STORED = 0  # compression method: none
UTF8_NAME = 0x800  # flag bit: the name is UTF-8 (zipfile sets it for non-ASCII names)
LOCAL = struct.Struct("<4s2B4HL2L2H")
LOCAL_ZIP64 = struct.Struct("<HHQQ")  # tag 1, 16 bytes: uncompressed and compressed size
CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
END64 = struct.Struct("<4sQ2H2L4Q")
END64_LOCATOR = struct.Struct("<4sLQL")
END = struct.Struct("<4s4H2LH")

WRITEBACK_BYTES = 8 << 20  # written bytes handed to writeback at a time (`io.writeback`)
COPY_CHUNK = 8 << 20  # bytes per read when a member is copied or read back for its CRC


def npy_header(code: str, shape: tuple[int, ...]) -> bytes:
    """The .npy header `np.lib.format.write_array` writes for a C-order array (format 1.0,
    or 2.0 when the header does not fit 1.0's 16-bit length)."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtypes.numpy_dtype(code))),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue()


def _encoded_name(name: str) -> tuple[bytes, int]:
    """A member's file name as zipfile stores it, and its flag bits."""
    filename = f"{name}.npy"
    if "\0" in filename:
        raise ValueError(f"tensor name {name!r} holds a NUL byte (zipfile would cut it)")
    try:
        return filename.encode("ascii"), 0
    except UnicodeEncodeError:
        return filename.encode("utf-8"), UTF8_NAME


@dataclass
class _Member:
    """One member's place in the archive and what is known of its bytes so far."""

    name: bytes
    flags: int
    header_offset: int
    npy: bytes  # the .npy header, written up front
    nbytes: int  # the array's bytes, after the .npy header
    crc: int = 0  # CRC-32 of the .npy header and the array bytes [0, crc_to)
    crc_to: int = 0
    in_order: bool = True  # False once a write did not continue where the CRC stopped
    filled: int = 0  # array bytes written
    kicked: int = 0  # of those, handed to writeback

    @property
    def size(self) -> int:
        return len(self.npy) + self.nbytes

    @property
    def data_offset(self) -> int:
        return self.header_offset + LOCAL.size + len(self.name) + LOCAL_ZIP64.size + len(self.npy)

    @property
    def end(self) -> int:
        return self.data_offset + self.nbytes

    def local_header(self) -> bytes:
        head = LOCAL.pack(
            b"PK\x03\x04", ZIP64_VERSION, 0, self.flags, STORED, DOS_TIME, DOS_DATE,
            self.crc, 0xFFFFFFFF, 0xFFFFFFFF, len(self.name), LOCAL_ZIP64.size,
        )  # fmt: skip
        return head + self.name + LOCAL_ZIP64.pack(1, 16, self.size, self.size)

    def central_entry(self) -> bytes:
        extra: list[int] = []
        size = self.size
        if self.size > ZIP64_LIMIT:
            extra += [self.size, self.size]
            size = 0xFFFFFFFF
        offset = self.header_offset
        if self.header_offset > ZIP64_LIMIT:
            extra.append(self.header_offset)
            offset = 0xFFFFFFFF
        field = struct.pack(f"<HH{len(extra)}Q", 1, 8 * len(extra), *extra) if extra else b""
        entry = CENTRAL.pack(
            b"PK\x01\x02", ZIP64_VERSION, UNIX, ZIP64_VERSION, 0, self.flags, STORED,
            DOS_TIME, DOS_DATE, self.crc, size, size, len(self.name), len(field), 0, 0, 0,
            EXTERNAL_ATTR, offset,
        )  # fmt: skip
        return entry + self.name + field


def _end_records(count: int, start: int, end: int) -> bytes:
    """The end of central directory record, after the zip64 end record and its locator
    when the count, the directory's offset or its size need them (as zipfile decides)."""
    size = end - start
    out = b""
    if count > FILECOUNT_LIMIT or start > ZIP64_LIMIT or size > ZIP64_LIMIT:
        out += END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start)
        out += END64_LOCATOR.pack(b"PK\x06\x07", 0, end, 1)
        count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    return out + END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0)


def _little_endian(data: np.ndarray | memoryview | bytes) -> memoryview:
    """Raw bytes of `data` (an array in C order, little-endian) as a flat byte view."""
    if isinstance(data, np.ndarray):
        order = data.dtype.byteorder
        if order == ">" or (order == "=" and sys.byteorder == "big"):
            data = data.astype(data.dtype.newbyteorder("<"))
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
    return memoryview(data).cast("B")


class NpzPositionalWriter:
    """Write an uncompressed .npz from `specs` (key, dtype code, shape), tensors in any order
    and each in parts at its place, committed atomically.

    `write_at(key, start, data)` writes bytes [start, start + len) of a tensor's array data
    (several tensors at once from several threads; each tensor's parts from one thread at a
    time); `copy_from(key, fd, offset)` copies a whole tensor's bytes from a file; `write(key,
    array)` writes a whole array. The archive appears under `path` only if every tensor was
    written completely and the `with` block ends cleanly.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        *,
        inputs: Sequence[str] = (),
        overwrite: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self._inputs = inputs
        self._overwrite = overwrite
        self._specs = {key: (code, tuple(shape)) for key, code, shape in specs}
        if len(self._specs) != len(specs):
            raise ValueError("duplicate tensor names in the specs")
        self._members: dict[str, _Member] = {}
        offset = 0
        for key, code, shape in specs:
            name, flags = _encoded_name(key)
            npy = npy_header(code, tuple(shape))
            nbytes = dtypes.itemsize(code) * math.prod(shape)
            member = _Member(name, flags, offset, npy, nbytes, crc=zlib.crc32(npy))
            self._members[key] = member
            offset = member.end
        self._directory = offset  # where the central directory goes
        self._out: AtomicFile | None = None

    def __enter__(self) -> NpzPositionalWriter:
        if self._out is not None:
            raise ValueError("npz writer can only be used once")
        mark = TEMPS.mark()  # as in SafetensorsStreamWriter: __exit__ never runs if this fails
        try:
            self._out = AtomicFile(self.path, inputs=self._inputs, overwrite=self._overwrite)
            fd = self._out.file.fileno()
            for member in self._members.values():
                _pwrite_all(fd, member.local_header() + member.npy, member.header_offset)
            return self
        except BaseException:
            discard_or_remove_since(self._out, mark)
            raise

    def _member(self, name: str) -> tuple[int, _Member]:
        if self._out is None or self._out.done:
            raise ValueError("npz writer is not open (use it in a with block)")
        member = self._members.get(name)
        if member is None:
            raise ValueError(f"unexpected tensor {name!r}: not in the specs")
        return self._out.file.fileno(), member

    def write_at(self, name: str, start: int, data: np.ndarray | memoryview | bytes) -> None:
        """Write `data` as bytes [start, start + len) of tensor `name`'s array data."""
        fd, member = self._member(name)
        view = _little_endian(data)
        if start < 0 or start + len(view) > member.nbytes:
            raise ValueError(
                f"tensor {name!r}: bytes {start}+{len(view)} outside its {member.nbytes}"
            )
        if member.in_order and start == member.crc_to:
            member.crc = zlib.crc32(view, member.crc)
            member.crc_to += len(view)
        else:
            member.in_order = False
        _pwrite_all(fd, view, member.data_offset + start)
        member.filled += len(view)
        if member.filled - member.kicked >= WRITEBACK_BYTES or member.filled == member.nbytes:
            start_writeback(fd, member.data_offset + member.kicked, member.filled - member.kicked)
            member.kicked = member.filled

    def copy_from(self, name: str, src_fd: int, src_offset: int) -> None:
        """Write tensor `name` whole from `src_fd` at `src_offset` (its raw bytes), in chunks
        read, summed into the member's CRC and written."""
        _, member = self._member(name)
        done = 0
        while done < member.nbytes:
            chunk = os.pread(src_fd, min(COPY_CHUNK, member.nbytes - done), src_offset + done)
            if not chunk:
                raise ValueError(f"tensor {name!r}: its source ended early")
            self.write_at(name, done, chunk)
            done += len(chunk)

    def write(self, name: str, array: np.ndarray) -> None:
        """Write tensor `name` whole (its dtype and shape must be the spec's)."""
        code, shape = self._specs.get(name, (None, None))
        if code is None:
            raise ValueError(f"unexpected tensor {name!r}: not in the specs")
        array = np.asarray(array)
        if dtypes.code_for(array.dtype) != code or tuple(array.shape) != shape:
            raise ValueError(
                f"tensor {name!r}: {array.dtype} {array.shape} does not match spec {code} {shape}"
            )
        self.write_at(name, 0, array)

    def _finish(self, out: AtomicFile) -> None:
        """Every member complete: CRCs into the local headers, then the central directory."""
        missing = [k for k, m in self._members.items() if m.filled != m.nbytes]
        if missing:
            raise ValueError(f"{len(missing)} tensors not written, first {missing[0]!r}")
        fd = out.file.fileno()
        for member in self._members.values():
            if not (member.in_order and member.crc_to == member.nbytes):
                member.crc = _crc_of(out.temp_path, member)
            _pwrite_all(fd, member.local_header()[: LOCAL.size], member.header_offset)
        directory = b"".join(m.central_entry() for m in self._members.values())
        end = self._directory + len(directory)
        tail = directory + _end_records(len(self._members), self._directory, end)
        _pwrite_all(fd, tail, self._directory)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        out = self._out
        if out is None:
            return
        try:  # an interrupt while finishing or committing must not leave the temp file
            if exc_type is not None:
                out.discard()
                if isinstance(exc, OSError):  # a full disk, not a bad input: exit 5, user's name
                    raise output_error(self.path, exc) from exc
                return
            try:
                self._finish(out)
            except OSError as finish_exc:
                raise output_error(self.path, finish_exc) from finish_exc
            out.commit()
        except BaseException:
            out.discard()
            raise


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _crc_of(path: str, member: _Member) -> int:
    """A member's CRC-32 read back from the output file (its bytes came out of order)."""
    crc = zlib.crc32(member.npy)
    fd = os.open(path, os.O_RDONLY)  # the writer's own descriptor is write-only
    try:
        done = 0
        while done < member.nbytes:
            size = min(COPY_CHUNK, member.nbytes - done)
            chunk = os.pread(fd, size, member.data_offset + done)
            if not chunk:
                raise ValueError(f"member {member.name!r} is cut short in the output")
            crc = zlib.crc32(chunk, crc)
            done += len(chunk)
    finally:
        os.close(fd)
    return crc
