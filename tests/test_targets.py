"""Model families as data: the published counts and shapes, and family detection."""

from __future__ import annotations

import pytest

from sa3ckpt.names import SECONDS_CONDITIONER, to_mlx_module, to_sa3cpp_stem
from sa3ckpt.targets import (
    FAMILIES,
    PUBLISHED_FAMILIES,
    detect_family,
    family,
    family_for_base_model,
)

MEDIUM_SHAPES = {
    "self_attn.to_qkv": (7680, 1536),
    "cross_attn.to_q": (3072, 1536),
    "cross_attn.to_kv": (4608, 1536),
    "ff.ff.0.proj": (12288, 1536),
    "ff.ff.2": (1536, 6144),
    "to_local_embed.0": (1536, 257),
    "self_attn.to_out": (1536, 1536),
}
SMALL_SHAPES = {
    "self_attn.to_qkv": (3072, 1024),
    "cross_attn.to_q": (1024, 1024),
    "cross_attn.to_kv": (2048, 1024),
    "ff.ff.0.proj": (8192, 1024),
    "ff.ff.2": (1024, 4096),
    "to_local_embed.0": (1024, 257),
    "to_local_embed.2": (1024, 1024),
}


@pytest.mark.parametrize(("name", "dit", "blocks"), [("medium", 228, 24), ("small", 192, 20)])
def test_published_counts(name: str, dit: int, blocks: int) -> None:
    fam = FAMILIES[name]
    assert len(fam.dit_targets) == dit
    assert len(fam.targets) == dit + 1
    assert fam.targets[-1].name == SECONDS_CONDITIONER
    assert {t.block for t in fam.targets if t.block is not None} == set(range(blocks))
    assert len({t.name for t in fam.targets}) == len(fam.targets)


@pytest.mark.parametrize(
    ("name", "shapes", "e"), [("medium", MEDIUM_SHAPES, 1536), ("small", SMALL_SHAPES, 1024)]
)
def test_published_shapes(name: str, shapes: dict[str, tuple[int, int]], e: int) -> None:
    fam = FAMILIES[name]
    for block in range(fam.topology.depth):
        for module, shape in shapes.items():
            assert fam.by_name[f"model.transformer.layers.{block}.{module}"].shape == shape
    top = {t.name: t.shape for t in fam.targets if t.group != "block"}
    assert top["model.transformer.global_cond_embedder.2"] == (6 * e, e)
    assert top["model.to_timestep_embed.0"] == (e, 256)
    assert top["model.to_cond_embed.0"] == (e, 768)
    assert top["model.to_global_embed.0"] == (e, 768)
    assert top["model.transformer.project_in"] == (e, 256)
    assert top["model.transformer.project_out"] == (256, e)
    for square in (
        "to_timestep_embed.2",
        "to_cond_embed.2",
        "to_global_embed.2",
        "transformer.global_cond_embedder.0",
    ):
        assert top[f"model.{square}"] == (e, e)
    assert top[SECONDS_CONDITIONER] == (768, 256)


@pytest.mark.parametrize("name", PUBLISHED_FAMILIES)
def test_conv_targets(name: str) -> None:
    convs = [t for t in FAMILIES[name].targets if t.layer_kind == "conv1d"]
    assert [t.name for t in convs] == ["model.preprocess_conv", "model.postprocess_conv"]
    for t in convs:
        assert t.weight_shape == (256, 256, 1) and t.shape == (256, 256) and t.kernel_size == 1


def test_tiny_small_exercises_kernel_3() -> None:
    conv = FAMILIES["tiny-small"].by_name["model.preprocess_conv"]
    assert conv.weight_shape == (8, 8, 3) and conv.shape == (8, 24) and conv.kernel_size == 3


@pytest.mark.parametrize("name", list(FAMILIES))
def test_runtime_names_follow_the_name_tables(name: str) -> None:
    for t in FAMILIES[name].targets:
        assert t.mlx_name == to_mlx_module(t.name)
        assert t.sa3cpp_stem == to_sa3cpp_stem(t.name)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tiny_families_share_the_topology(name: str) -> None:
    fam = FAMILIES[name]
    per_block = {t.module for t in fam.targets if t.group == "block"}
    assert len(per_block) == 9
    assert len(fam.targets) == 12 + 9 * fam.topology.depth + 1


@pytest.mark.parametrize("name", PUBLISHED_FAMILIES)
def test_detects_each_family_from_full_shapes(name: str) -> None:
    fam = FAMILIES[name]
    result = detect_family((t.name, t.shape) for t in fam.targets)
    assert result.family == name
    assert any(f"all {len(fam.targets)} observed shapes match" in e for e in result.evidence)


def test_detects_from_partial_shapes() -> None:
    fam = FAMILIES["small"]
    # Magnitudes of dora-rows reveal fan_out only; XS M_xs reveal nothing.
    obs = [(t.name, (t.shape[0], None)) for t in fam.targets[:20]]
    assert detect_family(obs).family == "small"


def test_ambiguous_and_mismatched() -> None:
    only_cond = detect_family([(SECONDS_CONDITIONER, (768, 256))])
    assert only_cond.family is None and only_cond.ambiguous == ("medium", "small")
    wrong = detect_family([("model.transformer.layers.0.self_attn.to_qkv", (7680, 1024))])
    assert wrong.family is None
    assert any("shape mismatches" in e for e in wrong.evidence)
    unknown = detect_family([("model.transformer.layers.30.ff.ff.2", (1536, 6144))])
    assert unknown.family is None and any("unknown targets" in e for e in unknown.evidence)
    assert detect_family([]).family is None


def test_detects_tiny_families_when_asked() -> None:
    fam = FAMILIES["tiny-small"]
    result = detect_family(((t.name, t.shape) for t in fam.targets), candidates=list(FAMILIES))
    assert result.family == "tiny-small"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sa3-medium", "medium"),
        ("SA3-Medium-base", "medium"),
        ("sa3-sm-music", "small"),
        ("sa3-sm-sfx", "small"),
        ("sa3-small", "small"),
        ("gpt-2", None),
        ("sa3-smx", None),
    ],
)
def test_family_for_base_model(text: str, expected: str | None) -> None:
    found = family_for_base_model(text)
    assert (found.name if found else None) == expected


def test_unknown_family_lists_known() -> None:
    with pytest.raises(ValueError, match="medium"):
        family("large")
