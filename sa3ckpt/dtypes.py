"""The safetensors dtype codes we understand, as one table.

Every module that reads, writes or converts tensors goes through this table so that the
mapping between the on-disk codes ("F16", "BF16", ...) and numpy dtypes lives in one place.
bfloat16 and float8 have no native numpy type; `ml_dtypes` provides them with exact,
round-to-nearest-even conversions, which is what checkpoints produced by PyTorch expect.

The numpy dtypes are explicitly little-endian because safetensors data is little-endian on
disk, whatever the host byte order.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class DtypeSpec:
    """One row of the table: the numpy dtype a code maps to and whether it is floating."""

    code: str
    dtype: np.dtype
    floating: bool

    @property
    def itemsize(self) -> int:
        """Bytes per element on disk (equal to the numpy itemsize for every code we know)."""
        return self.dtype.itemsize


def _row(code: str, dtype: npt.DTypeLike, floating: bool) -> tuple[str, DtypeSpec]:
    return code, DtypeSpec(code, np.dtype(dtype), floating)


# The codes whose numpy types come from ml_dtypes: (its attribute, bytes per element).
# Importing ml_dtypes takes about 0.45 s (its extension registers every cast), about a
# quarter of a whole fp16 merge, so it is imported only when one of these rows is used.
_ML_DTYPES: dict[str, tuple[str, int]] = {
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
_ORDER = (  # ints by width, then floats
    *("BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"),
    *("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"),
)


class _Table(Mapping[str, DtypeSpec]):
    """The read-only code -> spec table; the ml_dtypes rows are built on first access."""

    def __init__(self, native: dict[str, DtypeSpec]) -> None:
        self._rows = dict(native)

    def __getitem__(self, code: str) -> DtypeSpec:
        row = self._rows.get(code)
        if row is None:
            if code not in _ML_DTYPES:
                raise KeyError(code)
            module = importlib.import_module("ml_dtypes")
            row = DtypeSpec(code, np.dtype(getattr(module, _ML_DTYPES[code][0])), True)
            self._rows[code] = row
        return row

    def __iter__(self) -> Iterator[str]:
        return iter(_ORDER)

    def __len__(self) -> int:
        return len(_ORDER)

    def __contains__(self, code: object) -> bool:
        return code in _ML_DTYPES or code in self._rows

    def native(self) -> Iterator[DtypeSpec]:
        """The rows numpy has types for itself (no ml_dtypes import)."""
        return (row for code, row in self._rows.items() if code not in _ML_DTYPES)


DTYPES: _Table = _Table(
    dict(
        [
            _row("BOOL", np.bool_, False),
            _row("U8", "<u1", False),
            _row("I8", "<i1", False),
            _row("U16", "<u2", False),
            _row("I16", "<i2", False),
            _row("U32", "<u4", False),
            _row("I32", "<i4", False),
            _row("U64", "<u8", False),
            _row("I64", "<i8", False),
            _row("F16", "<f2", True),
            _row("F32", "<f4", True),
            _row("F64", "<f8", True),
        ]
    )
)
"""Code -> spec, in the order the codes are usually listed (ints by width, then floats)."""

NAMES: Mapping[str, str] = MappingProxyType(
    {"fp16": "F16", "fp32": "F32", "bf16": "BF16", "fp64": "F64"}
)
"""Short names accepted by CLI flags such as ``--dtype``; users think in these, not codes."""


def _spec(code: str) -> DtypeSpec:
    try:
        return DTYPES[code]
    except (KeyError, TypeError):
        raise ValueError(f"unknown safetensors dtype code {code!r}") from None


def numpy_dtype(code: str) -> np.dtype:
    """The (little-endian) numpy dtype for a safetensors dtype code; ValueError if unknown."""
    return _spec(code).dtype


def itemsize(code: str) -> int:
    """Bytes per element for a safetensors dtype code; ValueError if unknown."""
    if isinstance(code, str) and code in _ML_DTYPES:
        return _ML_DTYPES[code][1]  # known without importing ml_dtypes
    return _spec(code).itemsize


def is_floating(code: str) -> bool:
    """Whether a code is a floating type (merging and casting only make sense for these)."""
    if isinstance(code, str) and code in _ML_DTYPES:
        return True
    return _spec(code).floating


def finfo_max(code: str) -> float:
    """The largest finite value of a floating code (numpy's finfo, or ml_dtypes' for its
    types)."""
    dtype = numpy_dtype(code)
    if code in _ML_DTYPES:
        return float(importlib.import_module("ml_dtypes").finfo(dtype).max)
    return float(np.finfo(dtype).max)


def is_known(code: object) -> bool:
    """Whether ``code`` is a dtype code in the table (no exception, for validators)."""
    return isinstance(code, str) and code in DTYPES


def code_for(np_dtype: npt.DTypeLike) -> str:
    """The safetensors code for a numpy dtype, whatever its byte order.

    Byte order is ignored because writers convert to little-endian; raises ValueError for
    dtypes safetensors cannot hold here (complex, strings, objects, ...).
    """
    try:
        dt = np.dtype(np_dtype)
    except TypeError:
        raise ValueError(f"not a numpy dtype: {np_dtype!r}") from None
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    for spec in DTYPES.native():
        if spec.dtype == dt:
            return spec.code
    if type(dt).__module__.startswith("ml_dtypes") or dt.type.__module__.startswith("ml_dtypes"):
        for code in _ML_DTYPES:  # an ml_dtypes array: ml_dtypes is imported already
            if DTYPES[code].dtype == dt:
                return code
    raise ValueError(f"unsupported dtype for safetensors: {dt}")


def code_from_name(name: str) -> str:
    """The code for a user-facing short name (``fp16``, ``bf16``, ...), case-insensitive.

    Raises ValueError listing the accepted names, so the CLI can turn it into a usage error.
    """
    code = NAMES.get(name.lower()) if isinstance(name, str) else None
    if code is None:
        raise ValueError(f"unknown dtype name {name!r} (choose from {', '.join(NAMES)})")
    return code


def _floating_code(array: np.ndarray) -> str:
    code = code_for(array.dtype)
    if not is_floating(code):
        raise ValueError(f"expected a floating array, got {code}")
    return code


def to_float32(array: np.ndarray) -> np.ndarray:
    """Upcast a floating array to float32 for arithmetic.

    Exact for F16, BF16 and the float8 types (their values are a subset of float32's);
    F64 input is rounded to nearest. Returns a new array, except when the input is
    already float32, which is returned as is. Non-floating input raises ValueError:
    silently turning integer buffers into floats would hide a wrong tensor.
    """
    array = np.asarray(array)
    _floating_code(array)
    with np.errstate(invalid="ignore"):  # NaN inputs are carried over, not an error
        return array.astype(np.float32, copy=False)


def cast(array: np.ndarray, code: str) -> np.ndarray:
    """Cast a floating array to the floating type ``code``, rounding to nearest-even.

    The rounding is numpy's / ml_dtypes' (the same as PyTorch's ``.to(dtype)``). Values
    beyond the target range become inf (or NaN for F8_E4M3, which has no inf). The input is
    returned unchanged when it already has the target type; otherwise a new array.
    """
    array = np.asarray(array)
    _floating_code(array)
    if not is_floating(code):
        raise ValueError(f"cannot cast to non-floating dtype {code}")
    # Overflow to inf and NaN propagation are the documented behaviour, not warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(numpy_dtype(code), copy=False)
