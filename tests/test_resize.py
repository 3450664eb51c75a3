"""resize: lora exactly via the SVD of c·B·A; DoRA/BoRA magnitudes untouched; -xs via M.

References are independent float64 NumPy: the dense SVD of c·B·A (or c·U·M·Vᵀ with the XS
bases of tests/reference_math.py) and `ref_adapted` for the adapted weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint, load_checkpoint, save_checkpoint
from sa3ckpt.errors import UsageError
from sa3ckpt.ops.library.resize import resize
from sa3ckpt.ops.validate import validate_path
from sa3ckpt.targets import FAMILIES
from tests.helpers import base_2d, run_cli
from tests.reference_math import ref_adapted, ref_svd_bases

FAMILY = "tiny-small"
FAM = FAMILIES[FAMILY]
BASE = str(DATA_DIR / "bases" / f"{FAMILY}.official.safetensors")
DECOMPOSED = ("dora-rows", "dora-cols", "bora", "dora-rows-xs", "dora-cols-xs", "bora-xs")


def _adapter(name: str) -> str:
    return str(DATA_DIR / "adapters" / FAMILY / f"{name}.safetensors")


def _params(ckpt: AdapterCheckpoint, target: str) -> dict[str, np.ndarray]:
    """float64 params with XS bases (stored, else the float64 reference of the base's)."""
    p = {k: np.asarray(v, np.float64) for k, v in ckpt.tensors[target].items()}
    if ckpt.kind.xs and "U" not in p:
        w0 = base_2d(FAM.by_name[target]).astype(np.float32)
        p["U"], p["V"] = ref_svd_bases(w0, ckpt.config.rank)
    return p


def _update(ckpt: AdapterCheckpoint, target: str) -> np.ndarray:
    """c·ΔW in float64."""
    p = _params(ckpt, target)
    low = p["U"] @ p["M_xs"] @ p["V"].T if ckpt.kind.xs else p["lora_B"] @ p["lora_A"]
    return ckpt.config.scale * low


def _truncated(m: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(m)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


@pytest.mark.parametrize("name", ["lora", "dora-rows", "bora"])
def test_resize_to_its_own_rank_is_exact(tmp_path: Path, name: str) -> None:
    src = load_checkpoint(_adapter(name))
    out = tmp_path / "same.safetensors"
    ledger = resize(_adapter(name), str(out), rank=src.config.rank, dtype="fp32")
    got = load_checkpoint(out)
    assert got.config.rank == got.config.alpha == src.config.rank
    for target in src.targets():
        want = _update(src, target)
        assert np.allclose(_update(got, target), want, atol=1e-6 * np.abs(want).max()), target
    assert all(t.retained_energy == pytest.approx(1.0) for t in ledger.targets)
    assert all(t.residual < 1e-6 for t in ledger.targets)


@pytest.mark.parametrize("name", ["lora", "dora-cols", "lora-xs", "dora-rows-xs", "bora-xs"])
def test_lower_rank_is_the_float64_truncated_svd(tmp_path: Path, name: str) -> None:
    src = load_checkpoint(_adapter(name))
    out = tmp_path / "r2.safetensors"
    rank = 2
    ledger = resize(_adapter(name), str(out), rank=rank, base_path=BASE, dtype="fp32")
    got = load_checkpoint(out)
    assert got.adapter_type == src.adapter_type and got.config.rank == rank
    assert got.config.extra["resized_from"]["rank"] == src.config.rank
    for result in ledger.targets:
        full = _update(src, result.target)
        want = _truncated(full, rank)
        assert np.allclose(_update(got, result.target), want, atol=1e-5 * np.abs(full).max())
        s = np.linalg.svd(full, compute_uv=False)
        assert result.retained_energy == pytest.approx(np.sum(s[:rank] ** 2) / np.sum(s**2))
    if src.kind.xs:
        assert all(got.has_stored_bases(t) for t in got.targets())  # rotated: must be stored


@pytest.mark.parametrize("name", DECOMPOSED)
def test_magnitudes_are_bit_identical_and_the_adapted_change_is_measured(
    tmp_path: Path, name: str
) -> None:
    src = load_checkpoint(_adapter(name))
    out = tmp_path / "r.safetensors"
    ledger = resize(_adapter(name), str(out), rank=2, base_path=BASE)
    got = load_checkpoint(out)
    for target in src.targets():
        for param in ("magnitude", "magnitude_r", "magnitude_c"):
            if param in src.tensors[target]:
                a, b = src.tensors[target][param], got.tensors[target][param]
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (target, param)
    for result in ledger.targets:
        w0 = base_2d(FAM.by_name[result.target])
        old = ref_adapted(w0, src.adapter_type, _params(src, result.target), src.config.scale, 1)
        new = ref_adapted(w0, got.adapter_type, _params(got, result.target), got.config.scale, 1)
        moved = np.linalg.norm(new - old)
        assert result.effect_change == pytest.approx(moved / np.linalg.norm(old - w0), rel=1e-2)
        assert result.weight_change == pytest.approx(moved / np.linalg.norm(old), rel=1e-2)
        assert result.norm_change is not None and result.norm_change > 0
    problems = [f for f in validate_path(str(out)).findings if f.severity in ("error", "warning")]
    assert not problems, problems


def test_baked_norms_are_recomputed_with_the_base_and_dropped_without(tmp_path: Path) -> None:
    src = load_checkpoint(_adapter("dora-rows"))
    for target, params in src.tensors.items():  # bake them as convert --base does
        w0 = base_2d(FAM.by_name[target])
        v = w0 + _update(src, target)
        params["baked_vnorm_row"] = np.linalg.norm(v, axis=1).astype(np.float32)
    src.config.extra["baked_norms"] = True
    baked = tmp_path / "baked.safetensors"
    save_checkpoint(src, baked)
    with_base = tmp_path / "a.safetensors"
    resize(str(baked), str(with_base), rank=2, base_path=BASE)
    got = load_checkpoint(with_base)
    assert got.config.extra.get("baked_norms") is True
    for target in got.targets():
        v = base_2d(FAM.by_name[target]) + _update(got, target)
        want = np.linalg.norm(v, axis=1)
        assert np.allclose(got.tensors[target]["baked_vnorm_row"], want, rtol=1e-5)
    without = tmp_path / "b.safetensors"
    ledger = resize(str(baked), str(without), rank=2)
    dropped = load_checkpoint(without)
    assert "baked_norms" not in dropped.config.extra
    assert not any("baked_vnorm_row" in p for p in dropped.tensors.values())
    assert any("dropped" in note for note in ledger.notes)


def test_energy_mode_takes_the_largest_rank_any_target_needs(tmp_path: Path) -> None:
    src = load_checkpoint(_adapter("lora"))
    out = tmp_path / "e.safetensors"
    energy = 0.8
    ledger = resize(_adapter("lora"), str(out), energy=energy, dtype="fp32")
    want = {}
    for target in src.targets():
        s = np.linalg.svd(_update(src, target), compute_uv=False)
        want[target] = int(np.argmax(np.cumsum(s**2) / np.sum(s**2) >= energy)) + 1
    assert {t.target: t.rank_needed for t in ledger.targets} == want
    assert ledger.rank == max(want.values()) == load_checkpoint(out).config.rank
    assert all(t.retained_energy >= energy for t in ledger.targets)


def test_refusals() -> None:
    with pytest.raises(UsageError, match="nothing to do"):
        resize(_adapter("lora"), "/tmp/never-written.safetensors", rank=5)
    with pytest.raises(UsageError, match="--base"):
        resize(_adapter("lora-xs"), "/tmp/never-written.safetensors", rank=2)
    with pytest.raises(UsageError, match="exactly one"):
        resize(_adapter("lora"), "/tmp/never-written.safetensors")


def test_cli_json_and_exit_codes(tmp_path: Path) -> None:
    out = tmp_path / "r.safetensors"
    done = run_cli(
        "resize", _adapter("dora-rows"), "-o", str(out), "--rank", "2", "--base", BASE, "--json"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["schema"] == 1 and doc["command"] == "resize"
    assert doc["old_rank"] == 4 and doc["rank"] == doc["alpha"] == 2
    assert all(t["effect_change"] is not None for t in doc["targets"])
    strict = run_cli("validate", "--strict", str(out))
    assert strict.returncode == 0, strict.stdout
    assert run_cli("resize", _adapter("lora"), "-o", str(out), "--rank", "2").returncode == 2
    up = run_cli("resize", _adapter("lora"), "-o", str(tmp_path / "u.safetensors"), "--rank", "8")
    assert up.returncode == 2 and "nothing to do" in up.stderr and up.stderr.count("\n") == 1
    xs = run_cli(
        "resize", _adapter("lora-xs"), "-o", str(tmp_path / "x.safetensors"), "--rank", "2"
    )
    assert xs.returncode == 2 and "--base" in xs.stderr
    medium = str(DATA_DIR / "bases" / "tiny-medium.official.safetensors")
    wrong = run_cli(
        "resize",
        _adapter("dora-rows"),
        "-o",
        str(tmp_path / "w.safetensors"),
        "--rank",
        "2",
        "--base",
        medium,
    )
    assert wrong.returncode == 4, wrong.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert (
        run_cli("resize", str(bad), "-o", str(tmp_path / "z.safetensors"), "--rank", "2").returncode
        == 3
    )
    for name in ("u", "x", "w", "z"):
        assert not (tmp_path / f"{name}.safetensors").exists()
