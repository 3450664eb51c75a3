"""Row and column L2 norms of a weight, tile by tile from its stored rows, in float64.

The stack report's predictions under blend / delta semantics take the base's row and column
norms of each target's canonical 2-D weight (`ops.inspect.stack_report.base_norms_of` holds
the definition: float32 values, squares summed in float64). This computes the same from the
row tiles the merge kernel reads (`tiled.RowSource`: canonical rows [i0, i1) of fp16 / bf16
bits or float32, from the file where they lie or from an in-memory tensor), so no whole
tensor is read, upcast or held: one compiled pass per tile adds every square to its row's
and its column's float64 sums (`jit_norms`). Without numba (`tiled.available()` false) the
same tiles go through NumPy (a float32 upcast and two float64 einsums per tile).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters import tiled
from sa3ckpt.io.tensor_rows import bits_dtype

Squares = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def _numpy_squares(code: str) -> Squares:
    """rows += Σ_j x², cols += Σ_i x² of a tile in NumPy (x the float32 value)."""
    value_dtype = dtypes.numpy_dtype(code)

    def run(rows: np.ndarray, cols: np.ndarray, stored: np.ndarray) -> None:
        w = dtypes.to_float32(stored.view(value_dtype))
        rows += np.einsum("ij,ij->i", w, w, dtype=np.float64)
        cols += np.einsum("ij,ij->j", w, w, dtype=np.float64)

    return run


def _squares(code: str) -> Squares:
    if not tiled.available():
        return _numpy_squares(code)
    from sa3ckpt.adapters.jit_norms import SQUARES

    return SQUARES[code]


def row_col_norms(
    shape: tuple[int, int],
    stored_code: str,
    source: tiled.RowSource,
    stop: threading.Event | None = None,
) -> dict[str, np.ndarray]:
    """{"rows": (fan_out,), "cols": (fan_in,)} float64 L2 norms of a canonical weight whose
    rows `source` gives as stored_code (one of `tiled.STORED_CODES`). `stop` is checked
    between tiles (raises `tiled.Cancelled`)."""
    if stored_code not in tiled.STORED_CODES:
        raise ValueError(f"row tiles of {stored_code} are not read here (F16, BF16, F32 are)")
    fan_out, fan_in = shape
    squares = _squares(stored_code)
    height = tiled.tile_rows(fan_in)
    buf = np.empty((min(height, fan_out), fan_in), bits_dtype(stored_code))
    rows = np.zeros(fan_out, np.float64)
    cols = np.zeros(fan_in, np.float64)
    for i0 in range(0, fan_out, height):
        if stop is not None and stop.is_set():
            raise tiled.Cancelled
        i1 = min(i0 + height, fan_out)
        squares(rows[i0:i1], cols, source(i0, i1, buf[: i1 - i0]))
    return {"rows": np.sqrt(rows), "cols": np.sqrt(cols)}
