"""Canonical names and dialect tables: every target of every published family round-trips."""

from __future__ import annotations

import pytest

from sa3ckpt.adapters.types import ADAPTER_TYPES, BASIS_PARAMS
from sa3ckpt.names import (
    ADAPTER_DIALECTS,
    ADAPTER_PARAMS,
    SECONDS_CONDITIONER,
    ParsedKey,
    Rejected,
    detect_adapter_dialect,
    format_adapter_key,
    format_xs_bases_key,
    from_mlx_module,
    from_sa3cpp_stem,
    mlx_base_key,
    mlx_has_module,
    official_base_key,
    official_to_mlx_base_key,
    parse_adapter_key,
    parse_mlx_base_key,
    parse_official_base_key,
    parse_xs_bases_key,
    root_of,
    short_label,
    strip_dit_root,
    to_mlx_module,
    to_sa3cpp_stem,
)
from sa3ckpt.targets import FAMILIES

PEFT_PARAMS = ("lora_A", "lora_B", "magnitude")


def _expressible(dialect: str, target: str, param: str) -> bool:
    if dialect in ("peft", "diffusers"):
        return param in PEFT_PARAMS
    if dialect == "peft-diffusers":  # PEFT on the DiT: no conditioner module there
        return param in PEFT_PARAMS and target.startswith("model.")
    if dialect == "sa3cpp":
        return to_sa3cpp_stem(target) is not None
    return True


@pytest.mark.parametrize("family", ["medium", "small"])
@pytest.mark.parametrize("dialect", sorted(ADAPTER_DIALECTS))
def test_every_target_and_param_round_trips(family: str, dialect: str) -> None:
    seen_keys: set[str] = set()
    for target in FAMILIES[family].targets:
        for param in ADAPTER_PARAMS:
            if not _expressible(dialect, target.name, param):
                with pytest.raises(ValueError):
                    format_adapter_key(target.name, param, dialect)
                continue
            key = format_adapter_key(target.name, param, dialect)
            assert key not in seen_keys, f"two targets share key {key}"
            seen_keys.add(key)
            parsed = parse_adapter_key(key, dialect)
            assert isinstance(parsed, ParsedKey), parsed
            assert (parsed.target, parsed.param, parsed.slot) == (target.name, param, 0)


def test_dialect_examples_parse() -> None:
    for dialect in ADAPTER_DIALECTS.values():
        assert isinstance(dialect.parse(dialect.example), ParsedKey), dialect.name


def test_sa3_key_spelling_is_the_official_one() -> None:
    key = format_adapter_key("model.transformer.layers.0.self_attn.to_qkv", "lora_A", "sa3")
    assert key == "model.transformer.layers.0.self_attn.to_qkv.parametrizations.weight.0.lora_A"
    cond = format_adapter_key(SECONDS_CONDITIONER, "lora_B", "sa3")
    assert (
        cond == "conditioners.seconds_total.embedder.embedding.1.parametrizations.weight.0.lora_B"
    )


def test_bare_strips_model_root_but_keeps_conditioner_root() -> None:
    assert format_adapter_key("model.preprocess_conv", "lora_A", "bare") == (
        "preprocess_conv.parametrizations.weight.0.lora_A"
    )
    assert format_adapter_key(SECONDS_CONDITIONER, "lora_A", "bare").startswith("conditioners.")


def test_slots_are_parsed_not_assumed() -> None:
    parsed = parse_adapter_key("model.preprocess_conv.parametrizations.weight.2.lora_A", "sa3")
    assert isinstance(parsed, ParsedKey) and parsed.slot == 2
    assert format_adapter_key("model.preprocess_conv", "M_xs", "sa3", slot=3).endswith(".3.M_xs")


@pytest.mark.parametrize(
    ("key", "dialect", "reason"),
    [
        ("transformer.layers.0.ff.ff.2.parametrizations.weight.0.lora_A", "sa3", "bare key"),
        ("model.transformer.layers.0.ff.ff.2.parametrizations.weight.0.lora_A", "bare", "sa3 key"),
        ("model.transformer.layers.0.ff.ff.2.parametrizations.weight.0.lora_C", "sa3", "lora_C"),
        ("model.transformer.layers.0.ff.ff.2.parametrizations.weight.x.lora_A", "sa3", "slot"),
        ("model.transformer.layers.0.ff.ff.2.weight", "sa3", "parametrizations"),
        ("model.transformer.layers.0.ff.ff.2.lora_A.weight", "peft", "base_model.model."),
        ("base_model.model.model.ff.lora_E.weight", "peft", "lora_A / lora_B"),
        ("dit.0.selfish.qkv.lora_A", "sa3cpp", "unknown sa3.cpp stem"),
        ("dit.0.self.qkv.alpha", "sa3cpp", "unknown tensor kind"),
        ("lora_A", "mlx", "no module path"),
        ("model.transformer.layers.0.ff.ff.2.lora_A", "mlx", "PyTorch root"),
        ("transformer.layers.0.ff.ff.2.weight", "mlx", "unknown adapter parameter"),
    ],
)
def test_rejections_say_why(key: str, dialect: str, reason: str) -> None:
    result = parse_adapter_key(key, dialect)
    assert isinstance(result, Rejected)
    assert reason in result.reason


def test_peft_variants() -> None:
    target = "model.transformer.layers.1.cross_attn.to_kv"
    for key, param in [
        (f"base_model.model.{target}.lora_A.weight", "lora_A"),
        (f"base_model.model.{target}.lora_B.default.weight", "lora_B"),
        (f"base_model.model.{target}.lora_magnitude_vector", "magnitude"),
        (f"base_model.model.{target}.lora_magnitude_vector.weight", "magnitude"),
        # PEFT wrapped around the DiT itself: module names lack the `model.` root.
        ("base_model.model.transformer.layers.1.cross_attn.to_kv.lora_A.weight", "lora_A"),
    ]:
        parsed = parse_adapter_key(key, "peft")
        assert isinstance(parsed, ParsedKey), key
        assert (parsed.target, parsed.param) == (target, param)


