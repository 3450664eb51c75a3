"""Timestep samplers and shifts: distributions, ranges, determinism and exact formulas.

References are computed independently in NumPy float64 from ../shared/reference/training.md,
in the formulas' documented form (e.g. the full shift through 1/(1 − t)), not the form the
code uses.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import mlx.core as mx
import numpy as np
import pytest

from sa3ckpt.train.timesteps import (
    LOG_SNR_CLAMP,
    SAMPLERS,
    SHIFTS,
    flux_shift,
    full_shift,
    sample_timesteps,
    shift_timesteps,
    trunc_logit_normal_from_normal,
)

N = 200_000  # large-sample moment checks: standard errors ~ 0.002-0.005


def _draw(name: str, seed: int = 0, batch: int = N, **params: float) -> np.ndarray:
    return np.array(sample_timesteps(name, seed, batch, **params), dtype=np.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


# --------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_are_float32_in_unit_interval(name: str) -> None:
    t = sample_timesteps(name, 3, 4096)
    assert t.dtype == mx.float32 and t.shape == (4096,)
    values = np.array(t)
    assert np.all(values >= 0.0) and np.all(values <= 1.0)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samplers_are_deterministic_per_key(name: str) -> None:
    key = mx.random.key(7)
    a = np.array(sample_timesteps(name, key, 64))
    b = np.array(sample_timesteps(name, key, 64))
    seeded = np.array(sample_timesteps(name, 7, 64))  # an int seed is key(seed)
    other = np.array(sample_timesteps(name, 8, 64))
    assert np.array_equal(a, b) and np.array_equal(a, seeded)
    assert not np.array_equal(a, other)


def test_samplers_ignore_the_global_generator() -> None:
    mx.random.seed(1)
    a = np.array(sample_timesteps("uniform", 5, 16))
    mx.random.seed(2)
    assert np.array_equal(a, np.array(sample_timesteps("uniform", 5, 16)))


def test_uniform_moments() -> None:
    t = _draw("uniform")
    assert abs(t.mean() - 0.5) < 0.005
    assert abs(t.var() - 1 / 12) < 0.002


def test_logit_normal_moments() -> None:
    z = _logit(_draw("logit_normal"))
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1.0) < 0.01


def test_logit_normal_params() -> None:
    z = _logit(_draw("logit_normal", mean=0.5, std=0.5))
    assert abs(z.mean() - 0.5) < 0.01
    assert abs(z.std() - 0.5) < 0.01


def test_log_snr_implied_lambda_moments() -> None:
    t = _draw("log_snr")
    lam = _logit(1.0 - t)  # t = sigmoid(−λ)  ⇔  λ = logit(1 − t)
    assert abs(lam.mean() - (-1.2)) < 0.02
    assert abs(lam.std() - 2.0) < 0.02
    assert t.min() >= LOG_SNR_CLAMP - 1e-9 and t.max() <= 1 - LOG_SNR_CLAMP + 1e-7


def test_log_snr_clamps_extreme_lambdas() -> None:
    t = _draw("log_snr", mean=0.0, std=40.0, batch=10_000)
    assert np.isclose(t.min(), LOG_SNR_CLAMP, rtol=1e-3)
    assert np.isclose(t.max(), 1 - LOG_SNR_CLAMP, rtol=1e-6)


def test_log_snr_uniform_implied_lambda_is_uniform() -> None:
    lam = _logit(1.0 - _draw("log_snr_uniform"))
    assert lam.min() >= -6.0 - 1e-3 and lam.max() <= 5.0 + 1e-3
    assert abs(lam.mean() - (-0.5)) < 0.02
    assert abs(lam.var() - 11.0**2 / 12) < 0.1


def _trunc_reference(z: float, left: float = 0.075, right: float = 1.0) -> float:
    """training.md step by step in float64."""
    nd = NormalDist()
    c = nd.cdf(z)
    lo = nd.cdf(math.log(left / (1 - left)))
    hi = 1.0 if right >= 1 else nd.cdf(math.log(right / (1 - right)))
    s = 1 / (1 + math.exp(-nd.inv_cdf(lo + (hi - lo) * c)))
    return 1.0 - (s - left) / (right - left)


@pytest.mark.parametrize("left,right", [(0.075, 1.0), (0.2, 0.9)])
def test_trunc_logit_normal_matches_reference(left: float, right: float) -> None:
    z = np.linspace(-3.5, 3.5, 57)
    got = np.array(trunc_logit_normal_from_normal(mx.array(z.astype(np.float32)), left, right))
    want = np.array([_trunc_reference(float(v), left, right) for v in z])
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_trunc_logit_normal_is_flipped() -> None:
    """Without the flip t would grow with z; the truncated edge (s = 0.075) must land at t = 1."""
    z = mx.array([-9.0, -3.0, 0.0, 3.0, 9.0])
    t = np.array(trunc_logit_normal_from_normal(z))
    assert np.all(np.diff(t) < 0)
    assert t[0] == pytest.approx(1.0, abs=1e-6) and t[-1] == pytest.approx(0.0, abs=1e-4)


def test_trunc_logit_normal_distribution() -> None:
    t = _draw("trunc_logit_normal")
    s = 0.075 + (1 - 0.075) * (1.0 - t)  # undo the rescale and the flip
    assert s.min() >= 0.075 - 1e-6
    # logit(s) is N(0, 1) truncated below at a = logit(0.075): mean φ(a) / (1 − Φ(a)).
    a = math.log(0.075 / 0.925)
    nd = NormalDist()
    truncated_mean = math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / (1 - nd.cdf(a))
    assert abs(_logit(np.clip(s, 1e-12, 1 - 1e-7)).mean() - truncated_mean) < 0.01


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        sample_timesteps("sobol", 0, 4)
    with pytest.raises(ValueError, match="batch"):
        sample_timesteps("uniform", 0, 0)
    with pytest.raises(ValueError, match="left_trunc"):
        sample_timesteps("trunc_logit_normal", 0, 4, left_trunc=1.0)
    with pytest.raises(TypeError, match="PRNG key"):
        sample_timesteps("uniform", "seed", 4)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shifts

GRID = np.linspace(0.0, 1.0, 401)
LENGTHS = [1, 256, 700, 2048, 4096, 20_000]


def _full_reference(t: np.ndarray, length: float, base=0.5, mx_shift=1.15, lo=256, hi=4096):
    length = min(max(length, lo), hi)
    mu = -(base + (mx_shift - base) * (length - lo) / (hi - lo))
    return 1 - np.exp(mu) / (np.exp(mu) + (1 / (1 - t) - 1))


def _flux_reference(t: np.ndarray, length: float, a_min: float, a_max: float, lo=256, hi=4096):
    length = min(max(length, lo), hi)
    frac = (length - lo) / (hi - lo)
    alpha = math.exp(math.log(a_min) + (math.log(a_max) - math.log(a_min)) * frac)
    return alpha * t / (1 + (alpha - 1) * t)


def _shift(name: str, t: np.ndarray, length: int, **params: object) -> np.ndarray:
    return np.array(shift_timesteps(name, mx.array(t.astype(np.float32)), length, **params))


@pytest.mark.parametrize("length", LENGTHS)
def test_full_shift_matches_formula(length: int) -> None:
    inner = GRID[1:-1]
    np.testing.assert_allclose(
        _shift("full", inner, length), _full_reference(inner, length), rtol=2e-6, atol=1e-7
    )


def test_full_shift_custom_params_and_sine() -> None:
    inner = GRID[1:-1]
    params = {"base_shift": 0.2, "max_shift": 2.0, "min_length": 100, "max_length": 1000}
    want = _full_reference(inner, 550, 0.2, 2.0, 100, 1000)
    np.testing.assert_allclose(_shift("full", inner, 550, **params), want, rtol=2e-6, atol=1e-7)
    sine = _shift("full", inner, 550, use_sine=True, **params)
    np.testing.assert_allclose(sine, np.sin(want * np.pi / 2), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("length", LENGTHS)
def test_flux_shift_matches_formula(length: int) -> None:
    got = _shift("flux", GRID, length, alpha_min=1.5, alpha_max=6.0)
    np.testing.assert_allclose(got, _flux_reference(GRID, length, 1.5, 6.0), rtol=2e-6, atol=1e-7)


def test_flux_defaults_equal_full_shift() -> None:
    t = mx.array(GRID.astype(np.float32))
    for length in LENGTHS:
        np.testing.assert_allclose(
            np.array(flux_shift(t, length)), np.array(full_shift(t, length)), rtol=1e-6
        )


@pytest.mark.parametrize(
    "name,params",
    [
        ("identity", {}),
        ("flux", {"alpha_min": 0.5, "alpha_max": 8.0}),
        ("full", {}),
        ("full", {"use_sine": True}),
    ],
)
@pytest.mark.parametrize("length", LENGTHS)
def test_shift_endpoints_and_monotonic_in_t(name: str, params: dict, length: int) -> None:
    out = _shift(name, GRID, length, **params)
    assert out[0] == 0.0 and out[-1] == 1.0  # exact, no division by zero at t = 1
    assert np.all(np.isfinite(out))
    assert np.all(np.diff(out) > 0)


def test_full_shift_moves_towards_noise_with_length() -> None:
    t = GRID[1:-1]
    outs = np.stack([_shift("full", t, n) for n in [256, 512, 1024, 2048, 4096]])
    assert np.all(np.diff(outs, axis=0) > 0)  # longer L -> larger t'
    assert np.all(outs[0] > t)  # even the shortest length shifts (α = e^0.5 > 1)
    # L is clamped: beyond the anchors nothing changes
    assert np.array_equal(_shift("full", t, 10), _shift("full", t, 256))
    assert np.array_equal(_shift("full", t, 99_999), _shift("full", t, 4096))


def test_shift_accepts_per_sample_lengths() -> None:
    t = mx.array([0.3, 0.3, 0.3], dtype=mx.float32)
    per_sample = np.array(full_shift(t, mx.array([256, 1024, 4096])))
    each = [float(full_shift(t[:1], n)[0]) for n in (256, 1024, 4096)]
    np.testing.assert_allclose(per_sample, each, rtol=1e-7)


def test_shift_errors() -> None:
    t = mx.array([0.5])
    with pytest.raises(ValueError, match="unknown timestep shift"):
        shift_timesteps("cosine", t, 10)
    with pytest.raises(ValueError, match="min_length < max_length"):
        full_shift(t, 10, min_length=10, max_length=10)
    with pytest.raises(ValueError, match="positive"):
        flux_shift(t, 10, alpha_min=0.0)
    assert set(SHIFTS) == {"identity", "flux", "full"}
