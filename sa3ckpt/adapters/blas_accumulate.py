"""C += A @ B in one BLAS call, where NumPy's matmul can only overwrite C.

Why. Every adapter of a merge adds a rank-r product to the tile it carries: the whole-tensor
kernel computes `V' = W_in + (left @ right)`, i.e. a GEMM into a fresh array (which OpenBLAS
first clears, because beta = 0) and then an add that reads both arrays again. The same
sgemm called with beta = 1 on the tile itself does both in one pass: OpenBLAS sums the
rank-r products in registers, as with beta = 0, and adds alpha · sum to C, so with alpha = 1
each value is `round(W_in + round(Σ_k a_ik b_kj))`, the whole-tensor kernel's value bit for
bit. That equality is a property of the BLAS's kernels, not of the standard, so it is
checked when this module is first used (`_bit_identical`, on shapes that exercise the
kernel's edges); where it does not hold, or NumPy's BLAS cannot be reached (NumPy's wheels
bundle OpenBLAS as `libscipy_openblas64_` with ILP64 CBLAS names; other builds differ), the
kernel keeps the matmul and the add.

The library is NumPy's own (found in this process's mappings, so it is the copy NumPy
loaded, with the thread count `sa3ckpt.threads` set), called with ctypes, which releases
the GIL for the call.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # the CBLAS enum values
SYMBOLS = (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64))

GemmAdd = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def _mapped_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (NumPy's, once imported)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:  # not Linux: no /proc
        return []
    return sorted(p for p in paths if p.startswith("/"))


def _sgemm() -> tuple[Any, type[ctypes.c_int64]] | None:
    np.ones((2, 2), np.float32) @ np.ones((2, 2), np.float32)  # NumPy's BLAS is loaded
    for path in _mapped_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name, int_type in SYMBOLS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = None
                return fn, int_type
    return None


def _caller(fn: Any, integer: type[ctypes.c_int64]) -> GemmAdd:
    one = ctypes.c_float(1.0)

    def gemm_add(left: np.ndarray, right: np.ndarray, out: np.ndarray) -> None:
        """out += left @ right (float32; left C-contiguous (m, k), right (k, n) C- or
        Fortran-contiguous, out C-contiguous (m, n))."""
        m, k = left.shape
        n = right.shape[1]
        if m == 1 or n == 1:  # NumPy multiplies a vector with gemv: its sums, its order
            out += np.matmul(left, right)
            return
        if right.flags.c_contiguous:
            trans, ldb = NO_TRANS, n
        else:  # a transposed C array, as the XS right operand V.T
            trans, ldb = TRANS, k
        fn(
            ROW_MAJOR, NO_TRANS, trans,
            integer(m), integer(n), integer(k),
            one, left.ctypes.data_as(ctypes.c_void_p), integer(k),
            right.ctypes.data_as(ctypes.c_void_p), integer(ldb),
            one, out.ctypes.data_as(ctypes.c_void_p), integer(n),
        )  # fmt: skip

    return gemm_add


def _bit_identical(gemm_add: GemmAdd) -> bool:
    """Whether `out += left @ right` here gives `out + (left @ right)`'s bytes, over shapes
    that reach the kernel's edge cases (odd sizes, ranks 1-33, a transposed right)."""
    rng = np.random.default_rng(20261207)
    for m, k, n in ((97, 16, 131), (288, 4, 1536), (31, 33, 257), (5, 1, 7), (1, 8, 40)):
        left = rng.standard_normal((m, k)).astype(np.float32)
        for right in (
            rng.standard_normal((k, n)).astype(np.float32),
            np.ascontiguousarray(rng.standard_normal((n, k)).astype(np.float32)).T,
        ):
            base = rng.standard_normal((m, n)).astype(np.float32)
            want = base + np.matmul(left, right)
            got = base.copy()
            gemm_add(left, right, got)
            if got.tobytes() != want.tobytes():
                return False
    return True


@cache
def gemm_add() -> GemmAdd | None:
    """`out += left @ right` in one BLAS call, bit-identical to `out + (left @ right)`
    here, or None when this process's NumPy BLAS cannot give that (callers add instead)."""
    found = _sgemm()
    if found is None:
        return None
    caller = _caller(*found)
    return caller if _bit_identical(caller) else None
