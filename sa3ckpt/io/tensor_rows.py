"""Canonical row tiles of a stored base tensor, read and written where they lie.

The merge kernel (`adapters.tiled`) asks for canonical 2-D rows [i0, i1) of a weight and
hands back output rows; this module is the container side of that conversation, and the
whole interface a base container needs to offer a merge:

- read: `BaseCheckpoint.stored_bytes(key)` -> (file, offset) of the tensor's plain
  little-endian bytes, when the container stores them so (safetensors files, diffusers
  folder shards, uncompressed C-order npz members): tiles are read with `os.preadv`
  straight into the kernel's buffer; otherwise (a compressed npz member, a GGUF tensor)
  `BaseCheckpoint.read(key)` gives the whole tensor and tiles are slices of it;
- write: a `PositionalWriter` (safetensors, npz and diffusers folder outputs) takes each
  output tile at its place (`write_at`) and untouched tensors as bytes (`copy_from`); any
  other writer (GGUF) takes the whole output tensor, which `ArrayRows` fills tile by tile.

The layout's `RowView` (sa3ckpt/layout.py) says which stored rows a canonical tile is and
how a row is reshuffled (diffusers' reordered qkv row blocks, MLX's (k, in) Conv1d rows).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from typing import Protocol, runtime_checkable

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import IncompatibleError
from sa3ckpt.layout import RowView


@runtime_checkable
class PositionalWriter(Protocol):
    """An output writer whose tensors are laid out up front: any tensor, any part, any order
    (each tensor's parts from one thread at a time)."""

    def write_at(self, name: str, start: int, data: np.ndarray | memoryview | bytes) -> None:
        """Write `data` as bytes [start, start + len) of tensor `name`'s raw bytes."""

    def copy_from(self, name: str, src_fd: int, src_offset: int) -> None:
        """Write tensor `name` whole from its raw bytes at `src_offset` of `src_fd`."""


def bits_dtype(code: str) -> type[np.generic]:
    """How the kernel holds values of a dtype code: float32 as is, 16-bit floats as bits."""
    return np.float32 if code == "F32" else np.uint16


class FileRows:
    """A `tiled.RowSource` reading canonical rows of a tensor from its plain bytes in a file.

    The tensor's bytes are mapped (read-only, prefaulted where the OS can) and a tile whose
    canonical rows are the stored rows as they lie is a view of the mapping: no copy from
    the page cache into a buffer, which `pread` made (about a second of system time per
    2.9 GB base, a third of what `cp` spends on the whole file). Reordered or reshuffled
    rows are copied out of the mapping into the kernel's buffer. Where a mapping cannot be
    made (an empty tensor, a file system without mmap) tiles are read with `pread`.
    """

    def __init__(self, view: RowView, code: str, path: str, offset: int, key: str) -> None:
        self.view, self.path, self.offset, self.key = view, path, offset, key
        self.row_bytes = view.fan_in * dtypes.itemsize(code)
        self.fd = os.open(path, os.O_RDONLY)
        self._scratch: np.ndarray | None = None
        self._map: mmap.mmap | None = None
        self._rows: np.ndarray | None = None
        size = view.fan_out * self.row_bytes
        try:
            if os.fstat(self.fd).st_size < offset + size:
                raise IncompatibleError(f"{path}: tensor {key} is cut short")
            if size:
                self._rows = self._mapped(offset, size, bits_dtype(code))
        except BaseException:
            self.close()
            raise

    def _mapped(self, offset: int, size: int, dtype: type[np.generic]) -> np.ndarray | None:
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        try:
            self._map = mmap.mmap(
                self.fd, offset - start + size, flags=flags, prot=mmap.PROT_READ, offset=start
            )
        except (OSError, ValueError):  # no mmap here: pread instead
            return None
        flat = np.frombuffer(self._map, np.uint8, size, offset - start)
        return flat.view(dtype).reshape(self.view.fan_out, -1)

    def close(self) -> None:
        self._rows = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a tile view alive: unmapped when it goes
                self._map.close()
            self._map = None
        os.close(self.fd)

    def _read(self, into: memoryview, at: int) -> None:
        done = 0
        while done < len(into):
            got = os.preadv(self.fd, [into[done:]], at + done)
            if got == 0:
                raise IncompatibleError(f"{self.path}: tensor {self.key} is cut short")
            done += got

    def __call__(self, i0: int, i1: int, buf: np.ndarray) -> np.ndarray:
        rows = self._rows
        if rows is not None and self.view.in_place:
            return rows[i0:i1]
        target = buf
        if self.view.reshuffles:
            if self._scratch is None or len(self._scratch) < len(buf):
                self._scratch = np.empty_like(buf)
            target = self._scratch[: len(buf)]
        raw = target.reshape(-1).view(np.uint8).data
        for stored, first, count in self.view.runs(i0, i1):
            if rows is not None:
                target[first - i0 : first - i0 + count] = rows[stored : stored + count]
            else:
                at = (first - i0) * self.row_bytes
                self._read(
                    raw[at : at + count * self.row_bytes], self.offset + stored * self.row_bytes
                )
        if target is not buf:
            buf[...] = self.view.to_rows(target)
        return buf


class ArrayRows:
    """Canonical rows of an in-memory stored tensor, as a `tiled.RowSource` (reading) or
    `tiled.RowSink` (writing into it)."""

    def __init__(self, view: RowView, array: np.ndarray) -> None:
        self.view = view
        self.array = array
        flat = np.ascontiguousarray(array).reshape(view.fan_out, -1)
        self.rows = flat.view(bits_dtype(dtypes.code_for(array.dtype)))

    def __call__(self, i0: int, i1: int, buf: np.ndarray) -> np.ndarray:
        if self.view.in_place:
            return self.rows[i0:i1]
        for stored, first, count in self.view.runs(i0, i1):
            part = self.rows[stored : stored + count]
            buf[first - i0 : first - i0 + count] = self.view.to_rows(part)
        return buf

    def put(self, i0: int, rows: np.ndarray) -> None:
        stored_rows = self.view.from_rows(rows)
        for stored, first, count in self.view.runs(i0, i0 + len(rows)):
            self.rows[stored : stored + count] = stored_rows[first - i0 : first - i0 + count]


class WriterRows:
    """A `tiled.RowSink` writing output tiles at their place through a positional writer."""

    def __init__(self, view: RowView, code: str, writer: PositionalWriter, key: str) -> None:
        self.view, self.writer, self.key = view, writer, key
        self.row_bytes = view.fan_in * dtypes.itemsize(code)

    def __call__(self, i0: int, rows: np.ndarray) -> None:
        stored_rows = self.view.from_rows(rows)
        for stored, first, count in self.view.runs(i0, i0 + len(rows)):
            part = stored_rows[first - i0 : first - i0 + count]
            self.writer.write_at(self.key, stored * self.row_bytes, part)
