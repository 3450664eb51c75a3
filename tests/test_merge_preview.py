"""preview_merge: the merge's own steps up to the first write, so preview and merge agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from fixtures.generate import DATA_DIR
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.atomic import OutputRefused
from sa3ckpt.names.modules import SECONDS_CONDITIONER
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import merge_checkpoint, preview_merge
from sa3ckpt.strengths import AdapterArg
from tests.helpers import BASE_FAMILY, BASE_OFFICIAL

BASE = str(BASE_OFFICIAL)


def _fixture(stem: str) -> str:
    return str(DATA_DIR / "adapters" / BASE_FAMILY / f"{stem}.safetensors")


DORA_STACK = [AdapterArg(_fixture("dora-rows"), 0.7), AdapterArg(_fixture("dora-cols"), 0.7)]
LORA_PAIR = [AdapterArg(_fixture("lora"), 1.0), AdapterArg(_fixture("lora.layers-0"), 0.5)]

OPTION_SETS = [
    {},
    {"only": "dit"},
    {"only": "conditioner"},
    {"exclude": ["2=layers.0", "seconds_total"]},
    {"exclude": ["transformer.layers.[1-2]."], "dtype": "fp32", "semantics": "delta"},
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: repr(o))
@pytest.mark.parametrize("stack", [LORA_PAIR, DORA_STACK], ids=["lora", "dora"])
def test_preview_counts_equal_what_the_merge_then_reports(
    tmp_path: Path, stack: list[AdapterArg], options: dict
) -> None:
    out = tmp_path / "out.safetensors"
    preview = preview_merge(BASE, stack, str(out), MergeOptions(**options))
    assert list(tmp_path.iterdir()) == []  # the preview wrote nothing
    ledger = merge_checkpoint(BASE, stack, str(out), MergeOptions(**options))
    assert sorted(preview.planned) == sorted(ledger.merged)
    assert preview.ledger.missing_from_base == ledger.missing_from_base
    assert preview.ledger.skipped == ledger.skipped
    assert preview.ledger.excluded == ledger.excluded
    assert preview.ledger.unused_exclusions == ledger.unused_exclusions
    assert preview.warnings == ledger.warnings
    merged_by_adapter = {t for a in preview.adapters for t in a.merged}
    assert merged_by_adapter == set(ledger.merged)
    for row, doc in zip(preview.adapters, ledger.adapters, strict=True):
        assert (row.path, row.strength, row.adapter_type) == (
            doc["path"],
            doc["strength"],
            doc["adapter_type"],
        )
        assert len(row.merged) + len(row.skipped) + len(row.excluded) == doc["targets"] + len(
            row.excluded
        )
        assert set(row.excluded) == {e.target for e in ledger.excluded if e.adapter == row.index}
    assert preview.lines()[0].startswith(f"would merge {len(ledger.merged)}/")


def test_preview_lists_missing_targets_per_adapter_and_the_strict_refusal(tmp_path: Path) -> None:
    tensors = load_file(BASE)
    dropped = next(k for k in tensors if "seconds_total" in k and k.endswith("weight"))
    del tensors[dropped]
    base = tmp_path / "base.safetensors"
    save_file(tensors, str(base))
    stack = [AdapterArg(_fixture("lora"), 1.0)]
    preview = preview_merge(str(base), stack)
    (row,) = preview.adapters
    assert row.missing_from_base == (SECONDS_CONDITIONER,)
    assert len(row.merged) == len(preview.planned) == 39
    assert preview.strict_refusal is not None and SECONDS_CONDITIONER in preview.strict_refusal
    with pytest.raises(IncompatibleError) as refused:
        merge_checkpoint(
            str(base), stack, str(tmp_path / "o.safetensors"), options=MergeOptions(strict=True)
        )
    assert str(refused.value) == preview.strict_refusal
    assert f"under --strict: {preview.strict_refusal}" in preview.lines()


def test_preview_reports_the_seconds_stack_warning_that_strict_refuses(tmp_path: Path) -> None:
    preview = preview_merge(BASE, DORA_STACK)
    rules = [w.rule for w in preview.ledger.stack.warnings] if preview.ledger.stack else []
    assert "seconds-stack" in rules
    assert any("seconds conditioner" in line for line in preview.lines())
    out = tmp_path / "out.safetensors"
    with pytest.raises(IncompatibleError) as refused:
        merge_checkpoint(BASE, DORA_STACK, str(out), options=MergeOptions(strict=True))
    assert str(refused.value) == preview.strict_refusal
    assert not out.exists()
    quiet = preview_merge(BASE, DORA_STACK, options=MergeOptions(exclude=["seconds_total"]))
    assert quiet.strict_refusal is None and not quiet.warnings


def test_preview_raises_what_the_merge_raises(tmp_path: Path) -> None:
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"keep")
    with pytest.raises(OutputRefused):
        preview_merge(BASE, LORA_PAIR, str(existing))
    assert preview_merge(
        BASE, LORA_PAIR, str(existing), options=MergeOptions(force=True)
    ).ledger.output == str(existing)
    assert existing.read_bytes() == b"keep"
    with pytest.raises(UsageError, match="no pattern"):
        preview_merge(BASE, LORA_PAIR, options=MergeOptions(exclude=["1="]))
    with pytest.raises(UsageError, match="adapter 3 does not exist"):
        preview_merge(BASE, LORA_PAIR, options=MergeOptions(exclude=["3=layers"]))
    medium = str(DATA_DIR / "adapters" / "tiny-medium" / "lora.safetensors")
    with pytest.raises(IncompatibleError, match="do not fit"):
        preview_merge(BASE, [AdapterArg(medium, 1.0)])


def test_preview_comparison_is_the_merges_comparison() -> None:
    preview = preview_merge(BASE, DORA_STACK, options=MergeOptions(compare=True))
    ledger = merge_checkpoint(BASE, DORA_STACK, None, options=MergeOptions(compare=True))
    assert preview.ledger.comparison is not None and ledger.comparison is not None
    assert preview.ledger.comparison.to_json() == ledger.comparison.to_json()
    assert preview.lines()[: len(ledger.comparison.lines())] == ledger.comparison.lines()
    assert preview_merge(BASE, DORA_STACK).ledger.comparison is None
