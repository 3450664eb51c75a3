"""The tiled kernel on stacks of 1-3 adapters under every semantics, Linear and Conv1d
(k = 1 and k = 3, in the canonical (out, in*k) view), at strengths 0, 0.5, 1 and 1.7:
against the whole-tensor reference kernel (`kernels`, at most one unit in the last place
of the output type: only a BLAS that blocks a row tile differently could move a bit) and
against the independent float64 reference (tests/reference_math.py).

Tiles are made small (96 rows of at most 111 values) and the weights tall (1100 rows) so
every case has many tiles, a short last one and, for an fp16 W0, more than one NORM_BLOCK
(the blocked column norms blend takes of W0).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.kernels import NumpyAdapter, merge_to
from sa3ckpt.adapters.types import ADAPTER_TYPES
from tests.helpers import TOLERANCE, random_params
from tests.reference_math import REFERENCES

NUMPY = {"F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32}
KINDS = list(ADAPTER_TYPES)
LAYERS = {"linear": (1100, 37, 1), "conv1d-k1": (1100, 29, 1), "conv1d-k3": (1100, 37, 3)}
STRENGTHS = (0.0, 0.5, 1.0, 1.7)


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in units in the last place between two same-typed float arrays."""
    width = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
    ia, ib = a.view(width).astype(np.int64), b.view(width).astype(np.int64)
    top = np.int64(1) << (8 * a.dtype.itemsize - 1)
    ia = np.where(ia < 0, -(ia + top), ia)
    ib = np.where(ib < 0, -(ib + top), ib)
    return int(np.max(np.abs(ia - ib), initial=0))


def _stack(size: int, strength: float, fan: tuple[int, int], w64: np.ndarray, seed: int):
    """`size` adapters of different types (rotating through all eight with the seed), the
    first at `strength`, the others at the other listed strengths."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(KINDS), size=size, replace=False)
    others = [s for s in STRENGTHS if s != strength]
    out = []
    for i, pick in enumerate(picks):
        kind = KINDS[int(pick)]
        p = random_params(kind, *fan, w64, seed + i)
        s = strength if i == 0 else others[(seed + i) % len(others)]
        out.append((kind, p, s))
    return out


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("semantics", ["runtime", "blend", "delta"])
def test_stacks_match_the_whole_kernel_and_the_reference(
    monkeypatch: pytest.MonkeyPatch, semantics: str, size: int, layer: str, strength: float
) -> None:
    fan_out, cin, k = LAYERS[layer]
    fan = (fan_out, cin * k)
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 96 * fan[1])
    seed = 100 * size + 10 * list(LAYERS).index(layer) + STRENGTHS.index(strength)
    stored, out_code = [("F16", "F16"), ("BF16", "F32"), ("F32", "F32"), ("F16", "BF16")][seed % 4]
    rng = np.random.default_rng(seed)
    w0 = (rng.standard_normal(fan) * 0.1).astype(NUMPY[stored])
    w64 = w0.astype(np.float32).astype(np.float64)
    members = _stack(size, strength, fan, w64, seed)
    stack = [
        (
            NumpyAdapter(
                ADAPTER_TYPES[kind],
                1.5,
                {n: np.ascontiguousarray(a, np.float32) for n, a in p.items()},
            ),
            s,
        )
        for kind, p, s in members
    ]
    got, finite = tiled.merge_array(w0, stack, semantics, out_code)
    want, want_finite = merge_to(w0, stack, semantics, out_code)
    assert finite and want_finite
    assert got.dtype == want.dtype == NUMPY[out_code]
    assert ulps(got, want) <= 1
    ref = REFERENCES[semantics](w64, [(kind, p, 1.5, s) for kind, p, s in members])
    rounding = {"F16": np.finfo(np.float16).eps, "F32": 0.0}.get(
        out_code, ml_dtypes.finfo(ml_dtypes.bfloat16).eps
    )
    err = np.max(np.abs(got.astype(np.float64) - ref))
    assert err <= (TOLERANCE + float(rounding)) * np.max(np.abs(ref))


def test_passes_per_plan() -> None:
    """One pass for row-only chains, one more per column cut, two for any delta."""

    def adapter(kind: str) -> NumpyAdapter:
        p = random_params(kind, 6, 5, np.ones((6, 5)), 1)
        return NumpyAdapter(
            ADAPTER_TYPES[kind], 1.0, {n: a.astype(np.float32) for n, a in p.items()}
        )

    rows, cols, bora, lora = (adapter(k) for k in ("dora-rows", "dora-cols", "bora", "lora"))
    assert tiled.plan([(rows, 0.7), (lora, 0.5)], "runtime").passes == 1
    assert tiled.plan([(rows, 0.7), (cols, 0.5), (bora, 1.0)], "runtime").passes == 3
    assert tiled.plan([(cols, 0.0), (rows, 0.5)], "runtime").passes == 1  # bypassed
    assert tiled.plan([(rows, 0.5)], "blend").passes == 1  # row norms of W_in: in the tile
    assert tiled.plan([(cols, 0.5)], "blend").passes == 2  # W_in and V' columns: one pass
    assert tiled.plan([(cols, 1.0)], "blend").passes == 2
    assert tiled.plan([(cols, 0.5), (bora, 0.5), (lora, 1)], "delta").passes == 2
    assert tiled.plan([(lora, 0.5), (rows, 0.5)], "delta").passes == 1
    assert tiled.plan([(rows, 0.0)], "delta").steps == ()


def test_every_adapter_bypassed_is_w0_cast() -> None:
    p = random_params("dora-rows", 300, 8, np.ones((300, 8)), 1)
    dora = NumpyAdapter(
        ADAPTER_TYPES["dora-rows"], 1.0, {n: a.astype(np.float32) for n, a in p.items()}
    )
    w0 = np.random.default_rng(2).standard_normal((300, 8)).astype(np.float32)
    for semantics in ("runtime", "blend", "delta"):
        got, finite = tiled.merge_array(w0, [(dora, 0.0)], semantics, "F16")
        assert finite and got.tobytes() == w0.astype(np.float16).tobytes()


def test_numpy_conversions_give_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without numba's fused conversions (a CPU without F16C) the same tiles give the same
    bytes, through NumPy's casts."""
    fan = (400, 21)
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 96 * fan[1])
    w0 = np.random.default_rng(5).standard_normal(fan).astype(np.float16)
    w64 = w0.astype(np.float64)
    stack = [
        (
            NumpyAdapter(
                ADAPTER_TYPES[k],
                1.0,
                {n: a.astype(np.float32) for n, a in random_params(k, *fan, w64, i).items()},
            ),
            s,
        )
        for i, (k, s) in enumerate([("bora", 0.5), ("dora-cols", 1.7), ("lora", 0.5)])
    ]
    fast = tiled.merge_array(w0, stack, "blend", "BF16")
    monkeypatch.setattr(tiled, "_jit", lambda: None)
    slow = tiled.merge_array(w0, stack, "blend", "BF16")
    assert fast[1] and slow[1]
    assert fast[0].tobytes() == slow[0].tobytes()


