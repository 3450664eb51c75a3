"""An independent float64 NumPy reference of the official SA3 DiT forward and seconds conditioner.

Written only from the facts in ../shared/reference/dit.md (and the key names of an official full
base), sharing no code with `sa3ckpt.models`, so the MLX model is checked against the
description of the official function rather than against itself. It reads the weights in
OFFICIAL naming (`model.model.…`, `conditioner.conditioners.…`, Conv1d weights (out, in, k),
`*.gamma`) and takes the head width as an argument, so the tiny test families (head widths 8
and 4, Conv1d kernel 3 with 'same' padding k // 2, any number of memory tokens) are covered
as well as the real 64-wide heads.

Precision. Everything is computed in float64 except where the official fp32 function rounds an
*angle* before taking its cosine and sine; there the rounding is part of the function:

- Fourier features (timestep and seconds): the frequency table
  f_i = exp(ln 0.5 + i/(n-1)·(ln 1e4 − ln 0.5)) is built in float64 from the formula and
  rounded once to float32; the angle is formed in float32 in the official order
  ((t·f)·2)·π (π rounded to float32); only then are cos and sin taken, in float64. At the top
  frequency (1e4) the angle reaches 2π·1e4 rad, where the float32 rounding of the angle alone
  moves a feature by ~1e-3, so a float64 angle would be a different function.
- RoPE angles: dit.md says RoPE runs in fp32, so the angle position·inv_freq is one float32
  product of the float32 position and the stored float32 `inv_freq`; cos/sin in float64.

Local add (dit.md 17): the per-block `to_local_embed` MLP runs on the (B, T, io + 1) input and
its OUTPUT is left-padded with zeros over the memory tokens, so memory tokens get nothing added
(not the constant to_local_embed(0)); that is how the official code pads (`_left_pad_to_match`
of the embedding) and what diffusers does (adds to the audio positions only).

`Rules` holds the architectural facts as data; the defaults are the official DiT. A test can
replace one fact (`dataclasses.replace(OFFICIAL, gate="plain")`) to prove that a comparison
against this reference is sensitive to it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

PREFIX = "model.model."
SECONDS_KEY = "conditioner.conditioners.seconds_total.embedder.embedding.1"
PADDING_KEY = "conditioner.conditioners.prompt.padding_embedding"
SECONDS_MAX = 384.0
FOURIER_MIN_FREQ = 0.5
FOURIER_MAX_FREQ = 1e4
ROPE_BASE = 10000.0

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Rules:
    """The facts of dit.md that a test may perturb one at a time; defaults = official."""

    gate: str = "one_minus"  # x += sigmoid(1 - gate) * branch  ("plain": sigmoid(gate))
    local_placement: str = "after_cross"  # ("before_cross": local add before cross-attention)
    local_on_memory: bool = False  # True: MLP of zero-padded input, memory tokens get MLP(0)
    rope_layout: str = "halves"  # rotate_half on halves ("interleaved": pairs (2i, 2i+1))
    rope_all_dims: bool = False  # True: rotate all head dims instead of the first half
    qk_norm_before_rope: bool = True
    fourier_order: str = "cos_sin"  # ("sin_cos")
    fourier_angle_fp32: bool = True  # False: the angle in float64 (not the official function)
    modulation_order: tuple[str, ...] = (
        "scale_sa",
        "shift_sa",
        "gate_sa",
        "scale_ff",
        "shift_ff",
        "gate_ff",
    )
    self_qkv_standard: tuple[str, ...] = ("q", "k", "v")
    self_qkv_differential: tuple[str, ...] = ("q", "k", "v", "q2", "k2")
    cross_q_differential: tuple[str, ...] = ("q", "q2")
    cross_kv_standard: tuple[str, ...] = ("k", "v")
    cross_kv_differential: tuple[str, ...] = ("k", "k2", "v")
    ff_value_first: bool = True  # ff.ff.0.proj: first half value, second half gate
    conv_flipped: bool = False  # True: true convolution instead of PyTorch cross-correlation
    memory_first: bool = True  # memory tokens prepended (False: appended)
    per_block_modulation: bool = True  # add each block's learned to_scale_shift_gate


OFFICIAL = Rules()

_GATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "one_minus": lambda g: _sigmoid(1.0 - g),
    "plain": lambda g: _sigmoid(g),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


def _w(weights: Weights, key: str) -> np.ndarray:
    return np.asarray(weights[key], dtype=np.float64)


def _linear(x: np.ndarray, weights: Weights, name: str, bias: bool) -> np.ndarray:
    out = x @ _w(weights, f"{name}.weight").T
    return out + _w(weights, f"{name}.bias") if bias else out


def _mlp(x: np.ndarray, weights: Weights, name: str, bias: bool) -> np.ndarray:
    """`name.0` Linear -> SiLU -> `name.2` Linear (the layout of every SA3 two-layer MLP)."""
    return _linear(_silu(_linear(x, weights, f"{name}.0", bias)), weights, f"{name}.2", bias)


def _rms_norm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * gamma


def frequency_table(features: int) -> np.ndarray:
    """The float32 Fourier frequencies: the float64 formula of dit.md 2, rounded once."""
    half = features // 2
    lo, hi = math.log(FOURIER_MIN_FREQ), math.log(FOURIER_MAX_FREQ)
    ramp = np.arange(half, dtype=np.float64) / (half - 1)
    return np.exp(lo + ramp * (hi - lo)).astype(np.float32)


def fourier_features(values: np.ndarray, features: int, rules: Rules = OFFICIAL) -> np.ndarray:
    """[cos | sin] of 2π·v·f (B, features); the angle rounded as the official fp32 code does."""
    freqs = frequency_table(features)
    v32 = np.asarray(values, dtype=np.float32)[:, None]
    if rules.fourier_angle_fp32:
        angle = (((v32 * freqs[None]) * np.float32(2.0)) * np.float32(np.pi)).astype(np.float64)
    else:
        angle = v32.astype(np.float64) * freqs[None].astype(np.float64) * 2.0 * np.pi
    halves = {"cos_sin": (np.cos(angle), np.sin(angle)), "sin_cos": (np.sin(angle), np.cos(angle))}
    return np.concatenate(halves[rules.fourier_order], axis=-1)


def _conv1d_same(x: np.ndarray, weight: np.ndarray, flipped: bool) -> np.ndarray:
    """PyTorch Conv1d (cross-correlation), weight (out, in, k), zero padding k // 2, no bias."""
    k = weight.shape[2]
    if flipped:
        weight = weight[:, :, ::-1]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (0, 0), (pad, k - 1 - pad)))
    frames = x.shape[2]
    taps = np.stack([padded[:, :, j : j + frames] for j in range(k)], axis=-1)  # (B, in, T, k)
    return np.einsum("bitk,oik->bot", taps, weight)


