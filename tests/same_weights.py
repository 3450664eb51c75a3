"""Random SAME autoencoder weights in the official spelling, for the encoder tests.

Written from reference/same.md and the official key names (see models/same/names.py), not
from the loader: `official_tensors` is the whole autoencoder file (encoder, decoder and
bottleneck) a user downloads, and `to_diffusers` renames it the way same.md lists diffusers'
`AutoencoderSAME` names (with the [q, q2, k, k2, v] row order), so a loader bug in either
spelling shows up as a disagreement.

Magnitudes are chosen so every part of the network matters to the output: norms near 1,
projections ~1/sqrt(fan_in), a non-trivial bottleneck and RoPE tables as the official
module stores them.
"""

from __future__ import annotations

import numpy as np

from sa3ckpt.models.same.config import SameConfig

PATCH_CHANNELS = 512


def _dyt(rng: np.random.Generator, prefix: str, dims: int) -> dict[str, np.ndarray]:
    return {
        f"{prefix}.alpha": rng.uniform(0.6, 1.4, (1,)).astype(np.float32),
        f"{prefix}.gamma": (1.0 + 0.1 * rng.standard_normal(dims)).astype(np.float32),
        f"{prefix}.beta": (0.05 * rng.standard_normal(dims)).astype(np.float32),
    }


def _dense(rng: np.random.Generator, fan_out: int, fan_in: int) -> np.ndarray:
    return (rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32)


def _block(
    rng: np.random.Generator, root: str, config: SameConfig, rope: bool
) -> dict[str, np.ndarray]:
    d, inner = config.width, config.ff_inner
    out = {
        **_dyt(rng, f"{root}.pre_norm", d),
        f"{root}.self_attn.to_qkv.weight": _dense(rng, 5 * d, d),
        f"{root}.self_attn.to_out.weight": _dense(rng, d, d),
        **_dyt(rng, f"{root}.self_attn.q_norm", config.head_dim),
        **_dyt(rng, f"{root}.self_attn.k_norm", config.head_dim),
        **_dyt(rng, f"{root}.ff_norm", d),
        f"{root}.ff.ff.0.proj.weight": _dense(rng, 2 * inner, d),
        f"{root}.ff.ff.0.proj.bias": (0.02 * rng.standard_normal(2 * inner)).astype(np.float32),
        f"{root}.ff.ff.2.weight": _dense(rng, d, inner),
        f"{root}.ff.ff.2.bias": (0.02 * rng.standard_normal(d)).astype(np.float32),
    }
    if rope:
        rot = config.head_dim // 2
        table = 1.0 / (10000.0 ** (np.arange(0, rot, 2, dtype=np.float32) / rot))
        out[f"{root}.rope.inv_freq"] = table.astype(np.float32)
    return out


def _weight_norm(
    rng: np.random.Generator, prefix: str, fan_out: int, fan_in: int
) -> dict[str, np.ndarray]:
    return {
        f"{prefix}.weight_g": rng.uniform(0.5, 1.5, (fan_out, 1, 1)).astype(np.float32),
        f"{prefix}.weight_v": rng.standard_normal((fan_out, fan_in, 1)).astype(np.float32),
        f"{prefix}.bias": (0.02 * rng.standard_normal(fan_out)).astype(np.float32),
    }


def official_tensors(
    config: SameConfig, seed: int, *, decoder: bool = True, rope: bool = True
) -> dict[str, np.ndarray]:
    """The official autoencoder file: encoder, bottleneck and (by default) the decoder."""
    rng = np.random.default_rng(seed)
    d = config.width
    out = _weight_norm(rng, "encoder.layers.0.mapping", d, PATCH_CHANNELS)
    out["encoder.layers.0.new_tokens"] = (0.5 * rng.standard_normal((1, 1, d))).astype(np.float32)
    for i in range(config.blocks):
        out.update(_block(rng, f"encoder.layers.0.transformers.{i}", config, rope))
    out["encoder.layers.2.weight"] = _dense(rng, config.latent_channels, d)
    out["encoder.layers.2.bias"] = (0.1 * rng.standard_normal(config.latent_channels)).astype(
        np.float32
    )
    channels = config.latent_channels
    out["bottleneck.scaling_factor"] = rng.uniform(0.8, 1.2, (1, channels, 1)).astype(np.float32)
    out["bottleneck.bias"] = (0.1 * rng.standard_normal((1, channels, 1))).astype(np.float32)
    out["bottleneck.running_std"] = np.array([1.37], np.float32)
    # Registered by the official bottleneck whatever its use: (1, noise_augment_dim, 1), empty
    # in the released codecs (noise_augment_dim 0). The encoder never reads it.
    out["bottleneck.noise_scaling_factor"] = np.ones((1, 0, 1), np.float32)
    if decoder:
        out["decoder.layers.1.weight"] = _dense(rng, d, channels)
        out["decoder.layers.1.bias"] = np.zeros(d, np.float32)
        out["decoder.layers.3.new_tokens"] = rng.standard_normal((1, 1, d)).astype(np.float32)
        for i in range(config.blocks):
            out.update(_block(rng, f"decoder.layers.3.transformers.{i}", config, rope))
        out.update(_weight_norm(rng, "decoder.layers.3.mapping", PATCH_CHANNELS, d))
    return out


