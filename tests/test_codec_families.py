"""The SAME codec target tables at real size, by shape (no real weights needed), and the
codec key dialects (names.codec_keys)."""

from __future__ import annotations

import pytest

from sa3ckpt.names.codec_keys import DIALECTS, codec_key, from_sa3cpp_stem, parse_codec_key
from sa3ckpt.targets.codec_families import (
    CODEC_SIZES,
    CODEC_TARGET_FAMILIES,
    PUBLISHED_CODEC_FAMILIES,
    codec_family,
)

# size -> (D, blocks per half): SAME-S 128 x 6 channels, 6 blocks; SAME-L 256 x 6, 12 blocks
REAL = {"SAME-S": (768, 6), "SAME-L": (1536, 12)}


def test_the_published_codec_families() -> None:
    assert PUBLISHED_CODEC_FAMILIES == (
        "same-s-encoder",
        "same-s-decoder",
        "same-l-encoder",
        "same-l-decoder",
    )
    assert {n: (s.width, s.depth) for n, s in CODEC_SIZES.items() if not s.test_only} == REAL


@pytest.mark.parametrize("name", PUBLISHED_CODEC_FAMILIES)
def test_real_size_tables_by_shape(name: str) -> None:
    fam = codec_family(name)
    d, depth = REAL[fam.size.name]
    assert len(fam.targets) == 4 * depth + 1  # 25 (SAME-S) or 49 (SAME-L) Linears per half
    assert all(t.layer_kind == "linear" for t in fam.targets)
    blocks = (
        "encoder.layers.0.transformers"
        if fam.part == "encoder"
        else "decoder.layers.3.transformers"
    )
    for i in range(depth):
        assert fam.by_name[f"{blocks}.{i}.self_attn.to_qkv"].shape == (5 * d, d)
        assert fam.by_name[f"{blocks}.{i}.self_attn.to_out"].shape == (d, d)
        assert fam.by_name[f"{blocks}.{i}.ff.ff.0.proj"].shape == (6 * d, d)
        assert fam.by_name[f"{blocks}.{i}.ff.ff.2"].shape == (d, 3 * d)
    projection = "encoder.layers.2" if fam.part == "encoder" else "decoder.layers.1"
    assert fam.by_name[projection].shape == ((256, d) if fam.part == "encoder" else (d, 256))
    assert f"{blocks}.{depth}.self_attn.to_qkv" not in fam.by_name


def test_same_l_decoder_parameter_count_is_the_published_426m() -> None:
    fam = codec_family("same-l-decoder")
    params = sum(a * b for a, b in (t.shape for t in fam.targets))
    assert 420e6 < params < 430e6  # the "426M medium decoder" of the official CPU port


def test_same_l_decoder_has_49_linear_targets_not_98() -> None:
    """The published SAME-L decoder adapter is described as 98 Linear targets: 98 is its
    lora_A + lora_B tensor count over the 49 Linears (or both halves, 2 x 49)."""
    dec, enc = codec_family("same-l-decoder"), codec_family("same-l-encoder")
    assert len(dec.targets) == 49 and 2 * len(dec.targets) == 98
    assert len(dec.targets) + len(enc.targets) == 98


def test_s_and_l_share_names_not_widths() -> None:
    for part in ("encoder", "decoder"):
        s, big = codec_family(f"same-s-{part}"), codec_family(f"same-l-{part}")
        assert set(s.by_name) < set(big.by_name)
        assert all(s.by_name[n].shape != big.by_name[n].shape for n in s.by_name)


def test_selection_uses_the_official_pattern_syntax() -> None:
    fam = codec_family("same-l-decoder")
    attn = fam.selected(["transformers.[0-3].self_attn"], None)
    assert len(attn) == 8 and all("self_attn" in t.name for t in attn)
    assert len(fam.selected([], ["ff."])) == 25


@pytest.mark.parametrize("name", list(CODEC_TARGET_FAMILIES))
@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_target_round_trips_through_every_dialect(name: str, dialect: str) -> None:
    for t in CODEC_TARGET_FAMILIES[name].targets:
        for param in ("lora_A", "lora_B", "magnitude"):
            key = codec_key(t.name, param, dialect)
            assert parse_codec_key(key) == (t.name, param, dialect), key
        assert from_sa3cpp_stem(t.sa3cpp_stem) == t.name


@pytest.mark.parametrize(
    ("key", "module"),
    [
        ("model.decoder.layers.1.parametrizations.weight.0.lora_A", "decoder.layers.1"),
        (
            "pretransform.model.encoder.layers.0.transformers.5.ff.ff.2.parametrizations.weight.0.lora_B",
            "encoder.layers.0.transformers.5.ff.ff.2",
        ),
        (
            "base_model.model.decoder.layers.3.transformers.0.self_attn.to_qkv.lora_magnitude_vector",
            "decoder.layers.3.transformers.0.self_attn.to_qkv",
        ),
        ("ae.dec.11.ff.out.lora_A", "decoder.layers.3.transformers.11.ff.ff.2"),
        ("ae.enc.proj_out.lora_B", "encoder.layers.2"),
    ],
)
def test_roots_and_stems_read(key: str, module: str) -> None:
    parsed = parse_codec_key(key)
    assert parsed is not None and parsed[0] == module


@pytest.mark.parametrize(
    "key",
    [
        "model.transformer.layers.0.self_attn.to_qkv.parametrizations.weight.0.lora_A",
        "dit.0.self.qkv.lora_A",
        "ae.dec.0.cross.q.lora_A",
        "decoder.layers.1.parametrizations.weight.0.bogus",
    ],
)
def test_dit_and_bogus_keys_are_not_codec_keys(key: str) -> None:
    assert parse_codec_key(key) is None


def test_peft_has_no_spelling_for_bora() -> None:
    with pytest.raises(ValueError, match="PEFT"):
        codec_key("decoder.layers.1", "magnitude_r", "peft")
