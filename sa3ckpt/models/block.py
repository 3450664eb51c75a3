"""One SA3 transformer block: local conditioning, adaLN self-attention, cross-attention, GLU.

Module names are the MLX runtime's (`pre_norm`, `self_attn`, `cross_attn`, `ff.ff.0.proj`,
`ff.ff.2`, `to_local_embed.seq.N`), so adapter target names resolve to these layers.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from sa3ckpt.models.attention import CrossAttention, SelfAttention
from sa3ckpt.models.layers import mlp, modulate, run_seq

ADALN_CHUNKS = 6  # scale/shift/gate for self-attention, then for the feed-forward


class GLU(nn.Module):
    """proj: Linear(E, 2H); out = a · SiLU(gate) for [a | gate] = proj(x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        a, gate = mx.split(self.proj(x), 2, axis=-1)
        return a * nn.silu(gate)


class FeedForward(nn.Module):
    """`ff = [GLU, Identity, Linear(H, E)]`: index 1 is the (no-op) dropout slot of the runtime."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        hidden = mult * dim
        self.ff = [GLU(dim, hidden), nn.Identity(), nn.Linear(hidden, dim, bias=False)]

    def __call__(self, x: mx.array) -> mx.array:
        return run_seq(self.ff, x)


class LocalEmbed(nn.Module):
    """`seq = [Linear(local_cond_dim, E), SiLU, Linear(E, E)]`, added to the block input."""

    def __init__(self, local_dim: int, dim: int) -> None:
        super().__init__()
        self.seq = mlp(local_dim, dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return run_seq(self.seq, x)


class TransformerBlock(nn.Module):
    """x ← x + local; x ← x + σ(g₁)·SA(adaLN(x)); x ← x + CA(norm(x)); x ← x + σ(g₂)·FF(adaLN(x)).

    The adaLN parameters come from the transformer's shared `global_cond_embedder`; gates
    pass through a sigmoid so a random or freshly zeroed embedder keeps the residual stream
    well scaled.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        differential: bool,
        ff_mult: int,
        local_dim: int,
        layer_index: int,
        rope: bool,
        eps: float,
    ) -> None:
        super().__init__()
        self.pre_norm = nn.RMSNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, heads, differential, layer_index, rope, eps)
        self.cross_attend_norm = nn.RMSNorm(dim, eps=eps)
        self.cross_attn = CrossAttention(dim, heads, differential, layer_index, eps)
        self.ff_norm = nn.RMSNorm(dim, eps=eps)
        self.ff = FeedForward(dim, ff_mult)
        self.to_local_embed = LocalEmbed(local_dim, dim)

    def __call__(
        self,
        x: mx.array,
        adaln: mx.array,
        context: mx.array,
        local: mx.array | None,
        mask: mx.array | None = None,
        context_mask: mx.array | None = None,
    ) -> mx.array:
        """x (B, T, E) with the memory tokens first; local (B, L, local_dim) for the last L."""
        if local is not None:
            emb = self.to_local_embed(local.astype(x.dtype))
            lead = x.shape[1] - emb.shape[1]
            if lead:
                emb = mx.concatenate([mx.zeros((x.shape[0], lead, x.shape[2]), x.dtype), emb], 1)
            x = x + emb
        scale_sa, shift_sa, gate_sa, scale_ff, shift_ff, gate_ff = mx.split(
            adaln, ADALN_CHUNKS, axis=-1
        )
        h = modulate(self.pre_norm(x), scale_sa, shift_sa)
        x = x + mx.sigmoid(gate_sa)[:, None, :] * self.self_attn(h, mask)
        x = x + self.cross_attn(self.cross_attend_norm(x), context, context_mask)
        h = modulate(self.ff_norm(x), scale_ff, shift_ff)
        return x + mx.sigmoid(gate_ff)[:, None, :] * self.ff(h)
