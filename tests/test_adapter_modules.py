"""Trainable adapter modules on a toy model laid out like the SA3 DiT MLX runtime.

The toy model has the runtime's module paths (a `transformer.layers` list, `ff.ff.0.proj`,
`to_local_embed.seq.N`, a k=3 `preprocess_conv`, an fp16 Linear), so injection, naming and
saving are exercised on the same spellings the real model uses.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sa3ckpt.adapters.checkpoint import load_checkpoint, save_checkpoint
from sa3ckpt.adapters.formulas import TargetAdapter, adapted_weight, decompose_weight, merge
from sa3ckpt.adapters.injection import adapter_modules, inject, trainable_parameters
from sa3ckpt.adapters.module_io import load_into, state_dict, to_checkpoint
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.adapters.wrappers import AdaptedConv1d, AdaptedLinear
from sa3ckpt.layout import from_canonical_2d, to_canonical_2d
from sa3ckpt.names import format_adapter_key
from tests.reference_math import ref_adapted, ref_blend_adapted

E = 8
RANK = 2
ALPHA = 4
TYPES = list(ADAPTER_TYPES)
DECOMPOSED = [t for t, k in ADAPTER_TYPES.items() if k.is_weight_decomposed]


class SelfAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_qkv = nn.Linear(E, 3 * E)
        self.to_out = nn.Linear(E, E)

    def __call__(self, x: mx.array) -> mx.array:
        q, k, v = mx.split(self.to_qkv(x), 3, axis=-1)
        return self.to_out(mx.tanh(q * k) + v)


class CrossAttn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q = nn.Linear(E, E)
        self.to_kv = nn.Linear(E, 2 * E)
        self.to_out = nn.Linear(E, E)

    def __call__(self, x: mx.array, ctx: mx.array) -> mx.array:
        k, v = mx.split(self.to_kv(ctx), 2, axis=-1)
        return self.to_out(mx.tanh(self.to_q(x) * k) + v)


class Proj(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(E, 2 * E)

    def __call__(self, x: mx.array) -> mx.array:
        return self.proj(x)


class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ff = [Proj(), nn.GELU(), nn.Linear(2 * E, E)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.ff:
            x = layer(x)
        return x


class LocalEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seq = [nn.Linear(E, E), nn.SiLU(), nn.Linear(E, E, bias=False)]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.seq:
            x = layer(x)
        return x


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = SelfAttn()
        self.cross_attn = CrossAttn()
        self.ff = FeedForward()
        self.to_local_embed = LocalEmbed()

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn(x)
        x = x + self.cross_attn(x, x)
        x = x + self.ff(x)
        return x + self.to_local_embed(x)


class Transformer(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.project_in = nn.Linear(E, E)
        self.layers = [Block() for _ in range(blocks)]
        self.project_out = nn.Linear(E, E)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.project_in(x)
        for block in self.layers:
            x = block(x)
        return self.project_out(x)


class ToyDiT(nn.Module):
    """A few-hundred-parameter stand-in with the SA3 DiT's MLX runtime module paths."""

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        self.preprocess_conv = nn.Conv1d(E, E, kernel_size=3, padding=1)
        half = nn.Linear(E, E)
        half.weight = half.weight.astype(mx.float16)
        half.bias = half.bias.astype(mx.float16)
        self.to_timestep_embed = [half, nn.SiLU(), nn.Linear(E, E)]
        self.transformer = Transformer(blocks)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.preprocess_conv(x)
        t = x
        for layer in self.to_timestep_embed:
            t = layer(t)
        return self.transformer(x + t)


def toy(seed: int = 0) -> ToyDiT:
    mx.random.seed(seed)
    model = ToyDiT()
    mx.eval(model.parameters())
    return model


def inputs(seed: int = 1, shape: tuple[int, ...] = (2, 5, E)) -> mx.array:
    return mx.random.normal(shape, key=mx.random.key(seed))


ALL_NAMES = {
    "model.preprocess_conv",
    "model.to_timestep_embed.0",
    "model.to_timestep_embed.2",
    "model.transformer.project_in",
    "model.transformer.project_out",
    *(
        f"model.transformer.layers.{n}.{suffix}"
        for n in range(3)
        for suffix in (
            "self_attn.to_qkv",
            "self_attn.to_out",
            "cross_attn.to_q",
            "cross_attn.to_kv",
            "cross_attn.to_out",
            "ff.ff.0.proj",
            "ff.ff.2",
            "to_local_embed.0",
            "to_local_embed.2",
        )
    ),
}


