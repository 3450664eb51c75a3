"""The whole-tensor NumPy kernel (`adapters.kernels`) in the tiled kernel's place, for tests.

`use_reference_kernel(monkeypatch)` makes every merge target run `kernels.merge_to` on the
whole canonical weight (read as one tile, written as one tile) instead of the tiled
kernel, so a test can merge the same inputs both ways and compare the files byte for byte:
the reference is the kernel the tiled one must reproduce, never a runtime path.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest

from sa3ckpt import dtypes
from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.kernels import NumpyAdapter, merge_to


def _plan(stack: Sequence[tuple[NumpyAdapter, float]], semantics: str) -> tuple:
    return list(stack), semantics


def _merge_rows(
    plan: tuple,
    shape: tuple[int, int],
    stored_code: str,
    out_code: str,
    source,
    sink,
    stop: threading.Event | None = None,
) -> bool:
    stack, semantics = plan
    bits = np.float32 if stored_code == "F32" else np.uint16
    rows = source(0, shape[0], np.empty(shape, bits))
    w0 = np.ascontiguousarray(rows).view(dtypes.numpy_dtype(stored_code))
    merged, finite = merge_to(w0, stack, semantics, out_code)
    sink(0, merged.view(np.float32 if out_code == "F32" else np.uint16))
    return finite


def use_reference_kernel(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Route merges through the whole-tensor kernel; returns a list that counts its calls."""
    calls: list[int] = []

    def counting(*args, **kwargs) -> bool:
        calls.append(1)
        return _merge_rows(*args, **kwargs)

    fake = SimpleNamespace(
        plan=_plan,
        merge_rows=counting,
        STORED_CODES=tiled.STORED_CODES,
        OUTPUT_CODES=tiled.OUTPUT_CODES,
        Cancelled=tiled.Cancelled,
    )
    monkeypatch.setattr("sa3ckpt.ops.merge.target.tiled", fake)
    return calls
