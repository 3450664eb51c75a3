"""The rectified-flow training objective: noising, velocity target, masked (normalised) MSE.

Latents are the DiT's layout by default: channels-first (B, C, T), as `sa3ckpt.models.DiT`
takes and returns them (and as the official DiT wrapper does), with masks (B, T) over latent
frames (True / 1 = a real latent frame, False / 0 = batch padding). `channel_axis=-1` (or 2)
takes channels-last (B, T, C) instead, the layout of `EncodedBatch.latents`; nothing else
changes. The loss is the element MSE averaged per sample over its valid frames × channels,
then averaged over the batch, so a short clip in a padded batch weighs as much as a long one
and padding never contributes (see ../shared/reference/training.md).

Noising and the velocity target are elementwise with one t per sample, so they work on either
layout unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from sa3ckpt.train.rng import KeyLike, as_key

NORM_EPS = 1e-6
DIT_CHANNEL_AXIS = 1  # (B, C, T): the DiT's layout and the default everywhere here

# (target (B, ·, ·), mask (B, ·, ·) float with 1 on the channel axis, channel axis 1 or 2)
#   -> detached variance broadcastable to the target, or None for no normalisation
Normaliser = Callable[[mx.array, mx.array, int], mx.array | None]


def _per_sample(t: mx.array, ndim: int) -> mx.array:
    """t (B,) reshaped to broadcast over a (B, ...) latent of `ndim` dims."""
    return t.reshape((-1,) + (1,) * (ndim - 1))


def noise_latents(x: mx.array, noise: mx.array, t: mx.array) -> mx.array:
    """x_t = (1 − t) x + t ε, with one t per sample (t = 0 is data, t = 1 is pure noise)."""
    if x.shape != noise.shape:
        raise ValueError(f"latents {x.shape} and noise {noise.shape} differ in shape")
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape ({x.shape[0]},), got {t.shape}")
    tb = _per_sample(t.astype(x.dtype), x.ndim)
    return (1.0 - tb) * x + tb * noise


def velocity_target(x: mx.array, noise: mx.array) -> mx.array:
    """v = ε − x: d x_t / d t, the quantity the model is trained to predict."""
    return noise - x


def rectified_flow_pair(
    x: mx.array, t: mx.array, key: KeyLike
) -> tuple[mx.array, mx.array, mx.array]:
    """(x_t, v, ε) for clean latents x at timesteps t, with ε ~ N(0, I) drawn from `key`."""
    noise = mx.random.normal(shape=x.shape, dtype=x.dtype, key=as_key(key))
    return noise_latents(x, noise, t), velocity_target(x, noise), noise


# --------------------------------------------------------------------------- normalisation


def _masked_mean(x: mx.array, weight: mx.array, axes: tuple[int, ...]) -> mx.array:
    """Mean of x over `axes` counting only entries whose (broadcast) weight is 1."""
    weight = mx.broadcast_to(weight, x.shape)
    count = mx.maximum(mx.sum(weight, axis=axes, keepdims=True), 1.0)
    return mx.sum(x * weight, axis=axes, keepdims=True) / count


def _masked_var(x: mx.array, weight: mx.array, axes: tuple[int, ...]) -> mx.array:
    """Population variance (divide by n) of x over `axes`, valid entries only."""
    mean = _masked_mean(x, weight, axes)
    return _masked_mean(mx.square(x - mean), weight, axes)


def _frame_axis(channel_axis: int) -> int:
    """The latent-frame axis of a 3-D latent whose channels are on `channel_axis` (1 or 2)."""
    return 3 - channel_axis


def _no_norm(target: mx.array, mask: mx.array, channel_axis: int) -> None:
    return None


def _timestep_var(target: mx.array, mask: mx.array, channel_axis: int) -> mx.array:
    """Variance over the C channels of each latent frame (each time step of audio).

    "timestep" means a latent time frame here, not the diffusion time t: every frame's error
    is measured relative to how much its target varies across channels. Padded frames get a
    value too but are masked out of the loss.
    """
    return _masked_var(target, mx.ones_like(mask), (channel_axis,))


def _sample_var(target: mx.array, mask: mx.array, channel_axis: int) -> mx.array:
    """Variance over all valid frames × channels of each sample (one value per sample)."""
    return _masked_var(target, mask, (1, 2))


def _sample_channel_var(target: mx.array, mask: mx.array, channel_axis: int) -> mx.array:
    """Variance over the valid frames of each sample, per channel."""
    return _masked_var(target, mask, (_frame_axis(channel_axis),))


NORMALISATIONS: dict[str, Normaliser] = {
    "none": _no_norm,
    "timestep": _timestep_var,
    "sample": _sample_var,
    "sample_channel": _sample_channel_var,
}


# --------------------------------------------------------------------------- the loss


def _channel_axis(channel_axis: int, ndim: int) -> int:
    """`channel_axis` of a (B, ·, ·) latent as 1 or 2 (the batch axis cannot hold channels)."""
    axis = channel_axis + ndim if channel_axis < 0 else channel_axis
    if ndim != 3 or axis not in (1, 2):
        raise ValueError(
            f"channel_axis must be 1 (B, C, T) or 2 / -1 (B, T, C) of a 3-D latent, "
            f"got {channel_axis}"
        )
    return axis


def _mask3(mask: mx.array | None, shape: tuple[int, ...], channel_axis: int) -> mx.array:
    """The (B, T) frame mask as float with a size-1 channel axis; all ones when None."""
    frames = shape[_frame_axis(channel_axis)]
    if mask is None:
        return mx.expand_dims(mx.ones((shape[0], frames), dtype=mx.float32), channel_axis)
    if mask.shape != (shape[0], frames):
        raise ValueError(
            f"mask must have shape {(shape[0], frames)} (batch, frames), got {mask.shape}"
        )
    return mx.expand_dims(mask.astype(mx.float32), channel_axis)


def _layout_name(channel_axis: int) -> str:
    return "(B, C, T)" if channel_axis == 1 else "(B, T, C)"


def per_sample_loss(
    pred: mx.array,
    target: mx.array,
    mask: mx.array | None = None,
    normalisation: str = "none",
    eps: float = NORM_EPS,
    *,
    channel_axis: int = DIT_CHANNEL_AXIS,
) -> tuple[mx.array, mx.array]:
    """(per-sample loss (B,), valid-frame counts (B,)) of a masked, normalised MSE.

    pred and target are (B, C, T) as the DiT returns them (`channel_axis=1`, the default)
    or (B, T, C) with `channel_axis=-1`; mask is (B, T) either way. The squared error is
    divided elementwise by `var + eps`, where `var` is the detached target variance the
    `normalisation` mode names (see `NORMALISATIONS`; "none" divides by nothing), then
    averaged over each sample's valid frames × channels. A sample with no valid frame has
    loss 0 and count 0.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"pred {pred.shape} and target {target.shape} must both be 3-D and equal: "
            f"{_layout_name(channel_axis)} for channel_axis={channel_axis}"
        )
    axis = _channel_axis(channel_axis, pred.ndim)
    try:
        normaliser = NORMALISATIONS[normalisation]
    except KeyError:
        raise ValueError(
            f"unknown loss normalisation {normalisation!r} (known: {', '.join(NORMALISATIONS)})"
        ) from None
    mask3 = _mask3(mask, pred.shape, axis)
    target32 = target.astype(mx.float32)
    err = mx.square(pred.astype(mx.float32) - target32)
    var = normaliser(mx.stop_gradient(target32), mask3, axis)
    if var is not None:
        err = err / (mx.stop_gradient(var) + eps)
    valid = mx.sum(mask3, axis=(1, 2))
    denom = mx.maximum(valid * pred.shape[axis], 1.0)
    return mx.sum(err * mask3, axis=(1, 2)) / denom, valid