def rel_err(a: mx.array, b: mx.array) -> float:
    a64, b64 = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    return float(np.max(np.abs(a64 - b64)) / max(np.max(np.abs(b64)), 1e-30))


def randomize(model: nn.Module, seed: int = 7) -> None:
    """Non-trivial adapter params (positive magnitudes), as after some training."""
    key = mx.random.key(seed)
    for module in adapter_modules(model).values():
        for name, value in module.adapter_params().items():
            key, sub = mx.random.split(key)
            noise = mx.random.normal(value.shape, key=sub)
            if name.startswith("magnitude"):
                setattr(module, name, value * (1.0 + 0.3 * mx.tanh(noise)))
            else:
                setattr(module, name, 0.3 * noise)
    mx.eval(model.parameters())


def expected_output(module: AdaptedLinear | AdaptedConv1d, x: mx.array) -> mx.array:
    """The layer run with the formulas' merged weight, independently of the module forward."""
    w0 = to_canonical_2d(module.base.weight, module.LAYOUT).astype(mx.float32)
    params = {n: module[n] for n in module.param_names}
    if module.kind.xs:
        params.update(U=module["U"], V=module["V"])
    w = adapted_weight(w0, TargetAdapter(module.kind, ALPHA / RANK, params), module.strength)
    bias = module.base["bias"].astype(mx.float32) if "bias" in module.base else 0.0
    if isinstance(module, AdaptedConv1d):
        w_mlx = from_canonical_2d(w, "mlx-conv1d", 3)
        return mx.conv1d(x, w_mlx, stride=1, padding=1) + bias
    return x @ w.T + bias


# --------------------------------------------------------------------------- injection


@pytest.mark.parametrize("kind", TYPES)
def test_fresh_injection_reproduces_base(kind: str) -> None:
    model = toy()
    x = inputs()
    before = model(x)
    names = inject(model, kind, RANK, ALPHA)
    assert set(names) == ALL_NAMES and len(names) == len(ALL_NAMES)
    assert names[0] == "model.preprocess_conv"  # definition order
    modules = adapter_modules(model)
    assert isinstance(modules["model.preprocess_conv"], AdaptedConv1d)
    assert modules["model.to_timestep_embed.0"].base.weight.dtype == mx.float16
    for module in modules.values():
        shapes = module.kind.shapes(module.fan_out, module.fan_in, RANK)
        assert {n: tuple(v.shape) for n, v in module.adapter_params().items()} == shapes
        assert all(v.dtype == mx.float32 for v in module.adapter_params().values())
        if module.kind.xs:
            assert module["U"].dtype == mx.float32 and module["V"].dtype == mx.float32
    after = model(x)
    assert after.dtype == before.dtype
    assert rel_err(after, before) < 1e-5


def test_lora_a_init_bound() -> None:
    model = toy()
    inject(model, "lora", 4, 4, include=["preprocess_conv", "ff.ff.2"])
    for module in adapter_modules(model).values():
        a = np.array(module["lora_A"])
        assert np.abs(a).max() <= 1 / np.sqrt(module.fan_in)
        assert np.abs(a).max() > 0.3 / np.sqrt(module.fan_in)
        assert not np.array(module["lora_B"]).any()


@pytest.mark.parametrize("kind", TYPES)
def test_randomised_forward_matches_formulas(kind: str) -> None:
    model = toy()
    inject(model, kind, RANK, ALPHA)
    randomize(model)
    model.eval()
    x = inputs()
    modules = adapter_modules(model)
    checked = ["model.preprocess_conv", "model.to_timestep_embed.0"]
    checked += ["model.transformer.layers.1.self_attn.to_qkv", "model.transformer.layers.2.ff.ff.2"]
    for name in checked:
        module = modules[name]
        xin = x if name != "model.transformer.layers.2.ff.ff.2" else inputs(2, (2, 5, 2 * E))
        got = module(xin)
        want = expected_output(module, xin)
        assert got.dtype == mx.float32
        assert rel_err(got, want) < 1e-5, name
    # And the formulas against the independent float64 reference, on the conv's 2-D view.
    conv = modules["model.preprocess_conv"]
    params = {n: np.array(v, np.float64) for n, v in conv.adapter().params.items()}
    ref = ref_adapted(np.array(conv.base_weight_2d(), np.float64), kind, params, ALPHA / RANK, 1.0)
    assert rel_err(conv.merged_weight(), mx.array(ref.astype(np.float32))) < 1e-5


