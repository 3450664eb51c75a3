"""MLX adapter math vs the independent float64 reference: every type, layer kind, strength.

Matrix: 8 types x {Linear, Conv1d k=1, Conv1d k=3} x strengths {0, 1e-5, 0.5, 1, 1.7} x
{single, two stacked of different types} x semantics {runtime, delta, blend}. The weight goes
through the real layout code (PyTorch Conv1d (out,in,k) and MLX (out,k,in)) so layout and
math are checked together. Tolerance: 1e-5 relative to the largest weight entry (fp32).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from sa3ckpt.adapters.formulas import (
    CHAIN_MAGNITUDES,
    SEMANTICS_HELP,
    TargetAdapter,
    adapted_weight,
    identity_magnitudes,
    merge,
    weight_delta,
)
from sa3ckpt.adapters.formulas import SEMANTICS as FORMULA_SEMANTICS
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.layout import from_canonical_2d, to_canonical_2d
from tests.helpers import (
    LAYERS,
    RANK,
    STACK_PAIRS,
    STRENGTHS,
    TOLERANCE,
    random_base,
    random_params,
)
from tests.reference_math import REFERENCES, ref_runtime

SEMANTICS = list(REFERENCES)
DECOMPOSED = [name for name, kind in ADAPTER_TYPES.items() if kind.is_weight_decomposed]


def _target_adapter(kind_name: str, p: dict, c: float) -> TargetAdapter:
    return TargetAdapter(
        ADAPTER_TYPES[kind_name], c, {k: mx.array(v.astype(np.float32)) for k, v in p.items()}
    )


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _case(layer: str, stacked: tuple[str, ...], strengths: tuple[float, ...], semantics: str):
    stored, k = random_base(layer, seed=len(stacked) * 7 + len(layer))
    torch_layout = "linear" if layer == "linear" else "torch-conv1d"
    w0_2d = to_canonical_2d(stored, torch_layout)
    fan_out, fan_in = w0_2d.shape
    ref_stack, ours = [], []
    for i, (kind_name, s) in enumerate(zip(stacked, strengths, strict=True)):
        p = random_params(kind_name, fan_out, fan_in, w0_2d.astype(np.float64), seed=100 + i)
        c = (2.0 * RANK if i == 0 else 1.5 * RANK) / RANK
        ref_stack.append((kind_name, p, c, s))
        ours.append((_target_adapter(kind_name, p, c), s))
    reference = REFERENCES[semantics](w0_2d, ref_stack)

    # Through the MLX layout too: MLX keeps Conv1d as (out, k, in).
    mlx_layout = "linear" if layer == "linear" else "mlx-conv1d"
    mlx_stored = mx.array(from_canonical_2d(w0_2d, mlx_layout, k))
    merged_2d = merge(to_canonical_2d(mlx_stored, mlx_layout), ours, semantics, dtype=mx.float32)
    merged_stored = np.array(from_canonical_2d(merged_2d, mlx_layout, k))
    got = to_canonical_2d(merged_stored, mlx_layout)
    return got, reference, w0_2d


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("kind_name", list(ADAPTER_TYPES))
def test_single_adapter_matches_reference(kind_name, layer, strength, semantics) -> None:
    got, want, w0 = _case(layer, (kind_name,), (strength,), semantics)
    assert got.shape == want.shape
    assert _rel_err(got, want) <= TOLERANCE
    if strength == 0:
        assert np.array_equal(got, w0), "strength 0 must leave the base bit-identical"


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("pair", STACK_PAIRS, ids="+".join)
def test_two_stacked_adapters_match_reference(pair, layer, strength, semantics) -> None:
    got, want, _ = _case(layer, pair, (strength, 1.7 - strength / 2), semantics)
    assert _rel_err(got, want) <= TOLERANCE


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("stack", [(k,) for k in ADAPTER_TYPES] + STACK_PAIRS, ids="+".join)
def test_blend_at_one_is_runtime_and_at_zero_is_the_base_bit_for_bit(stack, layer) -> None:
    ones = (1.0,) * len(stack)
    blend, _, _ = _case(layer, stack, ones, "blend")
    runtime, _, _ = _case(layer, stack, ones, "runtime")
    assert np.array_equal(blend, runtime)
    got, _, w0 = _case(layer, stack, (0.0,) * len(stack), "blend")
    assert np.array_equal(got, w0)


@pytest.mark.parametrize("strength", [1e-5, 0.5, 1.7])
@pytest.mark.parametrize("kind_name", DECOMPOSED)
def test_blend_is_not_runtime_for_dora_and_bora(kind_name, strength) -> None:
    """Away from s = 1 the blended magnitudes matter: an alias of runtime must fail here."""
    blend, want, _ = _case("linear", (kind_name,), (strength,), "blend")
    runtime, _, _ = _case("linear", (kind_name,), (strength,), "runtime")
    assert _rel_err(blend, want) <= TOLERANCE
    assert _rel_err(blend, runtime) > 1e-3


def test_blend_fades_a_dora_out_as_strength_goes_to_zero() -> None:
    """The motivation for blend: at s = 1e-5 runtime still applies the learned magnitudes."""
    blend, _, w0 = _case("linear", ("dora-rows",), (1e-5,), "blend")
    runtime, _, _ = _case("linear", ("dora-rows",), (1e-5,), "runtime")
    assert _rel_err(blend, w0) < 1e-4 < _rel_err(runtime, w0)


def test_bora_blend_targets_the_incoming_weights_own_column_norms() -> None:
    """m_c blends toward W_in's column norms, not those of the row-normalised intermediate."""
    w0, _ = random_base("linear", 9)
    w0 = w0 * np.linspace(0.2, 3.0, w0.shape[0])[:, None]  # row norms far from equal
    kind = ADAPTER_TYPES["bora"]
    p = random_params("bora", *w0.shape, w0.astype(np.float64), 4)
    p["lora_B"] = np.zeros_like(p["lora_B"])  # no update: V' = W_in, only magnitudes act
    adapter = _target_adapter("bora", p, 2.0)
    got = np.array(adapted_weight(mx.array(w0), adapter, 0.5, "blend"))
    rows, cols = np.linalg.norm(w0, axis=1), np.linalg.norm(w0, axis=0)
    m_r = rows + 0.5 * (p["magnitude_r"] - rows)
    m_c = cols + 0.5 * (p["magnitude_c"] - cols)
    r = m_r[:, None] * w0 / rows[:, None]
    want = m_c[None, :] * r / np.linalg.norm(r, axis=0)[None, :]
    assert kind.norm == "both" and _rel_err(got, want) <= TOLERANCE


