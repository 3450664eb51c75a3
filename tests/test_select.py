"""include/exclude selection with the official `[a-b]` range expansion."""

from __future__ import annotations

import pytest

from sa3ckpt.names import UNDERFIT_DEFAULT_INCLUDE, expand_ranges, is_selected, select
from sa3ckpt.names.select import MAX_EXPANSIONS
from sa3ckpt.targets import FAMILIES


def test_simple_range() -> None:
    assert expand_ranges("layers.[0-3].") == ["layers.0.", "layers.1.", "layers.2.", "layers.3."]


def test_multi_digit_and_single_value_ranges() -> None:
    assert expand_ranges("layers.[9-11].") == ["layers.9.", "layers.10.", "layers.11."]
    assert expand_ranges("layers.[7].") == ["layers.7."]


def test_lists_and_several_groups_expand_as_a_product() -> None:
    assert expand_ranges("a[1,3-4]b[0-1]") == ["a1b0", "a1b1", "a3b0", "a3b1", "a4b0", "a4b1"]


def test_no_range_is_the_pattern_itself() -> None:
    assert expand_ranges("self_attn") == ["self_attn"]
    assert expand_ranges("x[ab]") == ["x[ab]"]
    assert expand_ranges("") == [""]


def test_backwards_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="backwards"):
        expand_ranges("layers.[3-1].")


def test_expansion_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        expand_ranges(f"[0-{MAX_EXPANSIONS}]")


def test_trailing_dot_keeps_layer_1_apart_from_10() -> None:
    names = [f"model.transformer.layers.{i}.ff.ff.2" for i in range(12)]
    assert select(names, ["layers.1."], None) == ["model.transformer.layers.1.ff.ff.2"]
    assert len(select(names, ["layers.1"], None)) == 3  # 1, 10, 11: substring semantics


def test_include_empty_selects_everything_and_exclude_wins() -> None:
    names = ["model.a.to_q", "model.b.to_kv", "model.c.to_out"]
    assert select(names, [], None) == names
    assert select(names, None, ["to_kv"]) == ["model.a.to_q", "model.c.to_out"]
    assert select(names, ["model."], ["to_"]) == []
    assert is_selected("model.a.to_q", ["to_q"], None)
    assert not is_selected("model.a.to_q", ["to_q"], ["model.a"])


def test_range_in_exclude() -> None:
    fam = FAMILIES["medium"]
    kept = fam.selected(["ff.ff.2"], ["layers.[0-19]."])
    assert [t.block for t in kept] == [20, 21, 22, 23]


@pytest.mark.parametrize(("family", "count"), [("medium", 169), ("small", 141)])
def test_underfit_default_filter_counts(family: str, count: int) -> None:
    assert len(FAMILIES[family].selected(list(UNDERFIT_DEFAULT_INCLUDE), None)) == count
