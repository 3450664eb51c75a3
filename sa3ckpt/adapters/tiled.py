"""One adapter merged into one weight a tile of rows at a time: the streaming merge's fast path.

The whole-tensor NumPy kernel (`kernels`) makes several passes over a weight that leave the
cache (GEMM, base add, norms, scale, cast) and NumPy casts fp16 element by element. Here each
tile of rows is read from the file, finished while it is in cache (low-rank product, base
added with its upcast fused in, row norms, scales, one rounding to the output type) and
written out. Row-normalising types (lora, dora-rows, XS variants) take one pass; the
column-normalising ones (dora-cols, bora) two: the first only accumulates column sums of
squares, the second recomputes each tile and writes it.

Same formulas and the same float32 operations in the same order as `kernels` (the product
from the same BLAS call on a row block, `np.einsum` row norms, column sums accumulated row
after row as einsum does, scales multiplied before the one cast), so the output is the
whole-tensor kernel's bit for bit on this machine; tile heights are multiples of ROW_ALIGN
so OpenBLAS blocks a tile's rows as it blocks the whole weight's. On another BLAS the
low-rank product may round differently in the last fp32 bit, so the tests bound the
difference to one unit in the last place of the output type and check both against the
float64 reference.

The fused conversions need numba (`jit_casts`); without it `plan` returns None and callers
use the whole-tensor kernel.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from sa3ckpt.adapters.kernels import BLEND_AXES, EPS, NumpyAdapter

TILE_ELEMENTS = 1 << 19  # elements per tile: its fp32 rows (2 MB) stay in this core's cache
ROW_ALIGN = 96  # tile heights are multiples of OpenBLAS's sgemm row blocking (16, 24, 32, 48)

# A tile source fills the buffer with stored rows [i0, i1) (or returns a view of them); a
# sink takes the output rows starting at i0.
RowSource = Callable[[int, int, np.ndarray], np.ndarray]
RowSink = Callable[[int, np.ndarray], None]

STORED_CODES = ("F16", "BF16", "F32")  # base dtypes the tiles read
OUTPUT_CODES = ("F16", "BF16", "F32")  # output dtypes they write


@cache
def _jit() -> Any:
    """The numba kernels (imported on first use), or None: numba missing, or an x86-64 CPU
    without F16C, where LLVM would need a runtime library call for the fp16 conversions."""
    try:
        import llvmlite.binding as llvm

        from sa3ckpt.adapters import jit_casts
    except ImportError:
        return None
    if platform.machine().lower() in ("x86_64", "amd64"):
        features = llvm.get_host_cpu_features()
        if not features.get("f16c", False):
            return None
    return jit_casts


def available() -> bool:
    """Whether the tiled kernel can run here (numba importable)."""
    return _jit() is not None


@dataclass(frozen=True)
class TilePlan:
    """What one target's tiles compute: V' = W0 + left @ right, then the type's normaliser.

    left is (fan_out, r) with c·s folded in, right (r, fan_in), exactly the operands
    `NumpyAdapter.low_rank` multiplies; mags are the magnitudes the normaliser uses.
    """

    left: np.ndarray
    right: np.ndarray
    norm: str | None
    mags: Mapping[str, np.ndarray]


def _active(stack: Sequence[tuple[NumpyAdapter, float]], semantics: str) -> list[Any]:
    """The adapters that change the weight (the kernels' bypass rules)."""
    if semantics == "delta":
        return [(a, s) for a, s in stack if s != 0]
    return [(a, s) for a, s in stack if not (s == 0 and a.kind.is_weight_decomposed)]


def plan(stack: Sequence[tuple[NumpyAdapter, float]], semantics: str) -> TilePlan | None:
    """The tile plan when exactly one adapter changes the weight with its stored magnitudes
    (runtime; blend at s == 1 or without magnitudes; delta of a plain low-rank adapter);
    None for every other case, which the whole-tensor kernel handles, and without numba."""
    if semantics not in ("runtime", "blend", "delta") or not available():
        return None
    active = _active(stack, semantics)
    if len(active) != 1:
        return None
    adapter, strength = active[0]
    kind = adapter.kind
    if semantics == "delta" and kind.is_weight_decomposed:
        return None  # W0 + s (f(W0; 1) − W0): rounds differently from the runtime chain
    if semantics == "blend" and strength != 1 and BLEND_AXES[kind.norm]:
        return None  # magnitudes blended toward W0's norms: a pass the whole kernel makes
    factor = np.float32(adapter.scale * strength)
    p = adapter.params
    if kind.xs:
        if "U" not in p or "V" not in p:
            raise ValueError(f"{kind.name} needs XS bases U/V")
        left, right = p["U"] @ (p["M_xs"] * factor), p["V"].T
    else:
        left, right = p["lora_B"] * factor, p["lora_A"]
    return TilePlan(left, right, kind.norm, p)


def tile_rows(fan_in: int) -> int:
    """Rows per tile: about TILE_ELEMENTS elements, a multiple of ROW_ALIGN."""
    rows = max(1, TILE_ELEMENTS // max(1, fan_in)) // ROW_ALIGN * ROW_ALIGN
    return max(ROW_ALIGN, rows)


class Cancelled(Exception):
    """The merge was stopped (another tensor failed, or Ctrl-C) between two tiles."""


def merge_rows(
    tile_plan: TilePlan,
    shape: tuple[int, int],
    stored_code: str,
    out_code: str,
    source: RowSource,
    sink: RowSink,
    stop: threading.Event | None = None,
) -> bool:
    """Merge one target tile by tile; True when every output value is finite.

    stored_code / out_code: the base's and the output's dtype codes (STORED_CODES /
    OUTPUT_CODES). `stop` is checked between tiles (raises Cancelled).
    """
    jit = _jit()
    fan_out, fan_in = shape
    height = min(tile_rows(fan_in), max(1, fan_out))
    stored_dtype = {"F16": np.uint16, "BF16": np.uint16, "F32": np.float32}[stored_code]
    stored_buf = np.empty((height, fan_in), stored_dtype)
    v_buf = np.empty((height, fan_in), np.float32)
    out_buf = np.empty((height, fan_in), np.float32 if out_code == "F32" else np.uint16)
    add = {"F16": jit.add_f16, "BF16": jit.add_bf16, "F32": _add_f32}[stored_code]
    scale = {"F16": jit.scale_to_f16, "BF16": jit.scale_to_bf16, "F32": jit.scale_to_f32}[out_code]
    ones_rows, ones_cols = np.ones(height, np.float32), np.ones(fan_in, np.float32)
    norm, mags = tile_plan.norm, tile_plan.mags

    def v_tile(i0: int, i1: int) -> np.ndarray:
        if stop is not None and stop.is_set():
            raise Cancelled
        n = i1 - i0
        stored = source(i0, i1, stored_buf[:n])
        v = v_buf[:n]
        np.matmul(tile_plan.left[i0:i1], tile_plan.right, out=v)
        add(v, stored)
        return v

    def row_scale(v: np.ndarray, i0: int, i1: int, name: str) -> np.ndarray:
        norms = np.sqrt(np.einsum("ij,ij->i", v, v))
        return np.asarray(mags[name][i0:i1] / (norms + EPS), dtype=np.float32)

    starts = range(0, fan_out, height)
    cols = ones_cols
    with np.errstate(all="ignore"):
        if norm in ("cols", "both"):
            acc = np.zeros(fan_in, np.float32)
            for i0 in starts:
                i1 = min(i0 + height, fan_out)
                v = v_tile(i0, i1)
                if norm == "both":
                    rows = row_scale(v, i0, i1, "magnitude_r")
                    weights = rows * rows
                else:
                    weights = ones_rows[: i1 - i0]
                jit.add_column_squares(acc, v, weights)
            name = "magnitude" if norm == "cols" else "magnitude_c"
            cols = np.asarray(mags[name] / (np.sqrt(acc) + EPS), dtype=np.float32)
        finite = True
        for i0 in starts:
            i1 = min(i0 + height, fan_out)
            v = v_tile(i0, i1)
            if norm in ("rows", "both"):
                rows = row_scale(v, i0, i1, "magnitude" if norm == "rows" else "magnitude_r")
            else:
                rows = ones_rows[: i1 - i0]
            out = out_buf[: i1 - i0]
            finite &= bool(scale(v, rows, cols, out))
            sink(i0, out)
    return finite


def _add_f32(v: np.ndarray, stored: np.ndarray) -> None:
    np.add(v, stored, out=v)
