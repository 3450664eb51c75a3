"""Self- and cross-attention of the SA3 DiT, standard or differential.

Differential attention (Ye et al., "Differential Transformer") gives every head two query /
key pairs and subtracts the second softmax map from the first, scaled by a learnable
per-head λ: A = softmax(q1 k1ᵀ/√d) − λ softmax(q2 k2ᵀ/√d); out = A v. Subtracting cancels
attention noise common to both maps. Each head's output is then RMS-normalised and scaled by
(1 − λ_init), as in the paper, so the output scale does not depend on λ.

Projection layouts (the only thing adapter shapes see): self-attention `to_qkv` emits
[q | k | v] with q and k 2E wide when differential (5E) else E (3E); cross-attention `to_q`
emits 2E or E and `to_kv` emits [k | v] (3E or 2E). A 2E query or key is [q1 | q2], each E
split into H heads of d = E / H.

Since A v = softmax₁ v − λ softmax₂ v, the differential output is two fused attention calls,
never a materialised (T × T) difference map.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from sa3ckpt.models.layers import merge_heads, rms, split_heads


def lambda_init(layer_index: int) -> float:
    """The paper's depth-dependent initial λ: 0.8 − 0.6 exp(−0.3 · layer)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


def _key_mask(mask: mx.array | None) -> mx.array | None:
    """(B, T_kv) bool -> (B, 1, 1, T_kv), broadcast over heads and queries."""
    return None if mask is None else mask.astype(mx.bool_)[:, None, None, :]


class _Attend(nn.Module):
    """The shared core: heads, optional differential mixing with its λ parameter."""

    def __init__(
        self, dim: int, heads: int, differential: bool, layer_index: int, eps: float
    ) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.differential = differential
        self.eps = eps
        self.scale = 1.0 / math.sqrt(dim // heads)
        if differential:
            self.lambda_init = lambda_init(layer_index)
            self.diff_lambda = mx.full((heads,), self.lambda_init)

    @property
    def qk_mult(self) -> int:
        """Width of q (and k) in units of E: 2 for differential attention, else 1."""
        return 2 if self.differential else 1

    def _sdpa(
        self, q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None, rope: nn.Module | None
    ) -> mx.array:
        q, k = split_heads(q, self.heads), split_heads(k, self.heads)
        if rope is not None:
            q, k = rope(q), rope(k)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)

    def attend(
        self,
        q: mx.array,
        k: mx.array,
        v: mx.array,
        mask: mx.array | None,
        rope: nn.Module | None = None,
    ) -> mx.array:
        """q (B, Tq, m·E), k (B, Tk, m·E), v (B, Tk, E), key mask (B, Tk) -> (B, Tq, E)."""
        vh = split_heads(v, self.heads)
        kmask = _key_mask(mask)
        if not self.differential:
            return merge_heads(self._sdpa(q, k, vh, kmask, rope))
        q1, q2 = mx.split(q, 2, axis=-1)
        k1, k2 = mx.split(k, 2, axis=-1)
        lam = self.diff_lambda[None, :, None, None]
        out = self._sdpa(q1, k1, vh, kmask, rope) - lam * self._sdpa(q2, k2, vh, kmask, rope)
        return merge_heads(rms(out, self.eps) * (1.0 - self.lambda_init))


class SelfAttention(_Attend):
    """Self-attention over [memory tokens | latents], RoPE on q and k."""

    def __init__(
        self,
        dim: int,
        heads: int,
        differential: bool,
        layer_index: int = 0,
        rope: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, heads, differential, layer_index, eps)
        width = 2 * self.qk_mult * dim + dim
        self.to_qkv = nn.Linear(dim, width, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        rope_dims = (dim // heads) // 2 * 2
        self.rope = nn.RoPE(rope_dims) if rope and rope_dims else None

    def __call__(self, x: mx.array, mask: mx.array | None = None) -> mx.array:
        qk = self.qk_mult * self.dim
        q, k, v = mx.split(self.to_qkv(x), [qk, 2 * qk], axis=-1)
        return self.to_out(self.attend(q, k, v, mask, self.rope))


class CrossAttention(_Attend):
    """Latents attend to the conditioning tokens (text tokens + the seconds token)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        differential: bool,
        layer_index: int = 0,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, heads, differential, layer_index, eps)
        self.to_q = nn.Linear(dim, self.qk_mult * dim, bias=False)
        self.to_kv = nn.Linear(dim, self.qk_mult * dim + dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def __call__(
        self, x: mx.array, context: mx.array, context_mask: mx.array | None = None
    ) -> mx.array:
        k, v = mx.split(self.to_kv(context), [self.qk_mult * self.dim], axis=-1)
        return self.to_out(self.attend(self.to_q(x), k, v, context_mask))
