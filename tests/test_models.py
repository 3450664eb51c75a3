"""The MLX SA3 DiT: runtime names and shapes of every parameter, forward contract, adapters.

The target table (`FAMILIES[f].targets`) is the contract for adapters: every DiT target must
be an `nn.Linear` / `nn.Conv1d` at its `mlx_name` with the table's shape, nothing else may
be a Linear / Conv1d, and an adapter trained on the model must pass `sa3ckpt validate
--strict` (tests/test_train_smoke.py trains one on a loaded base and checks). The full
parameter set must be exactly an official base's, in MLX runtime names
(`synth.official_full_shapes`). That the function is the official one is test_dit_oracle's
job (against diffusers).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sa3ckpt.adapters.injection import inject, trainable_parameters
from sa3ckpt.layout import base_layout
from sa3ckpt.models import (
    PROMPT_TOKENS,
    DiT,
    DiTConfig,
    build_conditioner,
    build_dit,
    inpaint_local_cond,
    training_local_cond,
)
from sa3ckpt.names.base_keys import official_to_mlx_base_key
from sa3ckpt.synth import official_full_shapes
from sa3ckpt.targets.families import FAMILIES
from sa3ckpt.targets.topology import Topology
from sa3ckpt.train import (
    rectified_flow_loss,
)

TINY = ["tiny-medium", "tiny-small"]
B, T, S = 2, 6, 3
MEMORY = 4


def _model(family: str, seed: int = 0, **overrides: object) -> DiT:
    mx.random.seed(seed)  # module initialisers draw from the global generator
    model = build_dit(family, **{"memory_tokens": MEMORY, **overrides})
    return model


def _inputs(top: Topology, seed: int = 1, frames: int = T) -> dict[str, mx.array]:
    k = mx.random.split(mx.random.key(seed), 4)
    return {
        "x": mx.random.normal((B, top.io_channels, frames), key=k[0]),
        "t": mx.random.uniform(shape=(B,), key=k[1]),
        "cross_attn_cond": mx.random.normal((B, S, top.cond_token_dim), key=k[2]),
        "global_cond": mx.random.normal((B, top.cond_token_dim), key=k[3]),
    }


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {p: m for p, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))}


def _weight_2d_shape(module: nn.Module) -> tuple[int, int]:
    w = module.weight
    if isinstance(module, nn.Conv1d):  # MLX (out, k, in); the canonical view is (out, in·k)
        return (w.shape[0], w.shape[1] * w.shape[2])
    return tuple(w.shape)


# --------------------------------------------------------------------------- names and shapes


@pytest.mark.parametrize("family", TINY)
def test_every_target_is_a_layer_at_its_mlx_name(family: str) -> None:
    model = _model(family)
    layers = _layers(model)
    fam = FAMILIES[family]
    for target in fam.targets:
        if target.group == "conditioner":
            continue
        module = layers.get(target.mlx_name)
        assert module is not None, f"no layer at {target.mlx_name}"
        kind = nn.Conv1d if target.layer_kind == "conv1d" else nn.Linear
        assert isinstance(module, kind), target.mlx_name
        assert _weight_2d_shape(module) == target.shape, target.mlx_name
        if target.layer_kind == "conv1d":
            out, k_in, k = target.weight_shape
            assert module.weight.shape == (out, k, k_in)  # MLX conv layout (out, k, in)


@pytest.mark.parametrize("family", TINY)
def test_no_layer_outside_the_target_table(family: str) -> None:
    fam = FAMILIES[family]
    wanted = {t.mlx_name for t in fam.targets if t.group != "conditioner"}
    assert set(_layers(_model(family))) == wanted


@pytest.mark.parametrize("family", [*TINY, "small", "medium"])
def test_parameters_are_exactly_an_official_base_in_mlx_names(family: str) -> None:
    """Every tensor of an official full base (biases, gammas, gates, memory tokens, RoPE
    table), in MLX runtime names and layouts, is a parameter with that shape, and the
    model has no other; the three conditioner arrays are the Conditioner's."""
    fam = FAMILIES[family]
    official = official_full_shapes(fam, memory_tokens=MEMORY)
    expected: dict[str, tuple[int, ...]] = {}
    for key, shape in official.items():
        mlx_key = official_to_mlx_base_key(key)
        assert mlx_key is not None, key
        if mlx_key.endswith("conv.weight"):
            shape = base_layout("mlx", "conv1d").stored_shape(
                (shape[0], shape[1] * shape[2]), shape[2]
            )
        expected[mlx_key] = tuple(shape)
    dit_params = {k: tuple(v.shape) for k, v in tree_flatten(_model(family).parameters())}
    cond = build_conditioner(DiTConfig.for_family(family))
    cond_params = {f"cond.{k}": tuple(v.shape) for k, v in tree_flatten(cond.parameters())}
    assert {**dit_params, **cond_params} == expected
    assert not set(dit_params) & set(cond_params)


