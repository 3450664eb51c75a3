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
    ALPHA_FLOOR,
    LOG_SNR_CLAMP,
    SAMPLERS,
    SHIFTS,
    flux_alpha,
    flux_shift,
    full_shift,
    logsnr_shift,
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
#
# The references below are written straight from the formulas in training.md, in float64
# with Python `math`, one scalar at a time, and never call the module's helpers. They are fed
# the float32-rounded t the code sees, so the comparison measures the code's arithmetic, not
# the rounding of the inputs.

ATOL = 2e-6  # float32 arithmetic on values in [0, 1]
T_GRID = np.concatenate(
    [[0.0, 1e-6, 1e-4, 0.01], np.linspace(0.05, 0.95, 19), [0.99, 1 - 1e-4, 1 - 1e-6, 1.0]]
).astype(np.float32)
GRID = np.linspace(0.0, 1.0, 401)  # dense grid for the monotonicity checks
CLAMP_LENGTHS = [10, 256, 1000, 4096, 10_000]  # below, at, inside, at, above [256, 4096]
LOGSNR_LENGTHS = [0, 1, 10, 500, 2000, 4096, 10_000]  # around anchor_length 2000, and L < 1
LENGTHS = [1, 256, 700, 2048, 4096, 20_000]


def _pinned(t: float, value: float) -> float:
    """training.md: every shift maps t <= 0 to 0 and t >= 1 to 1."""
    return 0.0 if t <= 0 else 1.0 if t >= 1 else value


def _ref_identity(t: float, length: float) -> float:
    return _pinned(t, t)


def _ref_flux(
    t: float, length: float, alpha_min=1.0, alpha_max=1.0, min_length=256, max_length=4096
) -> float:
    length = min(max(length, min_length), max_length)
    frac = (math.log(length) - math.log(min_length)) / (math.log(max_length) - math.log(min_length))
    lo, hi = math.log(max(alpha_min, 1e-8)), math.log(max(alpha_max, 1e-8))
    alpha = math.exp(lo + frac * (hi - lo))
    return _pinned(t, alpha * t / (1 + (alpha - 1) * t))


def _ref_full(
    t: float,
    length: float,
    base_shift=0.5,
    max_shift=1.15,
    min_length=256,
    max_length=4096,
    use_sine=False,
) -> float:
    length = min(max(length, min_length), max_length)
    mu = -(
        base_shift + (max_shift - base_shift) * (length - min_length) / (max_length - min_length)
    )
    if 0 < t < 1:  # the documented 1/(1 − t) form, undefined at the endpoints
        value = 1 - math.exp(mu) / (math.exp(mu) + (1 / (1 - t) - 1))
        if use_sine:
            value = math.sin(value * math.pi / 2)
    else:
        value = math.nan
    return _pinned(t, value)


def _ref_logsnr(
    t: float, length: float, anchor_logsnr=-6.2, rate=1.0, anchor_length=2000, logsnr_end=2.0
) -> float:
    start = anchor_logsnr - rate * math.log2(max(length, 1) / anchor_length)
    lam = logsnr_end - t * (logsnr_end - start)
    return _pinned(t, 1 / (1 + math.exp(lam)))


LOGSNR_CUSTOM = {"anchor_logsnr": -4.0, "rate": 0.5, "anchor_length": 512, "logsnr_end": 3.0}
FLUX_RAMP = {"alpha_min": 1.5, "alpha_max": 6.93}
SHIFT_CASES = [
    ("identity", {}, _ref_identity, CLAMP_LENGTHS),
    ("flux", {}, _ref_flux, CLAMP_LENGTHS),
    ("flux", FLUX_RAMP, _ref_flux, CLAMP_LENGTHS),
    ("flux", {"alpha_min": 6.93, "alpha_max": 6.93}, _ref_flux, CLAMP_LENGTHS),
    ("flux", {"alpha_min": 0.0, "alpha_max": 2.0}, _ref_flux, CLAMP_LENGTHS),  # floored
    (
        "flux",
        {"alpha_min": 4.0, "alpha_max": 0.5, "min_length": 100, "max_length": 1000},
        _ref_flux,
        [10, 100, 316, 1000, 5000],
    ),
    ("full", {}, _ref_full, CLAMP_LENGTHS),
    ("full", {"use_sine": True}, _ref_full, CLAMP_LENGTHS),
    (
        "full",
        {"base_shift": 0.2, "max_shift": 2.0, "min_length": 100, "max_length": 1000},
        _ref_full,
        [10, 100, 550, 1000, 5000],
    ),
    ("logsnr", {}, _ref_logsnr, LOGSNR_LENGTHS),
    ("logsnr", LOGSNR_CUSTOM, _ref_logsnr, [0, 1, 100, 512, 3000, 100_000]),
]
SHIFT_IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(SHIFT_CASES)]


