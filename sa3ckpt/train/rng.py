"""Explicit PRNG keys for the training helpers.

Every random draw in `sa3ckpt.train` takes a key (or an int seed that becomes one), never the
global MLX generator, so a training step is reproducible from its arguments alone and two
helpers cannot silently consume each other's randomness.
"""

from __future__ import annotations

import mlx.core as mx

KeyLike = int | mx.array


def as_key(key: KeyLike) -> mx.array:
    """An MLX PRNG key from an int seed or an existing key (passed through unchanged)."""
    if isinstance(key, bool):
        raise TypeError("a PRNG key must be an int seed or an mx.array key, got a bool")
    if isinstance(key, int):
        return mx.random.key(key)
    if isinstance(key, mx.array):
        return key
    raise TypeError(f"a PRNG key must be an int seed or an mx.array key, got {type(key).__name__}")


def split(key: KeyLike, num: int = 2) -> list[mx.array]:
    """`num` independent keys derived from `key` (for one draw per consumer)."""
    keys = mx.random.split(as_key(key), num)
    return [keys[i] for i in range(num)]