# same.md's diffusers names: first match wins, applied to the official key.
_DIFFUSERS_RENAMES = (
    ("encoder.layers.0.", "encoder.blocks.0."),
    ("encoder.layers.2.", "encoder.proj."),
    ("decoder.layers.1.", "decoder.proj."),
    ("decoder.layers.3.", "decoder.blocks.0."),
    ("bottleneck.scaling_factor", "bottleneck.scale"),
)
_DIFFUSERS_LEAVES = (
    (".pre_norm.", ".norm_attn."),
    (".self_attn.", ".attn."),
    (".ff_norm.", ".norm_ff."),
    (".ff.ff.0.proj.", ".ff.proj_in."),
    (".ff.ff.2.", ".ff.proj_out."),
)


def to_diffusers(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights under diffusers' AutoencoderSAME names (RoPE tables and the
    bottleneck's noise_scaling_factor dropped: diffusers does not register them)."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if key.endswith(".rope.inv_freq") or key == "bottleneck.noise_scaling_factor":
            continue
        new = key
        for old, rep in _DIFFUSERS_RENAMES:
            if new.startswith(old):
                new = rep + new[len(old) :]
                break
        for old, rep in _DIFFUSERS_LEAVES:
            new = new.replace(old, rep)
        if new.endswith("attn.to_qkv.weight"):
            q, k, v, q2, k2 = np.split(value, 5, axis=0)
            value = np.concatenate([q, q2, k, k2, v], axis=0)
        out[new] = value
    return out


def diffusers_kwargs(config: SameConfig) -> dict[str, object]:
    """AutoencoderSAME constructor arguments for this config's shapes."""
    assert config.width % 6 == 0
    return {
        "audio_channels": config.audio_channels,
        "patch_size": config.patch,
        "encoder_channels": config.width // 6,
        "encoder_c_mults": (6,),
        "encoder_strides": (config.group,),
        "encoder_transformer_depths": (config.blocks,),
        "latent_dim": config.latent_channels,
        "use_differential_attention": True,
        "dim_heads": config.head_dim,
        "ff_mult": config.ff_mult,
        "sliding_window": 1,
    }


def to_mlx(tensors: dict[str, np.ndarray], config: SameConfig) -> dict[str, np.ndarray]:
    """The encoder half as the official MLX runtime's encoder file spells it (weight norm
    folded, (D, 512, 1))."""
    out: dict[str, np.ndarray] = {}
    g = tensors["encoder.layers.0.mapping.weight_g"].astype(np.float64)
    v = tensors["encoder.layers.0.mapping.weight_v"].astype(np.float64)
    out["mapping.weight"] = (g * v / np.sqrt((v**2).sum(axis=(1, 2), keepdims=True))).astype(
        np.float32
    )
    out["mapping.bias"] = tensors["encoder.layers.0.mapping.bias"]
    out["new_tokens"] = tensors["encoder.layers.0.new_tokens"]
    leaves = {
        "pre_norm": "pre_norm",
        "self_attn.to_qkv": "attn.to_qkv",
        "self_attn.to_out": "attn.to_out",
        "self_attn.q_norm": "attn.q_norm",
        "self_attn.k_norm": "attn.k_norm",
        "ff_norm": "ff_norm",
        "ff.ff.0.proj": "ff.glu_proj",
        "ff.ff.2": "ff.proj_out",
    }
    for i in range(config.blocks):
        root = f"encoder.layers.0.transformers.{i}."
        for key, value in tensors.items():
            if key.startswith(root) and not key.endswith("rope.inv_freq"):
                module, leaf = key[len(root) :].rsplit(".", 1)
                out[f"blocks.{i}.{leaves[module]}.{leaf}"] = value
    out["project_out.weight"] = tensors["encoder.layers.2.weight"]
    out["project_out.bias"] = tensors["encoder.layers.2.bias"]
    for leaf in ("scaling_factor", "bias", "running_std"):
        out[f"bottleneck.{leaf}"] = tensors[f"bottleneck.{leaf}"]
    return out
