"""The SA3 diffusion transformer (DiT) in MLX: the official network, named like the MLX runtime.

The function is the official DiT's (reference/dit.md; tested against diffusers'
`StableAudio3DiTModel`, which equals the official model once its block norm eps is 1e-5).
Every parameter name is the MLX runtime's weight key, so a runtime file loads with
`load_weights` as it is and every adapter target of a family (`FAMILIES[f].targets`) is an
`nn.Linear` / `nn.Conv1d` at its `mlx_name`. The seconds conditioner is the separate
`Conditioner`, as in the runtime.

    x (B, io, T) ─ preprocess_conv (+x) ─ project_in ─ [memory | frames] ─ blocks
        ─ drop memory ─ project_out ─ postprocess_conv (+h) ─> v (B, io, T)
    t ─ [cos | sin] features ─ to_timestep_embed ─┐
    global_cond ─ to_global_embed ────────────────+─ global_cond_embedder ─ adaLN (6E, shared)
    cross_attn_cond ─ to_cond_embed ─ cross-attention context
    local_add_cond (B, io + 1, T) ─ to_local_embed (per block) ─ added to the frames
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from sa3ckpt.models.block import TransformerBlock
from sa3ckpt.models.config import ADALN_CHUNKS, DiTConfig
from sa3ckpt.models.embeddings import Conditioner
from sa3ckpt.models.layers import fourier_features, fourier_frequencies, mlp, rope_angles, run_seq
from sa3ckpt.names.modules import CONDITIONER_ROOT
from sa3ckpt.targets.topology import Topology, rotary_inv_freq

# Adapter configs trained on this model should carry this exclude: the seconds conditioner has
# no module in the DiT (it is the separate `Conditioner`), so `inject` never adapts it, and a
# config whose patterns still select it would tell every loader that a target is missing.
DIT_ONLY_EXCLUDE: tuple[str, ...] = (CONDITIONER_ROOT,)


class RotaryEmbedding(nn.Module):
    """`transformer.rotary_pos_emb`: holds `inv_freq` as checkpoints do (loaded, not derived)."""

    def __init__(self, rope_dim: int) -> None:
        super().__init__()
        self.inv_freq = mx.array(rotary_inv_freq(rope_dim), dtype=mx.float32)
        self.freeze()  # a fixed table, never trained

    def __call__(self, length: int) -> tuple[mx.array, mx.array]:
        return rope_angles(self.inv_freq, length)


class ContinuousTransformer(nn.Module):
    """`transformer.*`: projections, memory tokens, RoPE table, shared adaLN embedder, blocks."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        t = config.topology
        e = t.embed_dim
        self.project_in = nn.Linear(t.io_channels, e, bias=False)
        self.project_out = nn.Linear(e, t.io_channels, bias=False)
        self.global_cond_embedder = mlp(e, e, ADALN_CHUNKS * e, bias=True)
        self.memory_tokens = mx.random.normal((config.memory_tokens, e)) * 0.02
        self.rotary_pos_emb = RotaryEmbedding(t.rope_dim)
        self.layers = [
            TransformerBlock(
                e,
                t.head_dim,
                t.differential,
                t.ff_mult,
                t.local_cond_dim,
                config.block_norm_eps,
                config.qk_norm_eps,
            )
            for _ in range(t.depth)
        ]

    def __call__(
        self, x: mx.array, global_embed: mx.array, context: mx.array, local: mx.array | None
    ) -> mx.array:
        """x (B, T, io) channels-last -> (B, T, io)."""
        h = self.project_in(x)
        b, m = h.shape[0], self.memory_tokens.shape[0]
        memory = mx.broadcast_to(self.memory_tokens.astype(h.dtype), (b, m, h.shape[2]))
        h = mx.concatenate([memory, h], axis=1)
        rope = self.rotary_pos_emb(h.shape[1])
        modulation = run_seq(self.global_cond_embedder, global_embed)
        for block in self.layers:
            h = block(h, modulation, context, rope, local, m)
        return self.project_out(h[:, m:])


