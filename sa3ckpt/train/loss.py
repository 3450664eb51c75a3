"""The rectified-flow training objective: noising, velocity target, masked (normalised) MSE.

Latents are channels-last (B, L, C), the layout MLX convolutions use, and masks are (B, L)
over latent positions (True / 1 = a real latent frame, False / 0 = batch padding). The loss
is the element MSE averaged per sample over its valid positions × channels, then averaged
over the batch, so a short clip in a padded batch weighs as much as a long one and padding
never contributes (see ../shared/reference/training.md).
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from sa3ckpt.train.rng import KeyLike, as_key

NORM_EPS = 1e-6

# target (B, L, C), mask (B, L, 1) float -> detached variance broadcastable to (B, L, C)
Normaliser = Callable[[mx.array, mx.array], mx.array | None]


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


def _no_norm(target: mx.array, mask: mx.array) -> None:
    return None


def _timestep_var(target: mx.array, mask: mx.array) -> mx.array:
    """(B, L, 1): variance over the C channels of each latent frame (each time step of audio).

    "timestep" means a latent time frame here, not the diffusion time t: every frame's error
    is measured relative to how much its target varies across channels. Padded frames get a
    value too but are masked out of the loss.
    """
    return _masked_var(target, mx.ones_like(mask), (2,))


def _sample_var(target: mx.array, mask: mx.array) -> mx.array:
    """(B, 1, 1): variance over all valid positions × channels of each sample."""
    return _masked_var(target, mask, (1, 2))


def _sample_channel_var(target: mx.array, mask: mx.array) -> mx.array:
    """(B, 1, C): variance over the valid positions of each sample, per channel."""
    return _masked_var(target, mask, (1,))


NORMALISATIONS: dict[str, Normaliser] = {
    "none": _no_norm,
    "timestep": _timestep_var,
    "sample": _sample_var,
    "sample_channel": _sample_channel_var,
}


# --------------------------------------------------------------------------- the loss


def _mask3(mask: mx.array | None, shape: tuple[int, ...]) -> mx.array:
    """The (B, L) mask as float (B, L, 1); all ones when None."""
    if mask is None:
        return mx.ones((*shape[:2], 1), dtype=mx.float32)
    if mask.shape != shape[:2]:
        raise ValueError(f"mask must have shape {shape[:2]} (batch, positions), got {mask.shape}")
    return mask.astype(mx.float32)[..., None]


def per_sample_loss(
    pred: mx.array,
    target: mx.array,
    mask: mx.array | None = None,
    normalisation: str = "none",
    eps: float = NORM_EPS,
) -> tuple[mx.array, mx.array]:
    """(per-sample loss (B,), valid-position counts (B,)) of a masked, normalised MSE.

    The squared error is divided elementwise by `var + eps`, where `var` is the detached
    target variance the `normalisation` mode names (see `NORMALISATIONS`; "none" divides by
    nothing), then averaged over each sample's valid positions × channels. A sample with no
    valid position has loss 0 and count 0.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must both be (B, L, C)")
    try:
        normaliser = NORMALISATIONS[normalisation]
    except KeyError:
        raise ValueError(
            f"unknown loss normalisation {normalisation!r} (known: {', '.join(NORMALISATIONS)})"
        ) from None
    mask3 = _mask3(mask, pred.shape)
    target32 = target.astype(mx.float32)
    err = mx.square(pred.astype(mx.float32) - target32)
    var = normaliser(mx.stop_gradient(target32), mask3)
    if var is not None:
        err = err / (mx.stop_gradient(var) + eps)
    valid = mx.sum(mask3, axis=(1, 2))
    denom = mx.maximum(valid * pred.shape[2], 1.0)
    return mx.sum(err * mask3, axis=(1, 2)) / denom, valid


def rectified_flow_loss(
    pred: mx.array,
    target: mx.array,
    mask: mx.array | None = None,
    normalisation: str = "none",
    eps: float = NORM_EPS,
) -> mx.array:
    """Scalar training loss: the mean over the batch of each sample's masked mean.

    Each sample's squared error is averaged over its own valid positions × channels
    (`per_sample_loss`), then those B means are averaged with equal weight, as the newest
    upstream MLX trainer does and training.md states. This is not the global masked mean
    (sum over all valid elements / their count), which would weight a sample by its valid
    length; here a 10-frame clip padded into a batch counts as much as a 1000-frame one.
    Samples with no valid position at all are left out of the batch mean (they carry no
    signal), and an all-empty batch gives 0. With no mask this is the plain element mean.
    """
    losses, valid = per_sample_loss(pred, target, mask, normalisation, eps)
    present = (valid > 0).astype(mx.float32)
    return mx.sum(losses * present) / mx.maximum(mx.sum(present), 1.0)


__all__ = [
    "NORMALISATIONS",
    "NORM_EPS",
    "noise_latents",
    "per_sample_loss",
    "rectified_flow_loss",
    "rectified_flow_pair",
    "velocity_target",
]
