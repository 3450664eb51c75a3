"""Every validation rule fires on a file made to break it, and good files stay clean."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.findings import RULES
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.names import format_adapter_key
from sa3ckpt.ops.validate import validate_path, validate_paths
from sa3ckpt.synth import synth_adapter, synth_base
from sa3ckpt.targets import FAMILIES

FAM = FAMILIES["tiny-medium"]
QKV0 = "model.transformer.layers.0.self_attn.to_qkv"


def _write(
    tmp_path: Path, tensors: dict, metadata: dict | None, name: str = "a.safetensors"
) -> str:
    path = tmp_path / name
    write_safetensors(path, tensors, metadata or {})
    return str(path)


def _adapter(type_name: str = "lora", **kwargs):
    adapter = synth_adapter(FAM, type_name, rank=4, alpha=8, seed=3, **kwargs)
    return adapter.file_tensors(), dict(adapter.config)


def _rules(path: str, **kwargs) -> dict[str, str]:
    result = validate_path(path, **kwargs)
    return {f.rule: f.message for f in result.findings}


def _meta(config: dict) -> dict[str, str]:
    return {"lora_config": json.dumps(config)}


@pytest.mark.parametrize("family", ["tiny-medium", "tiny-small"])
@pytest.mark.parametrize("type_name", list(ADAPTER_TYPES))
def test_good_fixtures_have_no_errors_or_warnings(family: str, type_name: str) -> None:
    result = validate_path(str(DATA_DIR / "adapters" / family / f"{type_name}.safetensors"))
    assert [f.rule for f in result.findings if f.severity != "info"] == []
    assert result.status(strict=True) == "pass"
    assert result.adapter_type == type_name and result.family == family


def test_conditioner_and_xs_infos() -> None:
    rules = _rules(str(DATA_DIR / "adapters" / "tiny-small" / "bora-xs.safetensors"))
    assert "cond.seconds_total_weight" in rules["no-runtime-module"]
    assert "rebuilds them from the base" in rules["xs-no-bases"]


def test_config_missing_and_invalid(tmp_path: Path) -> None:
    tensors, _config = _adapter()
    assert "config-missing" in _rules(_write(tmp_path, tensors, {}))
    bad = _write(tmp_path, tensors, {"lora_config": "{oops"}, "b.safetensors")
    assert "not valid JSON" in _rules(bad)["config-invalid"]


def test_unknown_type_and_alias(tmp_path: Path) -> None:
    tensors, config = _adapter("dora-cols")
    unknown = _rules(_write(tmp_path, tensors, _meta({**config, "adapter_type": "lokr"})))
    assert "lokr" in unknown["unknown-type"]
    alias = _rules(
        _write(tmp_path, tensors, _meta({**config, "adapter_type": "dora"}), "b.safetensors")
    )
    assert "'dora-cols' by magnitude shape" in alias["legacy-alias"]
    assert "type-disagreement" not in alias


def test_type_disagreement(tmp_path: Path) -> None:
    tensors, config = _adapter("bora")
    rules = _rules(_write(tmp_path, tensors, _meta({**config, "adapter_type": "lora"})))
    assert "'bora'" in rules["type-disagreement"]


def test_inconsistent_tensors(tmp_path: Path) -> None:
    tensors, config = _adapter("dora-rows")
    del tensors[f"{QKV0}.parametrizations.weight.0.magnitude"]
    rules = _rules(_write(tmp_path, tensors, _meta(config)))
    assert "inconsistent-tensors" in rules


def test_unmatched_key_and_nothing_skipped_silently(tmp_path: Path) -> None:
    tensors, config = _adapter()
    tensors["model.transformer.layers.0.ff.ff.2.parametrizations.weight.0.lora_Q"] = np.zeros(
        2, np.float16
    )
    tensors["optimizer.step"] = np.zeros(1, np.float16)
    message = _rules(_write(tmp_path, tensors, _meta(config)))["unmatched-key"]
    assert message.startswith("2 keys") and "lora_Q" in message


def test_unknown_target_and_shape_mismatch(tmp_path: Path) -> None:
    tensors, config = _adapter()
    tensors["model.transformer.layers.9.ff.ff.2.parametrizations.weight.0.lora_A"] = np.zeros(
        (4, 64), np.float16
    )
    tensors["model.transformer.layers.9.ff.ff.2.parametrizations.weight.0.lora_B"] = np.zeros(
        (16, 4), np.float16
    )
    rules = _rules(_write(tmp_path, tensors, _meta(config)), model="tiny-medium")
    assert "layers.9" in rules["unknown-target"]
    wrong = _rules(
        _write(tmp_path, _adapter()[0], _meta(config), "b.safetensors"), model="tiny-small"
    )
    assert "shape-mismatch" in wrong


def test_small_adapter_checked_against_medium(tmp_path: Path) -> None:
    small = synth_adapter(FAMILIES["tiny-small"], "lora", rank=4, alpha=4, seed=1)
    path = _write(tmp_path, small.file_tensors(), small.metadata())
    rules = _rules(path, model="tiny-medium")
    assert {"shape-mismatch", "unknown-target"} <= set(rules)
    assert "base-model-mismatch" in rules


def test_rank_mismatch(tmp_path: Path) -> None:
    tensors, config = _adapter()
    assert (
        "rank 4" in _rules(_write(tmp_path, tensors, _meta({**config, "rank": 8})))["rank-mismatch"]
    )


def test_slots_and_bare_keys(tmp_path: Path) -> None:
    tensors, config = _adapter()
    moved = {k.replace(".weight.0.", ".weight.1."): v for k, v in tensors.items()}
    assert "slot 1" in _rules(_write(tmp_path, moved, _meta(config)))["nonzero-slot"]
    bare = _rules(str(DATA_DIR / "adapters" / "tiny-medium" / "lora.bare.safetensors"))
    assert "bare-keys" in bare


def test_nan_inf_only_with_deep(tmp_path: Path) -> None:
    tensors, config = _adapter()
    key = f"{QKV0}.parametrizations.weight.0.lora_A"
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.inf
    path = _write(tmp_path, tensors, _meta(config))
    assert "nan-inf" not in _rules(path)
    assert "(1)" in _rules(path, deep=True)["nan-inf"]


def test_negative_magnitudes(tmp_path: Path) -> None:
    tensors, config = _adapter("dora-rows")
    key = f"{QKV0}.parametrizations.weight.0.magnitude"
    tensors[key] = -tensors[key]
    assert QKV0 in _rules(_write(tmp_path, tensors, _meta(config)))["negative-magnitude"]


def test_coverage_missing_and_unselected(tmp_path: Path) -> None:
    tensors, config = _adapter(include=["layers.[0-1]."])
    dropped = {k: v for k, v in tensors.items() if "layers.1.ff.ff.2" not in k}
    message = _rules(_write(tmp_path, dropped, _meta(config)))["coverage-missing"]
    assert message.startswith("18 expected, 17 present, 1 missing")
    narrowed = _rules(
        _write(tmp_path, tensors, _meta({**config, "include": ["layers.0."]}), "b.safetensors")
    )
    assert narrowed["coverage-unselected"].startswith("9 targets")


def test_zero_effect_and_dtype(tmp_path: Path) -> None:
    adapter = synth_adapter(FAM, "lora-xs", zero_effect=True)
    rules = _rules(_write(tmp_path, adapter.file_tensors(dtype="F32"), adapter.metadata()))
    assert "zero-effect" in rules and "F32" in rules["dtype-unconventional"]


def test_pickle_is_a_finding_and_never_read(tmp_path: Path) -> None:
    path = tmp_path / "legacy.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    result = validate_path(str(path))
    assert [f.rule for f in result.findings] == ["pickle"] and not result.malformed


def test_base_checkpoint_is_not_an_adapter(tmp_path: Path) -> None:
    base = synth_base(FAM)
    path = _write(tmp_path, base.official_tensors(), {})
    assert list(_rules(path)) == ["not-an-adapter"]


def test_family_unknown(tmp_path: Path) -> None:
    tensors = {
        f"{QKV0}.parametrizations.weight.0.lora_A": np.zeros((4, 999), np.float16),
        f"{QKV0}.parametrizations.weight.0.lora_B": np.zeros((7, 4), np.float16),
    }
    config = {"rank": 4, "alpha": 4, "adapter_type": "lora"}
    assert "family-unknown" in _rules(_write(tmp_path, tensors, _meta(config)))


def test_malformed_corpus_is_malformed_with_exit_3() -> None:
    run = validate_paths([str(DATA_DIR / "malformed")])
    assert run.files and all(f.malformed for f in run.files)
    assert all(f.findings[0].rule == "malformed" for f in run.files)
    assert run.exit_code == 3


def test_strict_turns_warnings_into_failures() -> None:
    path = str(DATA_DIR / "adapters" / "tiny-medium" / "lora.zero-effect.safetensors")
    assert validate_paths([path]).exit_code == 0
    assert validate_paths([path], strict=True).exit_code == 1


def test_every_rule_has_a_hint_and_known_severity() -> None:
    for rule in RULES.values():
        assert rule.severity in ("error", "warning", "info") and rule.hint and rule.title


def test_rank_exceeds_target(tmp_path: Path) -> None:
    # tiny-medium: to_timestep_embed.0 is (16, 8), so rank 12 > min(fan_out, fan_in) = 8 there,
    # while the shapes themselves fit the family (lora_A (12, 8), lora_B (16, 12))
    adapter = synth_adapter(FAM, "lora", rank=12, seed=3, include=["to_timestep_embed.0"])
    path = _write(tmp_path, adapter.file_tensors(), adapter.metadata(), "r12.safetensors")
    result = validate_path(path)
    rules = {f.rule: f for f in result.findings}
    assert result.family == "tiny-medium" and "shape-mismatch" not in rules
    assert rules["rank-exceeds-target"].severity == "error"
    assert "model.to_timestep_embed.0: rank 12 > min(fan_out, fan_in) = 8" in (
        rules["rank-exceeds-target"].message
    )
    at_bound = synth_adapter(FAM, "lora", rank=8, seed=3, include=["to_timestep_embed.0"])
    ok = _write(tmp_path, at_bound.file_tensors(), at_bound.metadata(), "r8.safetensors")
    assert "rank-exceeds-target" not in _rules(ok)
    forced = _rules(path, model="tiny-medium")
    assert "rank-exceeds-target" in forced


def test_rank_exceeds_target_for_xs_and_without_a_family(tmp_path: Path) -> None:
    # lora-xs reveals no fans: the family's table gives the bound
    xs = synth_adapter(FAM, "lora-xs", rank=9, seed=3, include=["to_local_embed.0"])
    path = _write(tmp_path, xs.file_tensors(), xs.metadata(), "xs.safetensors")
    assert validate_path(path).family == "tiny-medium"  # named by base_model
    assert "rank-exceeds-target" not in _rules(path)  # 9 == min(16, 9): allowed
    xs = synth_adapter(FAM, "lora-xs", rank=10, seed=3, include=["to_local_embed.0"])
    path = _write(tmp_path, xs.file_tensors(), xs.metadata(), "xs10.safetensors")
    assert "rank 10 > min(fan_out, fan_in) = 9" in _rules(path)["rank-exceeds-target"]
    # no family fits: the bound is the shape the tensors show
    tensors = {
        f"{QKV0}.parametrizations.weight.0.lora_A": np.zeros((20, 10), np.float16),
        f"{QKV0}.parametrizations.weight.0.lora_B": np.zeros((7, 20), np.float16),
    }
    config = {"rank": 20, "alpha": 20, "adapter_type": "lora"}
    rules = _rules(_write(tmp_path, tensors, _meta(config), "none.safetensors"))
    assert (
        "family-unknown" in rules
        and "rank 20 > min(fan_out, fan_in) = 7" in (rules["rank-exceeds-target"])
    )


@pytest.mark.parametrize("family", ["tiny-medium", "tiny-small"])
def test_peft_folders_with_conv1d_targets_pass(family: str) -> None:
    """PEFT stores Conv1d factors as (r, in, k) / (out, r, 1) / (1, out, 1): that is right."""
    for stem in ("peft-lora", "peft-dora", "peft-rslora"):
        result = validate_path(str(DATA_DIR / "adapters" / family / stem))
        assert [f.rule for f in result.findings if f.severity == "error"] == [], stem
        assert result.family == family, stem


def test_peft_folder_with_canonical_conv1d_factors_is_a_shape_mismatch(tmp_path: Path) -> None:
    """2-D factors on a PEFT Conv1d target fold to the right canonical view, but PEFT itself
    would refuse them: validate compares in the layout PEFT reads."""
    fam = FAMILIES["tiny-small"]
    adapter = synth_adapter(fam, "dora-rows", rank=4, alpha=8, seed=5)
    folder = tmp_path / "peft"
    folder.mkdir()
    flat = adapter.file_tensors("peft")
    for param, value in adapter.tensors["model.preprocess_conv"].items():
        key = format_adapter_key("model.preprocess_conv", param, "peft")
        flat[key] = value.astype(np.float16)  # the canonical 2-D / 1-D view
    write_safetensors(folder / "adapter_model.safetensors", flat, {"format": "pt"})
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": []}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    rules = _rules(str(folder))
    message = rules["shape-mismatch"]
    assert (
        "model.preprocess_conv.lora_A: file (4, 24) vs tiny-small peft-conv1d (4, 8, 3)" in message
    )
    assert "3 tensors" in message
