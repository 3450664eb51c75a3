"""Timestep samplers and distribution shifts for rectified-flow training (t=0 data, t=1 noise).

Samplers and shifts are tables (`SAMPLERS`, `SHIFTS`) of plain functions, so a config string
such as "logit_normal" or "full" selects the behaviour without an if-chain, and adding a new
distribution is one function plus one row. All samplers draw from an explicit PRNG key (or an
int seed), never the global generator, so a batch of timesteps is reproducible from its
arguments. Values are float32 in [0, 1]; every shift maps t ≤ 0 to exactly 0 and t ≥ 1 to
exactly 1.

Conventions follow ../shared/reference/training.md (the SA3 trainer's defaults).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from sa3ckpt.train.rng import KeyLike, as_key

LOG_SNR_CLAMP = 1e-4  # log-SNR samplers keep t inside [1e-4, 1 - 1e-4]
_SQRT2 = math.sqrt(2.0)

Sampler = Callable[..., mx.array]
Shift = Callable[..., mx.array]


# --------------------------------------------------------------------------- normal helpers


def _normal_cdf(x: mx.array) -> mx.array:
    """Φ(x), the standard normal CDF."""
    return 0.5 * (1.0 + mx.erf(x / _SQRT2))


def _normal_ppf(p: mx.array) -> mx.array:
    """Φ⁻¹(p), the standard normal quantile."""
    return _SQRT2 * mx.erfinv(2.0 * p - 1.0)


def _logit(p: float) -> float:
    """logit in float64 for the scalar truncation bounds (logit(1) = +inf)."""
    if p >= 1.0:
        return math.inf
    if p <= 0.0:
        return -math.inf
    return math.log(p / (1.0 - p))


def _scalar_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / _SQRT2)) if math.isfinite(x) else float(x > 0)


def _check_batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    return batch


# --------------------------------------------------------------------------- samplers


def uniform(key: KeyLike, batch: int) -> mx.array:
    """t ~ U(0, 1).

    The official trainer draws from a scrambled Sobol sequence for lower variance; plain
    i.i.d. uniform has the same distribution, which is what matters for the loss.
    """
    return mx.random.uniform(shape=(_check_batch(batch),), key=as_key(key))


def logit_normal(key: KeyLike, batch: int, mean: float = 0.0, std: float = 1.0) -> mx.array:
    """t = sigmoid(z), z ~ N(mean, std²): concentrates training on mid-range noise levels."""
    z = mx.random.normal(shape=(_check_batch(batch),), loc=mean, scale=std, key=as_key(key))
    return mx.sigmoid(z)


def trunc_logit_normal_from_normal(
    z: mx.array, left_trunc: float = 0.075, right_trunc: float = 1.0
) -> mx.array:
    """The deterministic part of `trunc_logit_normal`, exposed so tests can feed known z.

    c = Φ(z) is mapped into [Φ(logit(left)), Φ(logit(right))], pulled back through Φ⁻¹ and
    the sigmoid (a logit-normal truncated to [left, right]), rescaled to [0, 1] and finally
    flipped (t ← 1 − t), exactly as the SA3 trainer does: the flip puts the truncated tail
    (no samples below `left_trunc`) at the noise end.
    """
    if not 0.0 <= left_trunc < right_trunc <= 1.0:
        raise ValueError(
            f"need 0 <= left_trunc < right_trunc <= 1, got {left_trunc}, {right_trunc}"
        )
    lo = _scalar_cdf(_logit(left_trunc))
    hi = _scalar_cdf(_logit(right_trunc))
    c = lo + (hi - lo) * _normal_cdf(z.astype(mx.float32))
    s = mx.sigmoid(_normal_ppf(c))
    t = (s - left_trunc) / (right_trunc - left_trunc)
    # Φ⁻¹(Φ(x)) round-trips only to float32 precision; keep the support exact.
    return 1.0 - mx.clip(t, 0.0, 1.0)


def trunc_logit_normal(
    key: KeyLike, batch: int, left_trunc: float = 0.075, right_trunc: float = 1.0
) -> mx.array:
    """Truncated logit-normal, then flipped (SA3 default: left_trunc 0.075, right_trunc 1)."""
    z = mx.random.normal(shape=(_check_batch(batch),), key=as_key(key))
    return trunc_logit_normal_from_normal(z, left_trunc, right_trunc)


def _from_log_snr(lam: mx.array) -> mx.array:
    """t = sigmoid(−λ) clamped to [1e-4, 1 − 1e-4]: λ is the log-SNR of x_t."""
    return mx.clip(mx.sigmoid(-lam), LOG_SNR_CLAMP, 1.0 - LOG_SNR_CLAMP)


def log_snr(key: KeyLike, batch: int, mean: float = -1.2, std: float = 2.0) -> mx.array:
    """λ ~ N(mean, std²), t = sigmoid(−λ), clamped (EDM-style log-normal noise levels)."""
    lam = mx.random.normal(shape=(_check_batch(batch),), loc=mean, scale=std, key=as_key(key))
    return _from_log_snr(lam)


def log_snr_uniform(
    key: KeyLike, batch: int, min_log_snr: float = -6.0, max_log_snr: float = 5.0
) -> mx.array:
    """λ ~ U(min, max), t = sigmoid(−λ), clamped: equal weight per unit of log-SNR."""
    if not min_log_snr < max_log_snr:
        raise ValueError(f"need min_log_snr < max_log_snr, got {min_log_snr}, {max_log_snr}")
    lam = mx.random.uniform(
        low=min_log_snr, high=max_log_snr, shape=(_check_batch(batch),), key=as_key(key)
    )
    return _from_log_snr(lam)


SAMPLERS: dict[str, Sampler] = {
    "uniform": uniform,
    "logit_normal": logit_normal,
    "trunc_logit_normal": trunc_logit_normal,
    "log_snr": log_snr,
    "log_snr_uniform": log_snr_uniform,
}


def sample_timesteps(name: str, key: KeyLike, batch: int, **params: Any) -> mx.array:
    """Draw `batch` timesteps from the sampler `name` (keyword params override its defaults)."""
    try:
        sampler = SAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown timestep sampler {name!r} (known: {', '.join(SAMPLERS)})"
        ) from None
    return sampler(key, batch, **params)


# --------------------------------------------------------------------------- shifts

ALPHA_FLOOR = 1e-8  # flux alphas below this (incl. 0 and negatives) are raised to it


def _as_lengths(length: int | mx.array) -> mx.array:
    """Sequence length(s) as float32: an int, or a (B,) array that broadcasts against t."""
    length = length if isinstance(length, mx.array) else mx.array(length)
    return length.astype(mx.float32)


def _check_anchors(min_length: float, max_length: float) -> None:
    if not min_length < max_length:
        raise ValueError(f"need min_length < max_length, got {min_length}, {max_length}")


def _clamped_fraction(length: int | mx.array, min_length: float, max_length: float) -> mx.array:
    """(L − min)/(max − min) with L clamped to [min, max]: where L sits between the anchors."""
    _check_anchors(min_length, max_length)
    length = mx.clip(_as_lengths(length), min_length, max_length)
    return (length - min_length) / (max_length - min_length)


def _clamped_log_fraction(length: int | mx.array, min_length: float, max_length: float) -> mx.array:
    """(ln L − ln min)/(ln max − ln min) with L clamped to [min, max]: position on a log axis.

    Interpolating in ln L makes anything linear in this fraction a power law in L, the form
    SD3 derives for the shift (α ∝ √L); a fraction linear in L would put L = 1024 between
    256 and 4096 at 0.2 instead of 0.5.
    """
    _check_anchors(min_length, max_length)
    if min_length <= 0:
        raise ValueError(f"need min_length > 0 for a log-length fraction, got {min_length}")
    length = mx.clip(_as_lengths(length), min_length, max_length)
    log_min = math.log(min_length)
    return (mx.log(length) - log_min) / (math.log(max_length) - log_min)


def _pin_endpoints(t: mx.array, shifted: mx.array) -> mx.array:
    """Force t ≤ 0 to exactly 0 and t ≥ 1 to exactly 1, whatever the formula gives there.

    Every shift must keep pure data at t = 0 and pure noise at t = 1. The α shifts reach the
    endpoints only up to float rounding, and the log-SNR shift does not reach them at all
    (its λ stays finite, so t' ∈ (0, 1)), hence one explicit rule for all of them.
    """
    shifted = mx.where(t <= 0.0, mx.zeros_like(shifted), shifted)
    return mx.where(t >= 1.0, mx.ones_like(shifted), shifted)


def _alpha_shift(t: mx.array, alpha: mx.array) -> mx.array:
    """t' = α t / (1 + (α − 1) t), computed as α t / ((1 − t) + α t), endpoints pinned.

    The two are the same algebraically, but in float32 α − 1 rounds to −1 for small α and
    1 + (α − 1) t then cancels to 1 − t near t = 1, losing the α t term (≈1% off at α = 1e-8,
    t = 1 − 1e-6); 1 − t is exact for t ≥ ½, so the second form keeps full precision. It also
    has no 1/(1 − t) term, so t = 1 needs no special division (α/α = 1).
    """
    t = t.astype(mx.float32)
    scaled = alpha * t
    return _pin_endpoints(t, scaled / ((1.0 - t) + scaled))


def identity_shift(t: mx.array, length: int | mx.array | None = None) -> mx.array:
    """No shift: t unchanged inside (0, 1), as float32; t ≤ 0 → 0 and t ≥ 1 → 1 like every shift."""
    t = t.astype(mx.float32)
    return _pin_endpoints(t, t)


def flux_alpha(
    length: int | mx.array,
    alpha_min: float = 1.0,
    alpha_max: float = 1.0,
    min_length: float = 256,
    max_length: float = 4096,
) -> mx.array:
    """α for sequence length L: log α is linear in log L, from ln alpha_min at min_length to
    ln alpha_max at max_length (L clamped to that range), i.e. α is a power law in L.

    The defaults alpha_min = alpha_max = 1 give α = 1, the identity shift, as in the official
    trainer; pass e.g. alpha_min = alpha_max = 6.93 for the constant "sampleshift" the
    official inference UI uses. This is NOT the `full` shift with other parameters: `full`
    is linear in L itself, so the two agree only at the clamp anchors. Alphas are floored at
    `ALPHA_FLOOR` rather than rejected, so a zero or negative α degrades to a near-total
    shift towards data instead of a log-of-zero NaN.
    """
    log_lo = math.log(max(alpha_min, ALPHA_FLOOR))
    log_hi = math.log(max(alpha_max, ALPHA_FLOOR))
    frac = _clamped_log_fraction(length, min_length, max_length)
    return mx.exp(log_lo + (log_hi - log_lo) * frac)


def flux_shift(
    t: mx.array,
    length: int | mx.array,
    alpha_min: float = 1.0,
    alpha_max: float = 1.0,
    min_length: float = 256,
    max_length: float = 4096,
) -> mx.array:
    """t' = α t / (1 + (α − 1) t) with α from `flux_alpha`; α > 1 moves t towards noise.

    `length` may be an int or a (B,) array of per-sample lengths (broadcast against t).
    With the defaults (α = 1) this is the identity.
    """
    return _alpha_shift(t, flux_alpha(length, alpha_min, alpha_max, min_length, max_length))


def full_mu(
    length: int | mx.array,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    min_length: float = 256,
    max_length: float = 4096,
) -> mx.array:
    """μ = −(base + (max_shift − base)(L − min)/(max − min)), L clamped to [min, max].

    Linear in L itself (not in log L), as the SA3 model code computes it.
    """
    frac = _clamped_fraction(length, min_length, max_length)
    return -(base_shift + (max_shift - base_shift) * frac)


def full_shift(
    t: mx.array,
    length: int | mx.array,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    min_length: float = 256,
    max_length: float = 4096,
    use_sine: bool = False,
) -> mx.array:
    """The SA3 default shift: t' = 1 − e^μ / (e^μ + (1/(1 − t) − 1)), then optionally sine.

    Algebraically t' = α t / (1 + (α − 1) t) with α = e^(−μ), which is how it is computed:
    the same value for t < 1 and the exact limit t' = 1 at t = 1 with no division by zero.
    Longer sequences give a more negative μ, a larger α, hence larger t' (more noise), since
    long clips keep more signal at a given t. With `use_sine`, t' ← sin(t' π/2).
    """
    alpha = mx.exp(-full_mu(length, base_shift, max_shift, min_length, max_length))
    shifted = _alpha_shift(t, alpha)
    if use_sine:
        shifted = _pin_endpoints(t.astype(mx.float32), mx.sin(shifted * (math.pi / 2)))
    return shifted


def logsnr_start(
    length: int | mx.array,
    anchor_logsnr: float = -6.2,
    rate: float = 1.0,
    anchor_length: float = 2000,
) -> mx.array:
    """λ at t = 1: anchor_logsnr − rate · log2(max(L, 1)/anchor_length).

    Each doubling of the sequence lowers the noise-end log-SNR by `rate`: a longer clip
    needs a noisier end point to hide the same amount of signal.
    """
    if anchor_length <= 0:
        raise ValueError(f"need anchor_length > 0, got {anchor_length}")
    length = mx.maximum(_as_lengths(length), 1.0)
    return anchor_logsnr - rate * mx.log2(length / anchor_length)


def logsnr_shift(
    t: mx.array,
    length: int | mx.array,
    anchor_logsnr: float = -6.2,
    rate: float = 1.0,
    anchor_length: float = 2000,
    logsnr_end: float = 2.0,
) -> mx.array:
    """The upstream MLX training shift: λ = end − t (end − start), t' = 1/(1 + e^λ).

    t walks the log-SNR linearly from `logsnr_end` (data side) to the length-dependent
    `logsnr_start` (noise side). Both λ are finite, so on its own the formula maps t = 0 to
    sigmoid(−end) > 0 and t = 1 to sigmoid(−start) < 1; the endpoints are pinned to exactly
    0 and 1 like every other shift. `length` may be an int or a (B,) array.
    """
    t = t.astype(mx.float32)
    start = logsnr_start(length, anchor_logsnr, rate, anchor_length)
    lam = logsnr_end - t * (logsnr_end - start)
    return _pin_endpoints(t, mx.sigmoid(-lam))


SHIFTS: dict[str, Shift] = {
    "identity": identity_shift,
    "flux": flux_shift,
    "full": full_shift,
    "logsnr": logsnr_shift,
}


def shift_timesteps(name: str, t: mx.array, length: int | mx.array, **params: Any) -> mx.array:
    """Apply the shift `name` to timesteps `t` for latent sequence length(s) `length`."""
    try:
        shift = SHIFTS[name]
    except KeyError:
        raise ValueError(f"unknown timestep shift {name!r} (known: {', '.join(SHIFTS)})") from None
    return shift(t, length, **params)


__all__ = [
    "ALPHA_FLOOR",
    "LOG_SNR_CLAMP",
    "SAMPLERS",
    "SHIFTS",
    "flux_alpha",
    "flux_shift",
    "full_mu",
    "full_shift",
    "identity_shift",
    "log_snr",
    "log_snr_uniform",
    "logit_normal",
    "logsnr_shift",
    "logsnr_start",
    "sample_timesteps",
    "shift_timesteps",
    "trunc_logit_normal",
    "trunc_logit_normal_from_normal",
    "uniform",
]