def _rope_angles(seq: int, inv_freq: np.ndarray, head_dim: int, rules: Rules) -> np.ndarray:
    """(S, n) angles position·inv_freq, one float32 product as in the official fp32 RoPE."""
    if rules.rope_all_dims:
        inv_freq = 1.0 / ROPE_BASE ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    positions = np.arange(seq, dtype=np.float32)
    return (positions[:, None] * inv_freq.astype(np.float32)[None]).astype(np.float64)


def _apply_rope(x: np.ndarray, angles: np.ndarray, rules: Rules) -> np.ndarray:
    """Rotate the first 2n dims of every head of x (B, S, H, D) by angles (S, n)."""
    n = angles.shape[1]
    cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
    rot, rest = x[..., : 2 * n], x[..., 2 * n :]
    if rules.rope_layout == "halves":
        a, b = rot[..., :n], rot[..., n:]
        rotated = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    else:
        a, b = rot[..., 0::2], rot[..., 1::2]
        rotated = np.stack([a * cos - b * sin, b * cos + a * sin], axis=-1).reshape(rot.shape)
    return np.concatenate([rotated, rest], axis=-1)


def _sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Non-causal softmax attention, scale 1/sqrt(head dim); (B, S, H, D) in and out."""
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", scores, v)


def _split(x: np.ndarray, names: tuple[str, ...], head_dim: int) -> dict[str, np.ndarray]:
    """Fused projection (B, S, n·E) -> {name: (B, S, H, D)} in the given block order."""
    parts = np.split(x, len(names), axis=-1)
    return {n: p.reshape(*p.shape[:2], -1, head_dim) for n, p in zip(names, parts, strict=True)}


@dataclass(frozen=True)
class _Attn:
    """One attention module's weights and settings, shared by self- and cross-attention."""

    weights: Weights
    name: str
    head_dim: int
    eps: float
    rules: Rules

    def norm(self, x: np.ndarray, which: str) -> np.ndarray:
        return _rms_norm(x, _w(self.weights, f"{self.name}.{which}_norm.gamma"), self.eps)

    def attend(self, parts: dict[str, np.ndarray], angles: np.ndarray | None) -> np.ndarray:
        """Per-head q/k norms (q and q2 share q_norm, k and k2 share k_norm), RoPE when given,
        then SDPA, or the difference of two SDPAs sharing v (differential, no lambda)."""
        for key in ("q", "k", "q2", "k2"):
            if key not in parts:
                continue
            x = parts[key]
            if angles is not None and not self.rules.qk_norm_before_rope:
                x = _apply_rope(x, angles, self.rules)
            x = self.norm(x, key[0])
            if angles is not None and self.rules.qk_norm_before_rope:
                x = _apply_rope(x, angles, self.rules)
            parts[key] = x
        out = _sdpa(parts["q"], parts["k"], parts["v"])
        if "q2" in parts:
            out = out - _sdpa(parts["q2"], parts["k2"], parts["v"])
        merged = out.reshape(*out.shape[:2], -1)
        return _linear(merged, self.weights, f"{self.name}.to_out", bias=False)


