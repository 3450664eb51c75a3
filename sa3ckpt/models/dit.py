"""The SA3 diffusion transformer (DiT) in MLX, named exactly like the MLX runtime.

Every adapter target of a family (`FAMILIES[f].targets`) is an `nn.Linear` / `nn.Conv1d`
at its `mlx_name` with the table's shape, except the seconds conditioner, which lives in
the plain arrays `cond.seconds_total_weight` / `cond.seconds_total_bias`. So
`sa3ckpt.adapters.inject` selects the same layers here as the official trainer does from a
`lora_config`, and a saved adapter validates against the family. There are no other Linear /
Conv1d modules, so injecting with no include pattern cannot pick up a layer no checkpoint
can name.

Numerical parity with the official weights is not a goal (none are available); the data
flow is the SA3 one:

    x (B, L, io) ─ preprocess_conv (+x) ─ transformer ─ postprocess_conv (+x) ─> v (B, L, io)
    transformer: project_in ─ [memory | latents] ─ blocks ─ drop memory ─ project_out
    t ─ Fourier ─ to_timestep_embed ─┐
    global_cond (+ seconds token) ─ to_global_embed ─ + ─ global_cond_embedder ─ adaLN (6E)
    [cond_tokens | seconds token] ─ to_cond_embed ─ cross-attention context
    local_cond (inpaint mask + context, io+1) ─ to_local_embed (per block) ─ added to x
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from sa3ckpt.models.block import ADALN_CHUNKS, TransformerBlock
from sa3ckpt.models.config import DiTConfig
from sa3ckpt.models.embeddings import Conditioner, FourierFeatures
from sa3ckpt.models.layers import mlp, run_seq
from sa3ckpt.names.modules import CONDITIONER_ROOT
from sa3ckpt.targets.topology import Topology

# Adapter configs trained on this model should carry this exclude: the seconds conditioner has
# no module in the MLX runtime, so `inject` never adapts it, and a config whose patterns still
# select it would tell every loader (and `sa3ckpt validate`) that a target is missing.
DIT_ONLY_EXCLUDE: tuple[str, ...] = (CONDITIONER_ROOT,)


class ContinuousTransformer(nn.Module):
    """`transformer.*`: projections, learned memory tokens, shared adaLN embedder, blocks."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        t = config.topology
        e = t.embed_dim
        self.project_in = nn.Linear(t.io_channels, e, bias=False)
        self.project_out = nn.Linear(e, t.io_channels, bias=False)
        self.global_cond_embedder = mlp(e, e, t.global_mult * e)
        self.memory_tokens = mx.random.normal((config.memory_tokens, e)) * 0.02
        self.layers = [
            TransformerBlock(
                e,
                config.heads,
                t.differential,
                t.ff_mult,
                t.local_cond_dim,
                i,
                config.rope,
                config.norm_eps,
            )
            for i in range(t.depth)
        ]

    def __call__(
        self,
        x: mx.array,
        global_embed: mx.array,
        context: mx.array,
        local: mx.array | None,
        mask: mx.array | None = None,
        context_mask: mx.array | None = None,
    ) -> mx.array:
        h = self.project_in(x)
        b, n = h.shape[0], self.memory_tokens.shape[0]
        if n:
            memory = mx.broadcast_to(self.memory_tokens.astype(h.dtype), (b, n, h.shape[2]))
            h = mx.concatenate([memory, h], axis=1)
            if mask is not None:
                mask = mx.concatenate([mx.ones((b, n), dtype=mx.bool_), mask.astype(mx.bool_)], 1)
        adaln = run_seq(self.global_cond_embedder, global_embed)
        for block in self.layers:
            h = block(h, adaln, context, local, mask, context_mask)
        return self.project_out(h[:, n:])


