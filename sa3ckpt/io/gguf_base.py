"""sa3.cpp model GGUFs (DiT, conditioner sidecar) as a base container: read and stream-write.

Reading: one `GgufModelFile` per file lists every tensor (numpy shape order; ggml `ne` is the
reverse and is undone here only) with its ggml type, and reads one tensor at a time, copied out
of GGUFReader's memory map. F32 and F16 tensors come back as stored; any other type is
dequantised by the gguf package's own `gguf.quants.dequantize` to float32 (a type it cannot
dequantise is a clear error, never a guess).

Writing: `GgufStreamWriter` is told every tensor (name, numpy shape, ggml type) and the typed
KV fields up front, writes the header, then one tensor per `write` in that order, so peak
memory is one tensor, and commits atomically (nothing appears unless every tensor was
written). A tensor whose ggml type is quantised is written with `gguf.quants.quantize` where
the package has a quantiser for the type; an array equal to the dequantised source tensor of
the same name (an untouched tensor of a quantised base) is copied as its original bytes, so
merging never re-quantises what it did not change. A type without a quantiser is refused
with the reason, naming the tensor; it is never silently written F16.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from sa3ckpt.errors import IncompatibleError, MalformedFileError
from sa3ckpt.io.atomic import (
    TEMPS,
    AtomicFile,
    deferred_interrupts,
    discard_or_remove_since,
    output_error,
)
from sa3ckpt.io.gguf_adapter import _import_gguf, _numpy_shape, _one_line, _open_reader, _read_kv
from sa3ckpt.io.gguf_facts import KEY_ARCH, KvEntry

PLAIN_TYPES = {"F32": "F32", "F16": "F16"}
"""ggml types stored plainly, by the dtype code they are read as."""

CONTAINER = "gguf"
# Metadata strings (safetensors-style, e.g. a merge's provenance) live under this KV prefix.
METADATA_PREFIX = "sa3ckpt.metadata."


@dataclass
class GgufModelFile:
    """One GGUF opened header-only: KVs (with GGUF types), tensors (numpy shape, ggml type)."""

    path: str
    kv: dict[str, object]
    kv_types: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    types: dict[str, str]
    _reader: Any = field(repr=False)
    _gguf: ModuleType = field(repr=False)
    _by_name: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def architecture(self) -> str | None:
        arch = self.kv.get(KEY_ARCH)
        return arch if isinstance(arch, str) else None

    def code(self, name: str) -> str:
        """The dtype code a tensor is read as: F32/F16 as stored, anything else F32."""
        return PLAIN_TYPES.get(self.types[name], "F32")

    def read(self, name: str) -> np.ndarray:
        """One tensor as a private array in numpy shape order (dequantised if quantised)."""
        try:
            tensor = self._tensor(name)
            qtype = tensor.tensor_type
            shape = self.shapes[name]
            if qtype.name in PLAIN_TYPES:
                flat = np.asarray(tensor.data).reshape(-1)
                return flat.astype(flat.dtype.newbyteorder("="), copy=True).reshape(shape)
            raw = np.asarray(tensor.data)
            return np.asarray(self._gguf.quants.dequantize(raw, qtype), np.float32).reshape(shape)
        except NotImplementedError:
            raise MalformedFileError(
                self.path,
                f"tensor {name!r} is {self.types[name]}, which the gguf package cannot dequantise",
            ) from None
        except MalformedFileError:
            raise
        except Exception as exc:
            raise MalformedFileError(self.path, f"tensor {name!r}: {_one_line(exc)}") from None

    def raw(self, name: str) -> np.ndarray:
        """A tensor's stored bytes (quantised blocks as the file has them), copied."""
        return np.array(self._tensor(name).data, copy=True)

    def _tensor(self, name: str) -> Any:
        if not self._by_name:
            self._by_name = {t.name: t for t in self._reader.tensors}
        return self._by_name[name]

    def close(self) -> None:
        self._reader = None
        self._by_name = {}


