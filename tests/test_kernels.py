"""The NumPy merge kernel against the same float64 reference as the MLX math: every type,
Linear / Conv1d k=1 / k=3 views, strengths {0, 1e-5, 0.5, 1, 1.7}, single and stacked, all three
semantics."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sa3ckpt.adapters import kernels
from sa3ckpt.adapters.formulas import SEMANTICS
from sa3ckpt.adapters.kernels import PENDING, NumpyAdapter, merge_f32, merge_to
from sa3ckpt.adapters.types import ADAPTER_TYPES
from tests.helpers import LAYERS, STACK_PAIRS, STRENGTHS, TOLERANCE, random_base, random_params
from tests.reference_math import REFERENCES

KERNELS = list(REFERENCES)
DECOMPOSED = [name for name, kind in ADAPTER_TYPES.items() if kind.is_weight_decomposed]


def _numpy_adapter(kind: str, c: float, p: dict) -> NumpyAdapter:
    return NumpyAdapter(ADAPTER_TYPES[kind], c, {k: v.astype(np.float32) for k, v in p.items()})


def _run(layer: str, kinds: tuple[str, ...], strengths: tuple[float, ...], semantics: str):
    stored, _k = random_base(layer, seed=len(kinds) * 5 + len(layer))
    w0 = stored.reshape(stored.shape[0], -1).astype(np.float16)  # fp16 base, canonical 2-D view
    fan_out, fan_in = w0.shape
    ref_stack, ours = [], []
    for i, (kind, s) in enumerate(zip(kinds, strengths, strict=True)):
        p = random_params(kind, fan_out, fan_in, w0.astype(np.float64), seed=200 + i)
        c = 1.5 + i
        ref_stack.append((kind, p, c, s))
        ours.append(
            (
                NumpyAdapter(
                    ADAPTER_TYPES[kind], c, {k: v.astype(np.float32) for k, v in p.items()}
                ),
                s,
            )
        )
    got = merge_f32(w0, ours, semantics)
    fused, finite = merge_to(w0, ours, semantics, "F32")  # the fused scale-and-cast path
    assert finite and np.array_equal(fused, got)
    want = REFERENCES[semantics](w0.astype(np.float64), ref_stack)
    return got, want, w0


@pytest.mark.parametrize("semantics", KERNELS)
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("kind", list(ADAPTER_TYPES))
def test_single(kind, layer, strength, semantics) -> None:
    got, want, w0 = _run(layer, (kind,), (strength,), semantics)
    assert got.dtype == np.float32
    assert np.max(np.abs(got - want)) <= TOLERANCE * np.max(np.abs(want))
    if strength == 0:
        assert np.array_equal(got, w0.astype(np.float32))


@pytest.mark.parametrize("semantics", KERNELS)
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("pair", STACK_PAIRS, ids="+".join)
def test_stacked(pair, layer, strength, semantics) -> None:
    got, want, _ = _run(layer, pair, (strength, 1.7 - strength / 2), semantics)
    assert np.max(np.abs(got - want)) <= TOLERANCE * np.max(np.abs(want))


def test_every_named_semantics_has_a_kernel() -> None:
    assert set(PENDING) == set(SEMANTICS) == set(REFERENCES)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("stack", [(k,) for k in ADAPTER_TYPES] + STACK_PAIRS, ids="+".join)
def test_blend_at_one_is_runtime_and_at_zero_is_the_base_bit_for_bit(stack, layer) -> None:
    ones, zeros = (1.0,) * len(stack), (0.0,) * len(stack)
    assert np.array_equal(
        _run(layer, stack, ones, "blend")[0], _run(layer, stack, ones, "runtime")[0]
    )
    got, _, w0 = _run(layer, stack, zeros, "blend")
    assert np.array_equal(got, w0.astype(np.float32))
    fused, _ = merge_to(w0, [], "blend", "F16")
    assert np.array_equal(fused, w0)


@pytest.mark.parametrize("strength", [1e-5, 0.5, 1.7])
@pytest.mark.parametrize("kind", DECOMPOSED)
def test_blend_is_not_runtime_for_dora_and_bora(kind, strength) -> None:
    blend, want, _ = _run("linear", (kind,), (strength,), "blend")
    runtime, _, _ = _run("linear", (kind,), (strength,), "runtime")
    scale = np.max(np.abs(want))
    assert np.max(np.abs(blend - want)) <= TOLERANCE * scale
    assert np.max(np.abs(blend - runtime)) > 1e-3 * scale


@pytest.mark.parametrize("base_dtype", [np.float16, ml_dtypes.bfloat16, np.float32])
@pytest.mark.parametrize("pair", [("bora", "dora-cols-xs"), ("dora-rows", "bora-xs")], ids="+".join)
def test_blend_norms_of_a_low_precision_base_are_taken_in_row_blocks(
    monkeypatch, pair, base_dtype
) -> None:
    """The first adapter's W_in is the stored base: its norms are upcast block by block."""
    monkeypatch.setattr(kernels, "NORM_BLOCK", 7)  # 40 rows: several blocks and a short one
    fan_out, fan_in = 40, 9
    w0 = np.random.default_rng(8).standard_normal((fan_out, fan_in)).astype(base_dtype)
    w64 = w0.astype(np.float32).astype(np.float64)
    ref_stack, ours = [], []
    for i, kind in enumerate(pair):
        p = random_params(kind, fan_out, fan_in, w64, 40 + i)
        ref_stack.append((kind, p, 1.5, 0.6 + i))
        ours.append((_numpy_adapter(kind, 1.5, p), 0.6 + i))
    got = merge_f32(w0, ours, "blend")
    want = REFERENCES["blend"](w64, ref_stack)
    assert np.max(np.abs(got - want)) <= TOLERANCE * np.max(np.abs(want))


