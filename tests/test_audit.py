"""The audit table (`sa3ckpt.ops.inspect.audit`) and hashes (`sa3ckpt.io.hashing`), as a library.

Names and numbers are checked against what the test writes itself; hashes against hashlib over
bytes sliced from the file here, by reading the safetensors length prefix independently.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.io.hashing import NO_SCOPE, SAFETENSORS_SCOPE, hash_path
from sa3ckpt.ops.inspect.audit import FLAGGED, MALFORMED, OK, audit_paths, sort_rows
from sa3ckpt.ops.inspect.audit_names import claims_in, name_claims, natural_key
from tests.helpers import reference_hashes, write_adapter

PEFT_RSLORA = DATA_DIR / "adapters" / "tiny-small" / "peft-rslora"


def row(table, name: str):  # type: ignore[no-untyped-def]
    return next(r for r in table.rows if r.name == name)


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lora-step=9000-epoch=3.safetensors", {"step": 9000, "epoch": 3}),
        ("checkpoint-step_9000", {"step": 9000}),
        ("run_global_step12000.safetensors", {"step": 12000}),
        ("lora-9000steps.safetensors", {"step": 9000}),
        ("name-000003.safetensors", {"epoch": 3}),  # kohya's epoch suffix
        ("name-step00000100.safetensors", {"step": 100}),  # kohya's step files: not an epoch
        ("ep5-lr1e-4", {"epoch": 5}),
        ("run-r16", {"rank": 16}),
        ("lora_rank=32_a16", {"rank": 32}),
        ("dim8-r4", {"rank": 4}),  # r first in the table: the first pattern that matches wins
        ("R128", {"rank": 128}),
        # not claims: ambiguous short forms and letters glued to the digits
        ("ver2", {}),
        ("r2d2", {}),
        ("model-s9000", {}),
        ("lr1e3", {}),
        ("stepper9000", {}),
        ("run-00003", {}),  # five digits is not kohya's suffix
    ],
)
def test_name_claims(name: str, expected: dict[str, int]) -> None:
    found = {kind: claim.value for kind, claim in claims_in(name).items()}
    assert found == expected


def test_folder_claims_nearest_first() -> None:
    claims = name_claims("sweep-r64/run-r16/epoch=2/lora-step=100.safetensors")
    assert claims.value("step").value == 100  # type: ignore[union-attr]
    assert claims.value("epoch").value == 2  # type: ignore[union-attr]
    assert claims.value("rank").value == 16  # type: ignore[union-attr]
    assert [c.value for c in claims.all("rank")] == [16, 64]


def test_natural_sort_orders_digit_runs_as_numbers() -> None:
    names = ["run-10000", "run-900", "run-9000", "run-90"]
    assert sorted(names, key=natural_key) == ["run-90", "run-900", "run-9000", "run-10000"]
    assert sorted(names) != sorted(names, key=natural_key)  # as text, 10000 sorts first


def test_sort_by_step_is_numeric(tmp_path: Path) -> None:
    for step in (10000, 900, 9000):
        write_adapter(tmp_path / f"lora-step={step}.safetensors")
    write_adapter(tmp_path / "no-step.safetensors")
    table = audit_paths([str(tmp_path)], sort="step")
    assert [r.step for r in table.rows] == [900, 9000, 10000, None]
    assert table.rows[0].step_source == "name 'lora-step=900'"


def test_sort_by_rank_type_status(tmp_path: Path) -> None:
    write_adapter(tmp_path / "a.safetensors", rank=16)
    write_adapter(tmp_path / "b.safetensors", rank=2, type_name="dora-rows")
    write_adapter(tmp_path / "c.safetensors", rank=8, zero_effect=True)
    (tmp_path / "d.safetensors").write_bytes(b"\x01")
    table = audit_paths([str(tmp_path)], deep=True)
    assert [r.rank for r in sort_rows(table.rows, "rank")] == [2, 8, 16, None]
    by_type = [r.adapter_type for r in sort_rows(table.rows, "type")]
    assert by_type == ["dora-rows", "lora", "lora", None]
    by_status = [r.status for r in sort_rows(table.rows, "status")]
    assert by_status == [MALFORMED, FLAGGED, OK, OK]


# --- the checks -----------------------------------------------------------------------------


def test_folder_rank_claim_contradicted(tmp_path: Path) -> None:
    write_adapter(tmp_path / "run-r128" / "lora.safetensors", rank=16)
    write_adapter(tmp_path / "run-r16" / "lora.safetensors", rank=16)
    write_adapter(tmp_path / "lora-r8.safetensors", rank=4)
    table = audit_paths([str(tmp_path)])
    wrong = row(table, "run-r128/lora.safetensors")
    assert wrong.status == FLAGGED
    assert [f.code for f in wrong.flags] == ["name-rank"]
    assert "claims rank 128" in wrong.flags[0].message and "rank 16" in wrong.flags[0].message
    assert row(table, "run-r16/lora.safetensors").flags == []
    assert [f.code for f in row(table, "lora-r8.safetensors").flags] == ["name-rank"]


def test_step_and_epoch_claims_against_metadata(tmp_path: Path) -> None:
    write_adapter(tmp_path / "a-step=9000.safetensors", config={"step": 8000})
    write_adapter(tmp_path / "b-step=9000.safetensors", config={"step": 9000})
    write_adapter(tmp_path / "c-epoch=3.safetensors", metadata={"ss_epoch": "4"})
    write_adapter(tmp_path / "d.safetensors", metadata={"ss_steps": "1200"})
    table = audit_paths([str(tmp_path)])
    a = row(table, "a-step=9000.safetensors")
    assert (a.step, a.step_source) == (8000, "lora_config.step")  # the metadata wins
    assert [f.code for f in a.flags] == ["name-step"]
    assert row(table, "b-step=9000.safetensors").flags == []
    c = row(table, "c-epoch=3.safetensors")
    assert (c.epoch, c.epoch_source) == (4, "metadata.ss_epoch")
    assert [f.code for f in c.flags] == ["name-epoch"]
    d = row(table, "d.safetensors")
    assert (d.step, d.step_source, d.flags) == (1200, "metadata.ss_steps", [])


def test_duplicates_need_hashes(tmp_path: Path) -> None:
    first = write_adapter(tmp_path / "first.safetensors", seed=1)
    write_adapter(tmp_path / "renamed.safetensors", seed=1, metadata={"note": "edited"})
    shutil.copy(first, tmp_path / "copy.safetensors")
    write_adapter(tmp_path / "other.safetensors", seed=2)
    plain = audit_paths([str(tmp_path)])
    assert all(r.flags == [] for r in plain.rows)
    assert "duplicate" not in plain.checks_run
    hashed = audit_paths([str(tmp_path)], hashes=True)
    assert "duplicate" in hashed.checks_run
    messages = {r.name: sorted(f.message for f in r.flags) for r in hashed.rows}
    assert messages["first.safetensors"] == [
        "identical file as copy.safetensors",
        "same tensor data as renamed.safetensors",
    ]
    assert messages["renamed.safetensors"] == [
        "same tensor data as copy.safetensors",
        "same tensor data as first.safetensors",
    ]
    assert messages["other.safetensors"] == []


def test_zero_effect_needs_deep(tmp_path: Path) -> None:
    write_adapter(tmp_path / "fresh.safetensors", zero_effect=True)
    write_adapter(tmp_path / "trained.safetensors")
    write_adapter(tmp_path / "fresh-dora.safetensors", zero_effect=True, type_name="dora-rows")
    assert all(r.flags == [] for r in audit_paths([str(tmp_path)]).rows)
    deep = audit_paths([str(tmp_path)], deep=True)
    assert [f.code for f in row(deep, "fresh.safetensors").flags] == ["zero-effect"]
    dora = row(deep, "fresh-dora.safetensors").flags
    assert [f.code for f in dora] == ["zero-effect"] and "magnitudes" in dora[0].message
    assert row(deep, "trained.safetensors").flags == []


def test_malformed_files_are_rows(tmp_path: Path) -> None:
    write_adapter(tmp_path / "good.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (tmp_path / "broken-step=5.safetensors").write_bytes(b"")
    table = audit_paths([str(tmp_path)], hashes=True, deep=True)
    assert table.malformed == 2
    broken = row(table, "broken.safetensors")
    assert broken.status == MALFORMED and "runs past the end" in (broken.error or "")
    assert row(table, "broken-step=5.safetensors").step == 5  # the name still places it
    assert row(table, "good.safetensors").status == OK


def test_base_checkpoint_is_a_base_row() -> None:
    table = audit_paths([str(DATA_DIR / "bases")])
    assert {r.status for r in table.rows} == {"base"}


def test_rslora_scale_is_alpha_over_sqrt_rank() -> None:
    raw = json.loads((PEFT_RSLORA / "adapter_config.json").read_text())
    assert raw["use_rslora"] is True
    table = audit_paths([str(PEFT_RSLORA)])
    (r,) = table.rows
    assert r.name == "peft-rslora"
    assert r.alpha == raw["lora_alpha"]
    assert r.scale == pytest.approx(raw["lora_alpha"] / math.sqrt(raw["r"]))
    assert r.scale_rule == "alpha/sqrt(rank)"
    assert r.base_model == raw["base_model_name_or_path"]
    plain = audit_paths([str(PEFT_RSLORA.parent / "peft-lora")]).rows[0]
    assert (plain.scale_rule, plain.scale) == ("alpha/rank", plain.alpha / plain.rank)  # type: ignore[operator]


# --- hashes ---------------------------------------------------------------------------------


def test_hash_matches_an_independent_slice(tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "a.safetensors")
    hashes = hash_path(path)
    assert (hashes.tensor_sha256, hashes.file_sha256) == reference_hashes(path)
    assert hashes.scope == SAFETENSORS_SCOPE and hashes.short == hashes.tensor_sha256[:12]  # type: ignore[index]


def test_metadata_only_change_keeps_the_tensor_hash(tmp_path: Path) -> None:
    before = hash_path(write_adapter(tmp_path / "a.safetensors", seed=3))
    after = hash_path(
        write_adapter(tmp_path / "b.safetensors", seed=3, config={"step": 1, "note": "x" * 300})
    )
    assert after.tensor_sha256 == before.tensor_sha256
    assert after.file_sha256 != before.file_sha256
    changed = hash_path(write_adapter(tmp_path / "c.safetensors", seed=4))
    assert changed.tensor_sha256 != before.tensor_sha256


def test_peft_folder_hash_is_its_weights_file() -> None:
    hashes = hash_path(PEFT_RSLORA)
    assert hashes.files == [str(PEFT_RSLORA / "adapter_model.safetensors")]
    expected = reference_hashes(PEFT_RSLORA / "adapter_model.safetensors")
    assert (hashes.tensor_sha256, hashes.file_sha256) == expected


def test_pickle_has_only_a_file_hash() -> None:
    path = DATA_DIR / "edge" / "raw_pickle_protocol_5.ckpt"
    hashes = hash_path(path)
    assert hashes.tensor_sha256 is None and hashes.scope == NO_SCOPE
    assert hashes.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_codec_weights_say_what_they_are(tmp_path: Path) -> None:
    """A SAME codec file is not 'no adapter tensor keys' but named by the kind table."""
    for name in ("tiny-same-s.encoder.safetensors", "tiny-same-l.decoder.safetensors"):
        shutil.copy(DATA_DIR / "kinds" / name, tmp_path / name)
    table = audit_paths([str(tmp_path)])
    encoder = row(table, "tiny-same-s.encoder.safetensors")
    assert encoder.status == "unknown" and encoder.kind == "tiny-same-s encoder weights"
    assert (encoder.error or "").startswith("not an SA3 DiT adapter: tiny-same-s encoder")
    assert row(table, "tiny-same-l.decoder.safetensors").kind == "tiny-same-l decoder weights"
    bases = audit_paths([str(DATA_DIR / "kinds")])
    assert row(bases, "tiny-small.conditioner-only.safetensors").kind == "SA3 conditioner weights"


def test_sa3cpp_model_gguf_is_a_base_row_not_a_malformed_adapter(tmp_path: Path) -> None:
    """An sa3.cpp model GGUF shares the .gguf suffix the walk lists; it is a base row (as a
    safetensors base is), not `malformed` with exit 3 (found by the route matrix)."""
    pytest.importorskip("gguf")
    from sa3ckpt.ops.convert import convert_base
    from sa3ckpt.ops.inspect.audit import BASE

    full = DATA_DIR / "bases" / "tiny-small.official-full.safetensors"
    convert_base(str(full), str(tmp_path / "base.gguf"), to="sa3cpp")  # + its sidecar
    write_adapter(tmp_path / "lora.safetensors")
    table = audit_paths([str(tmp_path)])
    assert {r.name: r.status for r in table.rows} == {
        "base.gguf": BASE,
        "base-conditioner.gguf": BASE,
        "lora.safetensors": OK,
    }
    assert table.malformed == 0
    assert all(r.error is None for r in table.rows)
