"""A GGUF header parser over a byte source: KV fields and tensor infos, never tensor data.

`gguf.GGUFReader` memory-maps the whole file and builds a view of every tensor, so it needs
the file on disk and complete. Inspection needs neither: the KV fields and tensor infos sit
at the front, and the data section only has to be long enough for what the infos claim.
This parser reads exactly that front through `io.bytesource` (a local file by pread, a URL
by byte ranges), with the same rules as gguf-py's reader (versions 2 and 3, either byte
order, unique keys and tensor names, `general.alignment` a UINT32 power of two, known ggml
types, each tensor's bytes inside the file) and a bound on the header size. The tests check
it against GGUFReader on real files. Type names and block sizes come from the gguf package
(its constants are the format's definition), which inspection of a GGUF already requires.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sa3ckpt.io.bytesource import ByteSource

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest KV + tensor-info section parsed (the safetensors reader's limit)."""
MAX_COUNT = 1_000_000
"""Most KV fields, tensors, or array items: a bound on what a hostile header can demand."""
MAX_DEPTH = 8
"""Deepest nesting of arrays."""
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

_SCALARS: dict[str, str] = {
    "UINT8": "B",
    "INT8": "b",
    "UINT16": "H",
    "INT16": "h",
    "UINT32": "I",
    "INT32": "i",
    "FLOAT32": "f",
    "BOOL": "?",
    "UINT64": "Q",
    "INT64": "q",
    "FLOAT64": "d",
}


class GgufFormatError(Exception):
    """The header's defect as one line (the caller attaches the path)."""


@dataclass(frozen=True)
class ParsedHeader:
    """KV fields (python values) and their type names, tensor infos, the data offset."""

    kv: dict[str, object]
    kv_types: dict[str, str]
    tensors: dict[str, tuple[tuple[int, ...], str]]  # name -> (ggml ne order, type name)
    data_offset: int


class _Cursor:
    """Sequential reads from a byte source with one byte order and a header-size bound."""

    def __init__(self, source: ByteSource, order: str) -> None:
        self.source = source
        self.order = order
        self.offset = 0

    def take(self, count: int) -> bytes:
        if self.offset + count > MAX_HEADER_BYTES:
            raise GgufFormatError(f"header larger than the {MAX_HEADER_BYTES} byte limit")
        data = self.source.read_at(self.offset, count)
        if len(data) != count:
            raise GgufFormatError("truncated (the file ends inside the header)")
        self.offset += count
        return data

    def scalar(self, code: str) -> Any:
        fmt = self.order + code
        (value,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
        return value

    def count(self, what: str) -> int:
        value = int(self.scalar("Q"))
        if value > MAX_COUNT:
            raise GgufFormatError(f"{what} count {value} exceeds {MAX_COUNT}")
        return value

    def string(self) -> str:
        length = int(self.scalar("Q"))
        if length > MAX_HEADER_BYTES:
            raise GgufFormatError(f"string of {length} bytes")
        raw = self.take(length)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GgufFormatError(f"string is not UTF-8 (byte {exc.start})") from None


def _value(cursor: _Cursor, vt: Any, raw_type: int, depth: int) -> tuple[object, list[str]]:
    """One typed value and its type chain as gguf-py records it ([ARRAY, item types...])."""
    try:
        kind = vt(raw_type)
    except ValueError:
        raise GgufFormatError(f"unknown value type {raw_type}") from None
    name = kind.name
    if name == "STRING":
        return cursor.string(), [name]
    if name in _SCALARS:
        value = cursor.scalar(_SCALARS[name])
        if name == "FLOAT32":  # as gguf-py gives it: the float32 value as a python float
            value = float(value)
        return value, [name]
    if name == "ARRAY":
        if depth >= MAX_DEPTH:
            raise GgufFormatError(f"arrays nested deeper than {MAX_DEPTH}")
        item_type = int(cursor.scalar("I"))
        length = cursor.count("array item")
        items: list[object] = []
        types = [name]
        for index in range(length):
            item, item_types = _value(cursor, vt, item_type, depth + 1)
            items.append(item)
            if index == 0:
                types += item_types
        return items, types
    raise GgufFormatError(f"unhandled value type {name}")


def _type_name(types: list[str]) -> str:
    """gguf_adapter's names: `UINT32`, `ARRAY[FLOAT32]`, `ARRAY[EMPTY]`."""
    if types[0] == "ARRAY":
        return f"ARRAY[{types[-1] if len(types) > 1 else 'EMPTY'}]"
    return types[0]


def _byte_order(source: ByteSource) -> str:
    head = source.read_at(0, 8)
    if len(head) < 8:
        raise GgufFormatError("truncated (shorter than the GGUF preamble)")
    version = struct.unpack("<I", head[4:8])[0]
    return ">" if version & 0xFFFF == 0 else "<"  # gguf-py's test for the other byte order


def parse_header(gguf: ModuleType, source: ByteSource) -> ParsedHeader:
    """The header of the GGUF held by `source`; GgufFormatError names the first defect."""
    vt = gguf.GGUFValueType
    cursor = _Cursor(source, _byte_order(source))
    if cursor.take(4) != b"GGUF":
        raise GgufFormatError("not a GGUF file (bad magic)")
    version = int(cursor.scalar("I"))
    if version not in SUPPORTED_VERSIONS:
        raise GgufFormatError(f"GGUF version {version} is not supported (2 or 3)")
    tensor_count = cursor.count("tensor")
    kv_count = cursor.count("KV")
    kv: dict[str, object] = {}
    kv_types: dict[str, str] = {}
    for _ in range(kv_count):
        key = cursor.string()
        if key in kv:
            raise GgufFormatError(f"duplicate KV key {key!r}")
        value, types = _value(cursor, vt, int(cursor.scalar("I")), 0)
        kv[key], kv_types[key] = value, _type_name(types)
    infos: list[tuple[str, tuple[int, ...], Any, int]] = []
    names: set[str] = set()
    for _ in range(tensor_count):
        name = cursor.string()
        if name in names:
            raise GgufFormatError(f"duplicate tensor {name!r}")
        names.add(name)
        n_dims = int(cursor.scalar("I"))
        if n_dims > MAX_DEPTH:
            raise GgufFormatError(f"tensor {name!r} has {n_dims} dimensions")
        dims = tuple(int(cursor.scalar("Q")) for _ in range(n_dims))
        raw_type = int(cursor.scalar("I"))
        try:
            ggml_type = gguf.GGMLQuantizationType(raw_type)
        except ValueError:
            raise GgufFormatError(f"tensor {name!r} has unknown ggml type {raw_type}") from None
        infos.append((name, dims, ggml_type, int(cursor.scalar("Q"))))
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        if kv_types["general.alignment"] != "UINT32":
            raise GgufFormatError("general.alignment is not a UINT32")
        alignment = int(kv["general.alignment"])  # type: ignore[call-overload]
        if alignment == 0 or alignment & (alignment - 1):
            raise GgufFormatError("general.alignment is not a power of two")
    data_offset = cursor.offset + (-cursor.offset % alignment)
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, dims, ggml_type, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        elements = math.prod(dims)
        if dims and dims[0] % block:
            raise GgufFormatError(f"tensor {name!r}: {dims[0]} is not a multiple of {block}")
        end = data_offset + offset + elements * type_size // block
        if end > source.size:
            raise GgufFormatError(
                f"truncated (tensor {name!r} data ends at byte {end} of {source.size})"
            )
        tensors[name] = (dims, ggml_type.name)
    return ParsedHeader(kv, kv_types, tensors, data_offset)