def test_kernel_never_modifies_the_base() -> None:
    w0 = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    before = w0.copy()
    p = random_params("bora", 6, 5, w0.astype(np.float64), 1)
    adapter = NumpyAdapter(
        ADAPTER_TYPES["bora"], 2.0, {k: v.astype(np.float32) for k, v in p.items()}
    )
    for semantics in KERNELS:
        merge_f32(w0, [(adapter, 0.5), (adapter, 1.0)], semantics)
        merge_to(w0, [(adapter, 0.5), (adapter, 1.0)], semantics, "F16")
    assert np.array_equal(w0, before)


def test_merge_to_casts_once_and_flags_overflow() -> None:
    w0 = np.full((2, 3), 60000, np.float16)
    adapter = NumpyAdapter(
        ADAPTER_TYPES["lora"],
        1.0,
        {"lora_A": np.ones((1, 3), np.float32), "lora_B": np.full((2, 1), 9000, np.float32)},
    )
    out, finite = merge_to(w0, [(adapter, 1.0)], "runtime", "F16")
    assert out.dtype == np.float16 and not finite  # 69000 overflows fp16
    out, finite = merge_to(w0, [(adapter, 1.0)], "runtime", "F32")
    assert finite and out[0, 0] == 69000


@pytest.mark.parametrize("semantics", KERNELS)
@pytest.mark.parametrize("kind", list(ADAPTER_TYPES))
def test_fp16_output_is_one_rounding_of_the_fp32_result(kind, semantics) -> None:
    w0 = np.random.default_rng(3).standard_normal((12, 7)).astype(np.float16)
    p = random_params(kind, 12, 7, w0.astype(np.float64), 4)
    stack = [
        (
            NumpyAdapter(ADAPTER_TYPES[kind], 1.5, {k: v.astype(np.float32) for k, v in p.items()}),
            0.8,
        )
    ]
    out, finite = merge_to(w0, stack, semantics, "F16")
    assert finite and out.dtype == np.float16
    assert np.array_equal(out, merge_f32(w0, stack, semantics).astype(np.float16))


def test_nan_is_never_certified() -> None:
    w0 = np.ones((4, 3), np.float16)
    adapter = NumpyAdapter(
        ADAPTER_TYPES["dora-rows"],
        1.0,
        {
            "lora_A": np.ones((1, 3), np.float32),
            "lora_B": np.full((4, 1), np.nan, np.float32),
            "magnitude": np.ones(4, np.float32),
        },
    )
    _, finite = merge_to(w0, [(adapter, 1.0)], "runtime", "F16")
    assert not finite


ROW_LOCAL = ("lora", "dora-rows", "lora-xs", "dora-rows-xs")


@pytest.mark.parametrize("semantics", KERNELS)
@pytest.mark.parametrize(
    "pair", [(a, b) for a in ROW_LOCAL for b in ROW_LOCAL if a != b][::3], ids="+".join
)
def test_tall_weights_match_reference(pair, semantics) -> None:
    fan_out, fan_in = 775, 40
    w0 = np.random.default_rng(5).standard_normal((fan_out, fan_in)).astype(np.float16)
    ref_stack, ours = [], []
    for i, kind in enumerate(pair):
        p = random_params(kind, fan_out, fan_in, w0.astype(np.float64), 300 + i)
        ref_stack.append((kind, p, 1.25, 0.7 + i))
        ours.append(
            (
                NumpyAdapter(
                    ADAPTER_TYPES[kind], 1.25, {k: v.astype(np.float32) for k, v in p.items()}
                ),
                0.7 + i,
            )
        )
    got, finite = merge_to(w0, ours, semantics, "F32")
    want = REFERENCES[semantics](w0.astype(np.float64), ref_stack)
    assert finite and np.max(np.abs(got - want)) <= TOLERANCE * np.max(np.abs(want))