def rectified_flow_loss(
    pred: mx.array,
    target: mx.array,
    mask: mx.array | None = None,
    normalisation: str = "none",
    eps: float = NORM_EPS,
    *,
    channel_axis: int = DIT_CHANNEL_AXIS,
) -> mx.array:
    """Scalar training loss: the mean over the batch of each sample's masked mean.

    Takes the DiT's output as it comes: pred / target (B, C, T), mask (B, T) (channels-last
    (B, T, C) with `channel_axis=-1`). Each sample's squared error is averaged over its own
    valid frames × channels (`per_sample_loss`), then those B means are averaged with equal
    weight, as the newest upstream MLX trainer does and training.md states. This is not the
    global masked mean (sum over all valid elements / their count), which would weight a
    sample by its valid length; here a 10-frame clip padded into a batch counts as much as a
    1000-frame one. Samples with no valid frame at all are left out of the batch mean (they carry no
    signal), and an all-empty batch gives 0. With no mask this is the plain element mean.
    """
    losses, valid = per_sample_loss(
        pred, target, mask, normalisation, eps, channel_axis=channel_axis
    )
    present = (valid > 0).astype(mx.float32)
    return mx.sum(losses * present) / mx.maximum(mx.sum(present), 1.0)


__all__ = [
    "DIT_CHANNEL_AXIS",
    "NORMALISATIONS",
    "NORM_EPS",
    "noise_latents",
    "per_sample_loss",
    "rectified_flow_loss",
    "rectified_flow_pair",
    "velocity_target",
]
