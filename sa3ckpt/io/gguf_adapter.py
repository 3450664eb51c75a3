"""Reading and writing sa3.cpp adapter files (GGUF, architecture ``sa3-lora``).

sa3.cpp loads adapters as GGUF: a few typed KV fields (``lora.adapter_type`` string,
``lora.rank`` u32, ``lora.alpha`` f32, ``lora.n_targets`` u32) and one F32 tensor per
``<stem>.<param>``. The C loader checks the GGUF value types, so the types written here are
part of the contract, not a detail: `SA3CPP_KV` is that contract as data (what its loader
reads, the type it insists on, the default when a field may be missing), for the writer here
and for validate. Its inference loader also reads F16 tensors (its tools write F32), so the
reader accepts both.

Shapes: ggml lists dimensions innermost first (``ne[0]`` is the last numpy axis), so a
``lora_A`` of numpy shape ``(r, fan_in)`` is stored with ``ne = (fan_in, r)``. Everything this
module exposes uses numpy (row-major) shape order; the reversal happens only here, because
getting it wrong silently transposes square matrices.

The ``gguf`` package (gguf-py from llama.cpp) is an optional extra, so it is imported inside
the functions: the rest of sa3ckpt must work without it, and asking for GGUF without it is a
usage error with an install hint rather than an ImportError traceback.

Reading goes through ``gguf.GGUFReader``, which raises assorted exceptions (ValueError,
KeyError, IndexError, UnicodeDecodeError, ...) on damaged files; all of them become one-line
`MalformedFileError`s. Tensors are copied out of its memory map so the returned arrays do not
keep the file mapped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import (
    MalformedFileError,
    NeedsLocalFile,
    Sa3ckptError,
    UnreadableFileError,
    UsageError,
)
from sa3ckpt.io.atomic import (
    TEMPS,
    AtomicFile,
    PathLike,
    deferred_interrupts,
    discard_or_remove_since,
    output_error,
)
from sa3ckpt.io.bytesource import ByteSource, LocalFile, remote_file
from sa3ckpt.io.gguf_header import GgufFormatError, ParsedHeader, parse_header
from sa3ckpt.io.remote import is_url

GGUF_MISSING = "sa3.cpp GGUF needs the gguf extra: pip install 'sa3ckpt[gguf]'"

GGUF_MAGIC = b"GGUF"
ARCHITECTURE = "sa3-lora"

KEY_ARCHITECTURE = "general.architecture"
KEY_NAME = "general.name"
KEY_ADAPTER_TYPE = "lora.adapter_type"
KEY_RANK = "lora.rank"
KEY_ALPHA = "lora.alpha"
KEY_N_TARGETS = "lora.n_targets"

RESERVED_KEYS = frozenset(
    {
        KEY_ARCHITECTURE,
        KEY_NAME,
        KEY_ADAPTER_TYPE,
        KEY_RANK,
        KEY_ALPHA,
        KEY_N_TARGETS,
        "general.alignment",
    }
)
"""Keys `write_gguf_adapter` sets itself (or that would change the file layout)."""

MAX_NAME_BYTES = 63
"""ggml's GGML_MAX_NAME is 64 including the NUL; longer tensor names fail to load."""

MAX_DIMS = 4
"""ggml tensors have at most four dimensions (GGML_MAX_DIMS)."""

DEFAULT_ADAPTER_TYPE = "lora"
"""What sa3.cpp reads an adapter as when ``lora.adapter_type`` is missing."""

TENSOR_TYPES = ("F32", "F16")
"""ggml tensor types read here: F32 (what sa3.cpp's tools write) and F16 (its loader reads it)."""


@dataclass(frozen=True)
class KvRule:
    """One KV field sa3.cpp's adapter loader reads: the GGUF type it insists on.

    A field with `default` may be missing (the loader uses the default); one without is
    required. A present field of another type aborts the loader, whatever its value.
    """

    key: str
    gguf_type: str
    default: str | None = None


SA3CPP_KV = (
    KvRule(KEY_RANK, "UINT32"),
    KvRule(KEY_ALPHA, "FLOAT32"),
    KvRule(KEY_ADAPTER_TYPE, "STRING", default=DEFAULT_ADAPTER_TYPE),
)


def general_name(adapter_type: str) -> str:
    """The ``general.name`` sa3.cpp's tools write (its contract doc lists it as required)."""
    return f"sa3 {adapter_type} adapter"


_U32_MAX = 2**32 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_U64_MAX = 2**64 - 1