def test_stack_pairs_cover_every_type_in_both_positions() -> None:
    assert {a for a, _ in STACK_PAIRS} == set(ADAPTER_TYPES)
    assert {b for _, b in STACK_PAIRS} == set(ADAPTER_TYPES)
    assert all(a != b for a, b in STACK_PAIRS)


def test_semantics_agree_where_the_reference_says_they_must() -> None:
    # Equal for plain lora/lora-xs at any strength and for one adapter at 1.0.
    for kind_name in ("lora", "lora-xs"):
        for s in STRENGTHS:
            runtime, _, _ = _case("linear", (kind_name, "lora"), (s, 0.3), "runtime")
            delta, _, _ = _case("linear", (kind_name, "lora"), (s, 0.3), "delta")
            assert _rel_err(runtime, delta) <= TOLERANCE
    runtime, _, _ = _case("linear", ("bora",), (1.0,), "runtime")
    delta, _, _ = _case("linear", ("bora",), (1.0,), "delta")
    assert _rel_err(runtime, delta) <= TOLERANCE
    # ...and differ for DoRA at other strengths.
    runtime, _, _ = _case("linear", ("dora-rows",), (0.5,), "runtime")
    delta, _, _ = _case("linear", ("dora-rows",), (0.5,), "delta")
    assert _rel_err(runtime, delta) > 1e-3