def test_detect_dialect_counts_keys() -> None:
    targets = [t.name for t in FAMILIES["small"].targets]
    for dialect in ADAPTER_DIALECTS:
        keys = [
            format_adapter_key(t, p, dialect)
            for t in targets
            for p in ("lora_A", "lora_B")
            if _expressible(dialect, t, p)
        ]
        guess = detect_adapter_dialect([*keys, "some.unrelated.tensor"])
        assert guess.dialect == dialect
        assert guess.parsed == len(keys) and guess.total == len(keys) + 1
    assert detect_adapter_dialect(["a.b", "c"]).dialect is None


def test_mlx_module_names() -> None:
    assert to_mlx_module("model.transformer.layers.5.to_local_embed.2") == (
        "transformer.layers.5.to_local_embed.seq.2"
    )
    assert to_mlx_module("model.preprocess_conv") == "preprocess_conv"
    assert to_mlx_module(SECONDS_CONDITIONER) == "cond.seconds_total"
    assert not mlx_has_module(SECONDS_CONDITIONER)
    assert mlx_has_module("model.preprocess_conv")
    assert to_mlx_module("something.else") is None
    assert from_mlx_module("transformer.layers.5.to_local_embed.seq.0") == (
        "model.transformer.layers.5.to_local_embed.0"
    )


@pytest.mark.parametrize("family", ["medium", "small"])
def test_stems_and_base_keys_round_trip(family: str) -> None:
    stems = set()
    for target in FAMILIES[family].targets:
        stem = to_sa3cpp_stem(target.name)
        if target.name == SECONDS_CONDITIONER:
            assert stem is None
        else:
            assert stem is not None and stem not in stems
            stems.add(stem)
            assert from_sa3cpp_stem(stem) == target.name
        assert parse_official_base_key(official_base_key(target.name)) == (target.name, "weight")
        assert parse_mlx_base_key(mlx_base_key(target.name)) == (target.name, "weight")
        assert parse_mlx_base_key(mlx_base_key(target.name, "bias")) == (target.name, "bias")
    assert len(stems) == len(FAMILIES[family].targets) - 1


def test_official_base_keys_and_mlx_translation() -> None:
    assert (
        official_base_key("model.transformer.project_in")
        == "model.model.transformer.project_in.weight"
    )
    assert official_base_key(SECONDS_CONDITIONER) == (
        "conditioner.conditioners.seconds_total.embedder.embedding.1.weight"
    )
    assert mlx_base_key(SECONDS_CONDITIONER) == "cond.seconds_total_weight"
    assert official_to_mlx_base_key("model.model.transformer.layers.3.pre_norm.gamma") == (
        "transformer.layers.3.pre_norm.weight"
    )
    assert official_to_mlx_base_key("model.model.transformer.layers.3.to_local_embed.0.bias") == (
        "transformer.layers.3.to_local_embed.seq.0.bias"
    )
    assert (
        official_to_mlx_base_key("conditioner.conditioners.seconds_total.embedder.embedding.1.bias")
        == "cond.seconds_total_bias"
    )
    assert official_to_mlx_base_key("conditioner.conditioners.prompt.model.weight") is None
    assert official_to_mlx_base_key("pretransform.model.weight") is None
    assert parse_official_base_key("model.model.weight") is None
    # issue 14: the prompt padding embedding is an MLX array of its conditioner module.
    assert parse_mlx_base_key("cond.padding_embedding") == (
        "conditioners.prompt",
        "padding_embedding",
    )
    assert parse_mlx_base_key("cond.unknown_array") is None


def test_every_adapter_type_param_is_a_known_param() -> None:
    for kind in ADAPTER_TYPES.values():
        assert set(kind.required) | set(kind.optional) <= set(ADAPTER_PARAMS)


def test_detection_order_prefers_specific_spellings() -> None:
    order = sorted(ADAPTER_DIALECTS, key=lambda name: ADAPTER_DIALECTS[name].detect_order)
    assert order == ["sa3", "diffusers", "peft-diffusers", "peft", "sa3cpp", "bare", "mlx"]
    assert len({d.detect_order for d in ADAPTER_DIALECTS.values()}) == len(ADAPTER_DIALECTS)


def test_roots_and_short_labels() -> None:
    assert root_of("model.preprocess_conv") == "dit"
    assert root_of(SECONDS_CONDITIONER) == "conditioner"
    assert root_of("transformer.layers.0.ff.ff.2") is None
    assert strip_dit_root("model.transformer.project_in") == "transformer.project_in"
    assert strip_dit_root(SECONDS_CONDITIONER) == SECONDS_CONDITIONER
    assert short_label("model.preprocess_conv") == "pre_conv"
    assert short_label(SECONDS_CONDITIONER) == "cond.seconds_total"
    assert short_label("model.something.unknown") == "something.unknown"


@pytest.mark.parametrize("family", ["medium", "small"])
def test_xs_bases_keys_round_trip(family: str) -> None:
    for target in FAMILIES[family].targets:
        for basis_param in BASIS_PARAMS:
            key = format_xs_bases_key(target.name, basis_param)
            assert parse_xs_bases_key(key) == (target.name, basis_param)
    assert parse_xs_bases_key("U") is None
    assert parse_xs_bases_key("model.preprocess_conv.") is None
