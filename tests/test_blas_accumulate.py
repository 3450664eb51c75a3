"""`out += left @ right` in one BLAS call (beta = 1): used by the merge kernel only where it
gives the bytes of the product followed by the add, which the kernel is tested against."""

from __future__ import annotations

import numpy as np
import pytest

from sa3ckpt.adapters import blas_accumulate, tiled
from sa3ckpt.adapters.kernels import NumpyAdapter, merge_to
from sa3ckpt.adapters.types import ADAPTER_TYPES
from tests.helpers import random_params


def test_numpys_openblas_is_found_on_linux_wheels() -> None:
    """NumPy's Linux wheels bundle OpenBLAS with ILP64 CBLAS names: the fast path exists
    there (elsewhere the kernel keeps the product and the add)."""
    if not blas_accumulate._mapped_openblas():
        pytest.skip("this NumPy does not use a bundled OpenBLAS")
    assert blas_accumulate.gemm_add() is not None


@pytest.mark.parametrize(("m", "k", "n"), [(300, 16, 1536), (1, 4, 9), (97, 1, 33), (64, 32, 5)])
@pytest.mark.parametrize("transposed", [False, True])
def test_gemm_add_gives_the_bytes_of_product_then_add(
    m: int, k: int, n: int, transposed: bool
) -> None:
    gemm_add = blas_accumulate.gemm_add()
    if gemm_add is None:
        pytest.skip("no bit-identical BLAS accumulate here")
    rng = np.random.default_rng(m * n + k)
    left = rng.standard_normal((m, k)).astype(np.float32)
    right = rng.standard_normal((k, n)).astype(np.float32)
    if transposed:
        right = np.ascontiguousarray(right.T).T
    out = rng.standard_normal((m, n)).astype(np.float32)
    want = out + left @ right
    gemm_add(left, right, out)
    assert out.tobytes() == want.tobytes()


def test_the_probe_refuses_an_accumulate_that_rounds_differently() -> None:
    """A BLAS whose accumulate folds C into the sum (other roundings) must not be used."""

    def folded(left: np.ndarray, right: np.ndarray, out: np.ndarray) -> None:
        acc = out.astype(np.float64)
        for j in range(left.shape[1]):
            acc += np.outer(left[:, j], right[j]).astype(np.float64)
        out[...] = acc.astype(np.float32)

    assert not blas_accumulate._bit_identical(folded)


@pytest.mark.parametrize("semantics", ["runtime", "blend", "delta"])
def test_kernel_bytes_do_not_depend_on_the_accumulate(
    monkeypatch: pytest.MonkeyPatch, semantics: str
) -> None:
    """The tiles give the same bytes with the one-call accumulate and without it, and both
    the whole-tensor kernel's."""
    fan = (500, 29)
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 96 * fan[1])
    w0 = np.random.default_rng(3).standard_normal(fan).astype(np.float16)
    w64 = w0.astype(np.float64)
    kinds = [("dora-rows", 0.7), ("bora", 0.5), ("lora-xs", 0.5), ("lora", 1.7)]
    stack = [
        (
            NumpyAdapter(
                ADAPTER_TYPES[kind],
                1.5,
                {n: a.astype(np.float32) for n, a in random_params(kind, *fan, w64, i).items()},
            ),
            s,
        )
        for i, (kind, s) in enumerate(kinds)
    ]
    fast = tiled.merge_array(w0, stack, semantics, "F16")
    monkeypatch.setattr(tiled, "gemm_add", lambda: None)
    plain = tiled.merge_array(w0, stack, semantics, "F16")
    want = merge_to(w0, stack, semantics, "F16")
    assert fast[1] and plain[1] and want[1]
    assert fast[0].tobytes() == plain[0].tobytes() == want[0].tobytes()
