"""Layout conversions: canonical 2-D <-> PyTorch Conv1d, MLX Conv1d, ggml shapes, magnitudes."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from sa3ckpt.layout import (
    BASE_LAYOUTS,
    LAYOUTS,
    PEFT_CONV1D,
    base_layout,
    from_canonical_2d,
    from_ggml_shape,
    ggml_shape,
    mlx_conv1d_to_2d,
    squeeze_magnitude,
    stored_layout,
    stored_shape,
    to_canonical_2d,
)


@pytest.mark.parametrize("k", [1, 3])
def test_mlx_conv_layout_is_the_transposed_torch_layout(k: int) -> None:
    torch_w = np.arange(4 * 5 * k, dtype=np.float32).reshape(4, 5, k)
    mlx_w = torch_w.transpose(0, 2, 1)
    canonical = torch_w.reshape(4, 5 * k)  # PyTorch's own 2-D view: in-major, k-minor
    assert np.array_equal(to_canonical_2d(torch_w, "torch-conv1d"), canonical)
    assert np.array_equal(to_canonical_2d(mlx_w, "mlx-conv1d"), canonical)
    assert np.array_equal(from_canonical_2d(canonical, "mlx-conv1d", k), mlx_w)
    assert np.array_equal(from_canonical_2d(canonical, "torch-conv1d", k), torch_w)


@pytest.mark.parametrize(
    ("layout", "k"),
    [("linear", 1)] + [(name, k) for name in LAYOUTS if name != "linear" for k in (1, 2, 5)],
)
def test_round_trip_and_stored_shape(layout: str, k: int) -> None:
    rng = np.random.default_rng(k)
    w2d = rng.standard_normal((6, 4 * k)).astype(np.float32)
    stored = from_canonical_2d(w2d, layout, k)
    assert stored.shape == stored_shape((6, 4 * k), layout, k)
    assert np.array_equal(to_canonical_2d(stored, layout), w2d)
    row = LAYOUTS[layout]
    assert row.ndim == stored.ndim
    assert row.canonical_shape(stored.shape) == (6, 4 * k)
    assert row.kernel_size(stored.shape) == k
    assert np.array_equal(row.to_canonical(row.from_canonical(w2d, k)), w2d)


def test_kernel_axes_and_rank_checks() -> None:
    assert LAYOUTS["linear"].kernel_axis is None
    assert LAYOUTS["torch-conv1d"].kernel_axis == 2
    assert LAYOUTS["mlx-conv1d"].kernel_axis == 1
    assert LAYOUTS["mlx-conv1d"].stored_shape((8, 24), 3) == (8, 3, 8)
    assert LAYOUTS["torch-conv1d"].canonical_shape((8, 8, 3)) == (8, 24)
    with pytest.raises(ValueError, match="3-D"):
        LAYOUTS["mlx-conv1d"].kernel_size((8, 24))
    with pytest.raises(ValueError, match="2-D"):
        LAYOUTS["linear"].canonical_shape((8, 8, 3))


def test_base_layouts_table() -> None:
    assert base_layout("official", "conv1d").name == "torch-conv1d"
    assert base_layout("mlx", "conv1d").name == "mlx-conv1d"
    assert stored_layout("mlx", (4, 3, 2)).name == "mlx-conv1d"
    assert stored_layout("official", (4, 2)).name == "linear"
    for naming, layer_kinds in BASE_LAYOUTS.items():
        for layer_kind, name in layer_kinds.items():
            assert LAYOUTS[name].layer_kind == layer_kind, (naming, layer_kind)
    with pytest.raises(ValueError, match="1-D"):
        stored_layout("official", (4,))
    with pytest.raises(ValueError, match="naming"):
        base_layout("nonesuch", "linear")


@pytest.mark.parametrize("k", [1, 3])
def test_peft_conv1d_factors(k: int) -> None:
    rng = np.random.default_rng(k)
    r, out, cin = 2, 5, 4
    a = rng.standard_normal((r, cin * k))
    b = rng.standard_normal((out, r))
    mag = rng.standard_normal(out)
    a3 = PEFT_CONV1D.from_canonical("lora_A", a, k)
    b3 = PEFT_CONV1D.from_canonical("lora_B", b, k)
    m3 = PEFT_CONV1D.from_canonical("magnitude", mag, k)
    assert (a3.shape, b3.shape, m3.shape) == ((r, cin, k), (out, r, 1), (1, out, 1))
    # The two convolutions compose to the PyTorch Conv1d delta of the canonical B @ A.
    composed = np.einsum("or,rik->oik", b3[:, :, 0], a3)
    assert np.allclose(to_canonical_2d(composed, "torch-conv1d"), b @ a)
    for param, stored, canonical in (("lora_A", a3, a), ("lora_B", b3, b), ("magnitude", m3, mag)):
        assert PEFT_CONV1D.is_stored(param, stored.shape)
        assert not PEFT_CONV1D.is_stored(param, canonical.shape)
        assert np.array_equal(PEFT_CONV1D.to_canonical(param, stored), canonical)
    assert not PEFT_CONV1D.is_stored("magnitude", (out, 1))  # legacy 2-D: not PEFT's conv form
    assert not PEFT_CONV1D.is_stored("M_xs", (r, r, 1))
    with pytest.raises(ValueError, match="multiple"):
        PEFT_CONV1D.from_canonical("lora_A", np.zeros((r, 5)), 3)


def test_works_on_mlx_arrays() -> None:
    torch_w = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    as_mlx = mx.array(torch_w.transpose(0, 2, 1))
    assert np.array_equal(np.array(mlx_conv1d_to_2d(as_mlx)), torch_w.reshape(3, 8))


def test_kernel_must_divide_fan_in() -> None:
    with pytest.raises(ValueError, match="multiple"):
        from_canonical_2d(np.zeros((2, 5)), "torch-conv1d", 2)
    with pytest.raises(ValueError, match="2-D"):
        to_canonical_2d(np.zeros((2, 5, 1)), "linear")


def test_ggml_shapes_reverse() -> None:
    assert ggml_shape((7680, 1536)) == (1536, 7680)
    assert from_ggml_shape(ggml_shape((2, 3, 4))) == (2, 3, 4)


def test_legacy_magnitudes() -> None:
    rows, orient = squeeze_magnitude(np.ones((6, 1)), 6, 4)
    assert rows.shape == (6,) and orient == "rows"
    cols, orient = squeeze_magnitude(np.ones((1, 4)), 6, 4)
    assert cols.shape == (4,) and orient == "cols"
    flat, orient = squeeze_magnitude(np.ones(6), 6, 4)
    assert flat.shape == (6,) and orient is None
    with pytest.raises(ValueError, match="fits neither"):
        squeeze_magnitude(np.ones((2, 2)), 6, 4)


# --- row orders (diffusers' medium to_qkv) ----------------------------------------------------


def test_diffusers_medium_qkv_rows_are_q_q2_k_k2_v() -> None:
    from sa3ckpt.layout import rows_from_naming, rows_to_naming

    e = 3
    labels = {"q": 1, "k": 2, "v": 3, "q2": 4, "k2": 5}
    official = np.concatenate(
        [np.full((e, 2), labels[b]) for b in ("q", "k", "v", "q2", "k2")]
    )  # rows of lora_B / a weight in the official [q|k|v|q2|k2] order
    target = "model.transformer.layers.0.self_attn.to_qkv"
    theirs = rows_to_naming("diffusers", target, (5 * e, e), official)
    # diffusers' processor: q1, q2, k1, k2, v = to_qkv(x).chunk(5, dim=-1)
    chunks = [c[0, 0] for c in np.split(theirs, 5)]
    assert chunks == [labels[b] for b in ("q", "q2", "k", "k2", "v")]
    np.testing.assert_array_equal(
        rows_from_naming("diffusers", target, (5 * e, e), theirs), official
    )
    magnitude = official[:, 0]
    assert (
        rows_to_naming("diffusers", target, (5 * e, e), magnitude).tolist() == theirs[:, 0].tolist()
    )


def test_row_order_only_for_the_differential_self_attention() -> None:
    from sa3ckpt.layout import row_order

    e = 4
    assert row_order("diffusers", "model.transformer.layers.1.self_attn.to_qkv", (3 * e, e)) is None
    assert row_order("diffusers", "model.transformer.layers.1.cross_attn.to_kv", (3 * e, e)) is None
    assert row_order("diffusers", "model.transformer.layers.1.cross_attn.to_q", (2 * e, e)) is None
    assert row_order("official", "model.transformer.layers.1.self_attn.to_qkv", (5 * e, e)) is None
    assert row_order("diffusers", "model.transformer.layers.1.self_attn.to_qkv", (5 * e, e))
