"""The SAME-S / SAME-L encoder in MLX: stereo 44.1 kHz audio -> SA3 latents (reference/same.md).

The network, in the order it runs (item numbers of same.md):

1-3. audio (B, N, 2) is zero-padded to whole 32-patch (SAME-S) or 16-patch (SAME-L) blocks
     and cut into 256-sample patches; a patch's 512 features are channel-major (c * 256 + h),
     the official `b c (l h) -> b (c h) l`. Latents computed from the padding are kept.
4.   `mapping`: the weight-normed 1x1 conv 512 -> D, stored folded as a Linear.
5.   one learned shared token (`new_tokens`) after every 16 patches: 17-token groups.
6-9. pre-norm blocks: DyT norms, differential attention with per-head DyT q/k norms and RoPE
     on the first half of each head (fp32), a GLU feed-forward.
10.  SAME-S: 34-token chunks (two groups) for the first half of the blocks, then the same on
     chunks shifted by one group (the first and last group copied onto the ends, cropped
     after the last block); RoPE positions restart in every chunk.
11.  SAME-L: a band |i - j| <= 17 over the whole sequence (RoPE over the whole sequence),
     computed blockwise (`band_attention`) so memory grows linearly with the clip.
12-13. the last token of each group, Linear(D, 256), then the soft-norm bottleneck
     z = (x * scaling_factor + bias) / running_std.

Parameter names are those of the official MLX runtime's encoder file (`mapping`,
`new_tokens`, `blocks.N.{pre_norm,attn,ff_norm,ff}`, `project_out`, `bottleneck`); loading
other spellings is `models.same.loading`'s job.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from sa3ckpt.models.layers import apply_rope, merge_heads, silu
from sa3ckpt.models.same.band import band_attention
from sa3ckpt.models.same.config import SameConfig

Rope = tuple[mx.array, mx.array]


def rope_inv_freq(config: SameConfig) -> np.ndarray:
    """1 / base^(2i / rot) for i < rot / 2, rounded as PyTorch's float32 ops round it.

    The official and diffusers tables are float32 `arange / dim`, float32 `pow`, float32
    reciprocal; computed the same way here, so angles at positions of thousands of tokens do
    not drift by an ulp of the frequency.
    """
    rot = np.float32(config.rope_dims)
    exponents = np.arange(0, config.rope_dims, 2, dtype=np.float32) / rot
    return (np.float32(1.0) / (np.float32(config.rope_base) ** exponents)).astype(np.float32)


def rope_table(inv_freq: mx.array, length: int) -> Rope:
    """cos and sin (length, rot) of positions 0..length-1, float32 ([f | f] halves)."""
    positions = mx.arange(length, dtype=mx.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    freqs = mx.concatenate([freqs, freqs], axis=-1)
    return mx.cos(freqs), mx.sin(freqs)


class DyT(nn.Module):
    """Dynamic tanh: gamma * tanh(alpha * x) + beta, alpha one learned scalar (no eps)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.alpha = mx.ones((1,))
        self.gamma = mx.ones((dims,))
        self.beta = mx.zeros((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        return self.gamma * mx.tanh(self.alpha * x) + self.beta


class SameAttention(nn.Module):
    """Differential self-attention: attn(q, k, v) - attn(q_diff, k_diff, v), no lambda.

    `to_qkv` rows are [q | k | v | q_diff | k_diff] (official order); one DyT per head width
    normalises q and q_diff (another k and k_diff) before RoPE; scale 1/sqrt(head_dim).
    """

    def __init__(self, config: SameConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self.to_qkv = nn.Linear(config.width, 5 * config.width, bias=False)
        self.to_out = nn.Linear(config.width, config.width, bias=False)
        self.q_norm = DyT(config.head_dim)
        self.k_norm = DyT(config.head_dim)

    def _heads(self, x: mx.array, norm: DyT, rope: Rope | None) -> mx.array:
        b, t, _ = x.shape
        h = norm(x.reshape(b, t, self.heads, self.head_dim)).transpose(0, 2, 1, 3)
        return h if rope is None else apply_rope(h, *rope)

    def __call__(self, x: mx.array, rope: Rope, band: int | None) -> mx.array:
        """x (B, T, D); `band`: None attends to all T tokens, else |i - j| <= band."""
        q, k, v, q2, k2 = mx.split(self.to_qkv(x), 5, axis=-1)
        b, t, _ = x.shape
        vh = v.reshape(b, t, self.heads, self.head_dim).transpose(0, 2, 1, 3)
        pairs = (
            (self._heads(q, self.q_norm, rope), self._heads(k, self.k_norm, rope)),
            (self._heads(q2, self.q_norm, rope), self._heads(k2, self.k_norm, rope)),
        )
        if band is None:
            first, second = (
                mx.fast.scaled_dot_product_attention(qh, kh, vh, scale=self.scale)
                for qh, kh in pairs
            )
        else:
            first, second = (band_attention(qh, kh, vh, band, self.scale) for qh, kh in pairs)
        return self.to_out(merge_heads(first - second))


class GLUFeedForward(nn.Module):
    """Linear(D, 2 * 3D) split value | gate, value * SiLU(gate), Linear(3D, D); both biased."""

    def __init__(self, config: SameConfig) -> None:
        super().__init__()
        self.glu_proj = nn.Linear(config.width, 2 * config.ff_inner, bias=True)
        self.proj_out = nn.Linear(config.ff_inner, config.width, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        value, gate = mx.split(self.glu_proj(x), 2, axis=-1)
        return self.proj_out(value * silu(gate))


class SameBlock(nn.Module):
    """Pre-norm: x += attn(DyT(x)); x += ff(DyT(x)). No adaLN, layer scale or cross-attn."""

    def __init__(self, config: SameConfig) -> None:
        super().__init__()
        self.pre_norm = DyT(config.width)
        self.attn = SameAttention(config)
        self.ff_norm = DyT(config.width)
        self.ff = GLUFeedForward(config)

    def __call__(self, x: mx.array, rope: Rope, band: int | None = None) -> mx.array:
        x = x + self.attn(self.pre_norm(x), rope, band)
        return x + self.ff(self.ff_norm(x))


class SoftNorm(nn.Module):
    """The soft-norm bottleneck's encode side: (x * scaling_factor + bias) / running_std."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scaling_factor = mx.ones((1, channels, 1))
        self.bias = mx.zeros((1, channels, 1))
        self.running_std = mx.ones((1,))

    def __call__(self, x: mx.array) -> mx.array:
        """x channels-last (B, T, C)."""
        scale = self.scaling_factor.reshape(1, 1, -1)
        bias = self.bias.reshape(1, 1, -1)
        return (x * scale + bias) / self.running_std


class SameEncoder(nn.Module):
    """A SAME encoder; also a `train.encode_audio.LatentEncoder` (channels-last in and out).

    Call it with audio (B, N, 2) of any length N: it returns (B, T, 256) latents, T = N / 4096
    rounded up to whole `latents_multiple` blocks (the kept padding latents; `encode_latents`
    pads to that multiple itself, so there T = N / 4096 exactly).
    """

    def __init__(self, config: SameConfig) -> None:
        super().__init__()
        self.config = config
        self.mapping = nn.Linear(config.patch_channels, config.width, bias=True)
        self.new_tokens = mx.zeros((1, 1, config.width))
        self.blocks = [SameBlock(config) for _ in range(config.blocks)]
        self.project_out = nn.Linear(config.width, config.latent_channels, bias=True)
        self.bottleneck = SoftNorm(config.latent_channels)
        self._inv_freq = mx.array(rope_inv_freq(config))  # private: not a parameter

    # --- the LatentEncoder declarations ----------------------------------------------------

    @property
    def samples_per_latent(self) -> int:
        return self.config.samples_per_latent

    @property
    def receptive_field(self) -> int:
        """Samples one latent can depend on (SameConfig.receptive_latents x 4096)."""
        return self.config.receptive_field

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def latents_multiple(self) -> int:
        """Inputs are padded to whole blocks of this many latents (2 on SAME-S)."""
        return self.config.latents_multiple

    # --- the forward -----------------------------------------------------------------------

    def patches(self, audio: mx.array) -> mx.array:
        """(B, N, C) audio -> (B, P, C * 256) patches, zero-padded to whole pad_patches blocks."""
        cfg = self.config
        b, n, channels = audio.shape
        if channels != cfg.audio_channels:
            raise ValueError(
                f"SAME expects channels-last audio with {cfg.audio_channels} channels, "
                f"got shape {tuple(audio.shape)}"
            )
        block = cfg.patch * cfg.pad_patches
        padded = -(-n // block) * block
        if padded != n:
            audio = mx.pad(audio, [(0, 0), (0, padded - n), (0, 0)])
        count = padded // cfg.patch
        return (
            audio.reshape(b, count, cfg.patch, channels)
            .transpose(0, 1, 3, 2)
            .reshape(b, count, channels * cfg.patch)
        )

    def tokens(self, patches: mx.array) -> mx.array:
        """Mapped patches with the shared token after every group: (B, T * 17, D)."""
        cfg = self.config
        x = self.mapping(patches)
        b, count, width = x.shape
        groups = count // cfg.group
        x = x.reshape(b, groups, cfg.group, width)
        shared = mx.broadcast_to(self.new_tokens.astype(x.dtype), (b, groups, 1, width))
        return mx.concatenate([x, shared], axis=2).reshape(b, groups * cfg.tokens_per_group, width)

    def _band(self, x: mx.array) -> mx.array:
        rope = rope_table(self._inv_freq, x.shape[1])
        for block in self.blocks:
            x = block(x, rope, self.config.band_tokens)
        return x

    def _chunked(self, x: mx.array) -> mx.array:
        cfg = self.config
        b, t, width = x.shape
        size, shift = cfg.chunk_tokens, cfg.shift_tokens
        rope = rope_table(self._inv_freq, size)
        h = x.reshape(b * t // size, size, width)
        for block in self.blocks[: cfg.split]:
            h = block(h, rope)
        x = h.reshape(b, t, width)
        x = mx.concatenate([x[:, :shift], x, x[:, t - shift :]], axis=1)
        h = x.reshape(b * (t + size) // size, size, width)
        for block in self.blocks[cfg.split :]:
            h = block(h, rope)
        return h.reshape(b, t + size, width)[:, shift : shift + t]

    def latents(self, tokens: mx.array) -> mx.array:
        """Run the blocks on (B, T * 17, D) tokens -> pre-bottleneck latents (B, T, 256)."""
        cfg = self.config
        x = self._chunked(tokens) if cfg.schedule == "chunked" else self._band(tokens)
        b, t, width = x.shape
        x = x.reshape(b, t // cfg.tokens_per_group, cfg.tokens_per_group, width)[:, :, -1]
        return self.project_out(x)

    def __call__(self, audio: mx.array) -> mx.array:
        """(B, N, 2) float audio -> (B, T, 256) latents in the model's dtype."""
        dtype = self.mapping.weight.dtype
        x = self.tokens(self.patches(audio.astype(dtype)))
        return self.bottleneck(self.latents(x))


__all__ = ["DyT", "GLUFeedForward", "SameAttention", "SameBlock", "SameEncoder", "SoftNorm"]
