"""Small parameter-free building blocks shared by the DiT modules.

Sequential stacks are plain Python lists (not `nn.Sequential`) because the SA3 MLX runtime
names their children by index directly (`to_timestep_embed.0`, `ff.ff.2`,
`to_local_embed.seq.0`); `nn.Sequential` would insert a `layers.` level and break every
adapter target name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn


def run_seq(layers: Sequence[Any], x: mx.array) -> mx.array:
    """Apply a list of modules in order."""
    for layer in layers:
        x = layer(x)
    return x


def mlp(fan_in: int, width: int, fan_out: int, first_bias: bool = False) -> list[nn.Module]:
    """[Linear(fan_in, width), SiLU, Linear(width, fan_out)]: the SA3 embedding MLP shape."""
    return [
        nn.Linear(fan_in, width, bias=first_bias),
        nn.SiLU(),
        nn.Linear(width, fan_out, bias=False),
    ]


def rms(x: mx.array, eps: float) -> mx.array:
    """RMS normalisation over the last axis without a learned scale."""
    return x * mx.rsqrt(mx.mean(mx.square(x), axis=-1, keepdims=True) + eps)


def modulate(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    """adaLN: x (B, T, E) scaled by (1 + scale) and shifted, scale/shift (B, E) per sample."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def split_heads(x: mx.array, heads: int) -> mx.array:
    """(B, T, H·d) -> (B, H, T, d)."""
    b, t, width = x.shape
    return x.reshape(b, t, heads, width // heads).transpose(0, 2, 1, 3)


def merge_heads(x: mx.array) -> mx.array:
    """(B, H, T, d) -> (B, T, H·d)."""
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)
