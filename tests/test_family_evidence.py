"""Family detection uses every piece of evidence; undetermined is a warning, not an error.

Official XS files store no U/V and no base_model: dora-rows-xs reveals fans only through its
magnitude lengths, lora-xs only through its target set. Issue 13 item 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR, OFFICIAL_XS, OFFICIAL_XS_DIR
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.inspect.report import inspect_path
from sa3ckpt.ops.validate import validate_path
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES, detect_family
from tests.helpers import run_cli

OFFICIAL = DATA_DIR / OFFICIAL_XS_DIR
FULL = [stem for stem, _type, include in OFFICIAL_XS if not include]  # every target selected
FIXTURE_FAMILIES = ("tiny-medium", "tiny-small")


def _official(tmp_path: Path, fam: str, type_name: str, name: str = "a", **options) -> str:
    """An official-style save: no U/V, lora_config without base_model unless given."""
    base_model = options.pop("base_model", None)
    adapter = synth_adapter(FAMILIES[fam], type_name, rank=options.pop("rank", 2), **options)
    config = {k: v for k, v in adapter.config.items() if k != "base_model"}
    if base_model is not None:
        config["base_model"] = base_model
    tensors = {k: v for k, v in adapter.file_tensors().items() if not k.endswith((".U", ".V"))}
    path = tmp_path / f"{name}.safetensors"
    write_safetensors(path, tensors, {"lora_config": json.dumps(config)})
    return str(path)


def _rules(path: str, **kwargs) -> dict[str, str]:
    return {f.rule: f.message for f in validate_path(path, **kwargs).findings}


@pytest.mark.parametrize("fam", FIXTURE_FAMILIES)
@pytest.mark.parametrize("stem", FULL)
def test_official_xs_fixtures_pass_and_name_their_family(fam: str, stem: str) -> None:
    path = str(OFFICIAL / fam / f"{stem}.safetensors")
    result = run_cli("validate", "--strict", path)
    assert result.returncode == 0, result.stdout
    doc = json.loads(run_cli("inspect", "--json", path).stdout)
    family = doc["files"][0]["family"]
    assert family["name"] == fam
    if stem == "lora-xs":  # names fit several families; the exact selection picks one
        assert fam in family["fits"] and len(family["fits"]) > 1
        assert any("include/exclude select exactly" in e for e in family["evidence"])
    else:  # magnitude lengths rule the other families out
        assert family["fits"] == [fam]
    assert validate_path(path).family == fam


@pytest.mark.parametrize("fam", FIXTURE_FAMILIES)
def test_official_xs_without_any_family_evidence_is_undetermined(fam: str) -> None:
    path = str(OFFICIAL / fam / "lora-xs.layers-0.safetensors")
    result = run_cli("validate", "--json", path)
    assert result.returncode == 0, result.stdout
    [file] = json.loads(result.stdout)["files"]
    assert file["family"] is None
    [warning] = [f for f in file["findings"] if f["severity"] == "warning"]
    assert warning["rule"] == "family-undetermined" and "--model" in warning["hint"]
    assert run_cli("validate", "--strict", path).returncode == 1
    forced = run_cli("validate", "--strict", "--model", fam, path)
    assert forced.returncode == 0, forced.stdout
    report = inspect_path(path)
    assert report.family.name is None and report.family.undetermined
    assert set(report.family.fits) == set(FAMILIES)
    text = run_cli("inspect", path).stdout
    assert "undetermined" in text and "--model" in text


@pytest.mark.parametrize("fam", ["medium", "small"])
def test_dora_rows_xs_family_from_magnitude_lengths(tmp_path: Path, fam: str) -> None:
    path = _official(tmp_path, fam, "dora-rows-xs", include=["layers.[0-1]."])
    result = validate_path(path)
    assert result.family == fam, result.findings
    assert not [f for f in result.findings if f.severity != "info"]


def test_side_less_lengths_count_for_and_against() -> None:
    from sa3ckpt.targets.detect import TargetEvidence  # here: the other tests run without it

    fam = FAMILIES["small"]
    obs = [TargetEvidence(t.name, either=(t.shape[1],)) for t in fam.dit_targets[:9]]
    found = detect_family(obs)
    assert found.family == "small" and found.decided_by == "targets"
    wrong = [TargetEvidence(obs[0].target, either=(999,))]
    assert detect_family(wrong).family is None and not detect_family(wrong).fits


def test_block_indices_past_19_say_medium(tmp_path: Path) -> None:
    # lora-xs: no shape at all; the layers 20..23 exist only in medium
    path = _official(tmp_path, "medium", "lora-xs", include=["layers.2[0-3]."])
    result = validate_path(path)
    assert result.family == "medium"
    assert "family-undetermined" not in _rules(path)


def test_selection_decides_between_families_that_fit(tmp_path: Path) -> None:
    path = _official(tmp_path, "small", "lora-xs")  # all 193 small targets, none past 19
    report = inspect_path(path)
    assert report.family.name == "small" and set(report.family.fits) == {"medium", "small"}
    assert any("include/exclude select exactly" in e for e in report.family.evidence)


def test_base_model_decides_between_families_that_fit(tmp_path: Path) -> None:
    partial = {"include": ["layers.[0-3]."]}
    undecided = _official(tmp_path, "small", "lora-xs", "u", **partial)
    assert set(inspect_path(undecided).family.fits) == {"medium", "small"}
    assert inspect_path(undecided).family.name is None
    claimed = _official(tmp_path, "small", "lora-xs", "c", base_model="sa3-sm-music", **partial)
    assert inspect_path(claimed).family.name == "small"
    assert validate_path(claimed).family == "small"
    ruled_out = _official(tmp_path, "small", "lora-xs", "r", base_model="tiny-medium", **partial)
    report = inspect_path(ruled_out)
    assert report.family.name is None
    assert any("which the targets rule out" in e for e in report.family.evidence)


def test_conditioner_only_file_is_undetermined_not_unknown(tmp_path: Path) -> None:
    # the seconds conditioner is (768, 256) in medium and small alike
    path = _official(tmp_path, "medium", "lora", include=["seconds_total"])
    rules = _rules(path)
    assert "family-undetermined" in rules and "family-unknown" not in rules
    assert "medium, small" in rules["family-undetermined"]
    assert run_cli("validate", path).returncode == 0


def test_undetermined_still_checks_what_every_candidate_agrees_on(tmp_path: Path) -> None:
    # cols-length magnitudes under a rows type: wrong for medium and small alike
    adapter = synth_adapter(FAMILIES["medium"], "dora-cols-xs", rank=2, include=["seconds_total"])
    config = {k: v for k, v in adapter.config.items() if k != "base_model"}
    config["adapter_type"] = "dora-rows-xs"
    tensors = adapter.file_tensors()
    path = tmp_path / "a.safetensors"
    write_safetensors(path, tensors, {"lora_config": json.dumps(config)})
    rules = _rules(str(path))
    assert "family-undetermined" in rules
    assert {"type-disagreement", "shape-mismatch"} & set(rules)
    assert run_cli("validate", str(path)).returncode == 1


def test_shapes_that_fit_no_family_stay_an_error(tmp_path: Path) -> None:
    qkv = "model.transformer.layers.0.self_attn.to_qkv.parametrizations.weight.0"
    tensors = {
        f"{qkv}.lora_A": np.zeros((2, 999), np.float16),
        f"{qkv}.lora_B": np.zeros((7, 2), np.float16),
    }
    path = tmp_path / "a.safetensors"
    config = {"rank": 2, "alpha": 2, "adapter_type": "lora"}
    write_safetensors(path, tensors, {"lora_config": json.dumps(config)})
    rules = _rules(str(path))
    assert "family-unknown" in rules and "family-undetermined" not in rules
