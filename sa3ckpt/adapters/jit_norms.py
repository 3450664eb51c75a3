"""Numba kernels for a weight's row and column sums of squares, in float64, one pass per tile.

Why: the stack report (`ops.inspect.stack_report`) predicts sign flips under blend / delta
semantics from the base's row and column norms, for every target with a DoRA/BoRA adapter.
Computed whole-tensor in NumPy that was an fp16 -> fp32 cast at NumPy's 1 ns an element and
two float64 einsums: 6 s single-threaded for a 2.9 GB medium base before the merge wrote a
byte. Here each stored tile (fp16 / bf16 bits or float32) is read once: every value upcast
exactly (fp16 by the CPU's conversion, bf16 by a shift: `jit_casts`), widened to float64,
squared (exact: at most 48 significant bits) and added to its row's and its column's sums,
with the GIL released so two workers use two cores (3-4 billion elements/s on one core here).

Only the float64 summation order differs from `np.einsum("ij,ij->i" / "->j", w, w,
dtype=np.float64)`. The kernels allow LLVM to reassociate the adds (fastmath "reassoc" and
nothing else: no NaN / Inf assumptions), which is what lets it vectorise a row's sum: one
running sum is a chain of dependent adds, four times slower here. Reassociating is harmless
for these sums: the squares are exact and non-negative, so any order is within about
fan_in * 2**-53 relative of the exact sum (tests/test_base_norms.py bounds it against
`ops.inspect.base_norms_of`). The merge kernels (`jit_casts`) stay without fastmath: their
outputs must be NumPy's bit for bit; these are float64 predictions for a report.

Import this module only where numba is wanted (`adapters.tiled.available()`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from sa3ckpt.adapters.jit_casts import _from_bf16, _from_f16

REASSOC = {"reassoc"}  # summation order only (see the module docstring)


@njit(nogil=True, cache=True, fastmath=REASSOC)
def squares_f16(rows: Any, cols: Any, stored: Any) -> None:
    """rows[i] += Σ_j x², cols[j] += Σ_i x² over a tile of fp16 bits (uint16), each x
    upcast exactly and squared in float64 (rows: the tile's own rows, float64)."""
    for i in range(stored.shape[0]):
        si = stored[i]
        total = 0.0
        for j in range(stored.shape[1]):
            x = np.float64(_from_f16(si[j]))
            square = x * x
            total += square
            cols[j] += square
        rows[i] += total


@njit(nogil=True, cache=True, fastmath=REASSOC)
def squares_bf16(rows: Any, cols: Any, stored: Any) -> None:
    """`squares_f16` for a tile of bf16 bits (uint16)."""
    for i in range(stored.shape[0]):
        si = stored[i]
        total = 0.0
        for j in range(stored.shape[1]):
            x = np.float64(_from_bf16(si[j]))
            square = x * x
            total += square
            cols[j] += square
        rows[i] += total


@njit(nogil=True, cache=True, fastmath=REASSOC)
def squares_f32(rows: Any, cols: Any, stored: Any) -> None:
    """`squares_f16` for a tile of float32 values."""
    for i in range(stored.shape[0]):
        si = stored[i]
        total = 0.0
        for j in range(stored.shape[1]):
            x = np.float64(si[j])
            square = x * x
            total += square
            cols[j] += square
        rows[i] += total


SQUARES = {"F16": squares_f16, "BF16": squares_bf16, "F32": squares_f32}
