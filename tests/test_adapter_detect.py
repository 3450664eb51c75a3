"""Adapter type detection from tensor shapes, cross-checked against lora_config."""

from __future__ import annotations

import pytest

from sa3ckpt.adapters.detect import detect_type, resolve_config_type
from sa3ckpt.adapters.types import ADAPTER_TYPES

FAN = (12, 8)  # fan_out, fan_in of a non-square layer
SQUARE = (8, 8)
R = 2


def _shapes(kind_name: str, fan: tuple[int, int] = FAN) -> dict[str, tuple[int, ...]]:
    return ADAPTER_TYPES[kind_name].shapes(*fan, R)


def _codes(detection) -> set[str]:
    return {f.rule for f in detection.findings}


@pytest.mark.parametrize("kind_name", list(ADAPTER_TYPES))
def test_every_type_detected_from_tensors(kind_name: str) -> None:
    params = {"model.a": _shapes(kind_name), "model.b": _shapes(kind_name)}
    fans = {"model.a": FAN, "model.b": FAN}
    detection = detect_type(params, kind_name, fans)
    assert detection.adapter_type == kind_name
    assert detection.from_tensors == kind_name
    assert not detection.findings


def test_xs_dora_without_fans_is_ambiguous_until_a_table_helps() -> None:
    params = {"model.a": _shapes("dora-cols-xs")}
    blind = detect_type(params, None)
    assert blind.from_tensors is None  # no "?" placeholder type: the candidates say it
    assert blind.candidates == ("dora-rows-xs", "dora-cols-xs") and blind.orientation_open
    assert "ambiguous-orientation" in _codes(blind)
    assert detect_type(params, None, {"model.a": FAN}).adapter_type == "dora-cols-xs"


def test_legacy_dora_alias_resolved_by_magnitude_shape() -> None:
    detection = detect_type({"model.a": _shapes("dora-cols")}, "dora")
    assert detection.adapter_type == "dora-cols"
    warning = next(f for f in detection.findings if f.rule == "legacy-alias")
    assert warning.severity == "warning" and "by magnitude shape" in warning.message
    assert "type-disagreement" not in _codes(detection)


@pytest.mark.parametrize(
    ("alias", "target"), [("dora", "dora-rows"), ("dora-xs", "dora-rows-xs"), ("xs", "lora-xs")]
)
def test_aliases_default(alias: str, target: str) -> None:
    resolved, findings = resolve_config_type(alias, None)
    assert (
        resolved == target
        and findings[0].rule == "legacy-alias"
        and "by default" in findings[0].message
    )


def test_two_d_legacy_magnitudes_tell_orientation() -> None:
    rows = {"lora_A": (R, 8), "lora_B": (8, R), "magnitude": (8, 1)}
    cols = {"lora_A": (R, 8), "lora_B": (8, R), "magnitude": (1, 8)}
    assert detect_type({"model.a": rows}, None).adapter_type == "dora-rows"
    assert detect_type({"model.a": cols}, None).adapter_type == "dora-cols"


def test_square_layers_follow_the_claim_or_default_with_warning() -> None:
    params = {"model.a": _shapes("dora-cols", SQUARE)}
    claimed = detect_type(params, "dora-cols")
    assert claimed.adapter_type == "dora-cols" and not claimed.findings
    unclaimed = detect_type(params, None)
    assert unclaimed.adapter_type == "dora-rows"
    assert "ambiguous-orientation" in _codes(unclaimed)


def test_one_non_square_target_settles_the_square_ones() -> None:
    params = {"model.a": _shapes("dora-cols", SQUARE), "model.b": _shapes("dora-cols")}
    detection = detect_type(params, None)
    assert detection.adapter_type == "dora-cols" and not detection.findings


def test_disagreement_is_a_finding_and_tensors_win() -> None:
    detection = detect_type({"model.a": _shapes("bora")}, "lora")
    assert detection.adapter_type == "bora"
    finding = next(f for f in detection.findings if f.rule == "type-disagreement")
    assert (
        finding.severity == "error" and "'lora'" in finding.message and "'bora'" in finding.message
    )


def test_unknown_type_and_inconsistent_tensors() -> None:
    unknown = detect_type({"model.a": _shapes("lora")}, "lokr")
    assert "unknown-type" in _codes(unknown) and unknown.adapter_type == "lora"
    broken = detect_type({"model.a": {"lora_A": (R, 8)}}, "lora")
    assert "inconsistent-tensors" in _codes(broken)
    assert "matches no adapter type" in broken.findings[0].message


def test_mixed_types_across_targets() -> None:
    detection = detect_type(
        {"model.a": _shapes("lora"), "model.b": _shapes("lora"), "model.c": _shapes("bora")}, None
    )
    assert detection.adapter_type == "lora"
    assert "mixed-types" in _codes(detection)


def test_optional_extras_do_not_change_the_type() -> None:
    shapes = {**_shapes("dora-rows-xs"), "U": (12, R), "V": (8, R), "baked_vnorm_row": (12,)}
    detection = detect_type({"model.a": shapes}, None)
    assert detection.adapter_type == "dora-rows-xs"  # U/V reveal the fans