def _adapter(kind: str, fan: tuple[int, int], w64: np.ndarray, seed: int) -> NumpyAdapter:
    p = random_params(kind, *fan, w64, seed)
    return NumpyAdapter(ADAPTER_TYPES[kind], 1.0, {n: a.astype(np.float32) for n, a in p.items()})


@pytest.mark.parametrize("semantics", ["runtime", "blend"])
def test_kept_state_and_recomputed_passes_give_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, semantics: str
) -> None:
    """A chain with three cuts: each pass resumed from the kept fp32 state, or recomputed
    from the base when the state would be too large (KEEP_BYTES)."""
    fan = (700, 23)
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 96 * fan[1])
    w0 = np.random.default_rng(7).standard_normal(fan).astype(np.float16)
    w64 = w0.astype(np.float64)
    kinds = [("dora-cols", 0.5), ("lora", 1.7), ("bora-xs", 0.5), ("dora-rows", 1.0), ("bora", 0.7)]
    stack = [(_adapter(k, fan, w64, i), s) for i, (k, s) in enumerate(kinds)]
    assert tiled.plan(stack, semantics).passes == 4
    assert tiled.keep_state(tiled.plan(stack, semantics), fan)
    kept = tiled.merge_array(w0, stack, semantics, "F16")
    monkeypatch.setattr(tiled, "KEEP_BYTES", 0)
    assert not tiled.keep_state(tiled.plan(stack, semantics), fan)
    recomputed = tiled.merge_array(w0, stack, semantics, "F16")
    want = merge_to(w0, stack, semantics, "F16")
    assert kept[1] and recomputed[1] and want[1]
    assert kept[0].tobytes() == recomputed[0].tobytes()
    assert ulps(kept[0], want[0]) <= 1
