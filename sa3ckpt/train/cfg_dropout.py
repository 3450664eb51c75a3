"""Classifier-free-guidance dropout of the cross-attention conditioning during training.

The official trainer drops the conditioning of a sample with probability 0.1 by replacing its
whole cross-attention context (prompt tokens, padding and the seconds token) with zeros; the
global conditioning (the seconds embedding) is kept (../shared/reference/training.md). The
model thereby also learns the unconditional velocity that guidance extrapolates from.
"""

from __future__ import annotations

import mlx.core as mx

from sa3ckpt.train.rng import KeyLike, as_key

CFG_DROPOUT = 0.1


def cfg_dropout(cross_attn_cond: mx.array, key: KeyLike, prob: float = CFG_DROPOUT) -> mx.array:
    """cross_attn_cond (B, N, D) with each sample's whole context zeroed with probability prob.

    One Bernoulli draw per sample from `key` (reproducible); prob 0 returns the input as is
    and prob 1 zeros every sample. Pass the result to the DiT with the unchanged global_cond.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"CFG dropout probability must be in [0, 1], got {prob}")
    if cross_attn_cond.ndim != 3:
        raise ValueError(f"cross_attn_cond must be (B, N, D), got shape {cross_attn_cond.shape}")
    if prob == 0.0:
        return cross_attn_cond
    batch = cross_attn_cond.shape[0]
    dropped = mx.random.uniform(shape=(batch,), key=as_key(key)) < prob
    zeros = mx.zeros_like(cross_attn_cond)
    return mx.where(dropped[:, None, None], zeros, cross_attn_cond)


__all__ = ["CFG_DROPOUT", "cfg_dropout"]
