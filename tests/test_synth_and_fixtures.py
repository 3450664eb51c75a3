"""Synthetic checkpoints and the committed fixture corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.generate import DATA_DIR, FIXTURE_FAMILIES, check
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.layout import mlx_conv1d_to_2d
from sa3ckpt.names import (
    ParsedKey,
    detect_adapter_dialect,
    mlx_base_key,
    official_base_key,
    parse_adapter_key,
)
from sa3ckpt.synth import synth_adapter, synth_base
from sa3ckpt.targets import FAMILIES


def _parse_sa3(key: str) -> ParsedKey:
    parsed = parse_adapter_key(key, "sa3")
    assert isinstance(parsed, ParsedKey), parsed
    return parsed


@pytest.mark.parametrize("type_name", list(ADAPTER_TYPES))
def test_synth_adapter_shapes_follow_the_type_table(type_name: str) -> None:
    fam = FAMILIES["tiny-small"]
    adapter = synth_adapter(fam, type_name, rank=3, seed=1)
    kind = ADAPTER_TYPES[type_name]
    assert set(adapter.tensors) == {t.name for t in fam.targets}
    for target in fam.targets:
        shapes = {p: a.shape for p, a in adapter.tensors[target.name].items()}
        assert shapes == kind.shapes(*target.shape, 3)
    assert adapter.config["adapter_type"] == type_name and adapter.config["rank"] == 3


def test_synth_adapter_is_deterministic_and_seeded() -> None:
    fam = FAMILIES["tiny-medium"]
    a = synth_adapter(fam, "bora", seed=5).file_tensors()
    b = synth_adapter(fam, "bora", seed=5).file_tensors()
    c = synth_adapter(fam, "bora", seed=6).file_tensors()
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_zero_effect_and_selection() -> None:
    fam = FAMILIES["tiny-medium"]
    adapter = synth_adapter(fam, "lora-xs", zero_effect=True, include=["layers.[1-1]."])
    assert {t.split(".")[3] for t in adapter.tensors} == {"1"}
    assert all(not p["M_xs"].any() for p in adapter.tensors.values())


def test_baked_norms_stay_fp32_in_files() -> None:
    fam = FAMILIES["tiny-small"]
    adapter = synth_adapter(fam, "dora-rows")
    adapter.tensors[fam.targets[0].name]["baked_vnorm_row"] = np.ones(fam.targets[0].shape[0])
    dtypes = {k.rsplit(".", 1)[1]: v.dtype for k, v in adapter.file_tensors(dtype="F16").items()}
    assert dtypes["baked_vnorm_row"] == np.float32 and dtypes["lora_A"] == np.float16


@pytest.mark.parametrize("family_name", FIXTURE_FAMILIES)
def test_synth_base_layouts_agree(family_name: str) -> None:
    fam = FAMILIES[family_name]
    base = synth_base(fam, seed=3)
    official = base.official_tensors("F32")
    mlx = base.mlx_tensors("F32")
    for t in fam.targets:
        w_official = official[official_base_key(t.name)]
        w_mlx = mlx[mlx_base_key(t.name)]
        assert w_official.shape == t.weight_shape
        if t.layer_kind == "conv1d":
            assert np.array_equal(mlx_conv1d_to_2d(w_mlx), w_official.reshape(t.shape))
        else:
            assert np.array_equal(w_mlx, w_official)
    assert any(k.endswith(".pre_norm.weight") for k in mlx)
    assert any(k.endswith(".pre_norm.gamma") for k in official)
    assert "cond.seconds_total_bias" in mlx


def test_committed_fixtures_match_the_generator() -> None:
    assert check(DATA_DIR) == []


def test_manifest_lists_every_committed_file() -> None:
    manifest = json.loads((DATA_DIR / "MANIFEST.json").read_text())
    on_disk = {
        str(p.relative_to(DATA_DIR))
        for p in DATA_DIR.rglob("*")
        if p.is_file() and p.name != "MANIFEST.json"
    }
    assert on_disk == set(manifest)


@pytest.mark.parametrize("family_name", FIXTURE_FAMILIES)
@pytest.mark.parametrize("type_name", list(ADAPTER_TYPES))
def test_adapter_fixtures_are_sa3_files_of_their_type(family_name: str, type_name: str) -> None:
    fam = FAMILIES[family_name]
    with open_safetensors(DATA_DIR / "adapters" / family_name / f"{type_name}.safetensors") as f:
        config = json.loads(f.metadata["lora_config"])
        assert config["adapter_type"] == type_name
        guess = detect_adapter_dialect(f.keys())
        assert guess.dialect == "sa3" and guess.parsed == guess.total
        kind = ADAPTER_TYPES[type_name]
        for key in f:
            parsed = _parse_sa3(key)
            target = fam.by_name[parsed.target]
            assert f.info(key).shape == kind.param_shape(
                parsed.param, *target.shape, config["rank"]
            )
            assert f.info(key).dtype == "F16"


def test_bare_fixture_is_detected_as_bare() -> None:
    with open_safetensors(DATA_DIR / "adapters" / "tiny-medium" / "lora.bare.safetensors") as f:
        assert detect_adapter_dialect(f.keys()).dialect == "bare"
