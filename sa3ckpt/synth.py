"""Deterministic synthetic checkpoints: adapters of every type and bases of every family.

Tests, benchmarks, fixtures and `sa3ckpt demo` need realistic files without downloading
multi-GB models. Values come from `Generator.random` (uniform doubles), whose stream NumPy
keeps stable, so a seed gives the same bytes on every machine and NumPy release.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.types import adapter_type
from sa3ckpt.layout import base_layout, factor_layout
from sa3ckpt.names import (
    SECONDS_CONDITIONER,
    block_target,
    format_adapter_key,
    mlx_base_key,
    official_base_key,
    official_to_mlx_base_key,
)
from sa3ckpt.targets.families import Family
from sa3ckpt.targets.topology import Target, rotary_inv_freq


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Uniform values in [-scale, scale) as float64 (stable across NumPy releases)."""
    return (rng.random(shape) * 2.0 - 1.0) * scale


@dataclass
class SynthAdapter:
    """A synthetic adapter: canonical tensors per target plus its lora_config."""

    tensors: dict[str, dict[str, np.ndarray]]  # target -> param -> array (float64)
    config: dict[str, object]
    kernels: dict[str, int] = field(default_factory=dict)  # Conv1d target -> kernel size

    def file_tensors(self, dialect: str = "sa3", dtype: str = "F16") -> dict[str, np.ndarray]:
        """Tensors keyed in a file dialect and cast to `dtype` (baked norms stay fp32).

        Conv1d targets are laid out as the dialect stores them (PEFT: as convolutions).
        """
        layout = factor_layout(dialect)
        out: dict[str, np.ndarray] = {}
        for target, params in self.tensors.items():
            for param, value in params.items():
                code = "F32" if param == "baked_vnorm_row" else dtype
                if layout is not None and target in self.kernels:
                    value = layout.from_canonical(param, value, self.kernels[target])
                out[format_adapter_key(target, param, dialect)] = dtypes.cast(value, code)
        return out

    def metadata(self) -> dict[str, str]:
        return {"lora_config": json.dumps(self.config, sort_keys=True)}


def synth_adapter(
    fam: Family,
    type_name: str,
    *,
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    zero_effect: bool = False,
    extra_config: dict[str, object] | None = None,
) -> SynthAdapter:
    """An adapter of `type_name` on the family's targets selected by include/exclude.

    Weights are small like a trained adapter's (delta ~1e-2 of a unit-scale base);
    magnitudes are positive. `zero_effect` zeroes lora_B / M_xs as a fresh init does.
    """
    kind = adapter_type(type_name)
    rng = np.random.default_rng(seed)
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for target in fam.selected(list(include or []), list(exclude or [])):
        fan_out, fan_in = target.shape
        params: dict[str, np.ndarray] = {}
        for param, shape in kind.shapes(fan_out, fan_in, rank).items():
            if param in ("lora_B", "M_xs") and zero_effect:
                params[param] = np.zeros(shape)
            elif param.startswith("magnitude"):
                params[param] = 0.5 + rng.random(shape)
            elif param == "lora_A":
                params[param] = _uniform(rng, shape, 1.0 / np.sqrt(fan_in))
            else:
                params[param] = _uniform(rng, shape, 0.05)
        tensors[target.name] = params
    config: dict[str, object] = {
        "rank": rank,
        "alpha": float(alpha if alpha is not None else rank),
        "adapter_type": type_name,
        "include": list(include or []),
        "exclude": list(exclude or []),
        "dropout": 0.0,
        "base_model": fam.name,
    }
    config.update(extra_config or {})
    kernels = {
        t.name: t.kernel_size for t in fam.targets if t.name in tensors and t.layer_kind == "conv1d"
    }
    return SynthAdapter(tensors, config, kernels)