class DiT(nn.Module):
    """The SA3 DiT: `model(x, t, cond_tokens, global_cond, seconds, local_cond) -> v`.

    Shapes: x (B, L, io_channels) channels-last latents; t (B,) in [0, 1]; cond_tokens
    (B, S, cond_token_dim); global_cond (B, cond_token_dim); seconds (B,) seconds_total;
    local_cond (B, L, io_channels + 1) or None for the training default (see
    `training_local_cond`); mask (B, L) marks real latents (padding is not attended to);
    cond_mask (B, S) marks real conditioning tokens (others become `cond.padding_embedding`).
    Returns the predicted velocity (B, L, io_channels). With a mask, the outputs at real
    positions do not depend on what the padding holds.
    """

    def __init__(self, config: DiTConfig | Topology) -> None:
        super().__init__()
        if isinstance(config, Topology):
            config = DiTConfig(config)
        t = config.topology
        if t.global_mult != ADALN_CHUNKS:
            raise ValueError(
                f"global_mult must be {ADALN_CHUNKS} (adaLN chunks), got {t.global_mult}"
            )
        self.config = config
        e, io, k = t.embed_dim, t.io_channels, t.conv_kernel
        self.preprocess_conv = nn.Conv1d(io, io, k, padding=k // 2, bias=False)
        self.postprocess_conv = nn.Conv1d(io, io, k, padding=k // 2, bias=False)
        self.timestep_features = FourierFeatures(t.timestep_features)
        self.to_timestep_embed = mlp(t.timestep_features, e, e, first_bias=True)
        self.to_cond_embed = mlp(t.cond_token_dim, e, e, first_bias=True)
        self.to_global_embed = mlp(t.cond_token_dim, e, e, first_bias=True)
        self.cond = Conditioner(t.cond_token_dim, t.seconds_features, config.max_seconds)
        self.transformer = ContinuousTransformer(config)

    @property
    def topology(self) -> Topology:
        return self.config.topology

    def __call__(
        self,
        x: mx.array,
        t: mx.array,
        cond_tokens: mx.array,
        global_cond: mx.array,
        seconds: mx.array,
        local_cond: mx.array | None = None,
        mask: mx.array | None = None,
        cond_mask: mx.array | None = None,
    ) -> mx.array:
        self._check(x, t, cond_tokens, global_cond, seconds, local_cond)
        if local_cond is None:
            local_cond = training_local_cond(x.shape[0], x.shape[1], x.shape[2], x.dtype)
        seconds_token = self.cond.seconds_token(seconds).astype(cond_tokens.dtype)
        tokens = self.cond.pad_tokens(cond_tokens, cond_mask)
        tokens = mx.concatenate([tokens, seconds_token[:, None, :]], axis=1)
        if cond_mask is not None:
            cond_mask = mx.concatenate(
                [cond_mask.astype(mx.bool_), mx.ones((x.shape[0], 1), dtype=mx.bool_)], axis=1
            )
        context = run_seq(self.to_cond_embed, tokens)
        time_embed = run_seq(self.to_timestep_embed, self.timestep_features(t))
        global_embed = run_seq(self.to_global_embed, global_cond + seconds_token) + time_embed
        keep = None if mask is None else mask.astype(x.dtype)[..., None]
        x = x if keep is None else x * keep
        h = self.preprocess_conv(x) + x
        h = self.transformer(h, global_embed, context, local_cond, mask, cond_mask)
        # Zero the padding before each k > 1 convolution so it cannot leak into real frames.
        h = h if keep is None else h * keep
        return self.postprocess_conv(h) + h

    def _check(
        self,
        x: mx.array,
        t: mx.array,
        cond_tokens: mx.array,
        global_cond: mx.array,
        seconds: mx.array,
        local_cond: mx.array | None,
    ) -> None:
        """Fail with the expected shapes rather than deep inside a matmul."""
        top = self.topology
        b = x.shape[0]
        length = x.shape[1] if x.ndim == 3 else -1
        expected = {
            "x": (x, (b, length, top.io_channels)),
            "t": (t, (b,)),
            "cond_tokens": (cond_tokens, (b, cond_tokens.shape[1], top.cond_token_dim)),
            "global_cond": (global_cond, (b, top.cond_token_dim)),
            "seconds": (seconds, (b,)),
        }
        if local_cond is not None:
            expected["local_cond"] = (local_cond, (b, length, top.local_cond_dim))
        for name, (value, shape) in expected.items():
            if value.shape != shape:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape}")


def training_local_cond(
    batch: int, length: int, io_channels: int, dtype: mx.Dtype = mx.float32
) -> mx.array:
    """The training-time local_add_cond: inpaint mask all ones (channel 0), zero context.

    Layout (B, L, 1 + io_channels): channel 0 is the inpaint mask (1 = generate), channels
    1.. the known-audio latents (zero: nothing is given).
    """
    return inpaint_local_cond(mx.zeros((batch, length, io_channels), dtype), None)


def inpaint_local_cond(context: mx.array, generate: mx.array | None) -> mx.array:
    """local_add_cond from context latents (B, L, io) and a generate-mask (B, L) (None = all).

    Where the mask is 1 the model generates; where 0 it should keep `context`.
    """
    b, length, _ = context.shape
    if generate is None:
        generate = mx.ones((b, length), dtype=context.dtype)
    return mx.concatenate([generate.astype(context.dtype)[..., None], context], axis=-1)


def build_dit(family_or_config: str | Topology | DiTConfig, **overrides: object) -> DiT:
    """A DiT for a family name, a Topology or a DiTConfig; `overrides` set DiTConfig fields.

    e.g. `build_dit("tiny-medium", num_heads=2, memory_tokens=2)`.
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
