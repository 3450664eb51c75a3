"""Rectified-flow noising, target and masked / normalised MSE against NumPy float64.

The references are written channels-last (B, L, C); every loss test runs on both layouts the
loss takes: the DiT's channels-first (B, C, T), the default, and channels-last with
`channel_axis=-1` (the data is transposed, the mask stays (B, T)).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from sa3ckpt.train.loss import (
    NORM_EPS,
    NORMALISATIONS,
    noise_latents,
    per_sample_loss,
    rectified_flow_loss,
    rectified_flow_pair,
    velocity_target,
)

B, L, C = 3, 7, 4
MODES = list(NORMALISATIONS)
LAYOUTS = {"channels_first": 1, "channels_last": -1}


def _to(x: np.ndarray, axis: int) -> mx.array:
    """A channels-last (B, L, C) reference array in the layout `axis` names."""
    return mx.array(x if axis == -1 else np.swapaxes(x, 1, 2))


def _back(x: mx.array, axis: int) -> np.ndarray:
    """An array in layout `axis` back to channels-last (B, L, C)."""
    out = np.array(x)
    return out if axis == -1 else np.swapaxes(out, 1, 2)


def _loss(pred, target, mask, mode: str = "none", *, axis: int) -> mx.array:
    """rectified_flow_loss on channels-last NumPy data, run in layout `axis`."""
    m = None if mask is None else mx.array(mask)
    return rectified_flow_loss(_to(pred, axis), _to(target, axis), m, mode, channel_axis=axis)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = _rng(seed)
    pred = rng.normal(size=(B, L, C)).astype(np.float32)
    target = (rng.normal(size=(B, L, C)) * rng.uniform(0.5, 3, size=(1, 1, C))).astype(np.float32)
    mask = np.ones((B, L), dtype=bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    return pred, target, mask


def _reference_var(target: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray | None:
    """The documented variance of each mode, written out loop by loop in float64."""
    t = target.astype(np.float64)
    if mode == "none":
        return None
    out = np.zeros_like(t)
    for b in range(t.shape[0]):
        valid = t[b][mask[b]]  # (n_valid, C)
        for pos in range(t.shape[1]):
            if mode == "timestep":
                out[b, pos, :] = t[b, pos].var()
            elif mode == "sample":
                out[b, pos, :] = valid.var()
            elif mode == "sample_channel":
                out[b, pos, :] = valid.var(axis=0)
    return out


def _reference_loss(pred, target, mask, mode: str) -> float:
    err = (pred.astype(np.float64) - target.astype(np.float64)) ** 2
    var = _reference_var(target, mask, mode)
    if var is not None:
        err = err / (var + NORM_EPS)
    per_sample = [err[b][mask[b]].mean() for b in range(err.shape[0]) if mask[b].any()]
    return float(np.mean(per_sample))


def test_noise_latents_and_target() -> None:
    rng = _rng(1)
    x = rng.normal(size=(B, L, C)).astype(np.float32)
    eps = rng.normal(size=(B, L, C)).astype(np.float32)
    t = np.array([0.0, 0.25, 1.0], dtype=np.float32)
    xt = np.array(noise_latents(mx.array(x), mx.array(eps), mx.array(t)))
    want = (1 - t[:, None, None]) * x.astype(np.float64) + t[:, None, None] * eps
    np.testing.assert_allclose(xt, want, rtol=1e-6, atol=1e-6)
    assert np.array_equal(xt[0], x[0]) and np.array_equal(xt[2], eps[2])
    v = np.array(velocity_target(mx.array(x), mx.array(eps)))
    np.testing.assert_allclose(v, eps - x, rtol=1e-6)


def test_rectified_flow_pair_is_deterministic_and_consistent() -> None:
    x = mx.array(_rng(2).normal(size=(B, L, C)).astype(np.float32))
    t = mx.array([0.1, 0.5, 0.9])
    xt, v, eps = rectified_flow_pair(x, t, 11)
    xt2, _, eps2 = rectified_flow_pair(x, t, mx.random.key(11))
    assert np.array_equal(np.array(eps), np.array(eps2)) and np.array_equal(xt, xt2)
    np.testing.assert_allclose(np.array(v), np.array(eps - x), rtol=1e-6)
    # x_t moves along v: x_t = x + t v
    np.testing.assert_allclose(np.array(xt), np.array(x + t[:, None, None] * v), atol=1e-5)


def test_noise_latents_shape_errors() -> None:
    x = mx.zeros((B, L, C))
    with pytest.raises(ValueError, match="differ in shape"):
        noise_latents(x, mx.zeros((B, L, C + 1)), mx.zeros((B,)))
    with pytest.raises(ValueError, match="t must have shape"):
        noise_latents(x, x, mx.zeros((B, 1)))


@pytest.mark.parametrize("axis", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("masked", [False, True])
def test_loss_matches_reference(mode: str, masked: bool, axis: int) -> None:
    pred, target, mask = _data()
    if not masked:
        mask = np.ones_like(mask)
    got = _loss(pred, target, mask, mode, axis=axis)
    assert got.shape == ()
    assert float(got) == pytest.approx(_reference_loss(pred, target, mask, mode), rel=2e-5)


@pytest.mark.parametrize("axis", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_no_mask_equals_all_ones_mask_and_plain_mse(axis: int) -> None:
    pred, target, _ = _data(3)
    plain = float(_loss(pred, target, None, axis=axis))
    ones = float(_loss(pred, target, np.ones((B, L)), axis=axis))
    assert plain == ones == pytest.approx(float(np.mean((pred - target) ** 2)), rel=1e-6)


@pytest.mark.parametrize("axis", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("mode", MODES)
def test_padding_does_not_affect_the_loss(mode: str, axis: int) -> None:
    pred, target, mask = _data(4)
    base = float(_loss(pred, target, mask, mode, axis=axis))
    junk_pred, junk_target = pred.copy(), target.copy()
    junk = _rng(5).normal(size=pred.shape).astype(np.float32) * 100
    junk_pred[~mask] = junk[~mask]
    junk_target[~mask] = -junk[~mask]
    after = _loss(junk_pred, junk_target, mask, mode, axis=axis)
    assert float(after) == pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("axis", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_per_sample_means_weigh_short_clips_equally(axis: int) -> None:
    """Batch mean of per-sample means, not a mean over all valid elements."""
    pred = np.zeros((2, 4, 1), dtype=np.float32)
    target = np.zeros_like(pred)
    target[0] = 1.0  # sample 0: error 1 at 4 positions
    target[1, 0] = 3.0  # sample 1: error 9 at its single valid position
    mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=bool)
    losses, valid = per_sample_loss(
        _to(pred, axis), _to(target, axis), mx.array(mask), channel_axis=axis
    )
    np.testing.assert_allclose(np.array(losses), [1.0, 9.0])
    np.testing.assert_array_equal(np.array(valid), [4, 1])
    assert float(_loss(pred, target, mask, axis=axis)) == 5.0


def _global_masked_mean(pred, target, mask, mode: str) -> float:
    """The convention NOT used: sum over every valid element of the batch / their count."""
    err = (pred.astype(np.float64) - target.astype(np.float64)) ** 2
    var = _reference_var(target, mask, mode)
    if var is not None:
        err = err / (var + NORM_EPS)
    return float(err[mask].mean())


@pytest.mark.parametrize("axis", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("mode", MODES)
def test_loss_is_per_sample_then_batch_not_global_masked_mean(mode: str, axis: int) -> None:
    """Two samples with different valid lengths and different error levels: the mean of the
    per-sample means differs from the global masked mean by far more than rounding, and the
    loss must be the former (upstream MLX convention, training.md)."""
    rng = _rng(9)
    pred = rng.normal(size=(2, 12, C)).astype(np.float32)
    target = pred + rng.normal(size=pred.shape).astype(np.float32)
    target[1] = pred[1] + 4 * rng.normal(size=(12, C)).astype(np.float32)  # larger error
    mask = np.zeros((2, 12), dtype=bool)
    mask[0, :11] = True  # long clip, small error
    mask[1, :3] = True  # short clip, large error
    got = float(_loss(pred, target, mask, mode, axis=axis))
    per_sample = _reference_loss(pred, target, mask, mode)
    global_mean = _global_masked_mean(pred, target, mask, mode)
    assert abs(per_sample - global_mean) > 0.1 * per_sample
    assert got == pytest.approx(per_sample, rel=2e-5)


@pytest.mark.parametrize("axis", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_empty_samples_are_left_out_of_the_batch_mean(axis: int) -> None:
    pred, target, mask = _data(6)
    mask[0] = False
    got = float(_loss(pred, target, mask, axis=axis))
    assert got == pytest.approx(_reference_loss(pred, target, mask, "none"), rel=1e-6)
    all_empty = _loss(pred, target, np.zeros((B, L)), axis=axis)
    assert float(all_empty) == 0.0


@pytest.mark.parametrize("axis", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_gradient_with_respect_to_prediction(axis: int) -> None:
    pred, target, mask = _data(7)

    def loss(p: mx.array) -> mx.array:
        return rectified_flow_loss(p, _to(target, axis), mx.array(mask), channel_axis=axis)

    grad = _back(mx.grad(loss)(_to(pred, axis)), axis)
    counts = mask.sum(axis=1)[:, None, None] * C
    want = 2 * (pred - target) * mask[..., None] / counts / B
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-8)
    assert np.all(grad[~mask] == 0)


@pytest.mark.parametrize("axis", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("mode", ["timestep", "sample", "sample_channel"])
def test_normalising_variance_is_detached(mode: str, axis: int) -> None:
    """d loss / d target treats the variance as a constant (stop_gradient)."""
    pred, target, mask = _data(8)
    var = _reference_var(target, mask, mode)

    def loss(tg: mx.array) -> mx.array:
        return rectified_flow_loss(_to(pred, axis), tg, mx.array(mask), mode, channel_axis=axis)

    grad = _back(mx.grad(loss)(_to(target, axis)), axis)
    counts = mask.sum(axis=1)[:, None, None] * C
    want = -2 * (pred - target) / (var + NORM_EPS) * mask[..., None] / counts / B
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)


def test_loss_errors() -> None:
    x = mx.zeros((B, C, L))  # the DiT's (B, C, T)
    with pytest.raises(ValueError, match="unknown loss normalisation"):
        rectified_flow_loss(x, x, normalisation="batch")
    with pytest.raises(ValueError, match="must both be"):
        rectified_flow_loss(x, mx.zeros((B, C, L + 1)))
    with pytest.raises(ValueError, match="mask must have shape"):
        rectified_flow_loss(x, x, mx.ones((B, L, 1)))
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 7\)"):
        rectified_flow_loss(x, x, mx.ones((B, C)))  # a channels-last mask for (B, C, T)
    with pytest.raises(ValueError, match="channel_axis must be"):
        rectified_flow_loss(x, x, channel_axis=0)


def test_default_layout_is_the_dits_channels_first() -> None:
    """Without channel_axis the loss reads (B, C, T) and a (B, T) mask: the per-channel
    variance of sample_channel is over frames, and a (B, T) mask selects frames."""
    pred, target, mask = _data(10)
    got = rectified_flow_loss(
        mx.array(np.swapaxes(pred, 1, 2)),
        mx.array(np.swapaxes(target, 1, 2)),
        mx.array(mask),
        "sample_channel",
    )
    assert float(got) == pytest.approx(
        _reference_loss(pred, target, mask, "sample_channel"), rel=2e-5
    )