def open_gguf_model(path: str | os.PathLike[str]) -> GgufModelFile:
    """Open any GGUF header-only; MalformedFileError when it cannot be read."""
    gguf = _import_gguf()
    spath = os.fspath(path)
    reader = _open_reader(gguf, spath)
    try:
        kv, kv_types = _read_kv(gguf, reader)
        shapes = {t.name: _numpy_shape(spath, t.name, t.shape) for t in reader.tensors}
        types = {t.name: t.tensor_type.name for t in reader.tensors}
    except MalformedFileError:
        raise
    except Exception as exc:
        raise MalformedFileError(spath, f"corrupt GGUF ({_one_line(exc)})") from None
    return GgufModelFile(spath, kv, kv_types, shapes, types, reader, gguf)


def gguf_architecture(path: str | os.PathLike[str]) -> str | None:
    """`general.architecture` of a GGUF, None when unreadable or absent (never raises)."""
    try:
        return open_gguf_model(path).architecture
    except Exception:
        return None


# --- writing ----------------------------------------------------------------------------------


_QUANTISERS: dict[str, bool] = {}


def has_quantiser(type_name: str) -> bool:
    """Whether the gguf package can write a tensor of this ggml type (plain types always)."""
    if type_name in PLAIN_TYPES:
        return True
    if type_name not in _QUANTISERS:
        gguf = _import_gguf()
        try:
            qtype = gguf.GGMLQuantizationType[type_name]
            block, _ = gguf.GGML_QUANT_SIZES[qtype]
            gguf.quants.quantize(np.zeros((1, block), np.float32), qtype)
            _QUANTISERS[type_name] = True
        except (KeyError, NotImplementedError):
            _QUANTISERS[type_name] = False
    return _QUANTISERS[type_name]


def no_quantiser_reason(name: str, type_name: str) -> str:
    """Why a changed tensor of a type without a quantiser cannot be written (never F16)."""
    return (
        f"{name}: the base stores it as {type_name} and the gguf package has no {type_name} "
        "quantiser, so the changed weight cannot be written in the base's type (refused rather "
        "than written in another type; merge into an F16 or F32 base, or one whose types gguf "
        "can quantise: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)"
    )


@dataclass(frozen=True)
class GgufSpec:
    """What a GGUF output needs beyond (name, code, shape): its architecture, typed KVs and
    each tensor's ggml type (default: the code's plain type), and the file untouched tensors
    of quantised types are copied from."""

    arch: str
    kv: tuple[KvEntry, ...] = ()
    types: Mapping[str, str] = field(default_factory=dict)
    source: GgufModelFile | None = None


def _numpy_for(code: str) -> Any:
    return np.float16 if code == "F16" else np.float32


