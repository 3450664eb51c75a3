"""The MLX SA3 DiT: runtime names and shapes of every target, forward/backward, training smoke.

The target table (`FAMILIES[f].targets`) is the contract: every DiT target must be an
`nn.Linear` / `nn.Conv1d` at its `mlx_name` with the table's shape, nothing else may be a
Linear / Conv1d, and an adapter trained on the model must pass `sa3ckpt validate --strict`.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sa3ckpt.adapters.checkpoint import save_checkpoint
from sa3ckpt.adapters.injection import adapter_modules, inject, trainable_parameters
from sa3ckpt.adapters.module_io import to_checkpoint
from sa3ckpt.models import (
    DIT_ONLY_EXCLUDE,
    DiT,
    DiTConfig,
    build_dit,
    inpaint_local_cond,
    training_local_cond,
)
from sa3ckpt.models.attention import CrossAttention, SelfAttention
from sa3ckpt.targets.families import FAMILIES
from sa3ckpt.targets.topology import Topology
from sa3ckpt.train import (
    rectified_flow_loss,
    rectified_flow_pair,
    sample_timesteps,
    shift_timesteps,
)

TINY = ["tiny-medium", "tiny-small"]
FIXTURE_BASE = Path(__file__).parent.parent / "fixtures/data/bases/tiny-medium.mlx.safetensors"
B, L, S = 2, 6, 3


def _model(family: str, seed: int = 0, **overrides: object) -> DiT:
    mx.random.seed(seed)  # module initialisers draw from the global generator
    settings = {"num_heads": 2, "memory_tokens": 2, **overrides}
    return build_dit(family, **settings)


def _inputs(top: Topology, seed: int = 1, length: int = L) -> dict[str, mx.array]:
    k = mx.random.split(mx.random.key(seed), 4)
    return {
        "x": mx.random.normal((B, length, top.io_channels), key=k[0]),
        "t": mx.random.uniform(shape=(B,), key=k[1]),
        "cond_tokens": mx.random.normal((B, S, top.cond_token_dim), key=k[2]),
        "global_cond": mx.random.normal((B, top.cond_token_dim), key=k[3]),
        "seconds": mx.array([5.0, 47.0]),
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


@pytest.mark.parametrize("family", TINY)
def test_seconds_conditioner_is_plain_arrays(family: str) -> None:
    model = _model(family)
    top = FAMILIES[family].topology
    params = dict(tree_flatten(model.parameters()))
    assert params["cond.seconds_total_weight"].shape == (top.cond_token_dim, top.seconds_features)
    assert params["cond.seconds_total_bias"].shape == (top.cond_token_dim,)
    assert not any(p.startswith("cond.seconds_total.") for p in params)
    token = model.cond.seconds_token(mx.array([0.0, 10.0, 1e6]))
    assert token.shape == (3, top.cond_token_dim)


def test_fixture_base_weights_fit_the_model() -> None:
    """The MLX-runtime base fixture loads: every key exists here with the same shape."""
    model = _model("tiny-medium")
    base = mx.load(str(FIXTURE_BASE))
    params = dict(tree_flatten(model.parameters()))
    for key, value in base.items():
        assert key in params, key
        assert params[key].shape == value.shape, key
    model.load_weights(list(base.items()), strict=False)
    model.set_dtype(mx.float32)
    out = model(**_inputs(FAMILIES["tiny-medium"].topology))
    assert np.all(np.isfinite(np.array(out)))


def test_head_count_and_config_checks() -> None:
    assert DiTConfig.for_family("medium").heads == 24  # 64-wide heads at real size
    assert DiTConfig.for_family("small").head_dim == 64
    assert DiTConfig.for_family("tiny-medium").heads == 1
    model = _model("tiny-medium", num_heads=4)
    assert model.transformer.layers[0].self_attn.heads == 4
    assert model.transformer.layers[0].self_attn.diff_lambda.shape == (4,)
    with pytest.raises(ValueError, match="divide embed_dim"):
        DiTConfig.for_family("tiny-small", num_heads=5)
    with pytest.raises(ValueError, match="conv_kernel must be odd"):
        DiTConfig(Topology(embed_dim=8, depth=1, differential=False, conv_kernel=2))
    with pytest.raises(ValueError, match="global_mult"):
        DiT(Topology(embed_dim=8, depth=1, differential=False, global_mult=4))
    with pytest.raises(ValueError, match="overrides"):
        build_dit(DiTConfig.for_family("tiny-small"), num_heads=2)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("family", TINY)
def test_forward_shape(family: str) -> None:
    model = _model(family)
    top = FAMILIES[family].topology
    out = model(**_inputs(top))
    assert out.shape == (B, L, top.io_channels) and out.dtype == mx.float32
    assert np.all(np.isfinite(np.array(out)))
    explicit = model(**_inputs(top), local_cond=training_local_cond(B, L, top.io_channels))
    assert np.array_equal(np.array(out), np.array(explicit))  # None = training default


def test_forward_rejects_wrong_shapes() -> None:
    model = _model("tiny-small")
    top = FAMILIES["tiny-small"].topology
    args = _inputs(top)
    with pytest.raises(ValueError, match="global_cond has shape"):
        model(**{**args, "global_cond": mx.zeros((B, top.cond_token_dim + 1))})
    with pytest.raises(ValueError, match="local_cond has shape"):
        model(**args, local_cond=mx.zeros((B, L, top.io_channels)))


def test_inpaint_local_cond_layout() -> None:
    context = mx.full((1, 3, 2), 7.0)
    cond = np.array(inpaint_local_cond(context, mx.array([[1, 0, 1]])))
    np.testing.assert_array_equal(cond[0, :, 0], [1, 0, 1])
    assert np.all(cond[..., 1:] == 7)
    default = np.array(training_local_cond(1, 3, 2))
    assert np.all(default[..., 0] == 1) and np.all(default[..., 1:] == 0)


@pytest.mark.parametrize("family", TINY)
def test_padding_never_reaches_real_positions(family: str) -> None:
    """With a mask, padded latents (whatever they hold) change nothing at real positions,
    and a short clip in a padded batch gives the output it gives alone."""
    model = _model(family)
    top = FAMILIES[family].topology
    args = _inputs(top)
    mask = mx.array([[True] * L, [True] * 4 + [False] * (L - 4)])
    out = np.array(model(**args, mask=mask))
    junk = args["x"].at[1, 4:].add(100.0)
    out_junk = np.array(model(**{**args, "x": junk}, mask=mask))
    assert np.array_equal(out[:, :4], out_junk[:, :4]) and np.array_equal(out[0], out_junk[0])
    alone = {k: v[1:2] for k, v in args.items()}
    alone["x"] = alone["x"][:, :4]
    np.testing.assert_allclose(np.array(model(**alone))[0], out[1, :4], rtol=1e-5, atol=1e-5)


def test_cond_mask_uses_the_padding_embedding() -> None:
    model = _model("tiny-medium")
    args = _inputs(FAMILIES["tiny-medium"].topology)
    cond_mask = mx.array([[True, True, False], [True, True, True]])
    a = np.array(model(**args, cond_mask=cond_mask))
    swapped = args["cond_tokens"].at[0, 2].add(5.0)
    b = np.array(model(**{**args, "cond_tokens": swapped}, cond_mask=cond_mask))
    assert np.array_equal(a, b)


def _reference_attention(q, k, v, heads: int, lam: np.ndarray, lam_init: float) -> np.ndarray:
    """Differential attention per the paper, written out in float64 with explicit maps."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    b, tq, _ = q.shape
    e = v.shape[-1]
    d = e // heads

    def heads_of(x: np.ndarray) -> np.ndarray:
        return x.reshape(b, x.shape[1], heads, d).transpose(0, 2, 1, 3)

    def softmax(s: np.ndarray) -> np.ndarray:
        s = np.exp(s - s.max(-1, keepdims=True))
        return s / s.sum(-1, keepdims=True)

    q1, q2 = heads_of(q[..., :e]), heads_of(q[..., e:])
    k1, k2 = heads_of(k[..., :e]), heads_of(k[..., e:])
    a1 = softmax(q1 @ k1.swapaxes(-1, -2) / math.sqrt(d))
    a2 = softmax(q2 @ k2.swapaxes(-1, -2) / math.sqrt(d))
    out = (a1 - lam[None, :, None, None] * a2) @ heads_of(v)
    out = out / np.sqrt(np.mean(out**2, axis=-1, keepdims=True) + 1e-6) * (1 - lam_init)
    return out.transpose(0, 2, 1, 3).reshape(b, tq, e)


