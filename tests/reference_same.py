"""An independent float64 NumPy SAME encoder, written from reference/same.md items 1-13.

It reads the official autoencoder file's own key names (not the MLX module's) and works
channels-first like the official code, so it shares neither names, layout nor code with
`sa3ckpt.models.same`. Everything is float64, RoPE included.

`Variant` switches single facts off, for the mutation tests that show this reference would
notice each of those errors in the MLX encoder: a band instead of SAME-S's chunks, the
padding latent cropped, the shifted copies made before every block instead of once (the
official code copies once, then runs blocks 3-5), RoPE pairs interleaved (2j, 2j + 1) instead
of rotate-half (j, j + 16), and the official [q, k, v, q_diff, k_diff] split read as
diffusers' [q, q2, k, k2, v]. One variant is no error at all: RoPE positions running over the
whole sequence instead of restarting in each chunk change every angle, but attention within a
chunk sees only position differences, so the result is the same (the test shows it; the MLX
encoder restarts, which keeps its fp32 angles small).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATCH = 256
GROUP = 16
TOKENS = GROUP + 1  # one group: 16 patches and the shared token
HEAD = 64
ROT = 32  # RoPE on the first 32 dims of each head
BAND = 17  # SAME-L: |i - j| <= 17
CHUNK = 34  # SAME-S: two groups


@dataclass(frozen=True)
class Variant:
    """Which facts to get wrong on purpose (all False: the official encoder)."""

    band_instead_of_chunks: bool = False
    crop_padding_latent: bool = False
    rope_not_restarting: bool = False
    copy_every_block: bool = False
    rope_interleaved: bool = False
    diffusers_qkv_order: bool = False


EXACT = Variant()


def _t(tensors: dict[str, np.ndarray], key: str) -> np.ndarray:
    return np.asarray(tensors[key], dtype=np.float64)


def _dyt(x: np.ndarray, tensors: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    alpha = _t(tensors, prefix + ".alpha")[0]
    return _t(tensors, prefix + ".gamma") * np.tanh(alpha * x) + _t(tensors, prefix + ".beta")


def _rope(x: np.ndarray, positions: np.ndarray, interleaved: bool = False) -> np.ndarray:
    """x (..., T, 64): rotate-half RoPE on dims 0..31, dim j paired with j + 16."""
    inv = 1.0 / (10000.0 ** (np.arange(0, ROT, 2, dtype=np.float64) / ROT))
    angle = positions[:, None] * inv[None, :]  # (T, 16)
    cos, sin = np.cos(angle), np.sin(angle)
    if interleaved:  # the wrong pairing, for the mutation test
        a, b = x[..., 0:ROT:2], x[..., 1:ROT:2]
        rotated = np.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)
        return np.concatenate([rotated.reshape(*x.shape[:-1], ROT), x[..., ROT:]], axis=-1)
    a, b, rest = x[..., : ROT // 2], x[..., ROT // 2 : ROT], x[..., ROT:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin, rest], axis=-1)


def _softmax_attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(HEAD)
    scores = np.where(allowed, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ v


def _attention(
    x: np.ndarray,
    tensors: dict[str, np.ndarray],
    root: str,
    positions: np.ndarray,
    allowed: np.ndarray,
    variant: Variant,
) -> np.ndarray:
    """x (S, T, D): sequences attended independently."""
    s, t, d = x.shape
    heads = d // HEAD
    parts = np.split(x @ _t(tensors, root + ".self_attn.to_qkv.weight").T, 5, axis=-1)
    if variant.diffusers_qkv_order:
        q, q2, k, k2, v = parts
    else:
        q, k, v, q2, k2 = parts

    def split(y: np.ndarray) -> np.ndarray:
        return y.reshape(s, t, heads, HEAD).transpose(0, 2, 1, 3)

    def prepare(y: np.ndarray, norm: str) -> np.ndarray:
        normed = _dyt(split(y), tensors, f"{root}.self_attn.{norm}")
        return _rope(normed, positions, variant.rope_interleaved)

    vh = split(v)
    out = _softmax_attend(prepare(q, "q_norm"), prepare(k, "k_norm"), vh, allowed)
    out = out - _softmax_attend(prepare(q2, "q_norm"), prepare(k2, "k_norm"), vh, allowed)
    out = out.transpose(0, 2, 1, 3).reshape(s, t, d)
    return out @ _t(tensors, root + ".self_attn.to_out.weight").T


def _feed_forward(x: np.ndarray, tensors: dict[str, np.ndarray], root: str) -> np.ndarray:
    h = x @ _t(tensors, root + ".ff.ff.0.proj.weight").T + _t(tensors, root + ".ff.ff.0.proj.bias")
    value, gate = np.split(h, 2, axis=-1)
    h = value * (gate / (1.0 + np.exp(-gate)))
    return h @ _t(tensors, root + ".ff.ff.2.weight").T + _t(tensors, root + ".ff.ff.2.bias")


def _block(
    x: np.ndarray,
    tensors: dict[str, np.ndarray],
    index: int,
    positions: np.ndarray,
    allowed: np.ndarray,
    variant: Variant,
) -> np.ndarray:
    root = f"encoder.layers.0.transformers.{index}"
    x = x + _attention(
        _dyt(x, tensors, root + ".pre_norm"), tensors, root, positions, allowed, variant
    )
    return x + _feed_forward(_dyt(x, tensors, root + ".ff_norm"), tensors, root)


def _chunks(
    x: np.ndarray, tensors: dict[str, np.ndarray], indices: range, variant: Variant
) -> np.ndarray:
    """Run blocks on 34-token chunks of x (T, D), T a multiple of 34."""
    t, d = x.shape
    pieces = x.reshape(t // CHUNK, CHUNK, d)
    allowed = np.ones((CHUNK, CHUNK), bool)
    for i in indices:
        if variant.rope_not_restarting:
            positions = np.arange(t, dtype=np.float64).reshape(t // CHUNK, CHUNK)
            pieces = np.concatenate(
                [
                    _block(pieces[c : c + 1], tensors, i, positions[c], allowed, variant)
                    for c in range(len(pieces))
                ]
            )
        else:
            pieces = _block(
                pieces, tensors, i, np.arange(CHUNK, dtype=np.float64), allowed, variant
            )
    return pieces.reshape(t, d)


def _chunked_schedule(
    x: np.ndarray, tensors: dict[str, np.ndarray], blocks: int, variant: Variant
) -> np.ndarray:
    """SAME-S (item 10): blocks 0..split-1 on chunks, the rest on chunks shifted by one group
    (the first and last group copied onto the ends, cropped after the last block)."""
    split = blocks // 2
    x = _chunks(x, tensors, range(split), variant)
    if variant.copy_every_block:
        for i in range(split, blocks):
            x = np.concatenate([x[:TOKENS], x, x[-TOKENS:]])
            x = _chunks(x, tensors, range(i, i + 1), variant)[TOKENS:-TOKENS]
        return x
    x = np.concatenate([x[:TOKENS], x, x[-TOKENS:]])
    return _chunks(x, tensors, range(split, blocks), variant)[TOKENS:-TOKENS]


def _band_schedule(
    x: np.ndarray, tensors: dict[str, np.ndarray], blocks: int, variant: Variant
) -> np.ndarray:
    """SAME-L (item 11): |i - j| <= 17 over the whole sequence, RoPE over the whole sequence."""
    t = x.shape[0]
    idx = np.arange(t)
    allowed = np.abs(idx[:, None] - idx[None, :]) <= BAND
    positions = idx.astype(np.float64)
    y = x[None]
    for i in range(blocks):
        y = _block(y, tensors, i, positions, allowed, variant)
    return y[0]


def encode(
    tensors: dict[str, np.ndarray],
    audio: np.ndarray,
    schedule: str,
    variant: Variant = EXACT,
) -> np.ndarray:
    """audio (2, N) float -> latents (256, T) float64, the official encode of one clip.

    `schedule`: "chunked" (SAME-S) or "band" (SAME-L). The block count is read from the keys.
    """
    blocks = len(
        {k.split(".")[4] for k in tensors if k.startswith("encoder.layers.0.transformers.")}
    )
    chunked = schedule == "chunked" and not variant.band_instead_of_chunks
    audio = np.asarray(audio, dtype=np.float64)
    channels, n = audio.shape
    # items 1-3: pad to whole patches, then the patch sequence to 32 (S) / 16 (L) patches
    modulo = 2 * GROUP if schedule == "chunked" else GROUP
    patches = -(-n // PATCH)
    patches = -(-patches // modulo) * modulo
    padded = np.zeros((channels, patches * PATCH))
    padded[:, :n] = audio
    x = padded.reshape(channels, patches, PATCH).transpose(0, 2, 1).reshape(channels * PATCH, -1)
    # item 4: weight-normed 1x1 conv (weight_g / weight_v, norm over all but dim 0)
    v = _t(tensors, "encoder.layers.0.mapping.weight_v")
    g = _t(tensors, "encoder.layers.0.mapping.weight_g")
    weight = (g * v / np.sqrt((v**2).sum(axis=(1, 2), keepdims=True)))[:, :, 0]
    x = (weight @ x).T + _t(tensors, "encoder.layers.0.mapping.bias")  # (patches, D)
    # item 5: the shared token after every 16 patches
    latents = patches // GROUP
    d = x.shape[1]
    shared = np.broadcast_to(_t(tensors, "encoder.layers.0.new_tokens")[0], (latents, 1, d))
    x = np.concatenate([x.reshape(latents, GROUP, d), shared], axis=1).reshape(-1, d)
    # items 6-11
    run = _chunked_schedule if chunked else _band_schedule
    x = run(x, tensors, blocks, variant)
    # item 12: the last token of each group, Linear(D, 256)
    out = x.reshape(latents, TOKENS, d)[:, -1]
    out = out @ _t(tensors, "encoder.layers.2.weight").T + _t(tensors, "encoder.layers.2.bias")
    # item 13: soft-norm bottleneck
    scale = _t(tensors, "bottleneck.scaling_factor")[0, :, 0]
    bias = _t(tensors, "bottleneck.bias")[0, :, 0]
    z = ((out * scale + bias) / _t(tensors, "bottleneck.running_std")[0]).T
    if variant.crop_padding_latent:
        z = z[:, : -(-n // (PATCH * GROUP))]
    return z
