"""Model families as data, generated from one topology description.

The SA3 DiT has one topology; families differ only in a handful of sizes. Each target's
shape is a formula over those sizes, written once below, so `medium`, `small` and the tiny
test families can never drift apart in naming or structure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sa3ckpt.layout import base_layout
from sa3ckpt.names.modules import (
    BLOCK_MODULES,
    CONDITIONER_MODULES,
    TOP_LEVEL_MODULES,
    block_target,
    to_diffusers_path,
    to_mlx_module,
    to_sa3cpp_stem,
)


@dataclass(frozen=True)
class Topology:
    """The sizes that distinguish one SA3 family from another."""

    embed_dim: int  # E: the transformer width
    depth: int  # number of transformer blocks
    differential: bool  # differential attention doubles q and k projections
    io_channels: int = 256  # latent channels (SAME codecs: 256)
    cond_token_dim: int = 768  # cross-attention / global conditioning token width
    timestep_features: int = 256  # Fourier features fed to to_timestep_embed
    seconds_features: int = 256  # seconds_total Fourier features fed to the conditioner Linear
    global_mult: int = 6  # adaLN: global_cond_embedder.2 outputs global_mult * E
    ff_mult: int = 4  # feed-forward hidden = ff_mult * E (GLU projection doubles it)
    conv_kernel: int = 1  # kernel size of pre/post-process Conv1d
    head_dim: int = 64  # attention head width (official: 64, so heads = E / 64)

    @property
    def heads(self) -> int:
        """Attention heads per layer: E / head_dim."""
        return self.embed_dim // self.head_dim

    @property
    def rope_dim(self) -> int:
        """Head dims RoPE rotates: the first half of each head (32 of 64 in the official DiT)."""
        return self.head_dim // 2

    @property
    def local_cond_dim(self) -> int:
        """Per-block local conditioning input: latent channels + an inpaint mask channel."""
        return self.io_channels + 1


def rotary_inv_freq(rope_dim: int, base: float = 10000.0) -> np.ndarray:
    """The RoPE inverse frequencies base^(-i/rope_dim), i = 0, 2, 4, … < rope_dim (float64).

    What the official DiT keeps in `transformer.rotary_pos_emb.inv_freq` (16 values for 64-wide
    heads); each frequency rotates one pair (j, j + n) of the first 2n head dims.
    """
    return 1.0 / (base ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim))


ShapeRule = Callable[[Topology], tuple[int, int]]


def _square(t: Topology) -> tuple[int, int]:
    return (t.embed_dim, t.embed_dim)


# (fan_out, fan_in) of every per-block module, in BLOCK_MODULES order.
_BLOCK_SHAPES: dict[str, ShapeRule] = {
    "self_attn.to_qkv": lambda t: ((5 if t.differential else 3) * t.embed_dim, t.embed_dim),
    "self_attn.to_out": _square,
    "cross_attn.to_q": lambda t: ((2 if t.differential else 1) * t.embed_dim, t.embed_dim),
    "cross_attn.to_kv": lambda t: ((3 if t.differential else 2) * t.embed_dim, t.embed_dim),
    "cross_attn.to_out": _square,
    "ff.ff.0.proj": lambda t: (2 * t.ff_mult * t.embed_dim, t.embed_dim),
    "ff.ff.2": lambda t: (t.embed_dim, t.ff_mult * t.embed_dim),
    "to_local_embed.0": lambda t: (t.embed_dim, t.local_cond_dim),
    "to_local_embed.2": _square,
}

_TOP_LEVEL_SHAPES: dict[str, ShapeRule] = {
    "model.to_timestep_embed.0": lambda t: (t.embed_dim, t.timestep_features),
    "model.to_timestep_embed.2": _square,
    "model.to_cond_embed.0": lambda t: (t.embed_dim, t.cond_token_dim),
    "model.to_cond_embed.2": _square,
    "model.to_global_embed.0": lambda t: (t.embed_dim, t.cond_token_dim),
    "model.to_global_embed.2": _square,
    "model.transformer.project_in": lambda t: (t.embed_dim, t.io_channels),
    "model.transformer.project_out": lambda t: (t.io_channels, t.embed_dim),
    "model.transformer.global_cond_embedder.0": _square,
    "model.transformer.global_cond_embedder.2": lambda t: (
        t.global_mult * t.embed_dim,
        t.embed_dim,
    ),
    "model.preprocess_conv": lambda t: (t.io_channels, t.io_channels * t.conv_kernel),
    "model.postprocess_conv": lambda t: (t.io_channels, t.io_channels * t.conv_kernel),
}

_CONDITIONER_SHAPES: dict[str, ShapeRule] = {
    "conditioners.seconds_total.embedder.embedding.1": lambda t: (
        t.cond_token_dim,
        t.seconds_features,
    ),
}


@dataclass(frozen=True)
class Target:
    """One adapter-targetable layer of one family.

    `shape` is the canonical 2-D (fan_out, fan_in) view; `weight_shape` is the PyTorch
    weight shape ((out, in, k) for Conv1d), which is what a base checkpoint stores.
    """

    name: str
    layer_kind: str  # "linear" | "conv1d"
    shape: tuple[int, int]
    weight_shape: tuple[int, ...]
    mlx_name: str | None
    sa3cpp_stem: str | None
    diffusers_name: str | None  # path in diffusers' SA3 pipeline (`transformer.…`)
    block: int | None  # transformer block index, None for top-level / conditioner
    module: str  # per-block suffix, or the full name for top-level / conditioner
    group: str  # "block" | "top" | "conditioner"

    @property
    def kernel_size(self) -> int:
        return base_layout("official", self.layer_kind).kernel_size(self.weight_shape)


def _make_target(
    name: str,
    layer_kind: str,
    shape: tuple[int, int],
    t: Topology,
    block: int | None,
    module: str,
    group: str,
) -> Target:
    weight_shape = base_layout("official", layer_kind).stored_shape(shape, t.conv_kernel)
    return Target(
        name=name,
        layer_kind=layer_kind,
        shape=shape,
        weight_shape=weight_shape,
        mlx_name=to_mlx_module(name),
        sa3cpp_stem=to_sa3cpp_stem(name),
        diffusers_name=to_diffusers_path(name),
        block=block,
        module=module,
        group=group,
    )


def build_targets(t: Topology) -> tuple[Target, ...]:
    """All targets of a topology: top-level, then blocks in order, then the conditioner."""
    targets = [
        _make_target(
            m.canonical,
            m.layer_kind,
            _TOP_LEVEL_SHAPES[m.canonical](t),
            t,
            None,
            m.canonical,
            "top",
        )
        for m in TOP_LEVEL_MODULES
    ]
    for block in range(t.depth):
        for m in BLOCK_MODULES:
            name = block_target(block, m.canonical)
            shape = _BLOCK_SHAPES[m.canonical](t)
            targets.append(_make_target(name, m.layer_kind, shape, t, block, m.canonical, "block"))
    targets.extend(
        _make_target(
            m.canonical,
            m.layer_kind,
            _CONDITIONER_SHAPES[m.canonical](t),
            t,
            None,
            m.canonical,
            "conditioner",
        )
        for m in CONDITIONER_MODULES
    )
    return tuple(targets)