@dataclass
class GgufAdapter:
    """An adapter file read into memory.

    ``tensors`` maps file tensor names (``<stem>.<param>``) to float32 arrays in numpy shape
    order. ``kv`` holds every KV field as a python value (arrays as lists); ``kv_types`` gives
    each field's GGUF type name (``"UINT32"``, ``"STRING"``, ``"ARRAY[FLOAT32]"``, ...) so
    validators can check the types sa3.cpp insists on; ``tensor_types`` the ggml type each
    tensor was stored as (F32 or F16).
    """

    tensors: dict[str, np.ndarray]
    kv: dict[str, object]
    path: str
    kv_types: dict[str, str] = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GgufHeader:
    """A GGUF's KV fields (values and GGUF type names) and tensors (numpy shape, ggml type)."""

    kv: dict[str, object]
    kv_types: dict[str, str]
    tensors: dict[str, tuple[tuple[int, ...], str]]


def _import_gguf() -> ModuleType:
    """The gguf module, or a UsageError with the install hint when it is not installed."""
    try:
        import gguf
    except ImportError:
        raise UsageError(GGUF_MISSING) from None
    return gguf


def _one_line(exc: BaseException) -> str:
    """An exception as a single line, with its type when the message alone is unclear."""
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and exc.args:
        text = " ".join(str(exc.args[0]).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- writing


def _checked_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid tensor name {name!r}")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"tensor name {name!r} is longer than {MAX_NAME_BYTES} bytes")
    return name


def _checked_tensor(name: str, value: np.ndarray) -> np.ndarray:
    """A native-endian, C-contiguous float32 copy-or-view of a floating array."""
    array = np.asarray(value)
    if not 1 <= array.ndim <= MAX_DIMS:
        raise ValueError(f"tensor {name!r}: {array.ndim} dimensions (GGUF needs 1 to {MAX_DIMS})")
    try:
        array = dtypes.to_float32(array)
    except ValueError as exc:
        raise ValueError(f"tensor {name!r}: {exc}") from None
    return np.ascontiguousarray(array, dtype=np.float32)


def _checked_u32(key: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    number = int(value)
    if not minimum <= number <= _U32_MAX:
        raise ValueError(f"{key} must be in [{minimum}, {_U32_MAX}], got {number}")
    return number


def _checked_alpha(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{KEY_ALPHA} must be a number, got {value!r}")
    alpha = float(value)
    with np.errstate(over="ignore"):
        as_f32 = float(np.float32(alpha))
    if not math.isfinite(alpha) or not math.isfinite(as_f32):
        raise ValueError(f"{KEY_ALPHA} must be finite in float32, got {value!r}")
    return alpha


def _extra_entries(gguf: ModuleType, extra_kv: Mapping[str, object]) -> list[tuple[str, Any, Any]]:
    """(key, value, GGUFValueType) for the caller's extra fields.

    Ints are written as INT64 (UINT64 beyond its range) and floats as FLOAT64 so any python
    value reads back unchanged; bools as BOOL since they are ints to python but not to us.
    """
    vt = gguf.GGUFValueType
    entries: list[tuple[str, Any, Any]] = []
    for key, value in extra_kv.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"invalid KV key {key!r}")
        if key in RESERVED_KEYS:
            raise ValueError(f"KV key {key!r} is set by the writer and cannot be overridden")
        if isinstance(value, (bool, np.bool_)):
            entries.append((key, bool(value), vt.BOOL))
        elif isinstance(value, (int, np.integer)):
            number = int(value)
            if _I64_MIN <= number <= _I64_MAX:
                entries.append((key, number, vt.INT64))
            elif 0 <= number <= _U64_MAX:
                entries.append((key, number, vt.UINT64))
            else:
                raise ValueError(f"KV {key!r}: integer {number} does not fit in 64 bits")
        elif isinstance(value, (float, np.floating)):
            entries.append((key, float(value), vt.FLOAT64))
        elif isinstance(value, str):
            entries.append((key, value, vt.STRING))
        else:
            raise ValueError(f"KV {key!r}: unsupported value type {type(value).__name__}")
    return entries


def write_gguf_adapter(
    path: PathLike,
    tensors: Mapping[str, np.ndarray],
    *,
    adapter_type: str,
    rank: int,
    alpha: float,
    n_targets: int,
    extra_kv: Mapping[str, str | int | float] | None = None,
    inputs: Sequence[PathLike] = (),
    overwrite: bool = True,
) -> None:
    """Write an sa3.cpp adapter GGUF atomically: all of it under ``path``, or nothing.

    Every tensor is stored as F32 (floating inputs of any width are converted exactly or, for
    F64, rounded to nearest), in file order = ``tensors`` order. Argument problems raise
    ValueError (programming errors); a missing gguf package, an output that is one of
    ``inputs``, a directory, or an existing file with ``overwrite=False`` raise UsageError.
    """
    gguf = _import_gguf()
    if not isinstance(adapter_type, str) or not adapter_type:
        raise ValueError(f"{KEY_ADAPTER_TYPE} must be a non-empty string, got {adapter_type!r}")
    rank = _checked_u32(KEY_RANK, rank, 1)
    n_targets = _checked_u32(KEY_N_TARGETS, n_targets, 0)
    alpha = _checked_alpha(alpha)
    extras = _extra_entries(gguf, extra_kv or {})
    names = [_checked_name(name) for name in tensors]  # names first: cheap, clear errors
    arrays = [(name, _checked_tensor(name, tensors[name])) for name in names]

    vt = gguf.GGUFValueType
    mark = TEMPS.mark()
    out: AtomicFile | None = None
    try:
        out = AtomicFile(path, inputs=inputs, overwrite=overwrite)
        # GGUFWriter insists on opening its own file, so it writes the temp file through a
        # second handle; AtomicFile's untouched handle still fsyncs the same inode on commit.
        # Signals wait for the end of the gguf package's step: numpy's tofile inside it turns
        # an interrupt into a TypeError (see deferred_interrupts).
        with deferred_interrupts():
            writer = gguf.GGUFWriter(out.temp_path, arch=ARCHITECTURE)
            try:
                writer.add_key_value(KEY_NAME, general_name(adapter_type), vt.STRING)
                # add_key_value, not add_string: add_string silently drops empty strings.
                writer.add_key_value(KEY_ADAPTER_TYPE, adapter_type, vt.STRING)
                writer.add_key_value(KEY_RANK, rank, vt.UINT32)
                writer.add_key_value(KEY_ALPHA, alpha, vt.FLOAT32)
                writer.add_key_value(KEY_N_TARGETS, n_targets, vt.UINT32)
                for key, value, vtype in extras:
                    writer.add_key_value(key, value, vtype)
                for name, array in arrays:
                    # GGUFWriter reverses the numpy shape into ggml ne order itself.
                    writer.add_tensor(name, array, raw_dtype=gguf.GGMLQuantizationType.F32)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_tensors_to_file()
            finally:
                writer.close()
        out.commit()
    except OSError as exc:  # GGUFWriter opened the temp name itself: word it as the output
        discard_or_remove_since(out, mark)
        raise output_error(os.fspath(path), exc) from exc
    except BaseException:
        discard_or_remove_since(out, mark)
        raise


# ----------------------------------------------------------------------------- reading


def is_gguf(path: PathLike) -> bool:
    """Whether ``path`` is a readable file starting with the GGUF magic (no gguf needed)."""
    spath = os.fspath(path)
    if is_url(spath):
        from sa3ckpt.io.bytesource import remote_file

        try:
            return remote_file(spath).read_at(0, 4) == GGUF_MAGIC
        except Sa3ckptError:
            return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _open_reader(gguf: ModuleType, path: str) -> Any:
    """A GGUFReader for ``path``, every failure turned into a MalformedFileError."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UnreadableFileError(path, exc.strerror or str(exc)) from None
    if not magic:
        raise MalformedFileError(path, "file is empty")
    if magic != GGUF_MAGIC:
        raise MalformedFileError(path, "not a GGUF file (bad magic)")
    try:
        return gguf.GGUFReader(path, "r")
    except OSError as exc:
        raise UnreadableFileError(path, exc.strerror or str(exc)) from None
    except Exception as exc:
        raise MalformedFileError(path, f"corrupt or truncated GGUF ({_one_line(exc)})") from None


def _type_name(gguf: ModuleType, types: Sequence[Any]) -> str:
    if not types:
        return "UNKNOWN"
    if types[0] == gguf.GGUFValueType.ARRAY:
        inner = types[-1].name if len(types) > 1 else "EMPTY"
        return f"ARRAY[{inner}]"
    return types[0].name


def _read_kv(gguf: ModuleType, reader: Any) -> tuple[dict[str, object], dict[str, str]]:
    """All real KV fields (not the reader's GGUF.* pseudo fields) as python values."""
    kv: dict[str, object] = {}
    kv_types: dict[str, str] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = fld.contents()
        if value is None and fld.types and fld.types[0] == gguf.GGUFValueType.ARRAY:
            value = []
        kv[key] = value
        kv_types[key] = _type_name(gguf, fld.types)
    return kv, kv_types


def _check_architecture(path: str, kv: Mapping[str, object]) -> None:
    if KEY_ARCHITECTURE not in kv:
        raise MalformedFileError(path, f"no {KEY_ARCHITECTURE} (not an sa3.cpp adapter)")
    arch = kv[KEY_ARCHITECTURE]
    if arch != ARCHITECTURE:
        raise MalformedFileError(
            path, f"{KEY_ARCHITECTURE} is {arch!r}, expected {ARCHITECTURE!r} (not an adapter)"
        )


def _numpy_shape(path: str, name: str, ne: Any) -> tuple[int, ...]:
    dims = [int(d) for d in ne]
    if not 1 <= len(dims) <= MAX_DIMS:
        raise MalformedFileError(
            path, f"tensor {name!r} has {len(dims)} dimensions (GGUF allows 1 to {MAX_DIMS})"
        )
    return tuple(reversed(dims))


def parsed_gguf_header(path: PathLike) -> ParsedHeader:
    """The parsed front of a GGUF (local file or URL) by `io.gguf_header`: KV fields, tensor
    infos in ggml order and the data offset; MalformedFileError for any defect."""
    gguf = _import_gguf()
    spath = os.fspath(path)
    try:
        if is_url(spath):
            source = remote_file(spath)
            return _parse_checked(gguf, spath, source)
        with LocalFile(spath) as local:
            return _parse_checked(gguf, spath, local)
    except OSError as exc:
        raise UnreadableFileError(spath, exc.strerror or str(exc)) from None


def _parse_checked(gguf: ModuleType, spath: str, source: ByteSource) -> ParsedHeader:
    if source.size == 0:
        raise MalformedFileError(spath, "file is empty")
    if source.read_at(0, 4) != GGUF_MAGIC:
        raise MalformedFileError(spath, "not a GGUF file (bad magic)")
    try:
        return parse_header(gguf, source)
    except GgufFormatError as exc:
        raise MalformedFileError(spath, f"corrupt or truncated GGUF ({exc})") from None


def open_gguf_header(path: PathLike, *, require_arch: bool = True) -> GgufHeader:
    """KV fields with their GGUF types, and ``{name: (numpy_shape, ggml_type_name)}``, without
    reading tensor data (a URL is read by byte ranges).

    For inspection: tensors of any ggml type are reported, not rejected. ``require_arch=False``
    lets a caller look at any GGUF (sa3.cpp itself does not check ``general.architecture``;
    validate warns about it) instead of failing on the architecture.
    """
    spath = os.fspath(path)
    parsed = parsed_gguf_header(spath)
    if require_arch:
        _check_architecture(spath, parsed.kv)
    infos = {
        name: (_numpy_shape(spath, name, ne), kind) for name, (ne, kind) in parsed.tensors.items()
    }
    return GgufHeader(parsed.kv, parsed.kv_types, infos)


def read_gguf_header(
    path: PathLike, *, require_arch: bool = True
) -> tuple[dict[str, object], dict[str, tuple[tuple[int, ...], str]]]:
    """KV fields and ``{name: (numpy_shape, ggml_type_name)}`` (`open_gguf_header` without
    the KV types)."""
    header = open_gguf_header(path, require_arch=require_arch)
    return header.kv, header.tensors


def read_gguf_adapter(path: PathLike, *, require_arch: bool = True) -> GgufAdapter:
    """Read an sa3.cpp adapter: every tensor as a float32 array in numpy shape order.

    Raises MalformedFileError for anything but a well-formed GGUF whose tensors are all F32
    or F16 (F16 is widened exactly; sa3.cpp loads nothing else unquantized, so accepting
    other types here would vouch for a file it rejects) and, unless ``require_arch=False``,
    whose ``general.architecture`` is ``sa3-lora``.
    """
    gguf = _import_gguf()
    spath = os.fspath(path)
    if is_url(spath):
        raise NeedsLocalFile(spath, "this step")
    reader = _open_reader(gguf, spath)
    accepted = {getattr(gguf.GGMLQuantizationType, name) for name in TENSOR_TYPES}
    try:
        kv, kv_types = _read_kv(gguf, reader)
        if require_arch:
            _check_architecture(spath, kv)
        tensors: dict[str, np.ndarray] = {}
        tensor_types: dict[str, str] = {}
        for t in reader.tensors:
            if t.tensor_type not in accepted:
                raise MalformedFileError(
                    spath,
                    f"tensor {t.name!r} has type {t.tensor_type.name}, "
                    f"expected {' or '.join(TENSOR_TYPES)}",
                )
            shape = _numpy_shape(spath, t.name, t.shape)
            flat = np.asarray(t.data).reshape(-1)
            if flat.size != math.prod(shape):
                raise MalformedFileError(spath, f"tensor {t.name!r} is cut short")
            # astype copies (detaching from the memory map), widens F16 exactly and fixes a
            # swapped byte order.
            tensors[t.name] = flat.astype(np.float32, copy=True).reshape(shape)
            tensor_types[t.name] = t.tensor_type.name
    except MalformedFileError:
        raise
    except Exception as exc:
        raise MalformedFileError(spath, f"corrupt GGUF ({_one_line(exc)})") from None
    finally:
        del reader
    return GgufAdapter(
        tensors=tensors, kv=kv, path=spath, kv_types=kv_types, tensor_types=tensor_types
    )