class DiT(nn.Module):
    """The SA3 DiT: `dit(x, t, cross_attn_cond, global_cond, local_add_cond=None) -> v`.

    The official DiT wrapper's call: x (B, io, T) channels-first latents; t (B,) timesteps
    (sigma, 0 = data, 1 = noise); cross_attn_cond (B, N, D) prompt tokens already padded
    with the padding embedding, then the seconds token (`Conditioner`); global_cond (B, D)
    the seconds embedding; local_add_cond (B, io + 1, T) [inpaint mask | masked latent] or
    None (no local add; official generation passes zeros, training an all-ones mask, see
    `training_local_cond`). Returns the velocity (B, io, T) in the input dtype.
    """

    def __init__(self, config: DiTConfig | Topology) -> None:
        super().__init__()
        if isinstance(config, Topology):
            config = DiTConfig(config)
        self.config = config
        t = config.topology
        e, io, k = t.embed_dim, t.io_channels, t.conv_kernel
        self.preprocess_conv = nn.Conv1d(io, io, k, padding=k // 2, bias=False)
        self.postprocess_conv = nn.Conv1d(io, io, k, padding=k // 2, bias=False)
        self.to_timestep_embed = mlp(t.timestep_features, e, e, bias=True)
        self.to_cond_embed = mlp(t.cond_token_dim, e, e, bias=False)
        self.to_global_embed = mlp(t.cond_token_dim, e, e, bias=False)
        self.transformer = ContinuousTransformer(config)
        # A fixed float32 table (numpy, so never a parameter): see layers.fourier_frequencies.
        self.timestep_frequencies = fourier_frequencies(t.timestep_features)

    @property
    def topology(self) -> Topology:
        return self.config.topology

    def __call__(
        self,
        x: mx.array,
        t: mx.array,
        cross_attn_cond: mx.array,
        global_cond: mx.array,
        local_add_cond: mx.array | None = None,
    ) -> mx.array:
        self._check(x, t, cross_attn_cond, global_cond, local_add_cond)
        dtype = x.dtype
        context = run_seq(self.to_cond_embed, cross_attn_cond.astype(dtype))
        time_features = fourier_features(t, self.timestep_frequencies).astype(dtype)
        time_embed = run_seq(self.to_timestep_embed, time_features)
        global_embed = run_seq(self.to_global_embed, global_cond.astype(dtype)) + time_embed
        frames = x.transpose(0, 2, 1)
        h = self.preprocess_conv(frames) + frames
        local = None if local_add_cond is None else local_add_cond.astype(dtype).transpose(0, 2, 1)
        h = self.transformer(h, global_embed, context, local)
        out = self.postprocess_conv(h) + h
        return out.transpose(0, 2, 1)

    def _check(
        self,
        x: mx.array,
        t: mx.array,
        cross_attn_cond: mx.array,
        global_cond: mx.array,
        local_add_cond: mx.array | None,
    ) -> None:
        """Fail with the expected shapes rather than deep inside a matmul."""
        top = self.topology
        if x.ndim != 3:
            raise ValueError(f"x has shape {x.shape}, expected (B, {top.io_channels}, T)")
        b, _, frames = x.shape
        n = cross_attn_cond.shape[1] if cross_attn_cond.ndim == 3 else -1
        expected: dict[str, tuple[mx.array, tuple[int, ...]]] = {
            "x": (x, (b, top.io_channels, frames)),
            "t": (t, (b,)),
            "cross_attn_cond": (cross_attn_cond, (b, n, top.cond_token_dim)),
            "global_cond": (global_cond, (b, top.cond_token_dim)),
        }
        if local_add_cond is not None:
            expected["local_add_cond"] = (local_add_cond, (b, top.local_cond_dim, frames))
        for name, (value, shape) in expected.items():
            if value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape}")


def training_local_cond(
    batch: int, frames: int, io_channels: int, dtype: mx.Dtype = mx.float32
) -> mx.array:
    """The training-time local_add_cond (B, io + 1, T): inpaint mask all ones, zero context."""
    return inpaint_local_cond(mx.zeros((batch, io_channels, frames), dtype), None)


def inpaint_local_cond(masked_latent: mx.array, mask: mx.array | None) -> mx.array:
    """local_add_cond (B, io + 1, T) = [mask | masked latent] from (B, io, T) and (B, T).

    `mask` None means all ones (the whole clip is generated, nothing is given).
    """
    b, _, frames = masked_latent.shape
    if mask is None:
        mask = mx.ones((b, frames), dtype=masked_latent.dtype)
    return mx.concatenate([mask.astype(masked_latent.dtype)[:, None, :], masked_latent], axis=1)


def build_dit(family_or_config: str | Topology | DiTConfig, **overrides: object) -> DiT:
    """A DiT for a family name, a Topology or a DiTConfig; `overrides` set DiTConfig fields.

    e.g. `build_dit("tiny-medium", memory_tokens=2)`. Weights are randomly initialised;
    `load_dit` builds one from a checkpoint.
    """
    if isinstance(family_or_config, str):
        config = DiTConfig.for_family(family_or_config, **overrides)
    elif isinstance(family_or_config, Topology):
        config = DiTConfig(family_or_config, **overrides)  # type: ignore[arg-type]
    elif overrides:
        raise ValueError("pass overrides with a family name or Topology, not a DiTConfig")
    else:
        config = family_or_config
    return DiT(config)


def build_conditioner(config: DiTConfig | str) -> Conditioner:
    """The conditioner that goes with a DiT config (zero arrays until loaded)."""
    if isinstance(config, str):
        config = DiTConfig.for_family(config)
    t = config.topology
    return Conditioner(t.cond_token_dim, t.seconds_features, config.max_seconds)
