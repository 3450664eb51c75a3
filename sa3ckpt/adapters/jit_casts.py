"""Numba kernels for the tiled merge: fp16/bf16 <-> fp32 conversions fused into one tile pass.

Why compiled code: NumPy's fp16 <-> fp32 casts are built for its baseline CPU (no F16C), so
they run element by element at about 1 ns each; a 2.9 GB fp16 base has 1.45 billion of them
in each direction, which made the conversions most of a merge's time. Here the fp16
conversions are LLVM's `fpext`/`fptrunc` on `half`, which become the CPU's vector conversion
instructions (F16C on x86-64, checked by `tiled.available`; base ARMv8 on arm64): 10-15
billion elements/s on one core here, fused with the arithmetic around them, with the GIL
released so two workers use two cores. bf16 is a shift (up) and an integer round to nearest
even (down). Every finite or infinite result is the one NumPy / ml_dtypes give (round to
nearest even, subnormals kept); a NaN stays a NaN (its payload may be quieted), and a merge
refuses non-finite weights anyway. tests/test_tiled.py checks all 65536 fp16 inputs and
sampled fp32 bit patterns.

The arithmetic is NumPy's too: an fp32 add after an exact upcast, column sums of squares
accumulated row after row with a separate multiply and add (what `np.einsum("ij,ij->j")` does),
and the normaliser's scales applied as fp32 multiplies before the one rounding to the output
type. No fastmath: contracting a multiply and an add into an FMA would change the last bit.

Import this module only where numba is wanted: importing numba costs about 0.2 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

U32 = np.uint32


@intrinsic
def _f32(typingctx: Any, bits: Any) -> Any:
    """Reinterpret uint32 bits as a float32 (an LLVM bitcast: free, and vectorisable)."""
    sig = types.float32(types.uint32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


@intrinsic
def _bits(typingctx: Any, value: Any) -> Any:
    """Reinterpret a float32 as its uint32 bits."""
    sig = types.uint32(types.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return sig, codegen


@intrinsic
def _from_f16(typingctx: Any, bits: Any) -> Any:
    """fp16 bits -> float32, exact: LLVM's `fpext half`, the CPU's own conversion (F16C
    vcvtph2ps on x86-64, fcvt on arm64), vectorised."""
    sig = types.float32(types.uint16)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def _to_f16(typingctx: Any, value: Any) -> Any:
    """float32 -> fp16 bits: LLVM's `fptrunc` to half, round to nearest even (vcvtps2ph /
    fcvt), overflow to inf, as NumPy's cast."""
    sig = types.uint16(types.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


@njit(inline="always")
def _from_bf16(h: Any) -> Any:
    return _f32(U32(h) << U32(16))


@njit(inline="always")
def _to_bf16(value: Any) -> Any:
    """float32 -> bf16 bits, round to nearest even (ml_dtypes' rounding; NaN stays NaN)."""
    x = _bits(value)
    nan = (x & U32(0x7FFFFFFF)) > U32(0x7F800000)
    rounded = (x + U32(0x7FFF) + ((x >> U32(16)) & U32(1))) >> U32(16)
    return np.uint16(((x >> U32(16)) | U32(0x40)) if nan else rounded)


@njit(nogil=True, cache=True)
def add_f16(v: Any, stored: Any) -> None:
    """v += float32(stored) for a tile; `stored` holds fp16 bits (uint16)."""
    for i in range(v.shape[0]):
        vi, si = v[i], stored[i]
        for j in range(v.shape[1]):
            vi[j] = vi[j] + _from_f16(si[j])


@njit(nogil=True, cache=True)
def add_bf16(v: Any, stored: Any) -> None:
    """v += float32(stored) for a tile; `stored` holds bf16 bits (uint16)."""
    for i in range(v.shape[0]):
        vi, si = v[i], stored[i]
        for j in range(v.shape[1]):
            vi[j] = vi[j] + _from_bf16(si[j])


@njit(nogil=True, cache=True)
def add_column_squares(acc: Any, v: Any, weights: Any) -> None:
    """acc[j] += (v[i, j] * v[i, j]) * weights[i], row after row.

    With weights of ones this is `np.einsum("ij,ij->j", v, v)` continued over the tiles in
    order; with BoRA's squared row scales, `np.einsum("ij,ij,i->j", v, v, rows**2)`.
    Multiplying by 1 is exact, so one loop serves both.
    """
    for i in range(v.shape[0]):
        vi = v[i]
        w = weights[i]
        for j in range(v.shape[1]):
            acc[j] = acc[j] + (vi[j] * vi[j]) * w


@njit(nogil=True, cache=True)
def scale_to_f16(v: Any, rows: Any, cols: Any, out: Any) -> bool:
    """out = fp16((v * rows[i]) * cols[j]); True when every output value is finite.

    Either scale may be all ones (an exact multiply), so one loop serves every normaliser.
    """
    bad = U32(0)
    for i in range(v.shape[0]):
        vi, oi = v[i], out[i]
        r = rows[i]
        for j in range(v.shape[1]):
            o = _to_f16((vi[j] * r) * cols[j])
            oi[j] = o
            bad |= U32((o & np.uint16(0x7C00)) == np.uint16(0x7C00))
    return bad == U32(0)


@njit(nogil=True, cache=True)
def scale_to_bf16(v: Any, rows: Any, cols: Any, out: Any) -> bool:
    """out = bf16((v * rows[i]) * cols[j]); True when every output value is finite."""
    bad = U32(0)
    for i in range(v.shape[0]):
        vi, oi = v[i], out[i]
        r = rows[i]
        for j in range(v.shape[1]):
            o = _to_bf16((vi[j] * r) * cols[j])
            oi[j] = o
            bad |= U32((o & np.uint16(0x7F80)) == np.uint16(0x7F80))
    return bad == U32(0)


@njit(nogil=True, cache=True)
def scale_to_f32(v: Any, rows: Any, cols: Any, out: Any) -> bool:
    """out = (v * rows[i]) * cols[j] in float32; True when every output value is finite."""
    bad = U32(0)
    for i in range(v.shape[0]):
        vi, oi = v[i], out[i]
        r = rows[i]
        for j in range(v.shape[1]):
            o = (vi[j] * r) * cols[j]
            oi[j] = o
            bad |= U32((_bits(o) & U32(0x7F800000)) == U32(0x7F800000))
    return bad == U32(0)


@njit(nogil=True, cache=True)
def upcast_f16(out: Any, stored: Any) -> None:
    """out = float32(stored) for a tile; `stored` holds fp16 bits (uint16)."""
    for i in range(out.shape[0]):
        oi, si = out[i], stored[i]
        for j in range(out.shape[1]):
            oi[j] = _from_f16(si[j])


@njit(nogil=True, cache=True)
def upcast_bf16(out: Any, stored: Any) -> None:
    """out = float32(stored) for a tile; `stored` holds bf16 bits (uint16)."""
    for i in range(out.shape[0]):
        oi, si = out[i], stored[i]
        for j in range(out.shape[1]):
            oi[j] = _from_bf16(si[j])


@njit(nogil=True, cache=True)
def add_column_squares_blocked(
    total: Any, partial: Any, v: Any, row0: int, block: int, rows: int
) -> None:
    """Column sums of squares of v (rows row0.. of a `rows`-row weight) summed per block of
    `block` rows into `partial`, each finished block added to `total`.

    This is `kernels._norms_f32` of an fp16/bf16 weight along axis 0: every NORM_BLOCK rows
    upcast, `np.einsum("ij,ij->j")` over the block, the block's sums added to the total.
    """
    for i in range(v.shape[0]):
        g = row0 + i
        if g % block == 0:
            for j in range(v.shape[1]):
                partial[j] = np.float32(0.0)
        vi = v[i]
        for j in range(v.shape[1]):
            partial[j] = partial[j] + vi[j] * vi[j]
        if (g + 1) % block == 0 or g + 1 == rows:
            for j in range(v.shape[1]):
                total[j] = total[j] + partial[j]


@njit(nogil=True, cache=True)
def scale_in_place(v: Any, rows: Any, cols: Any) -> None:
    """v = (v * rows[i]) * cols[j] in float32, in place: a normaliser's scales applied before
    the next adapter of a chain (`kernels._apply`: the row multiply, then the column one).

    Either scale may be all ones (an exact multiply), so one loop serves every normaliser,
    and one pass over the tile replaces NumPy's two broadcast multiplies.
    """
    for i in range(v.shape[0]):
        vi = v[i]
        r = rows[i]
        for j in range(v.shape[1]):
            vi[j] = (vi[j] * r) * cols[j]


@njit(nogil=True, cache=True)
def add_delta_term(
    acc: Any, v: Any, rows: Any, cols: Any, w0: Any, strength: Any, first: bool
) -> None:
    """One normalised term of a delta stack into the sum, as `kernels.delta_pending`:
    t = ((v * rows[i]) * cols[j] − W0) * s, then acc = t + W0 for the first term, else
    acc + t; each operation rounded to float32 in that order, in one pass."""
    for i in range(v.shape[0]):
        vi, ai, wi = v[i], acc[i], w0[i]
        r = rows[i]
        if first:
            for j in range(v.shape[1]):
                ai[j] = (((vi[j] * r) * cols[j] - wi[j]) * strength) + wi[j]
        else:
            for j in range(v.shape[1]):
                ai[j] = ai[j] + (((vi[j] * r) * cols[j] - wi[j]) * strength)


@njit(nogil=True, cache=True)
def add_plain_term(acc: Any, v: Any, w0: Any, first: bool) -> None:
    """A plain (c·s ΔW) term of a delta stack into the sum: acc = v + W0 for the first
    term, else acc + v (`kernels.delta_pending`)."""
    for i in range(v.shape[0]):
        vi, ai, wi = v[i], acc[i], w0[i]
        if first:
            for j in range(v.shape[1]):
                ai[j] = vi[j] + wi[j]
        else:
            for j in range(v.shape[1]):
                ai[j] = ai[j] + vi[j]