def _shift(name: str, t: np.ndarray, length: int | mx.array, **params: object) -> np.ndarray:
    return np.array(shift_timesteps(name, mx.array(t.astype(np.float32)), length, **params))


@pytest.mark.parametrize("name,params,reference,lengths", SHIFT_CASES, ids=SHIFT_IDS)
def test_shift_matches_independent_reference(name, params, reference, lengths) -> None:
    for length in lengths:
        got = _shift(name, T_GRID, length, **params)
        assert got.dtype == np.float32
        want = np.array([reference(float(t), length, **params) for t in T_GRID])
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"L={length}")
        assert got[0] == 0.0 and got[-1] == 1.0  # pinned exactly, not just within ATOL


@pytest.mark.parametrize("name,params,reference,lengths", SHIFT_CASES, ids=SHIFT_IDS)
def test_shift_pins_out_of_range_t(name, params, reference, lengths) -> None:
    t = np.array([-2.0, -1e-3, -0.0, 1.0, 1.0 + 1e-3, 3.0], dtype=np.float32)
    for length in lengths:
        np.testing.assert_array_equal(_shift(name, t, length, **params), [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize("name,params,reference,lengths", SHIFT_CASES, ids=SHIFT_IDS)
def test_shift_broadcasts_per_sample_lengths(name, params, reference, lengths) -> None:
    """A (B,) length array shifts each t with its own L, as B scalar calls would."""
    t = np.resize(T_GRID[1:-1], len(lengths) * 3).astype(np.float32)
    per_sample = np.resize(np.array(lengths), t.shape)
    got = _shift(name, t, mx.array(per_sample), **params)
    each = [_shift(name, t[i : i + 1], int(n), **params)[0] for i, n in enumerate(per_sample)]
    np.testing.assert_allclose(got, each, rtol=0, atol=1e-7)
    want = [reference(float(v), int(n), **params) for v, n in zip(t, per_sample, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_flux_interpolates_in_log_length() -> None:
    """The old bug: log α was interpolated linearly in L. At L = 1024, between 256 and 4096,
    the log-L fraction is ln 4 / ln 16 = 0.5, the linear one (1024 − 256)/3840 = 0.2."""
    a_min, a_max = math.exp(0.5), math.exp(1.15)
    t = np.array([0.1, 0.3, 0.5, 0.7, 0.9], dtype=np.float32)
    got = _shift("flux", t, 1024, alpha_min=a_min, alpha_max=a_max)

    def alpha_shift(alpha: float) -> np.ndarray:
        t64 = t.astype(np.float64)
        return alpha * t64 / (1 + (alpha - 1) * t64)

    log_l = alpha_shift(math.exp(0.5 + 0.5 * (1.15 - 0.5)))
    linear_l = alpha_shift(math.exp(0.5 + 0.2 * (1.15 - 0.5)))
    np.testing.assert_allclose(got, log_l, rtol=0, atol=ATOL)
    assert np.all(np.abs(got - linear_l) > 100 * ATOL)


def test_flux_and_full_agree_only_at_the_anchors() -> None:
    """With α = e^base .. e^max_shift both shifts share their end points, but full is linear
    in L and flux in log L, so they differ in between (the old docstring claimed equality)."""
    t = mx.array(T_GRID)
    params = {"alpha_min": math.exp(0.5), "alpha_max": math.exp(1.15)}
    for length in (10, 256, 4096, 10_000):
        np.testing.assert_allclose(
            np.array(flux_shift(t, length, **params)), np.array(full_shift(t, length)), atol=ATOL
        )
    inside = np.abs(np.array(flux_shift(t, 1024, **params)) - np.array(full_shift(t, 1024)))
    assert inside.max() > 0.01


def test_flux_defaults_are_the_identity() -> None:
    t = mx.array(T_GRID)
    for length in CLAMP_LENGTHS:
        np.testing.assert_allclose(np.array(flux_shift(t, length)), T_GRID, rtol=0, atol=1e-7)
        assert np.array_equal(np.array(flux_alpha(length)), np.array(1.0, dtype=np.float32))


@pytest.mark.parametrize("bad", [0.0, -3.0, 1e-12])
def test_flux_alphas_are_floored_not_rejected(bad: float) -> None:
    assert ALPHA_FLOOR == 1e-8
    t = mx.array(T_GRID)
    for kwargs in ({"alpha_min": bad}, {"alpha_max": bad}):
        floored = {k: ALPHA_FLOOR for k in kwargs}
        got = np.array(flux_shift(t, 1000, **kwargs))
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, np.array(flux_shift(t, 1000, **floored)))


def test_logsnr_start_follows_the_anchor() -> None:
    """At L = anchor_length the noise end is anchor_logsnr; each doubling lowers it by rate;
    lengths below 1 count as 1."""
    t = np.array([0.5], dtype=np.float32)
    at_anchor = _shift("logsnr", t, 2000)[0]
    assert at_anchor == pytest.approx(1 / (1 + math.exp(2 - 0.5 * (2 + 6.2))), abs=ATOL)
    doubled = _shift("logsnr", t, 4000, rate=0.5)[0]
    assert doubled == pytest.approx(1 / (1 + math.exp(2 - 0.5 * (2 + 6.7))), abs=ATOL)
    assert np.array_equal(_shift("logsnr", T_GRID, 0), _shift("logsnr", T_GRID, 1))


@pytest.mark.parametrize(
    "name,params",
    [
        ("identity", {}),
        ("flux", {"alpha_min": 0.5, "alpha_max": 8.0}),
        ("flux", FLUX_RAMP),
        ("full", {}),
        ("full", {"use_sine": True}),
        ("logsnr", {}),
        ("logsnr", LOGSNR_CUSTOM),
    ],
)
@pytest.mark.parametrize("length", LENGTHS)
def test_shift_endpoints_and_monotonic_in_t(name: str, params: dict, length: int) -> None:
    out = _shift(name, GRID, length, **params)
    assert out[0] == 0.0 and out[-1] == 1.0  # exact, no division by zero at t = 1
    assert np.all(np.isfinite(out))
    if name == "logsnr" and length == 1 and not params:
        # start = −6.2 + log2(2000) > end = 2: λ rises with t, so t' falls inside (0, 1).
        assert np.all(np.diff(out[1:-1]) < 0)
    else:
        assert np.all(np.diff(out) > 0)


def test_full_shift_moves_towards_noise_with_length() -> None:
    t = GRID[1:-1]
    outs = np.stack([_shift("full", t, n) for n in [256, 512, 1024, 2048, 4096]])
    assert np.all(np.diff(outs, axis=0) > 0)  # longer L -> larger t'
    assert np.all(outs[0] > t)  # even the shortest length shifts (α = e^0.5 > 1)
    # L is clamped: beyond the anchors nothing changes
    assert np.array_equal(_shift("full", t, 10), _shift("full", t, 256))
    assert np.array_equal(_shift("full", t, 99_999), _shift("full", t, 4096))


def test_logsnr_shift_moves_towards_noise_with_length() -> None:
    t = GRID[1:-1]
    outs = np.stack([_shift("logsnr", t, n) for n in [100, 1000, 2000, 8000, 64_000]])
    assert np.all(np.diff(outs, axis=0) > 0)  # no clamp: keeps growing with L


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
    with pytest.raises(ValueError, match="min_length < max_length"):
        flux_shift(t, 10, min_length=10, max_length=10)
    with pytest.raises(ValueError, match="min_length > 0"):
        flux_shift(t, 10, min_length=0, max_length=10)
    with pytest.raises(ValueError, match="anchor_length > 0"):
        logsnr_shift(t, 10, anchor_length=0)
    assert set(SHIFTS) == {"identity", "flux", "full", "logsnr"}