def test_differential_attention_matches_reference() -> None:
    mx.random.seed(3)
    attn = CrossAttention(dim=8, heads=2, differential=True, layer_index=3)
    attn.diff_lambda = mx.array([0.3, 0.7])
    rng = np.random.default_rng(4)
    q = rng.normal(size=(2, 5, 16)).astype(np.float32)
    k = rng.normal(size=(2, 4, 16)).astype(np.float32)
    v = rng.normal(size=(2, 4, 8)).astype(np.float32)
    got = np.array(attn.attend(mx.array(q), mx.array(k), mx.array(v), None))
    want = _reference_attention(q, k, v, 2, np.array([0.3, 0.7]), attn.lambda_init)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert attn.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.9))


def test_standard_attention_has_no_lambda() -> None:
    attn = SelfAttention(dim=12, heads=3, differential=False)
    names = dict(tree_flatten(attn.parameters()))
    assert set(names) == {"to_qkv.weight", "to_out.weight"}
    assert attn.to_qkv.weight.shape == (36, 12)


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
    args = _inputs(top)
    target = mx.random.normal((B, L, top.io_channels), key=mx.random.key(9))
    _, grads = nn.value_and_grad(model, lambda m: rectified_flow_loss(m(**args), target))(model)
    flat = dict(tree_flatten(grads))
    assert set(flat) == set(trainable_parameters(model))
    dead = [k for k, g in flat.items() if k.endswith("lora_B") and not np.any(np.array(g))]
    assert dead == []