INFERENCE_TARGETS = ("model.preprocess_conv", "model.transformer.layers.1.self_attn.to_qkv")


@pytest.mark.parametrize("kind", TYPES)
def test_inference_forward_is_the_formulas_merge(kind: str) -> None:
    """Eval-mode forward == the layer run with formulas.merge of the one adapter.

    At strengths other than 1 and with dropout configured (eval mode must ignore it), on a
    Linear and a k=3 Conv1d; the merge goes through the public multi-adapter entry point and
    the module's own layer, so the wrappers add nothing to the formulas' math.
    """
    model = toy()
    inject(model, kind, RANK, ALPHA, dropout=0.2)
    randomize(model, seed=11)
    model.eval()
    x = inputs(4)
    modules = adapter_modules(model)
    for name in INFERENCE_TARGETS:
        module = modules[name]
        for s in (0.4, 1.7):
            module.strength = s
            merged = merge(module.base_weight_2d(), [(module.adapter(), s)], "runtime")
            want = module._with_bias(module._layer(x, merged))
            assert rel_err(module(x), want) < 1e-6, (name, s)
            assert rel_err(module(x), expected_output(module, x)) < 1e-5, (name, s)


@pytest.mark.parametrize("kind", TYPES)
def test_blend_modules_match_the_reference(kind: str) -> None:
    """semantics="blend": the merged weight is the float64 blend reference, the eval forward is
    formulas.merge under blend, the dropout split sums to it, and s == 1 is runtime exactly."""
    model = toy()
    inject(model, kind, RANK, ALPHA, dropout=0.2, semantics="blend")
    randomize(model, seed=5)
    model.eval()
    x = inputs(6)
    modules = adapter_modules(model)
    assert {m.semantics for m in modules.values()} == {"blend"}
    for name in INFERENCE_TARGETS:
        module = modules[name]
        w0 = module.base_weight_2d()
        params = {n: np.array(v, np.float64) for n, v in module.adapter().params.items()}
        for s in (1e-5, 0.5, 1.7):
            module.strength = s
            ref = ref_blend_adapted(np.array(w0, np.float64), kind, params, ALPHA / RANK, s)
            assert rel_err(module.merged_weight(), mx.array(ref.astype(np.float32))) < 1e-5
            merged = merge(w0, [(module.adapter(), s)], "blend")
            want = module._with_bias(module._layer(x, merged))
            assert rel_err(module(x), want) < 1e-6, (name, s)
            base_part, delta_part = decompose_weight(w0, module.adapter(), s, "blend")
            assert rel_err(base_part + delta_part, module.merged_weight()) < 1e-6
            if kind in DECOMPOSED:
                runtime = adapted_weight(w0, module.adapter(), s, "runtime")
                assert rel_err(module.merged_weight(), runtime) > 1e-4, (name, s)
        blend_at_one = np.array(module.merged_weight(1.0))
        module.semantics = "runtime"
        assert np.array_equal(blend_at_one, np.array(module.merged_weight(1.0)))


def test_modules_take_chained_semantics_only() -> None:
    model = toy()
    before = tree_flatten(model.parameters())
    with pytest.raises(ValueError, match="runtime or blend, not 'delta'"):
        inject(model, "dora-rows", RANK, ALPHA, semantics="delta")
    assert not adapter_modules(model)
    assert all(
        np.array_equal(a, b)
        for (_, a), (_, b) in zip(before, tree_flatten(model.parameters()), strict=True)
    )
    with pytest.raises(ValueError, match="not 'sideways'"):
        AdaptedLinear(nn.Linear(4, 4), "lora", 2, 2, semantics="sideways")
    assert AdaptedLinear(nn.Linear(4, 4), "lora", 2, 2).semantics == "runtime"


def test_wrappers_refuse_the_other_layer_kind() -> None:
    with pytest.raises(ValueError, match=r"AdaptedLinear wraps an nn\.Linear, got Conv1d"):
        AdaptedLinear(nn.Conv1d(4, 4, 3), "lora", 2, 2)
    with pytest.raises(ValueError, match=r"AdaptedConv1d wraps an nn\.Conv1d, got Linear"):
        AdaptedConv1d(nn.Linear(4, 4), "lora", 2, 2)


