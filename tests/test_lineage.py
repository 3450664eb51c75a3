"""Lineage: a training-base adapter merged into the post-trained model (or the reverse) warns.

The rule `lineage-mismatch` (warning) in validate --base and merge, decided from the adapter's
`base_model`, an sa3.cpp DiT's `dit.training_base` / `general.finetune`, or an official base's
own name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import save_checkpoint
from sa3ckpt.adapters.formats import load_adapter
from sa3ckpt.errors import IncompatibleError
from sa3ckpt.findings import RULES
from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.gguf_facts import Identity
from sa3ckpt.lineage import adapter_lineage, base_lineage, lineage_mismatch
from sa3ckpt.ops.convert import convert_base
from sa3ckpt.ops.merge import MergeOptions, merge_checkpoint
from sa3ckpt.ops.validate import validate_paths
from sa3ckpt.strengths import AdapterArg

OFFICIAL = DATA_DIR / "bases" / "tiny-medium.official-full.safetensors"
LORA = DATA_DIR / "adapters" / "tiny-medium" / "lora.safetensors"


def _adapter(tmp_path: Path, base_model: str) -> Path:
    ckpt = load_adapter(LORA)
    ckpt.config.extra["base_model"] = base_model
    out = tmp_path / f"{base_model}.safetensors"
    save_checkpoint(ckpt, out)
    return out


def test_the_rule_is_a_documented_warning() -> None:
    assert RULES["lineage-mismatch"].severity == "warning"


def test_lineage_from_names_and_the_mismatch_both_ways() -> None:
    base = Identity("medium", True)
    post = Identity("medium", False)
    assert adapter_lineage("stable-audio-3-medium-base") == base
    assert adapter_lineage("stabilityai/stable-audio-3-small-sfx") == Identity("small-sfx")
    assert adapter_lineage("tiny-small") is None and adapter_lineage(None) is None
    forward = lineage_mismatch(base, post)
    assert forward is not None and forward.startswith("trained on stable-audio-3-medium-base")
    assert "merged into stable-audio-3-medium (post-trained model)" in forward
    assert lineage_mismatch(post, base) is not None
    assert lineage_mismatch(base, base) is None and lineage_mismatch(None, post) is None


def test_base_lineage_from_gguf_kvs_and_from_an_official_name(tmp_path: Path) -> None:
    gguf_base = tmp_path / "b.gguf"
    convert_base(OFFICIAL, gguf_base, to="sa3cpp", variant="medium", training_base=True)
    with open_base(gguf_base) as opened:
        assert base_lineage(opened) == Identity("medium", True)
    folder = tmp_path / "models--stabilityai--stable-audio-3-small-music"
    folder.mkdir()
    shutil.copy(OFFICIAL, folder / "model.safetensors")
    with open_base(folder / "model.safetensors") as opened:
        assert base_lineage(opened) == Identity("small-music", False)
    with open_base(OFFICIAL) as opened:
        assert base_lineage(opened) is None  # nothing says which: no warning either way


@pytest.fixture
def post_trained(tmp_path: Path) -> tuple[Path, Path]:
    dit = tmp_path / "post.gguf"
    convert_base(OFFICIAL, dit, to="sa3cpp", variant="medium", training_base=False)
    return dit, tmp_path / "post-conditioner.gguf"


def test_merge_warns_and_strict_refuses(tmp_path: Path, post_trained: tuple[Path, Path]) -> None:
    dit, cond = post_trained
    adapter = _adapter(tmp_path, "stable-audio-3-medium-base")
    ledger = merge_checkpoint(
        str(dit),
        [AdapterArg(str(adapter), 1.0)],
        str(tmp_path / "out.gguf"),
        MergeOptions(conditioner=str(cond)),
    )
    assert len(ledger.lineage) == 1 and ledger.lineage[0].startswith("lineage-mismatch: ")
    assert ledger.lineage[0] in ledger.warnings and ledger.to_json()["lineage"] == ledger.lineage
    out = tmp_path / "strict.gguf"
    with pytest.raises(IncompatibleError, match="lineage-mismatch"):
        merge_checkpoint(
            str(dit),
            [AdapterArg(str(adapter), 1.0)],
            str(out),
            MergeOptions(conditioner=str(cond), strict=True),
        )
    assert not out.exists()
    same = _adapter(tmp_path, "stable-audio-3-medium")
    ledger = merge_checkpoint(
        str(dit),
        [AdapterArg(str(same), 1.0)],
        str(tmp_path / "same.gguf"),
        MergeOptions(conditioner=str(cond)),
    )
    assert ledger.lineage == []


def test_validate_with_base(tmp_path: Path, post_trained: tuple[Path, Path]) -> None:
    dit, _ = post_trained
    adapter = _adapter(tmp_path, "stable-audio-3-medium-base")
    run = validate_paths([str(adapter)], base=str(dit))
    found = [f for f in run.files[0].findings if f.rule == "lineage-mismatch"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert not [
        f for f in validate_paths([str(adapter)]).files[0].findings if f.rule == "lineage-mismatch"
    ]  # without --base nothing says where it goes
