"""Conditioning embeddings: Fourier timestep features and the seconds_total conditioner.

The seconds conditioner is deliberately not an `nn.Linear`: the SA3 MLX runtime stores its
Linear as the plain arrays `cond.seconds_total_weight` / `cond.seconds_total_bias`, and
adapter tooling (merge, apply, validate) relies on that spelling; a Linear here would
also make `inject` offer it as a DiT target under a name no checkpoint uses.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn


class FourierFeatures(nn.Module):
    """Random Fourier features of a scalar: [cos(2π x w), sin(2π x w)], w ~ N(0, std²).

    The frequencies are a (learnable, usually frozen) parameter so a loaded base reproduces
    the embedding it was trained with.
    """

    def __init__(self, features: int, std: float = 1.0) -> None:
        super().__init__()
        self.weight = mx.random.normal((features // 2, 1)) * std

    def __call__(self, x: mx.array) -> mx.array:
        """x (B,) -> (B, features)."""
        f = 2 * math.pi * x.astype(self.weight.dtype)[:, None] * self.weight[:, 0][None, :]
        return mx.concatenate([mx.cos(f), mx.sin(f)], axis=-1)


class Conditioner(nn.Module):
    """The `cond` sub-module: seconds_total -> one conditioning token, plus padding embedding.

    seconds are clipped to [0, max_seconds] and scaled to [0, 1], expanded into learned
    sinusoidal features ([sin, cos] of 2π s f) and projected by the runtime's plain arrays:
    token = features @ seconds_total_weight.T + seconds_total_bias, (B, cond_token_dim).
    `padding_embedding` replaces masked-out cross-attention tokens.
    """

    def __init__(self, cond_token_dim: int, seconds_features: int, max_seconds: float) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(seconds_features)
        self.seconds_total_freqs = mx.random.normal((seconds_features // 2,))
        self.seconds_total_weight = mx.random.uniform(
            -bound, bound, (cond_token_dim, seconds_features)
        )
        self.seconds_total_bias = mx.zeros((cond_token_dim,))
        self.padding_embedding = mx.zeros((cond_token_dim,))
        self.max_seconds = float(max_seconds)

    def seconds_token(self, seconds: mx.array) -> mx.array:
        """seconds (B,) -> (B, cond_token_dim)."""
        dtype = self.seconds_total_weight.dtype
        s = mx.clip(seconds.astype(dtype), 0.0, self.max_seconds) / self.max_seconds
        f = 2 * math.pi * s[:, None] * self.seconds_total_freqs[None, :]
        feats = mx.concatenate([mx.sin(f), mx.cos(f)], axis=-1)
        return feats @ self.seconds_total_weight.T + self.seconds_total_bias

    def pad_tokens(self, tokens: mx.array, mask: mx.array | None) -> mx.array:
        """Replace tokens (B, S, D) where mask (B, S) is False by the padding embedding."""
        if mask is None:
            return tokens
        return mx.where(mask[..., None], tokens, self.padding_embedding.astype(tokens.dtype))
