"""Base-key namings: every tensor of a synthetic base translates both ways, detection, leaves."""

from __future__ import annotations

import pytest

from sa3ckpt.layout import BASE_LAYOUTS, base_layout
from sa3ckpt.names import (
    BASE_NAMINGS,
    SECONDS_CONDITIONER,
    base_naming,
    block_target,
    detect_base_naming,
    format_adapter_key,
    looks_like_base_key,
    mlx_base_key,
    mlx_to_official_base_key,
    official_base_key,
    official_to_mlx_base_key,
    parse_base_key,
    translate_base_key,
)
from sa3ckpt.synth import synth_base
from sa3ckpt.targets import FAMILIES

SYNTH_FAMILIES = ("tiny-small", "tiny-medium")


@pytest.mark.parametrize("family", SYNTH_FAMILIES)
def test_every_synth_base_tensor_round_trips_official_mlx(family: str) -> None:
    synth = synth_base(FAMILIES[family], seed=1)
    official = synth.official_tensors("F32")
    mlx = synth.mlx_tensors("F32")
    forward = {
        key: translate_base_key(key, v.shape, "official", "mlx") for key, v in official.items()
    }
    assert None not in forward.values()
    assert sorted(forward.values()) == sorted(mlx)  # exactly the synth MLX keys, no collisions
    for key, mlx_key in forward.items():
        assert mlx_key == official_to_mlx_base_key(key)
        assert mlx_to_official_base_key(mlx_key, mlx[mlx_key].shape) == key
    for mlx_key, value in mlx.items():
        back = translate_base_key(mlx_key, value.shape, "mlx", "official")
        assert back in official and forward[back] == mlx_key


@pytest.mark.parametrize("naming", sorted(BASE_NAMINGS))
def test_same_naming_keeps_every_key(naming: str) -> None:
    for key in ("pretransform.model.weight", "cond.padding_embedding", "anything"):
        assert translate_base_key(key, (3,), naming, naming) == key


@pytest.mark.parametrize("family", ["medium", "small"])
@pytest.mark.parametrize("naming", sorted(BASE_NAMINGS))
def test_target_weights_parse_back_in_every_naming(family: str, naming: str) -> None:
    row = base_naming(naming)
    for target in FAMILIES[family].targets:
        for leaf in ("weight", "bias"):
            key = row.format(target.name, leaf)
            assert key is not None and parse_base_key(key, naming) == (target.name, leaf)


def test_mlx_gamma_needs_shape_and_norm_name() -> None:
    norm = block_target(2, "pre_norm")
    assert official_to_mlx_base_key(official_base_key(norm, "gamma")) == (
        "transformer.layers.2.pre_norm.weight"
    )
    key = "transformer.layers.2.pre_norm.weight"
    assert mlx_to_official_base_key(key, (8,)) == official_base_key(norm, "gamma")
    assert mlx_to_official_base_key(key, (8, 8)) == official_base_key(norm, "weight")
    linear = "transformer.layers.2.ff.ff.2.weight"
    assert mlx_to_official_base_key(linear, (8,)).endswith("ff.ff.2.weight")


def test_mlx_arrays_without_module_have_no_official_spelling() -> None:
    assert mlx_to_official_base_key("cond.unknown_array", (1, 8)) is None
    # issue 14: the padding embedding maps both ways (the official MLX pipeline needs it).
    assert mlx_to_official_base_key("cond.padding_embedding", (8,)) == (
        "conditioner.conditioners.prompt.padding_embedding"
    )
    assert mlx_to_official_base_key("cond.seconds_total_weight", (8, 4)) == official_base_key(
        SECONDS_CONDITIONER
    )
    assert official_to_mlx_base_key("conditioner.conditioners.prompt.padding_embedding") == (
        "cond.padding_embedding"
    )
    with pytest.raises(ValueError, match="no MLX runtime name"):
        mlx_base_key(SECONDS_CONDITIONER, "gamma")


def test_detect_base_naming() -> None:
    targets = [t.name for t in FAMILIES["tiny-small"].targets]
    official = [official_base_key(t) for t in targets]
    mlx = [mlx_base_key(t) for t in targets]
    assert detect_base_naming(official) == "official"
    assert detect_base_naming(mlx) == "mlx"
    # official needs half of the keys; fewer fall through to the MLX evidence
    assert detect_base_naming(official[:2] + ["x.y"] * 2) == "official"
    assert detect_base_naming(official[:1] + ["x.y"] * 3) is None
    block_key = mlx_base_key(block_target(0, "self_attn.to_qkv"))
    assert detect_base_naming(official[:1] + ["x.y"] * 3 + [block_key]) == "mlx"
    sa3 = [format_adapter_key(t, "lora_A", "sa3") for t in targets]
    assert detect_base_naming(sa3) is None
    assert detect_base_naming([]) is None


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("model.model.transformer.layers.0.pre_norm.gamma", True),
        ("model.model.transformer.memory_tokens", True),
        ("cond.padding_embedding", True),
        ("transformer.layers.0.self_attn.to_qkv.weight", True),
        ("preprocess_conv.bias", True),
        ("model.transformer.layers.0.ff.ff.2.parametrizations.weight.0.lora_A", False),
        ("base_model.model.model.preprocess_conv.lora_A.weight", True),  # PEFT leaf is weight
        ("transformer.layers.0.ff.ff.2.lora_B", False),
    ],
)
def test_looks_like_base_key(key: str, expected: bool) -> None:
    assert looks_like_base_key(key) is expected


def test_every_naming_has_a_layout_for_every_kind() -> None:
    assert set(BASE_LAYOUTS) == set(BASE_NAMINGS)
    for naming in BASE_NAMINGS:
        assert base_layout(naming, "linear").ndim == 2
        assert base_layout(naming, "conv1d").ndim == 3
    for row in BASE_NAMINGS.values():
        assert row.owns(row.example) and row.parse(row.example) is not None


def test_official_leaf_renames_are_inverse() -> None:
    mlx = base_naming("mlx")
    assert mlx.from_official_leaf("gamma") == "weight"
    assert mlx.to_official_leaf("transformer.layers.0.ff_norm", "weight", (4,)) == "gamma"
    assert mlx.to_official_leaf("transformer.layers.0.ff_norm", "bias", (4,)) == "bias"
    official = base_naming("official")
    assert official.from_official_leaf("gamma") == "gamma"
    assert official.renames == ()
