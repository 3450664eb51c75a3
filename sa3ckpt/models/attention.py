"""Self- and cross-attention of the SA3 DiT, standard or differential (reference/dit.md).

Both normalise q and k per head (RMSNorm over the head width, learned scale, eps 1e-6)
before attending; self-attention then applies RoPE to the first half of each head. There
are no projection biases and no masks: the official DiT attends to every token (padded
prompt positions carry the learned padding embedding instead).

Differential attention (medium) gives every head a second query/key pair and subtracts
the second attention output: out = SDPA(q, k, v) − SDPA(q2, k2, v), with a shared v, no λ
and no sub-norm. Since both terms share v this is two fused attention calls, never a
materialised difference map. The same norm modules serve q and q2 (and k and k2).

Fused projection layouts (official row order, also the MLX runtime's): self `to_qkv` =
[q|k|v] (3E) or [q|k|v|q2|k2] (5E); cross `to_q` = [q] or [q|q2]; `to_kv` = [k|v] or
[k|k2|v].
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from sa3ckpt.models.layers import RMSNorm, apply_rope, merge_heads, split_heads

Rope = tuple[mx.array, mx.array]  # (cos, sin) of every position, see layers.rope_angles


class _Heads(nn.Module):
    """Per-head q/k norms and the (differential) attention core shared by both kinds."""

    def __init__(self, dim: int, head_dim: int, differential: bool, eps: float) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.differential = differential
        self.scale = 1.0 / math.sqrt(head_dim)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def _sdpa(self, q: mx.array, k: mx.array, v: mx.array, rope: Rope | None) -> mx.array:
        q = self.q_norm(split_heads(q, self.heads))
        k = self.k_norm(split_heads(k, self.heads))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale)

    def attend(
        self,
        queries: list[mx.array],
        keys: list[mx.array],
        v: mx.array,
        rope: Rope | None = None,
    ) -> mx.array:
        """[q] / [q, q2], [k] / [k, k2] (B, T, E) each, v (B, Tk, E) -> (B, Tq, E)."""
        vh = split_heads(v, self.heads)
        out = self._sdpa(queries[0], keys[0], vh, rope)
        if self.differential:
            out = out - self._sdpa(queries[1], keys[1], vh, rope)
        return merge_heads(out)


class SelfAttention(_Heads):
    """Attention over [memory tokens | latents], RoPE on q and k."""

    def __init__(self, dim: int, head_dim: int, differential: bool, eps: float) -> None:
        super().__init__(dim, head_dim, differential, eps)
        self.to_qkv = nn.Linear(dim, (5 if differential else 3) * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def __call__(self, x: mx.array, rope: Rope) -> mx.array:
        parts = mx.split(self.to_qkv(x), 5 if self.differential else 3, axis=-1)
        if self.differential:
            q, k, v, q2, k2 = parts
            out = self.attend([q, q2], [k, k2], v, rope)
        else:
            q, k, v = parts
            out = self.attend([q], [k], v, rope)
        return self.to_out(out)


class CrossAttention(_Heads):
    """Latents attend to the projected context tokens (prompt tokens + the seconds token)."""

    def __init__(self, dim: int, head_dim: int, differential: bool, eps: float) -> None:
        super().__init__(dim, head_dim, differential, eps)
        self.to_q = nn.Linear(dim, (2 if differential else 1) * dim, bias=False)
        self.to_kv = nn.Linear(dim, (3 if differential else 2) * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        queries = mx.split(self.to_q(x), 2 if self.differential else 1, axis=-1)
        kv = mx.split(self.to_kv(context), 3 if self.differential else 2, axis=-1)
        keys, v = kv[:-1], kv[-1]
        return self.to_out(self.attend(list(queries), list(keys), v))
