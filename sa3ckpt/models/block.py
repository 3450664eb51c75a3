"""One SA3 transformer block (reference/dit.md, items 6-9 and 15-17).

Order: (a) adaLN-modulated self-attention, (b) cross-attention behind a plain RMSNorm (no
modulation, no gate), (c) the local add (inpainting conditioning, audio positions only),
(d) adaLN-modulated SwiGLU feed-forward. Gated branches are scaled by sigmoid(1 − gate).

Module names are the MLX runtime's (`pre_norm`, `self_attn`, `cross_attn`, `ff.ff.0.proj`,
`ff.ff.2`, `to_local_embed.seq.N`, `to_scale_shift_gate`), so runtime weight files load
as they are and adapter target names resolve to these layers.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from sa3ckpt.models.attention import CrossAttention, Rope, SelfAttention
from sa3ckpt.models.config import ADALN_CHUNKS
from sa3ckpt.models.layers import RMSNorm, mlp, modulate, run_seq, silu


class SwiGLU(nn.Module):
    """proj: Linear(E, 2H, bias); out = value · SiLU(gate) for [value | gate] = proj(x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        value, gate = mx.split(self.proj(x), 2, axis=-1)
        return value * silu(gate)


class FeedForward(nn.Module):
    """`ff = [SwiGLU, Identity, Linear(H, E, bias)]`: index 1 is the runtime's dropout slot."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        hidden = mult * dim
        self.ff = [SwiGLU(dim, hidden), nn.Identity(), nn.Linear(hidden, dim, bias=True)]

    def __call__(self, x: mx.array) -> mx.array:
        return run_seq(self.ff, x)


class LocalEmbed(nn.Module):
    """`seq = [Linear(io + 1, E), SiLU, Linear(E, E)]` with biases, added to the audio frames."""

    def __init__(self, local_dim: int, dim: int) -> None:
        super().__init__()
        self.seq = mlp(local_dim, dim, dim, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        return run_seq(self.seq, x)


class TransformerBlock(nn.Module):
    """x += σ(1−g₁)·SA(adaLN(x)); x += CA(norm(x)); x[audio] += local; x += σ(1−g₂)·FF(adaLN(x))."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        differential: bool,
        ff_mult: int,
        local_dim: int,
        block_eps: float,
        qk_eps: float,
    ) -> None:
        super().__init__()
        self.pre_norm = RMSNorm(dim, block_eps)
        self.self_attn = SelfAttention(dim, head_dim, differential, qk_eps)
        self.cross_attend_norm = RMSNorm(dim, block_eps)
        self.cross_attn = CrossAttention(dim, head_dim, differential, qk_eps)
        self.ff_norm = RMSNorm(dim, block_eps)
        self.ff = FeedForward(dim, ff_mult)
        self.to_local_embed = LocalEmbed(local_dim, dim)
        # The block's own learned offset to the shared adaLN signal (official init N(0, 1/E)).
        self.to_scale_shift_gate = mx.random.normal((ADALN_CHUNKS * dim,)) / dim**0.5

    def __call__(
        self,
        x: mx.array,
        modulation: mx.array,
        context: mx.array,
        rope: Rope,
        local: mx.array | None,
        memory_tokens: int,
    ) -> mx.array:
        """x (B, M + T, E), memory tokens first; modulation (B, 6E); local (B, T, io + 1)."""
        chunks = mx.split(self.to_scale_shift_gate + modulation, ADALN_CHUNKS, axis=-1)
        scale_sa, shift_sa, gate_sa, scale_ff, shift_ff, gate_ff = chunks
        h = modulate(self.pre_norm(x), scale_sa, shift_sa)
        x = x + self.self_attn(h, rope) * mx.sigmoid(1.0 - gate_sa)[:, None, :]
        x = x + self.cross_attn(self.cross_attend_norm(x), context)
        if local is not None:
            audio = x[:, memory_tokens:] + self.to_local_embed(local)
            x = mx.concatenate([x[:, :memory_tokens], audio], axis=1)
        h = modulate(self.ff_norm(x), scale_ff, shift_ff)
        return x + self.ff(h) * mx.sigmoid(1.0 - gate_ff)[:, None, :]
