"""A strict safetensors reader and an atomic, streaming writer.

Why not the ``safetensors`` package: we must read headers of multi-GB files without touching
their data, report every defect as a one-line `MalformedFileError` naming the problem (the
package raises assorted exceptions, or accepts files we want rejected), handle bf16/float8
in numpy, and write huge outputs one tensor at a time, atomically. The on-disk format is the
same, and the tests cross-check both directions against the official package.

Format: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON (an object,
possibly padded with trailing spaces), then the data section. Each entry other than
``__metadata__`` is ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the data
section, and the entries must tile the data section exactly, without gaps or overlaps.

Arrays are little-endian on disk; reading bf16/float8 assumes a little-endian host (as do
PyTorch and ml_dtypes in practice).
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import MalformedFileError, NeedsLocalFile, UnreadableFileError
from sa3ckpt.io.atomic import (
    TEMPS,
    AtomicFile,
    PathLike,
    discard_or_remove_since,
    output_error,
)
from sa3ckpt.io.bytesource import ByteSource, LocalFile, remote_file
from sa3ckpt.io.remote import is_url
from sa3ckpt.io.writeback import start_writeback

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest header we parse: far above any real checkpoint, small enough to never OOM."""

MAX_TENSORS = 1_000_000
"""Most tensors per file; a bound on the work a hostile header can demand."""

METADATA_KEY = "__metadata__"
_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
_PREFIX = struct.Struct("<Q")
_NAME_SHOWN = 80


class TensorInfo(NamedTuple):
    """One tensor's header entry; ``begin``/``end`` are relative to the data section.

    A NamedTuple rather than a frozen dataclass: headers hold hundreds of entries and tuple
    construction is several times cheaper, which shows in header-only inspection.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.begin

    @property
    def numel(self) -> int:
        """Number of elements (1 for a 0-d scalar, 0 for an empty tensor)."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed and fully validated header; ``tensors`` keeps the JSON key order."""

    path: str
    header_bytes: int
    data_offset: int
    file_size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]

    @property
    def data_bytes(self) -> int:
        """Size of the data section."""
        return self.file_size - self.data_offset


# --------------------------------------------------------------------------- reading


class _Malformed(Exception):
    """Internal: a cause string, turned into MalformedFileError once the path is attached."""


def _q(name: str) -> str:
    """A tensor name quoted for a one-line message (escaped, and cut if absurdly long)."""
    shown = repr(name)
    if len(shown) > _NAME_SHOWN:
        shown = shown[: _NAME_SHOWN - 4] + "...'"
    return shown


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is a subclass of int but never a valid size