def test_public_api_is_reexported_from_adapters() -> None:
    """`from sa3ckpt.adapters import ...` gives the objects of their home modules."""
    import importlib

    import sa3ckpt.adapters as adapters

    assert sorted(adapters.__all__) == sorted(adapters._HOMES)
    for name, home in adapters._HOMES.items():
        module = importlib.import_module(f"sa3ckpt.adapters.{home}")
        assert getattr(adapters, name) is getattr(module, name), name


def test_conv_layout_is_pytorch_in_major() -> None:
    """The canonical 2-D view of an MLX (out, k, in) conv is PyTorch's (out, in*k)."""
    model = toy()
    inject(model, "lora", RANK, ALPHA, include=["preprocess_conv"])
    conv = adapter_modules(model)["model.preprocess_conv"]
    w = np.array(conv.base.weight)  # (out, k, in)
    assert np.array_equal(np.array(conv.base_weight_2d()), w.transpose(0, 2, 1).reshape(E, 3 * E))


@pytest.mark.parametrize("kind", DECOMPOSED)
def test_strength_zero_is_exact_base(kind: str) -> None:
    model = toy()
    x = inputs()
    before = np.array(model(x))
    inject(model, kind, RANK, ALPHA, dropout=0.2)
    randomize(model)
    for module in adapter_modules(model).values():
        module.strength = 0.0
    for mode in ("eval", "train"):
        getattr(model, mode)()
        assert np.array_equal(np.array(model(x)), before), mode
    for module in adapter_modules(model).values():
        module.strength = 0.5
    model.eval()
    assert not np.array_equal(np.array(model(x)), before)


def test_output_dtype_follows_input() -> None:
    model = toy()
    inject(model, "dora-rows", RANK, ALPHA, include=["to_timestep_embed.0"])
    module = adapter_modules(model)["model.to_timestep_embed.0"]
    x16 = inputs().astype(mx.float16)
    assert module(x16).dtype == mx.float16
    assert rel_err(module(x16), module.base(x16)) < 2e-3


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("kind", TYPES)
def test_decomposition_sums_to_adapted_weight(kind: str) -> None:
    model = toy()
    inject(model, kind, RANK, ALPHA, include=["preprocess_conv"])
    randomize(model)
    module = adapter_modules(model)["model.preprocess_conv"]
    for s in (1.0, 0.4, 0.0):
        base_part, delta_part = decompose_weight(module.base_weight_2d(), module.adapter(), s)
        assert rel_err(base_part + delta_part, module.merged_weight(s)) < 1e-6
        if s == 0 and kind in DECOMPOSED:
            assert not np.array(delta_part).any()


@pytest.mark.parametrize("kind", ["lora", "lora-xs", "dora-cols", "bora"])
@pytest.mark.parametrize("target", ["model.transformer.layers.0.cross_attn.to_q", "conv"])
def test_dropout_path_uses_mask_on_adapter_input_only(kind: str, target: str) -> None:
    model = toy()
    p = 0.3
    target = "model.preprocess_conv" if target == "conv" else target
    inject(model, kind, RANK, ALPHA, include=[target], dropout=p)
    randomize(model)
    module = adapter_modules(model)[target]
    x = inputs()
    model.train()
    mx.random.seed(123)
    got = module(x)
    mx.random.seed(123)
    dropped = x * mx.random.bernoulli(1 - p, x.shape) / (1 - p)
    base_part, delta_part = decompose_weight(module.base_weight_2d(), module.adapter(), 1.0)
    bias = module.base["bias"]
    if isinstance(module, AdaptedConv1d):
        want = mx.conv1d(x, from_canonical_2d(base_part, "mlx-conv1d", 3), padding=1)
        want += mx.conv1d(dropped, from_canonical_2d(delta_part, "mlx-conv1d", 3), padding=1)
    else:
        want = x @ base_part.T + dropped @ delta_part.T
    assert rel_err(got, want + bias) < 1e-5
    assert rel_err(got, expected_output(module, x)) > 1e-4  # the mask did something
    model.eval()
    assert rel_err(module(x), expected_output(module, x)) < 1e-5


# --------------------------------------------------------------------------- selection


