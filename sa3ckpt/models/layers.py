"""Small building blocks shared by the DiT modules: sequences, fp32 RMSNorm, heads, RoPE.

Sequential stacks are plain Python lists (not `nn.Sequential`) because the SA3 MLX runtime
names their children by index directly (`to_timestep_embed.0`, `ff.ff.2`,
`to_local_embed.seq.0`); `nn.Sequential` would insert a `layers.` level and break every
weight and adapter target name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def run_seq(layers: Sequence[Any], x: mx.array) -> mx.array:
    """Apply a list of modules in order."""
    for layer in layers:
        x = layer(x)
    return x


def silu(x: mx.array) -> mx.array:
    """x · σ(x), as mlx.nn's `silu` computes it, but not through `mx.compile`.

    mlx.nn compiles its activations, and MLX keeps compiled functions in a per-thread cache
    that holds Python objects; a worker thread that called one destroys that cache after
    Python's `join()` returned, and if the interpreter is shutting down by then the process
    aborts ("terminate called without an active exception"; docs/guides/mlx-linux.md). The
    models call no compiled function, so sa3ckpt's work in worker threads (the TUI's, a
    caller's pool) cannot cause that abort, and compilation stays on for everyone else. The
    values are those of mlx.nn's `silu` run uncompiled (the same two operations).
    """
    return x * mx.sigmoid(x)


class SiLU(nn.Module):
    """`silu` as a parameterless module (the middle entry of `mlp`)."""

    def __call__(self, x: mx.array) -> mx.array:
        return silu(x)


def mlp(fan_in: int, width: int, fan_out: int, bias: bool) -> list[nn.Module]:
    """[Linear(fan_in, width), SiLU, Linear(width, fan_out)]: the SA3 embedding MLP shape.

    Both Linears share the bias flag: the official DiT has biases on both (timestep, adaLN,
    local embedders) or on neither (cond and global embedders).
    """
    return [
        nn.Linear(fan_in, width, bias=bias),
        SiLU(),
        nn.Linear(width, fan_out, bias=bias),
    ]


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale, computed in float32 whatever the input dtype.

    The official norms force fp32 (an fp16 mean of squares over 1536 channels loses the
    small ones); the result is cast back to the input dtype. The scale is `weight`, the MLX
    runtime's name for the official `gamma`.
    """

    def __init__(self, dims: int, eps: float) -> None:
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32), self.eps)
        return y.astype(x.dtype)


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


def rope_angles(inv_freq: mx.array, length: int) -> tuple[mx.array, mx.array]:
    """cos and sin (length, 2n) of positions 0..length-1 times [f | f] (n = len(inv_freq)), fp32."""
    positions = mx.arange(length, dtype=mx.float32)
    freqs = positions[:, None] * inv_freq.astype(mx.float32)[None, :]
    freqs = mx.concatenate([freqs, freqs], axis=-1)
    return mx.cos(freqs), mx.sin(freqs)


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate the first 2n dims of every head of x (B, H, T, d), the rest pass through.

    Not interleaved: the rotated block is split into halves [a | b] and rotate_half gives
    [-b | a], so dim j pairs with dim j + n. Computed in fp32, cast back.
    """
    rot = cos.shape[-1]
    head, rest = x[..., :rot].astype(mx.float32), x[..., rot:]
    a, b = mx.split(head, 2, axis=-1)
    rotated = head * cos + mx.concatenate([-b, a], axis=-1) * sin
    return mx.concatenate([rotated.astype(x.dtype), rest], axis=-1)


def fourier_frequencies(features: int, min_freq: float = 0.5, max_freq: float = 1e4) -> np.ndarray:
    """features/2 frequencies log-spaced from min_freq to max_freq (both included), float32.

    Computed in float64 and rounded once. PyTorch's float32 linspace + exp (the official
    code) lands up to a few ulp away in most entries, and how far depends on the CPU's SIMD
    width; since the top frequency turns t into angles of up to 2π·10⁴ rad, a 1-ulp change
    moves those features by ~1e-2. That is a property of the official features, not a
    difference of networks: replace a module's table to reproduce one implementation's
    rounding exactly (the diffusers oracle test does).
    """
    half = features // 2
    ramp = np.arange(half, dtype=np.float64) / max(half - 1, 1)
    lo, hi = math.log(min_freq), math.log(max_freq)
    return np.exp(lo + ramp * (hi - lo)).astype(np.float32)


def fourier_features(x: mx.array, freqs: np.ndarray) -> mx.array:
    """[cos | sin] (cos first) of 2π x f: x (B,) -> (B, 2·len(freqs)), float32.

    The angle is rounded in the official order, ((x·f)·2)·π, so the same table gives the
    same float32 angles as the official code.
    """
    table = mx.array(freqs, dtype=mx.float32)
    angles = (x.astype(mx.float32)[:, None] * table[None, :]) * 2.0 * math.pi
    return mx.concatenate([mx.cos(angles), mx.sin(angles)], axis=-1)
