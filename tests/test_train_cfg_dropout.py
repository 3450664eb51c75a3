"""CFG dropout: a sample's whole cross-attention context is zeroed, or left exactly as it is."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from sa3ckpt.train import CFG_DROPOUT, cfg_dropout

B, N, D = 64, 5, 3


def _cond(seed: int = 0) -> mx.array:
    # no exact zeros in the input, so a zero row can only come from dropout
    return mx.array(np.random.default_rng(seed).uniform(0.5, 1.5, (B, N, D)).astype(np.float32))


def _dropped(out: np.ndarray, cond: np.ndarray) -> np.ndarray:
    """Per sample: True if its whole context is zero, False if it is bit-identical to cond."""
    zero = np.all(out == 0, axis=(1, 2))
    same = np.all(out == cond, axis=(1, 2))
    assert np.all(zero ^ same), "a sample was partly dropped"
    return zero


def test_default_probability_is_the_trainers() -> None:
    assert CFG_DROPOUT == 0.1


def test_whole_samples_are_dropped_reproducibly() -> None:
    cond = _cond()
    out = np.array(cfg_dropout(cond, 7, 0.5))
    dropped = _dropped(out, np.array(cond))
    assert 16 <= dropped.sum() <= 48  # Binomial(64, 0.5): outside is a 1-in-10^5 event
    again = _dropped(np.array(cfg_dropout(cond, mx.random.key(7), 0.5)), np.array(cond))
    assert np.array_equal(dropped, again)  # an int seed and its key draw the same
    other = _dropped(np.array(cfg_dropout(cond, 8, 0.5)), np.array(cond))
    assert not np.array_equal(dropped, other)


def test_probability_zero_and_one() -> None:
    cond = _cond(1)
    assert np.array_equal(np.array(cfg_dropout(cond, 0, 0.0)), np.array(cond))
    assert not np.any(np.array(cfg_dropout(cond, 0, 1.0)))


def test_errors() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        cfg_dropout(_cond(), 0, 1.5)
    with pytest.raises(ValueError, match="must be \\(B, N, D\\)"):
        cfg_dropout(mx.zeros((B, D)), 0)