def test_include_exclude_with_ranges() -> None:
    model = toy()
    names = inject(
        model, "lora", RANK, ALPHA, include=["layers.[1-2].self_attn", "preprocess_conv"],
        exclude=["to_out"],
    )  # fmt: skip
    assert names == [
        "model.preprocess_conv",
        "model.transformer.layers.1.self_attn.to_qkv",
        "model.transformer.layers.2.self_attn.to_qkv",
    ]
    assert isinstance(model.transformer.layers[1].self_attn.to_qkv, AdaptedLinear)
    assert isinstance(model.transformer.layers[0].self_attn.to_qkv, nn.Linear)
    assert isinstance(model.transformer.layers[2].self_attn.to_out, nn.Linear)
    # The canonical spelling `to_local_embed.0` reaches the runtime's `seq.0`.
    more = inject(model, "lora", RANK, ALPHA, include=["layers.0.to_local_embed.0"])
    assert more == ["model.transformer.layers.0.to_local_embed.0"]
    assert isinstance(model.transformer.layers[0].to_local_embed.seq[0], AdaptedLinear)
    assert len(adapter_modules(model)) == 4


def test_inject_refuses_nothing_and_already_adapted() -> None:
    model = toy()
    with pytest.raises(ValueError, match="inject: no Linear/Conv1d module matched"):
        inject(model, "lora", RANK, ALPHA, include=["layers.7."])
    with pytest.raises(ValueError, match="inject: no Linear/Conv1d module matched"):
        inject(model, "lora", RANK, ALPHA, exclude=["model."])
    inject(model, "lora", RANK, ALPHA, include=["ff.ff.2"])
    with pytest.raises(ValueError, match="already adapted"):
        inject(model, "lora", RANK, ALPHA, include=["layers.0."])
    assert isinstance(model.transformer.layers[0].ff.ff[0].proj, nn.Linear)  # untouched
    with pytest.raises(ValueError, match="unknown adapter type"):
        inject(model, "dora", RANK, ALPHA, include=["to_q"])
    with pytest.raises(ValueError, match="rank"):
        inject(model, "lora", 0, ALPHA, include=["to_q"])


def test_conv_groups_and_xs_rank_refused() -> None:
    with pytest.raises(ValueError, match="groups"):
        AdaptedConv1d(nn.Conv1d(4, 4, 3, groups=2), "lora", 2, 2)
    with pytest.raises(ValueError):
        AdaptedLinear(nn.Linear(3, 4), "lora-xs", 5, 5)
    with pytest.raises(ValueError, match="dropout"):
        AdaptedLinear(nn.Linear(3, 4), "lora", 2, 2, dropout=1.0)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["lora", "dora-rows", "bora-xs"])
def test_training_moves_only_adapter_params(kind: str) -> None:
    teacher = toy(seed=5)
    model = toy()
    x = inputs(3, (4, 6, E))
    y = teacher(x)
    inject(model, kind, RANK, ALPHA, exclude=["project_out"], dropout=0.1)
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    trainable = trainable_parameters(model)
    assert set(trainable) == {k for k, _ in tree_flatten(model.trainable_parameters())}
    params_per_module = len(ADAPTER_TYPES[kind].required)
    assert len(trainable) == params_per_module * (len(ALL_NAMES) - 1)

    def loss_fn(m: nn.Module) -> mx.array:
        return mx.mean(mx.square(m(x) - y))

    model.eval()
    start = loss_fn(model).item()
    model.train()
    opt = optim.AdamW(learning_rate=1e-2)
    step = nn.value_and_grad(model, loss_fn)
    for _ in range(12):
        _, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    model.eval()
    assert loss_fn(model).item() < 0.95 * start
    after = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    assert set(after) == set(before)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == set(trainable)


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", TYPES)
def test_in_memory_checkpoint_round_trip(kind: str) -> None:
    model = toy()
    names = inject(model, kind, RANK, ALPHA, include=["layers.1.", "preprocess_conv"])
    randomize(model)
    ckpt = to_checkpoint(model, kind, RANK, ALPHA, ["layers.1.", "preprocess_conv"])
    assert ckpt.adapter_type == kind and list(ckpt.tensors) == names
    assert ckpt.config.to_dict()["dropout"] == 0.0
    fresh = toy()
    inject(fresh, kind, RANK, ALPHA, include=["layers.1.", "preprocess_conv"])
    assert load_into(fresh, ckpt) == names
    model.eval()
    fresh.eval()
    x = inputs()
    assert np.array_equal(np.array(fresh(x)), np.array(model(x)))