def _self_attention(
    h: np.ndarray, attn: _Attn, angles: np.ndarray, differential: bool
) -> np.ndarray:
    rules = attn.rules
    order = rules.self_qkv_differential if differential else rules.self_qkv_standard
    qkv = _linear(h, attn.weights, f"{attn.name}.to_qkv", bias=False)
    return attn.attend(_split(qkv, order, attn.head_dim), angles)


def _cross_attention(
    h: np.ndarray, context: np.ndarray, attn: _Attn, differential: bool
) -> np.ndarray:
    rules = attn.rules
    q_order = rules.cross_q_differential if differential else ("q",)
    kv_order = rules.cross_kv_differential if differential else rules.cross_kv_standard
    q = _split(_linear(h, attn.weights, f"{attn.name}.to_q", bias=False), q_order, attn.head_dim)
    kv = _linear(context, attn.weights, f"{attn.name}.to_kv", bias=False)
    return attn.attend({**q, **_split(kv, kv_order, attn.head_dim)}, None)


@dataclass(frozen=True)
class _Model:
    """Everything a block needs besides its own index."""

    weights: Weights
    head_dim: int
    differential: bool
    memory: int
    block_eps: float
    qk_eps: float
    rules: Rules


def _pad_memory(x: np.ndarray, memory: int, memory_first: bool) -> np.ndarray:
    """Zero rows over the memory-token positions of a (B, T, C) sequence."""
    zeros = np.zeros((x.shape[0], memory, x.shape[2]))
    return np.concatenate([zeros, x] if memory_first else [x, zeros], axis=1)


def _local_embedding(m: _Model, name: str, local_seq: np.ndarray) -> np.ndarray:
    if m.rules.local_on_memory:
        return _mlp(_pad_memory(local_seq, m.memory, m.rules.memory_first), m.weights, name, True)
    return _pad_memory(_mlp(local_seq, m.weights, name, True), m.memory, m.rules.memory_first)


def _block(
    m: _Model,
    index: int,
    x: np.ndarray,
    context: np.ndarray,
    modulation: np.ndarray,
    angles: np.ndarray,
    local_seq: np.ndarray | None,
) -> np.ndarray:
    name = f"{PREFIX}transformer.layers.{index}"
    rules = m.rules
    w = m.weights
    if rules.per_block_modulation:
        modulation = modulation + _w(w, f"{name}.to_scale_shift_gate")
    chunk = dict(zip(rules.modulation_order, np.split(modulation, 6, axis=-1), strict=True))
    gate = _GATES[rules.gate]

    def modulated(norm: str, kind: str) -> np.ndarray:
        h = _rms_norm(x, _w(w, f"{name}.{norm}.gamma"), m.block_eps)
        return h * (1.0 + chunk[f"scale_{kind}"][:, None]) + chunk[f"shift_{kind}"][:, None]

    def local_add(where: str) -> np.ndarray:
        if local_seq is None or rules.local_placement != where:
            return np.zeros(())
        return _local_embedding(m, f"{name}.to_local_embed", local_seq)

    self_attn = _Attn(w, f"{name}.self_attn", m.head_dim, m.qk_eps, rules)
    x = x + gate(chunk["gate_sa"])[:, None] * _self_attention(
        modulated("pre_norm", "sa"), self_attn, angles, m.differential
    )
    x = x + local_add("before_cross")
    cross_attn = _Attn(w, f"{name}.cross_attn", m.head_dim, m.qk_eps, rules)
    h = _rms_norm(x, _w(w, f"{name}.cross_attend_norm.gamma"), m.block_eps)
    x = x + _cross_attention(h, context, cross_attn, m.differential)
    x = x + local_add("after_cross")
    value, ff_gate = np.split(
        _linear(modulated("ff_norm", "ff"), w, f"{name}.ff.ff.0.proj", True), 2, -1
    )
    if not rules.ff_value_first:
        value, ff_gate = ff_gate, value
    ff = _linear(value * _silu(ff_gate), w, f"{name}.ff.ff.2", bias=True)
    return x + gate(chunk["gate_ff"])[:, None] * ff


