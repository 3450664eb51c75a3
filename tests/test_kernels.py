"""The NumPy merge kernel against the same float64 reference as the MLX math: every type,
Linear / Conv1d k=1 / k=3 views, strengths {0, 0.5, 1, 1.7}, single and stacked, both semantics."""

from __future__ import annotations

import numpy as np
import pytest

from sa3ckpt.adapters.kernels import NumpyAdapter, merge_f32, merge_to
from sa3ckpt.adapters.types import ADAPTER_TYPES
from tests.helpers import LAYERS, STACK_PAIRS, STRENGTHS, TOLERANCE, random_base, random_params
from tests.reference_math import ref_delta, ref_runtime

REFERENCES = {"runtime": ref_runtime, "delta": ref_delta}
KERNELS = list(REFERENCES)


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
@pytest.mark.parametrize("pair", STACK_PAIRS, ids="+".join)
def test_stacked(pair, strength, semantics) -> None:
    got, want, _ = _run("conv1d-k3", pair, (strength, 1.7 - strength / 2), semantics)
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