@pytest.mark.parametrize("family", TINY)
def test_train_dora_rows_and_validate(family: str, tmp_path: Path) -> None:
    """Inject, train 20 AdamW steps on a fixed batch, save, `validate --strict` passes."""
    model = _model(family)
    top = FAMILIES[family].topology
    exclude = list(DIT_ONLY_EXCLUDE)
    inject(model, "dora-rows", rank=2, alpha=2, exclude=exclude)
    trainable = set(trainable_parameters(model))
    frozen_before = {
        k: np.array(v) for k, v in tree_flatten(model.parameters()) if k not in trainable
    }
    adapters_before = {k: np.array(v) for k, v in trainable_parameters(model).items()}

    args = _inputs(top, seed=5)
    keys = mx.random.split(mx.random.key(6), 2)
    t = shift_timesteps("full", sample_timesteps("logit_normal", keys[0], B), L)
    x_t, v, _ = rectified_flow_pair(args.pop("x"), t, keys[1])
    args["t"] = t
    mask = mx.array([[True] * L, [True] * 4 + [False] * (L - 4)])

    def loss_fn(m: DiT) -> mx.array:
        return rectified_flow_loss(m(x_t, **args, mask=mask), v, mask)

    step = nn.value_and_grad(model, loss_fn)
    opt = optim.AdamW(learning_rate=3e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0)
    losses = []
    for _ in range(20):
        loss, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0]

    after = dict(tree_flatten(model.parameters()))
    for k, v0 in frozen_before.items():
        assert np.array_equal(np.array(after[k]), v0), k  # base weights bit-identical
    now = trainable_parameters(model)
    changed = {k.rsplit(".", 1)[1] for k in now if not np.array_equal(now[k], adapters_before[k])}
    assert changed == {"lora_A", "lora_B", "magnitude"}

    ckpt = to_checkpoint(
        model,
        "dora-rows",
        2,
        2,
        exclude=exclude,
        extra={"step": 20, "epoch": 0, "base_model": family},
    )
    assert set(ckpt.tensors) == set(adapter_modules(model))
    path = tmp_path / "a.safetensors"
    save_checkpoint(ckpt, path)
    cmd = [sys.executable, "-m", "sa3ckpt", "validate", "--strict", "--model", family, str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