def object_and_duplicate(pairs: list[tuple[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """The JSON object, and the first key it repeats (plain json keeps the last silently).

    Building the dict first keeps the common, duplicate-free case to one pass: this runs for
    every entry of every header.
    """
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj, None
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return obj, key
        seen.add(key)
    return obj, None


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook that rejects duplicate keys."""
    obj, duplicate = object_and_duplicate(pairs)
    if duplicate is not None:
        raise _Malformed(f"duplicate key {_q(duplicate)} in header")
    return obj


def _reject_constant(token: str) -> Any:
    raise _Malformed(f"header is not valid JSON: {token} is not allowed")


def _decode_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed(f"header is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _Malformed(f"header is not valid JSON: {exc.msg} at char {exc.pos}") from None
    except RecursionError:
        raise _Malformed("header is not valid JSON: nested too deeply") from None


def _parse_metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Malformed(f"{METADATA_KEY} must be an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _Malformed(f"{METADATA_KEY} value for {_q(key)} is not a string")
    return dict(value)


_ITEMSIZE: dict[str, int] = {code: dtypes.itemsize(code) for code in dtypes.DTYPES}


def _fast_entry(name: str, entry: Any, data_bytes: int) -> TensorInfo | None:
    """The common, valid case with as little Python as possible; None means "look closer".

    Headers of real adapters hold hundreds of entries, so this path decides the parse time.
    Anything unusual falls through to `_parse_entry`, which names the precise defect.
    """
    if type(entry) is not dict or len(entry) != 3 or not name:
        return None
    code = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if type(code) is not str or type(shape) is not list or type(offsets) is not list:
        return None
    size = _ITEMSIZE.get(code)
    if size is None or len(offsets) != 2:
        return None
    for dim in shape:
        if type(dim) is not int or dim < 0:
            return None
        size *= dim
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or begin < 0 or end - begin != size:
        return None
    if end > data_bytes:
        return None
    return TensorInfo(name, code, tuple(shape), begin, end)


def _parse_entry(name: str, entry: Any, data_bytes: int) -> TensorInfo:
    if not name:
        raise _Malformed("empty tensor name")
    if not isinstance(entry, dict):
        raise _Malformed(f"tensor {_q(name)}: entry must be an object")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise _Malformed(f"tensor {_q(name)}: missing field {field!r}")
    extra = sorted(set(entry) - _FIELDS)
    if extra:
        raise _Malformed(f"tensor {_q(name)}: unexpected field {_q(extra[0])}")
    code = entry["dtype"]
    if not dtypes.is_known(code):
        raise _Malformed(f"tensor {_q(name)}: unknown dtype {json.dumps(code)[:40]}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _Malformed(f"tensor {_q(name)}: shape must be a list of non-negative integers")
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
    ):
        raise _Malformed(f"tensor {_q(name)}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise _Malformed(f"tensor {_q(name)}: data_offsets begin {begin} > end {end}")
    expected = dtypes.itemsize(code) * math.prod(shape)
    if end - begin != expected:
        raise _Malformed(
            f"tensor {_q(name)}: has {end - begin} bytes of data but {code}{shape} needs {expected}"
        )
    if end > data_bytes:
        raise _Malformed(
            f"tensor {_q(name)}: data ends at byte {end} but the data section has only "
            f"{data_bytes} bytes (truncated file?)"
        )
    return TensorInfo(name, code, tuple(shape), begin, end)


def _check_tiling(tensors: Iterable[TensorInfo], data_bytes: int) -> None:
    """The ranges must cover [0, data_bytes) exactly once: no gap, overlap or tail."""
    cursor = 0
    previous: TensorInfo | None = None
    for info in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if info.begin < cursor:
            assert previous is not None
            raise _Malformed(f"tensors {_q(previous.name)} and {_q(info.name)} overlap")
        if info.begin > cursor:
            raise _Malformed(
                f"gap of {info.begin - cursor} bytes before tensor {_q(info.name)} "
                f"at data offset {cursor}"
            )
        cursor = info.end
        previous = info
    if cursor != data_bytes:
        raise _Malformed(f"{data_bytes - cursor} trailing bytes after the last tensor")


def _parse_header(raw: bytes, data_bytes: int) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """Validate header JSON bytes against the data section size; raise `_Malformed`."""
    obj = _decode_json(raw)
    if not isinstance(obj, dict):
        raise _Malformed("header is not a JSON object")
    count = len(obj) - (METADATA_KEY in obj)
    if count > MAX_TENSORS:
        raise _Malformed(f"too many tensors ({count} > {MAX_TENSORS})")
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in obj.items():
        if name == METADATA_KEY:
            metadata = _parse_metadata(entry)
        else:
            info = _fast_entry(name, entry, data_bytes)
            tensors[name] = info if info is not None else _parse_entry(name, entry, data_bytes)
    _check_tiling(tensors.values(), data_bytes)
    return metadata, tensors


def _read_prefix_and_header(source: ByteSource) -> tuple[bytes, int]:
    """Read the length prefix and header bytes only; return (header bytes, file size).

    Two reads of the source: for a URL that is at most two range requests (the first,
    `remote.settings.FIRST_BYTES`, usually holds the whole header).
    """
    file_size = source.size
    if file_size == 0:
        raise _Malformed("file is empty")
    if file_size < _PREFIX.size:
        raise _Malformed(f"file is {file_size} bytes, shorter than the 8-byte length prefix")
    (length,) = _PREFIX.unpack(source.read_at(0, _PREFIX.size))
    if length == 0:
        raise _Malformed("header length is 0")
    if length > MAX_HEADER_BYTES:
        raise _Malformed(f"header length {length} exceeds the {MAX_HEADER_BYTES} byte limit")
    if length > file_size - _PREFIX.size:
        raise _Malformed(
            f"header length {length} runs past the end of the file ({file_size} bytes)"
        )
    raw = source.read_at(_PREFIX.size, length)
    if len(raw) != length:
        raise _Malformed("file shrank while reading the header")
    return raw, file_size


def header_from(source: ByteSource) -> SafetensorsHeader:
    """Read and validate the header held by a byte source (a local file or a URL)."""
    try:
        raw, file_size = _read_prefix_and_header(source)
        data_offset = _PREFIX.size + len(raw)
        metadata, tensors = _parse_header(raw, file_size - data_offset)
    except _Malformed as exc:
        raise MalformedFileError(source.name, str(exc)) from None
    return SafetensorsHeader(
        path=source.name,
        header_bytes=len(raw),
        data_offset=data_offset,
        file_size=file_size,
        metadata=metadata,
        tensors=tensors,
    )


def read_header(path: PathLike) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file without reading its data.

    Only the 8-byte prefix and the header bytes are read, so this is cheap for any file
    size; a URL (`sa3ckpt.io.remote`) is read the same way, by byte ranges. Every defect,
    including OS and fetch errors (missing file, directory, permission, HTTP 404), raises
    `MalformedFileError` with a one-line cause.
    """
    spath = os.fspath(path)
    if is_url(spath):
        return header_from(remote_file(spath))
    try:
        with LocalFile(spath) as source:
            return header_from(source)
    except OSError as exc:
        raise UnreadableFileError(spath, exc.strerror or str(exc)) from None


class SafetensorsFile:
    """An open, validated safetensors file whose tensors are memory-mapped on demand.

    Arrays from `array` are read-only views of the mapping: no data is read until they are
    used, so inspecting one tensor of a huge file is cheap. They are only guaranteed valid
    while this object is open; callers that need the data afterwards must ``.copy()`` it.
    (In practice a view keeps the mapping alive, so a stray one does not crash, but another
    process truncating the file under a live mapping can still raise SIGBUS.)
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.header = read_header(self.path)
        self._mmap: mmap.mmap | None = None
        self._closed = False

    # -- container protocol
    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` dict (a copy: mutating it does not change the header)."""
        return dict(self.header.metadata)

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.header.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.header.tensors)

    def __len__(self) -> int:
        return len(self.header.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.header.tensors

    def info(self, name: str) -> TensorInfo:
        """The header entry of ``name``; KeyError if absent."""
        try:
            return self.header.tensors[name]
        except KeyError:
            raise KeyError(name) from None

    # -- data
    def _map(self) -> mmap.mmap:
        if self._closed:
            raise ValueError(f"{self.path}: file is closed")
        if self._mmap is None:
            if is_url(self.path):
                raise NeedsLocalFile(self.path, "this step")
            try:
                with open(self.path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size != self.header.file_size:
                        raise MalformedFileError(
                            self.path, f"file size changed from {self.header.file_size} to {size}"
                        )
                    # The mapping holds its own reference to the file; ours can close.
                    self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as exc:
                raise UnreadableFileError(self.path, exc.strerror or str(exc)) from None
        return self._mmap

    def array(self, name: str) -> np.ndarray:
        """A read-only array of tensor ``name`` backed by the memory map; KeyError if absent."""
        info = self.info(name)
        dtype = dtypes.numpy_dtype(info.dtype)
        if info.numel == 0:
            if self._closed:
                raise ValueError(f"{self.path}: file is closed")
            empty = np.zeros(info.shape, dtype=dtype)
            empty.flags.writeable = False
            return empty
        buffer = self._map()
        flat = np.frombuffer(
            buffer, dtype=dtype, count=info.numel, offset=self.header.data_offset + info.begin
        )
        return flat.reshape(info.shape)

    def read(self, name: str) -> np.ndarray:
        """A private, writable copy of tensor ``name`` read with pread (no memory map).

        Streaming jobs use this instead of `array`: the pages of a mapping count towards the
        process's resident memory until unmapped, so mapping a 2.9 GB base would make a merge
        look (and, under memory pressure, be) as large as the file. A read buffer is freed as
        soon as the caller drops it.
        """
        info = self.info(name)
        dtype = dtypes.numpy_dtype(info.dtype)
        if self._closed:
            raise ValueError(f"{self.path}: file is closed")
        if is_url(self.path):
            raise NeedsLocalFile(self.path, "this step")
        out = np.empty(info.shape, dtype=dtype)
        if info.nbytes == 0:
            return out
        view = out.reshape(-1).view(np.uint8).data  # writable: reads land in `out`
        offset = self.header.data_offset + info.begin
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                done = 0
                while done < info.nbytes:
                    got = os.preadv(fd, [view[done:]], offset + done)
                    if got == 0:
                        raise MalformedFileError(self.path, f"tensor {_q(name)} is cut short")
                    done += got
            finally:
                os.close(fd)
        except OSError as exc:
            raise UnreadableFileError(self.path, exc.strerror or str(exc)) from None
        return out

    def close(self) -> None:
        """Release the mapping (deferred to the last live array, if any); idempotent."""
        self._closed = True
        if self._mmap is not None:
            # If arrays still export the buffer, it is unmapped when the last one is freed.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_safetensors(path: PathLike) -> SafetensorsFile:
    """Open and validate a safetensors file (use as a context manager)."""
    return SafetensorsFile(path)


# --------------------------------------------------------------------------- writing

TensorSpec = tuple[str, str, Sequence[int]]
"""(name, dtype code, shape) of one tensor a stream writer will receive."""


def _validated_specs(specs: Sequence[TensorSpec]) -> list[tuple[str, str, tuple[int, ...]]]:
    if len(specs) > MAX_TENSORS:
        raise ValueError(f"too many tensors ({len(specs)} > {MAX_TENSORS})")
    seen: set[str] = set()
    out = []
    for name, code, shape in specs:
        if not isinstance(name, str) or not name or name == METADATA_KEY:
            raise ValueError(f"invalid tensor name {name!r}")
        if name in seen:
            raise ValueError(f"duplicate tensor name {name!r}")
        seen.add(name)
        if not dtypes.is_known(code):
            raise ValueError(f"tensor {name!r}: unknown dtype {code!r}")
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"tensor {name!r}: negative dimension in shape {dims}")
        out.append((name, code, dims))
    return out


def _validated_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map str to str, got {key!r}: {value!r}")
    return meta


def encode_header(
    specs: Sequence[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str]
) -> tuple[bytes, int]:
    """The length prefix plus space-padded header for ``specs`` laid out in order.

    Returns (bytes to write before the data, data section size). The header is padded so
    the data section starts at a multiple of 8 bytes, which keeps every tensor of 8-byte
    multiple size aligned for mmap readers.
    """
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    offset = 0
    for name, code, shape in specs:
        size = dtypes.itemsize(code) * math.prod(shape)
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    return _PREFIX.pack(len(raw)) + raw, offset


def _little_endian_bytes(array: np.ndarray) -> memoryview:
    """The bytes of ``array`` in C order and little-endian, copying only if needed."""
    order = array.dtype.byteorder
    if order == ">" or (order == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


WRITEBACK_BYTES = 8 << 20  # written bytes handed to writeback at a time (`io.writeback`)
COPY_CHUNK = 8 << 20  # chunk size when a tensor is copied without copy_file_range


class SafetensorsStreamWriter:
    """Write a safetensors file one tensor at a time, committing atomically at the end.

    The header is written first from ``specs``, so the layout is fixed up front and each
    `write` streams one tensor straight to disk: peak memory is one tensor, whatever the
    file size. The output only appears under ``path`` if every spec was written and the
    ``with`` block exits cleanly; on any error (KeyboardInterrupt too) nothing is left.
    Argument problems (bad specs, wrong order, shape or dtype) raise ValueError because
    they are programming errors, not user errors.
    """

    def __init__(
        self,
        path: PathLike,
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str] | None = None,
        *,
        inputs: Sequence[PathLike] = (),
        overwrite: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self._specs = _validated_specs(specs)
        self._prefix, self._data_bytes = encode_header(self._specs, _validated_metadata(metadata))
        self._inputs = tuple(inputs)
        self._overwrite = overwrite
        self._out: AtomicFile | None = None
        self._next = 0
        # Positional writes (`write_at`, `copy_from`): each tensor's byte range in the file,
        # how much of it is written and how much of that was handed to writeback.
        self._ranges: dict[str, tuple[int, int]] = {}
        start = len(self._prefix)
        for name, code, shape in self._specs:
            size = dtypes.itemsize(code) * math.prod(shape)
            self._ranges[name] = (start, size)
            start += size
        self._filled: dict[str, int] = {}
        self._kicked: dict[str, int] = {}
        self._positional = False

    def __enter__(self) -> SafetensorsStreamWriter:
        if self._out is not None or self._next:
            raise ValueError("stream writer can only be used once")
        # Everything from creating the temp file to returning is under one try: an exception
        # or signal at any point (even before `_out` is assigned) removes the temp file,
        # since `__exit__` never runs when `__enter__` fails.
        mark = TEMPS.mark()
        try:
            self._out = AtomicFile(self.path, inputs=self._inputs, overwrite=self._overwrite)
            self._out.file.write(self._prefix)
            self._out.file.flush()  # positional writes go to the descriptor, not the buffer
            return self
        except BaseException:
            discard_or_remove_since(self._out, mark)
            raise

    def write(self, name: str, array: np.ndarray) -> None:
        """Append tensor ``name``, which must be the next spec with matching dtype and shape."""
        if self._out is None or self._out.done:
            raise ValueError("stream writer is not open (use it in a with block)")
        if self._next >= len(self._specs):
            raise ValueError(f"unexpected tensor {name!r}: all {len(self._specs)} were written")
        want_name, want_code, want_shape = self._specs[self._next]
        if name != want_name:
            raise ValueError(f"expected tensor {want_name!r} next, got {name!r}")
        array = np.asarray(array)
        code = dtypes.code_for(array.dtype)
        if code != want_code:
            raise ValueError(f"tensor {name!r}: dtype {code} does not match spec {want_code}")
        if tuple(array.shape) != want_shape:
            raise ValueError(
                f"tensor {name!r}: shape {tuple(array.shape)} does not match spec {want_shape}"
            )
        if self._positional:
            raise ValueError("write() cannot follow write_at()/copy_from() on one writer")
        start = self._out.file.tell()
        self._out.file.write(_little_endian_bytes(array))
        self._next += 1
        if array.nbytes >= WRITEBACK_BYTES:
            self._out.file.flush()
            start_writeback(self._out.file.fileno(), start, array.nbytes)

    # -- positional writes: tensors in any order, from several threads

    def _fd(self, name: str) -> tuple[int, int, int]:
        """(descriptor, file offset, size) of tensor `name` for a positional write."""
        if self._out is None or self._out.done:
            raise ValueError("stream writer is not open (use it in a with block)")
        if self._next:
            raise ValueError("write_at()/copy_from() cannot follow write() on one writer")
        if name not in self._ranges:
            raise ValueError(f"unexpected tensor {name!r}: not in the specs")
        self._positional = True
        offset, size = self._ranges[name]
        return self._out.file.fileno(), offset, size

    def _advance(self, fd: int, name: str, offset: int, done: int) -> None:
        """Record `done` more bytes of `name` and start writeback of what has accumulated."""
        filled = self._filled.get(name, 0) + done
        self._filled[name] = filled
        kicked = self._kicked.get(name, 0)
        if filled - kicked >= WRITEBACK_BYTES or filled == self._ranges[name][1]:
            start_writeback(fd, offset + kicked, filled - kicked)
            self._kicked[name] = filled

    def write_at(self, name: str, start: int, data: np.ndarray | memoryview | bytes) -> None:
        """Write `data` as bytes [start, start + len) of tensor `name` (its raw little-endian
        bytes, e.g. a tile of rows), with pwrite: tensors in any order, each tensor's parts
        in order from one thread at a time. Do not mix with `write` on one writer."""
        fd, offset, size = self._fd(name)
        if isinstance(data, np.ndarray):
            data = _little_endian_bytes(data)
        view = memoryview(data).cast("B")
        if start < 0 or start + len(view) > size:
            raise ValueError(f"tensor {name!r}: bytes {start}+{len(view)} outside its {size}")
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + start + done)
        self._advance(fd, name, offset, done)

    def copy_from(self, name: str, src_fd: int, src_offset: int) -> None:
        """Write tensor `name` whole from `src_fd` at `src_offset` (its stored bytes), copied
        by the kernel (copy_file_range) where it can, else read and written in chunks."""
        fd, offset, size = self._fd(name)
        done = 0
        copy = getattr(os, "copy_file_range", None)
        while copy is not None and done < size:
            try:
                got = copy(src_fd, fd, size - done, src_offset + done, offset + done)
            except OSError:  # another file system, an old kernel, ...: copy it by hand
                break
            if got == 0:
                break
            done += got
        if done:
            self._advance(fd, name, offset, done)
        while done < size:
            chunk = os.pread(src_fd, min(COPY_CHUNK, size - done), src_offset + done)
            if not chunk:
                raise ValueError(f"tensor {name!r}: its source ended early")
            self.write_at(name, done, chunk)
            done += len(chunk)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        out = self._out
        if out is None:
            return
        try:  # an interrupt while checking or committing must not leave the temp file
            if exc_type is not None:
                out.discard()
                if isinstance(exc, OSError):  # a full disk, not a bad input: exit 5, user's name
                    raise output_error(self.path, exc) from exc
                return
            if self._positional:
                missing = [
                    n for n, (_, size) in self._ranges.items() if self._filled.get(n) != size
                ]
                if missing:
                    raise ValueError(f"{len(missing)} tensors not written, first {missing[0]!r}")
            elif self._next != len(self._specs):
                missing = [name for name, _, _ in self._specs[self._next :]]
                raise ValueError(f"{len(missing)} tensors not written, first {missing[0]!r}")
            written = os.fstat(out.file.fileno()).st_size if self._positional else out.file.tell()
            if written != len(self._prefix) + self._data_bytes:
                raise ValueError(f"wrote {written} bytes, expected {len(self._prefix)} + data")
            out.commit()
        except BaseException:
            out.discard()
            raise


def write_safetensors(
    path: PathLike,
    tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    metadata: Mapping[str, str] | None = None,
    *,
    inputs: Sequence[PathLike] = (),
    overwrite: bool = True,
) -> None:
    """Write ``tensors`` (in the given order) and ``metadata`` to ``path`` atomically.

    Raises UsageError if ``path`` is one of ``inputs`` (or exists with ``overwrite=False``)
    and ValueError for unsupported dtypes or invalid names.
    """
    items = list(tensors.items()) if isinstance(tensors, Mapping) else list(tensors)
    arrays = [(name, np.asarray(array)) for name, array in items]
    specs = [(name, dtypes.code_for(array.dtype), array.shape) for name, array in arrays]
    with SafetensorsStreamWriter(
        path, specs, metadata, inputs=inputs, overwrite=overwrite
    ) as writer:
        for name, array in arrays:
            writer.write(name, array)