@pytest.mark.parametrize("kind", TYPES)
def test_state_dict_round_trip(kind: str, tmp_path: Path) -> None:
    model = toy()
    include = ["layers.[0-1].", "preprocess_conv", "to_timestep_embed.0"]
    names = inject(model, kind, RANK, ALPHA, include=include, exclude=["to_kv"])
    randomize(model)
    state = state_dict(model)
    modules = adapter_modules(model)
    expected = {
        format_adapter_key(n, p, "sa3"): shape
        for n, m in modules.items()
        for p, shape in m.kind.shapes(m.fan_out, m.fan_in, RANK).items()
    }
    assert {k: v.shape for k, v in state.items()} == expected
    assert all(v.dtype == np.float32 for v in state.values())
    assert not any(k.endswith((".U", ".V")) for k in state)
    assert "model.preprocess_conv.parametrizations.weight.0.M_xs" in state or not kind.endswith(
        "xs"
    )

    ckpt = to_checkpoint(
        model, kind, RANK, ALPHA, include, ["to_kv"], {"step": 10, "base_model": "toy"}
    )
    path = save_checkpoint(ckpt, tmp_path / "adapter.safetensors", dtype="F32")
    loaded = load_checkpoint(path)
    assert loaded.adapter_type == kind
    assert loaded.config.extra["step"] == 10 and loaded.config.base_model == "toy"
    assert loaded.config.include == include and loaded.config.exclude == ["to_kv"]
    assert list(loaded.tensors) == names

    fresh = toy()
    inject(
        fresh, loaded.config.adapter_type, loaded.config.rank, loaded.config.alpha,
        loaded.config.include, loaded.config.exclude,
    )  # fmt: skip
    assert load_into(fresh, loaded) == names
    assert state_dict(fresh).keys() == state.keys()
    for key, value in state_dict(fresh).items():
        assert np.array_equal(value, state[key]), key
    model.eval()
    fresh.eval()
    x = inputs()
    assert np.array_equal(np.array(fresh(x)), np.array(model(x)))


def test_load_into_reports_mismatches() -> None:
    model = toy()
    inject(model, "dora-rows", RANK, ALPHA, include=["layers.0.ff", "preprocess_conv"])
    ckpt = to_checkpoint(model, "dora-rows", RANK, ALPHA, ["layers.0.ff", "preprocess_conv"])

    other = toy()
    inject(other, "dora-rows", RANK, ALPHA, include=["layers.[0-1].ff.ff.2"])
    with pytest.raises(ValueError, match="missing targets") as info:
        load_into(other, ckpt)
    message = str(info.value)
    assert "model.transformer.layers.1.ff.ff.2" in message
    assert "unexpected targets" in message and "model.preprocess_conv" in message

    wider = toy()
    inject(wider, "dora-rows", RANK + 1, ALPHA * 2, include=["layers.0.ff", "preprocess_conv"])
    with pytest.raises(ValueError, match="shape mismatch"):
        load_into(wider, ckpt)

    wrong = toy()
    inject(wrong, "dora-cols", RANK, ALPHA, include=["layers.0.ff", "preprocess_conv"])
    with pytest.raises(ValueError, match="adapter_type"):
        load_into(wrong, ckpt)
    with pytest.raises(ValueError, match="rank"):
        to_checkpoint(model, "dora-rows", RANK + 1, ALPHA)


def test_load_into_prefers_stored_xs_bases() -> None:
    model = toy()
    inject(model, "bora-xs", RANK, ALPHA, include=["layers.0.ff.ff.2"])
    ckpt = to_checkpoint(model, "bora-xs", RANK, ALPHA, ["layers.0.ff.ff.2"])
    module = adapter_modules(model)["model.transformer.layers.0.ff.ff.2"]
    target = ckpt.tensors["model.transformer.layers.0.ff.ff.2"]
    target["U"] = -np.array(module["U"])
    target["V"] = -np.array(module["V"])
    load_into(model, ckpt)
    assert np.array_equal(np.array(module["U"]), target["U"])
    assert "U" not in trainable_parameters(model)  # still frozen after replacement
    assert not any(k.endswith((".U", ".V")) for k in trainable_parameters(model))


def test_failed_inject_leaves_model_untouched() -> None:
    model = toy()
    model.transformer.grouped = nn.Conv1d(E, E, 3, groups=2)
    with pytest.raises(ValueError, match="groups"):
        inject(model, "lora", RANK, ALPHA)
    assert not adapter_modules(model)
    assert isinstance(model.preprocess_conv, nn.Conv1d)
    assert len(tree_flatten(model.trainable_parameters())) == len(tree_flatten(model.parameters()))