def _depth(weights: Weights) -> int:
    pattern = re.compile(re.escape(PREFIX) + r"transformer\.layers\.(\d+)\.pre_norm\.gamma$")
    return len([k for k in weights if pattern.match(k)])


def reference_dit(
    weights: Weights,
    x: np.ndarray,
    t: np.ndarray,
    cross_attn_cond: np.ndarray,
    global_cond: np.ndarray,
    local_add_cond: np.ndarray | None = None,
    *,
    block_eps: float = 1e-5,
    qk_eps: float = 1e-6,
    head_dim: int,
    rules: Rules = OFFICIAL,
) -> np.ndarray:
    """The official SA3 DiT velocity (B, io, T) for x (B, io, T) channels-first, t (B,),
    cross_attn_cond (B, N, D) (already padded + seconds token), global_cond (B, D) and
    local_add_cond (B, io + 1, T) = [mask | masked latent] or None (skipped)."""
    w = weights
    embed = _w(w, f"{PREFIX}transformer.project_in.weight").shape[0]
    differential = (
        _w(w, f"{PREFIX}transformer.layers.0.self_attn.to_qkv.weight").shape[0] == 5 * embed
    )
    memory_tokens = _w(w, f"{PREFIX}transformer.memory_tokens")
    memory = memory_tokens.shape[0]
    model = _Model(w, head_dim, differential, memory, block_eps, qk_eps, rules)

    x = np.asarray(x, dtype=np.float64)
    x = _conv1d_same(x, _w(w, f"{PREFIX}preprocess_conv.weight"), rules.conv_flipped) + x
    h = _linear(x.transpose(0, 2, 1), w, f"{PREFIX}transformer.project_in", bias=False)
    mem = np.broadcast_to(memory_tokens, (h.shape[0], *memory_tokens.shape))
    h = np.concatenate([mem, h] if rules.memory_first else [h, mem], axis=1)

    features = _w(w, f"{PREFIX}to_timestep_embed.0.weight").shape[1]
    t_emb = _mlp(fourier_features(t, features, rules), w, f"{PREFIX}to_timestep_embed", True)
    context = _mlp(np.asarray(cross_attn_cond, np.float64), w, f"{PREFIX}to_cond_embed", False)
    g = _mlp(np.asarray(global_cond, np.float64), w, f"{PREFIX}to_global_embed", False) + t_emb
    modulation = _mlp(g, w, f"{PREFIX}transformer.global_cond_embedder", True)

    angles = _rope_angles(
        h.shape[1], _w(w, f"{PREFIX}transformer.rotary_pos_emb.inv_freq"), head_dim, rules
    )
    local_seq = None
    if local_add_cond is not None:
        local_seq = np.asarray(local_add_cond, dtype=np.float64).transpose(0, 2, 1)
    for index in range(_depth(w)):
        h = _block(model, index, h, context, modulation, angles, local_seq)

    h = h[:, memory:] if rules.memory_first else h[:, : h.shape[1] - memory]
    out = _linear(h, w, f"{PREFIX}transformer.project_out", bias=False).transpose(0, 2, 1)
    return _conv1d_same(out, _w(w, f"{PREFIX}postprocess_conv.weight"), rules.conv_flipped) + out


def reference_seconds(weights: Weights, seconds: np.ndarray) -> np.ndarray:
    """The seconds conditioner (B, D): clamp to [0, 384] and divide by 384 (float32, as the
    official fp32 code), [cos | sin] Fourier features, `embedding.1` Linear with bias."""
    s = np.clip(np.asarray(seconds, dtype=np.float32), np.float32(0.0), np.float32(SECONDS_MAX))
    normalised = s / np.float32(SECONDS_MAX)
    features = _w(weights, f"{SECONDS_KEY}.weight").shape[1]
    return _linear(fourier_features(normalised, features), weights, SECONDS_KEY, bias=True)


def reference_conditioning(
    weights: Weights, prompt: np.ndarray, mask: np.ndarray, seconds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(cross_attn_cond, global_cond) of dit.md 19-20: prompt tokens (B, N, D) with masked-out
    positions replaced by the padding embedding, then the seconds token; global = seconds."""
    padding = _w(weights, PADDING_KEY)
    tokens = np.where(np.asarray(mask, bool)[..., None], np.asarray(prompt, np.float64), padding)
    emb = reference_seconds(weights, seconds)
    return np.concatenate([tokens, emb[:, None]], axis=1), emb