class GgufStreamWriter:
    """Write one GGUF a tensor at a time, committed atomically (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Sequence[tuple[str, str, tuple[int, ...]]],
        metadata: Mapping[str, str],
        spec: GgufSpec,
        *,
        inputs: Sequence[str] = (),
        overwrite: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self._gguf = _import_gguf()
        self._spec = spec
        self._inputs = inputs
        self._overwrite = overwrite
        self._types = {
            name: spec.types.get(name, PLAIN_TYPES.get(code, "F32")) for name, code, _ in specs
        }
        self._shapes = {name: tuple(shape) for name, _, shape in specs}
        self._order = [name for name, _, _ in specs]
        self._metadata = {k: v for k, v in metadata.items() if k != "format"}
        self._next = 0
        self._out: AtomicFile | None = None
        self._writer: Any = None
        for name in self._order:
            self._check_type(name)

    def _qtype(self, name: str) -> Any:
        try:
            return self._gguf.GGMLQuantizationType[self._types[name]]
        except KeyError:
            raise IncompatibleError(
                f"{name}: ggml type {self._types[name]} is unknown to the gguf package"
            ) from None

    def _check_type(self, name: str) -> None:
        qtype = self._qtype(name)
        if qtype.name in PLAIN_TYPES:
            return
        block, _ = self._gguf.GGML_QUANT_SIZES[qtype]
        if self._shapes[name][-1] % block:
            rows = self._shapes[name][-1]
            raise IncompatibleError(
                f"{name}: rows of {rows} do not fill {qtype.name} blocks of {block}"
            )

    def __enter__(self) -> GgufStreamWriter:
        gguf = self._gguf
        mark = TEMPS.mark()
        try:
            self._out = AtomicFile(self.path, inputs=self._inputs, overwrite=self._overwrite)
            writer = gguf.GGUFWriter(self._out.temp_path, arch=self._spec.arch)
            self._writer = writer
            vt = gguf.GGUFValueType
            for key, value, vtype in self._spec.kv:
                writer.add_key_value(key, value, vt[vtype])
            for key, value in self._metadata.items():
                writer.add_key_value(METADATA_PREFIX + key, value, vt.STRING)
            for name in self._order:
                qtype = self._qtype(name)
                shape = self._shapes[name]
                nbytes = self._nbytes(qtype, shape)
                writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
            # Signals wait for the end of each gguf package step: numpy's tofile inside it
            # turns an interrupt into a TypeError (`io.atomic.deferred_interrupts`).
            with deferred_interrupts():
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_ti_data_to_file()
            return self
        except OSError as exc:
            self._abandon(mark)
            raise output_error(self.path, exc) from exc
        except BaseException:
            self._abandon(mark)
            raise

    def _nbytes(self, qtype: Any, shape: tuple[int, ...]) -> int:
        block, size = self._gguf.GGML_QUANT_SIZES[qtype]
        return int(np.prod(shape, dtype=np.int64)) // block * size

    def _abandon(self, mark: int) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the temp file goes anyway
                self._writer.close()
        discard_or_remove_since(self._out, mark)

    def write(self, name: str, array: np.ndarray) -> None:
        """Write the next tensor (names must come in the announced order)."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            raise ValueError(f"GGUF tensors must be written in order; got {name!r}")
        self._next += 1
        encoded = self._encode(name, np.asarray(array))
        with deferred_interrupts():
            self._writer.write_tensor_data(encoded)

    def _encode(self, name: str, array: np.ndarray) -> np.ndarray:
        shape = self._shapes[name]
        if tuple(array.shape) != shape:
            raise ValueError(f"{name}: shape {tuple(array.shape)}, announced {shape}")
        qtype = self._qtype(name)
        if qtype.name in PLAIN_TYPES:
            out = array.astype(_numpy_for(qtype.name), copy=False)
            return np.ascontiguousarray(out.astype(out.dtype.newbyteorder("<"), copy=False))
        values = np.ascontiguousarray(array, dtype=np.float32)
        kept = self._unchanged(name, qtype, values)
        if kept is not None:
            return kept
        try:
            return np.ascontiguousarray(self._gguf.quants.quantize(values, qtype))
        except NotImplementedError:
            raise IncompatibleError(no_quantiser_reason(name, qtype.name)) from None

    def _unchanged(self, name: str, qtype: Any, values: np.ndarray) -> np.ndarray | None:
        """The source's original bytes when `values` is exactly its dequantised tensor."""
        source = self._spec.source
        if source is None or source.types.get(name) != qtype.name:
            return None
        if not np.array_equal(source.read(name), values):
            return None
        return source.raw(name)

    def finish(self, exc: BaseException | None) -> None:
        """Close the file after the block (its exception `exc`, if any); on any failure the
        temp file is gone and the reason raised (an OSError worded as the output's)."""
        assert self._out is not None
        if exc is None and self._next != len(self._order):
            exc = ValueError(f"{len(self._order) - self._next} announced tensors were not written")
            self._abandon(TEMPS.mark())
            raise exc
        if exc is not None:
            self._abandon(TEMPS.mark())
            if isinstance(exc, OSError):
                raise output_error(self.path, exc) from exc
            return
        try:
            with deferred_interrupts():
                self._writer.close()
        except OSError as close_exc:
            self._abandon(TEMPS.mark())
            raise output_error(self.path, close_exc) from close_exc

    def commit(self) -> None:
        """Make the finished temp file the output (AtomicFile.commit: fsync, rename)."""
        assert self._out is not None
        self._out.commit()

    def discard(self) -> None:
        if self._out is not None:
            self._out.discard()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exc)
        if exc is None:
            self.commit()


Writer = Callable[[str, np.ndarray], None]