def test_cast_once_to_base_dtype_by_default() -> None:
    w0 = mx.array(np.random.default_rng(0).standard_normal((6, 5)).astype(np.float16))
    p = random_params("dora-cols", 6, 5, np.array(w0.astype(mx.float32)).astype(np.float64), 1)
    merged = merge(w0, [(_target_adapter("dora-cols", p, 2.0), 1.0)])
    assert merged.dtype == mx.float16
    want = ref_runtime(np.array(w0.astype(mx.float32)), [("dora-cols", p, 2.0, 1.0)])
    # one rounding to fp16 of the exact value: within half an fp16 ulp (plus fp32 noise)
    assert np.allclose(np.array(merged.astype(mx.float32)), want, rtol=2**-11, atol=1e-6)


def test_weight_delta_is_merged_minus_base() -> None:
    w0 = mx.array(np.random.default_rng(2).standard_normal((6, 5)).astype(np.float32))
    p = random_params("lora", 6, 5, np.array(w0).astype(np.float64), 3)
    adapter = _target_adapter("lora", p, 0.5)
    got = np.array(weight_delta(w0, [(adapter, 1.0)]))
    assert np.allclose(got, 0.5 * p["lora_B"] @ p["lora_A"], atol=1e-6)


def test_xs_without_bases_is_a_clear_error() -> None:
    kind = ADAPTER_TYPES["lora-xs"]
    adapter = TargetAdapter(kind, 1.0, {"M_xs": mx.zeros((2, 2))})
    with pytest.raises(ValueError, match="XS bases U/V"):
        adapted_weight(mx.zeros((4, 3)), adapter, 1.0)


def test_unknown_semantics() -> None:
    with pytest.raises(ValueError, match="known: runtime, delta"):
        merge(mx.zeros((2, 2)), [], "sideways")


def test_every_semantics_has_a_help_line_and_a_reference() -> None:
    assert list(SEMANTICS_HELP) == list(FORMULA_SEMANTICS) and set(REFERENCES) == set(
        FORMULA_SEMANTICS
    )
    assert set(CHAIN_MAGNITUDES) == {"runtime", "blend"}


# Independent float64 norms a fresh adapter's magnitudes must equal, per norm direction.
def _ref_identity(w: np.ndarray, norm: str) -> dict[str, np.ndarray]:
    rows = np.linalg.norm(w, axis=1)
    if norm == "rows":
        return {"magnitude": rows}
    if norm == "cols":
        return {"magnitude": np.linalg.norm(w, axis=0)}
    r = w * (rows / (rows + 1e-12))[:, None]
    return {"magnitude_r": rows, "magnitude_c": np.linalg.norm(r, axis=0)}


@pytest.mark.parametrize("kind_name", list(ADAPTER_TYPES))
def test_identity_magnitudes_are_base_norms_and_leave_the_weight(kind_name: str) -> None:
    """The fresh magnitudes are the reference norms, and with them f(W0; s) == W0 for any s."""
    kind = ADAPTER_TYPES[kind_name]
    w0, _ = random_base("linear", 3)
    fan_out, fan_in = w0.shape
    got = identity_magnitudes(mx.array(w0), kind)
    want = _ref_identity(w0.astype(np.float64), kind.norm) if kind.norm else {}
    assert set(got) == set(want) == {n for n in kind.required if n.startswith("magnitude")}
    for name, value in want.items():
        assert got[name].dtype == mx.float32
        assert _rel_err(np.array(got[name]), value) < TOLERANCE, name
    p = random_params(kind_name, fan_out, fan_in, w0.astype(np.float64), 5)
    p.update({k: np.asarray(v, np.float64) for k, v in got.items()})
    update = "M_xs" if kind.xs else "lora_B"  # no update: V' = W0 at every strength
    p[update] = np.zeros_like(p[update])
    for s in STRENGTHS:
        out = adapted_weight(mx.array(w0), _target_adapter(kind_name, p, 2.0), s)
        assert _rel_err(np.array(out), w0) < TOLERANCE, s