def test_published_sizes() -> None:
    medium, small = DiTConfig.for_family("medium"), DiTConfig.for_family("small")
    assert (medium.heads, medium.head_dim, small.heads) == (24, 64, 16)
    assert medium.memory_tokens == 64 and medium.block_norm_eps == 1e-5
    assert medium.qk_norm_eps == 1e-6 and medium.max_seconds == 384.0
    rope = build_dit("tiny-medium").transformer.rotary_pos_emb
    assert rope.inv_freq.shape == (2,) and rope.inv_freq.dtype == mx.float32


def test_config_checks() -> None:
    for bad, match in (
        (Topology(embed_dim=12, depth=1, differential=False, head_dim=8), "divide"),
        (Topology(embed_dim=12, depth=1, differential=False, head_dim=6), "multiple of 4"),
        (Topology(embed_dim=8, depth=1, differential=False, head_dim=4, conv_kernel=2), "odd"),
        (Topology(embed_dim=8, depth=1, differential=False, head_dim=4, global_mult=4), "global"),
    ):
        with pytest.raises(ValueError, match=match):
            DiTConfig(bad)
    with pytest.raises(ValueError, match="memory_tokens"):
        DiTConfig.for_family("tiny-small", memory_tokens=-1)
    with pytest.raises(ValueError, match="overrides"):
        build_dit(DiTConfig.for_family("tiny-small"), memory_tokens=2)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("family", TINY)
def test_forward_shape_and_local_add(family: str) -> None:
    model = _model(family)
    top = FAMILIES[family].topology
    args = _inputs(top)
    out = model(**args)
    assert out.shape == (B, top.io_channels, T) and out.dtype == mx.float32
    assert np.all(np.isfinite(np.array(out)))
    local = training_local_cond(B, T, top.io_channels)
    with_local = np.array(model(**args, local_add_cond=local))
    assert not np.allclose(with_local, np.array(out))  # None means no local add at all


def test_fp16_run_keeps_dtype() -> None:
    model = _model("tiny-medium")
    model.set_dtype(mx.float16)
    args = {
        k: v.astype(mx.float16) if k != "t" else v
        for k, v in _inputs(FAMILIES["tiny-medium"].topology).items()
    }
    out = model(**args)
    assert out.dtype == mx.float16 and np.all(np.isfinite(np.array(out.astype(mx.float32))))


def test_forward_rejects_wrong_shapes() -> None:
    model = _model("tiny-small")
    top = FAMILIES["tiny-small"].topology
    args = _inputs(top)
    with pytest.raises(ValueError, match="global_cond has shape"):
        model(**{**args, "global_cond": mx.zeros((B, top.cond_token_dim + 1))})
    with pytest.raises(ValueError, match="local_add_cond has shape"):
        model(**args, local_add_cond=mx.zeros((B, top.io_channels, T)))
    with pytest.raises(ValueError, match="x has shape"):
        model(**{**args, "x": mx.zeros((B, T, top.io_channels))})


def test_local_cond_layout() -> None:
    latent = mx.full((1, 2, 3), 7.0)  # (B, io, T)
    cond = np.array(inpaint_local_cond(latent, mx.array([[1, 0, 1]])))
    assert cond.shape == (1, 3, 3)
    np.testing.assert_array_equal(cond[0, 0], [1, 0, 1])
    assert np.all(cond[:, 1:] == 7)
    default = np.array(training_local_cond(1, 3, 2))
    assert np.all(default[:, 0] == 1) and np.all(default[:, 1:] == 0)


def test_memory_tokens_are_prepended_and_dropped() -> None:
    """Zero memory tokens is a valid model; the tokens reach the output only through
    attention, so changing them changes the frames but never the output length."""
    top = FAMILIES["tiny-medium"].topology
    args = _inputs(top)
    assert _model("tiny-medium", memory_tokens=0)(**args).shape == (B, top.io_channels, T)
    model = _model("tiny-medium", memory_tokens=3)
    before = np.array(model(**args))
    model.transformer.memory_tokens = model.transformer.memory_tokens + 1.0
    after = np.array(model(**args))
    assert after.shape == (B, top.io_channels, T) and not np.allclose(before, after)