# Non-target tensors a base carries besides the target weights, so that merges and
# conversions have something to copy verbatim: (official key suffix under the DiT, shape rule).
def _extra_base_tensors(fam: Family, rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = fam.topology
    e = t.embed_dim
    extras: dict[str, np.ndarray] = {}
    for name in ("model.to_timestep_embed.0", "model.to_cond_embed.0", "model.to_global_embed.0"):
        extras[official_base_key(name, "bias")] = _uniform(rng, (e,), 0.1)
    for block in range(t.depth):
        extras[official_base_key(block_target(block, "pre_norm"), "gamma")] = 1.0 + _uniform(
            rng, (e,), 0.1
        )
    extras[official_base_key(SECONDS_CONDITIONER, "bias")] = _uniform(rng, (t.cond_token_dim,), 0.1)
    return extras


@dataclass
class SynthBase:
    """A synthetic base: target weights in PyTorch weight shape plus extra official tensors."""

    family: Family
    weights: dict[str, np.ndarray]  # canonical target -> PyTorch weight (float64)
    extras: dict[str, np.ndarray]  # official full key -> array (float64)

    def weight_2d(self, target: Target) -> np.ndarray:
        return self.weights[target.name].reshape(target.shape)

    def official_tensors(self, dtype: str = "F16") -> dict[str, np.ndarray]:
        """The base as an official full checkpoint (`model.model.…`, torch layouts)."""
        out = {official_base_key(name): dtypes.cast(w, dtype) for name, w in self.weights.items()}
        out.update({k: dtypes.cast(v, dtype) for k, v in self.extras.items()})
        return out

    def mlx_tensors(self, dtype: str = "F16") -> dict[str, np.ndarray]:
        """The base in MLX runtime naming and layout (Conv1d (out, k, in), `cond.*`)."""
        out: dict[str, np.ndarray] = {}
        for target in self.family.targets:
            layout = base_layout("mlx", target.layer_kind)
            stored = layout.from_canonical(self.weight_2d(target), target.kernel_size)
            out[mlx_base_key(target.name)] = dtypes.cast(np.ascontiguousarray(stored), dtype)
        for key, value in self.extras.items():
            mlx_key = official_to_mlx_base_key(key)
            if mlx_key is not None:
                out[mlx_key] = dtypes.cast(value, dtype)
        return out


def synth_base(fam: Family, *, seed: int = 0) -> SynthBase:
    """A base whose weights have unit-scale rows, like a trained network's."""
    rng = np.random.default_rng(seed)
    weights = {
        t.name: _uniform(rng, t.weight_shape, np.sqrt(3.0 / t.shape[1])) for t in fam.targets
    }
    return SynthBase(fam, weights, _extra_base_tensors(fam, rng))


# --- a complete official checkpoint (every tensor the official DiT and conditioner hold) ----

# Targets whose Linear has a bias in the official model (the rest are bias-free).
_BIASED_TOP = frozenset(
    {
        "model.to_timestep_embed.0",
        "model.to_timestep_embed.2",
        "model.transformer.global_cond_embedder.0",
        "model.transformer.global_cond_embedder.2",
        SECONDS_CONDITIONER,
    }
)
_BIASED_BLOCK = frozenset({"ff.ff.0.proj", "ff.ff.2", "to_local_embed.0", "to_local_embed.2"})
_BLOCK_NORMS = ("pre_norm", "cross_attend_norm", "ff_norm")
_HEAD_NORMS = ("self_attn.q_norm", "self_attn.k_norm", "cross_attn.q_norm", "cross_attn.k_norm")


def official_full_shapes(fam: Family, *, memory_tokens: int = 64) -> dict[str, tuple[int, ...]]:
    """The key and shape of every tensor of an official full base of `fam` (reference/dit.md):
    target weights, the biases of the biased Linears, block and q/k RMSNorm gammas, the
    per-block `to_scale_shift_gate`, memory tokens, RoPE `inv_freq`, the prompt padding
    embedding and the seconds conditioner. The embed width must be a multiple of the head width."""
    t = fam.topology
    e = t.embed_dim
    if e % t.head_dim:
        raise ValueError(f"embed_dim {e} is not a multiple of the head width {t.head_dim}")
    out: dict[str, tuple[int, ...]] = {}
    for target in fam.targets:
        out[official_base_key(target.name)] = target.weight_shape
        biased = target.name in _BIASED_TOP or (
            target.block is not None and target.module in _BIASED_BLOCK
        )
        if biased:
            out[official_base_key(target.name, "bias")] = (target.shape[0],)
    for block in range(t.depth):
        for norm in _BLOCK_NORMS:
            out[official_base_key(block_target(block, norm), "gamma")] = (e,)
        for norm in _HEAD_NORMS:
            out[official_base_key(block_target(block, norm), "gamma")] = (t.head_dim,)
        gate = official_base_key(f"model.transformer.layers.{block}", "to_scale_shift_gate")
        out[gate] = (t.global_mult * e,)
    out[official_base_key("model.transformer", "memory_tokens")] = (memory_tokens, e)
    inv_freq = rotary_inv_freq(t.rope_dim)
    out[official_base_key("model.transformer.rotary_pos_emb", "inv_freq")] = inv_freq.shape
    out[official_base_key("conditioners.prompt", "padding_embedding")] = (t.cond_token_dim,)
    return out


def official_full_tensors(
    fam: Family, *, seed: int = 0, memory_tokens: int = 4, dtype: str = "F32"
) -> dict[str, np.ndarray]:
    """A complete official full base of `fam` (`official_full_shapes`) with values: the
    target weights of `synth_base`, gammas near 1, the real RoPE frequencies, small uniform
    values elsewhere. What a runtime that loads strictly (diffusers) needs."""
    base = synth_base(fam, seed=seed)
    rng = np.random.default_rng(seed + 1)
    by_key = {official_base_key(name): w for name, w in base.weights.items()}
    inv_freq = rotary_inv_freq(fam.topology.rope_dim)
    out: dict[str, np.ndarray] = {}
    for key, shape in official_full_shapes(fam, memory_tokens=memory_tokens).items():
        leaf = key.rpartition(".")[2]
        if key in by_key:
            value = by_key[key]
        elif leaf == "gamma":
            value = 1.0 + _uniform(rng, shape, 0.1)
        elif leaf == "inv_freq":
            value = inv_freq
        else:
            value = _uniform(rng, shape, 0.1 if leaf != "memory_tokens" else 0.02)
        out[key] = dtypes.cast(value, dtype)
    return out