# --------------------------------------------------------------------------- conditioner


def test_conditioner_builds_official_context() -> None:
    top = FAMILIES["tiny-medium"].topology
    cond = build_conditioner("tiny-medium")
    rng = np.random.default_rng(0)
    cond.padding_embedding = mx.array(rng.standard_normal(top.cond_token_dim), dtype=mx.float32)
    cond.seconds_total_weight = mx.array(
        rng.standard_normal((top.cond_token_dim, top.seconds_features)), dtype=mx.float32
    )
    cond.seconds_total_bias = mx.array(rng.standard_normal(top.cond_token_dim), dtype=mx.float32)
    prompt = mx.array(rng.standard_normal((2, 5, top.cond_token_dim)), dtype=mx.float32)
    mask = mx.array([[True] * 5, [True, True, False, False, False]])
    seconds = mx.array([12.0, 1000.0])
    cross, glob = cond(prompt, seconds, mask)
    assert cross.shape == (2, PROMPT_TOKENS + 1, top.cond_token_dim)
    c = np.array(cross)
    pad = np.array(cond.padding_embedding)
    np.testing.assert_array_equal(c[0, :5], np.array(prompt)[0])
    np.testing.assert_array_equal(c[1, 2], pad)
    np.testing.assert_array_equal(
        c[:, 5:PROMPT_TOKENS], np.broadcast_to(pad, c[:, 5:PROMPT_TOKENS].shape)
    )
    np.testing.assert_array_equal(c[:, -1], np.array(glob))
    # clamped to [0, 384]: 1000 s is 384 s, bit for bit
    clamped = np.array(cond.seconds_embedding(mx.array([384.0, -5.0, 0.0])))
    np.testing.assert_array_equal(np.array(glob)[1], clamped[0])
    np.testing.assert_array_equal(clamped[1], clamped[2])
    # /384, [cos | sin] of 2π s f, Linear — in float64 here. The fp32 angle 2π s f reaches
    # 2π·10⁴·s rad, whose rounding (not a formula difference) sets the tolerance.
    half = top.seconds_features // 2
    f = np.exp(np.log(0.5) + np.arange(half) / (half - 1) * (np.log(1e4) - np.log(0.5)))
    s = np.array([0.0, 3.0, 12.0]) / 384
    ang = 2 * np.pi * s[:, None] * f[None, :]
    feats = np.concatenate([np.cos(ang), np.sin(ang)], -1)
    w = np.array(cond.seconds_total_weight, np.float64)
    want = feats @ w.T + np.array(cond.seconds_total_bias, np.float64)
    got = np.array(cond.seconds_embedding(mx.array([0.0, 3.0, 12.0])))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="more than"):
        cond(mx.zeros((1, PROMPT_TOKENS + 1, top.cond_token_dim)), mx.array([1.0]))
    short, _ = cond(prompt, seconds, mask, length=None)
    assert short.shape == (2, 6, top.cond_token_dim)


# --------------------------------------------------------------------------- adapters


def test_fresh_adapter_reproduces_the_base_model() -> None:
    model = _model("tiny-small")
    args = _inputs(FAMILIES["tiny-small"].topology)
    before = np.array(model(**args))
    inject(model, "lora", rank=2, alpha=2)
    np.testing.assert_allclose(np.array(model(**args)), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", TINY)
def test_gradient_reaches_every_adapter(family: str) -> None:
    """Every injected target lies on the forward path: its lora_B gets a nonzero gradient."""
    model = _model(family)
    top = FAMILIES[family].topology
    names = inject(model, "lora", rank=2, alpha=2)
    assert len(names) == len(FAMILIES[family].dit_targets)
    args = {**_inputs(top), "local_add_cond": training_local_cond(B, T, top.io_channels)}
    target = mx.random.normal((B, top.io_channels, T), key=mx.random.key(9))
    _, grads = nn.value_and_grad(model, lambda m: rectified_flow_loss(m(**args), target))(model)
    flat = dict(tree_flatten(grads))
    assert set(flat) == set(trainable_parameters(model))
    dead = [k for k, g in flat.items() if k.endswith("lora_B") and not np.any(np.array(g))]
    assert dead == []
