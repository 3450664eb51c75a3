"""extract: a rank-r fine-tune comes back exactly, energies pick the right rank, refusals are clear.

References are independent float64 NumPy (np.linalg.svd of the dense difference, the XS bases
of tests/reference_math.py); the merge back uses the library's merge, as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.names import official_base_key
from sa3ckpt.ops.library.extract import extract
from sa3ckpt.ops.library.lowrank import svd_for_energy, top_svd
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from sa3ckpt.ops.validate import validate_path
from sa3ckpt.targets import FAMILIES
from tests.helpers import BASE_MLX, official_base_arrays, run_cli
from tests.reference_math import ref_svd_bases

UNCHANGED = "layers.1."  # targets the fine-tunes below leave exactly as in the base


def _write_pair(
    tmp_path: Path,
    family: str,
    delta: dict[str, np.ndarray],
    name: str = "ft",
) -> tuple[str, str]:
    """(base, fine-tune) official safetensors in fp32: W_ft = W_base + delta[target]."""
    base = {k: v.astype(np.float32) for k, v in official_base_arrays(family).items()}
    finetuned = dict(base)
    for target in FAMILIES[family].targets:
        if target.name in delta:
            key = official_base_key(target.name)
            w = base[key].astype(np.float64).reshape(target.shape) + delta[target.name]
            finetuned[key] = w.reshape(base[key].shape).astype(np.float32)
    base_path, ft_path = tmp_path / "base32.safetensors", tmp_path / f"{name}.safetensors"
    save_file(base, str(base_path))
    save_file(finetuned, str(ft_path))
    return str(base_path), str(ft_path)


def _low_rank_deltas(family: str, rank: int, seed: int = 0) -> dict[str, np.ndarray]:
    """B·A of rank `rank` on every target except the UNCHANGED block."""
    rng = np.random.default_rng(seed)
    out = {}
    for target in FAMILIES[family].targets:
        if UNCHANGED in target.name:
            continue
        fan_out, fan_in = target.shape
        b = rng.standard_normal((fan_out, rank)) * 0.1
        a = rng.standard_normal((rank, fan_in)) * 0.1
        out[target.name] = b @ a
    return out


def _w2d(arrays: dict[str, np.ndarray], family: str, target: str) -> np.ndarray:
    shape = FAMILIES[family].by_name[target].shape
    return arrays[official_base_key(target)].astype(np.float64).reshape(shape)


@pytest.mark.parametrize("family", ["tiny-small", "tiny-medium"])  # Conv1d k=3 and k=1
def test_rank_r_finetune_is_extracted_and_merges_back(tmp_path: Path, family: str) -> None:
    rank = 3
    base, ft = _write_pair(tmp_path, family, _low_rank_deltas(family, rank))
    out = tmp_path / "x.safetensors"
    ledger = extract(base, ft, str(out), rank=rank, dtype="fp32")
    assert ledger.rank == rank
    assert {t for t, _ in ledger.skipped} == {
        t.name for t in FAMILIES[family].targets if UNCHANGED in t.name
    }
    assert all(t.retained_energy > 1 - 1e-9 for t in ledger.targets)
    merged = tmp_path / "merged.safetensors"
    merge_checkpoint(
        base, [AdapterArg(str(out), 1.0)], str(merged), options=MergeOptions(dtype="fp32")
    )
    got, want = load_file(str(merged)), load_file(ft)
    for key, value in want.items():
        scale = float(np.max(np.abs(value))) or 1.0
        # fp32 rounding of W_ft itself plus of the merge's own fp32 arithmetic
        assert np.max(np.abs(got[key] - value)) <= 4 * np.finfo(np.float32).eps * scale, key
    kinds = {FAMILIES[family].by_name[t.target].shape for t in ledger.targets}
    assert len(kinds) > 3  # Linear and Conv1d targets of several shapes were exercised


def test_lower_rank_equals_float64_truncated_svd(tmp_path: Path) -> None:
    family, rank = "tiny-medium", 2
    base, ft = _write_pair(tmp_path, family, _low_rank_deltas(family, 5, seed=3))
    out = tmp_path / "x.safetensors"
    ledger = extract(base, ft, str(out), rank=rank, dtype="fp32")
    ckpt = load_checkpoint(out)
    b_arr, f_arr = load_file(base), load_file(ft)
    for result in ledger.targets:
        d = _w2d(f_arr, family, result.target) - _w2d(b_arr, family, result.target)
        u, s, vt = np.linalg.svd(d)
        want = (u[:, :rank] * s[:rank]) @ vt[:rank]
        p = ckpt.tensors[result.target]
        got = np.asarray(p["lora_B"], np.float64) @ np.asarray(p["lora_A"], np.float64)
        assert np.allclose(got, want, atol=1e-6 * np.abs(d).max()), result.target
        assert result.retained_energy == pytest.approx(np.sum(s[:rank] ** 2) / np.sum(s**2))


def _spectrum_delta(shape: tuple[int, int], sigmas: list[float], seed: int) -> np.ndarray:
    """A delta with exactly these singular values (random orthonormal vectors)."""
    rng = np.random.default_rng(seed)
    k = len(sigmas)
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], k)))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], k)))
    return (u * np.array(sigmas)) @ v.T


def _ref_rank(sigmas: list[float], energy: float) -> int:
    e = np.cumsum(np.array(sigmas) ** 2) / np.sum(np.array(sigmas) ** 2)
    return int(np.argmax(e >= energy)) + 1


def test_energy_picks_the_smallest_rank_per_target_and_the_max_for_the_file(
    tmp_path: Path,
) -> None:
    family = "tiny-medium"  # every target is at least 8 wide
    spectra = {
        "model.transformer.layers.0.self_attn.to_qkv": [1.0, 0.5, 0.25, 0.1, 0.01],
        "model.transformer.layers.0.ff.ff.2": [1.0, 0.9, 0.8, 0.05],
        "model.transformer.project_in": [2.0, 0.1, 0.05],
    }
    deltas = {
        t: 0.05 * _spectrum_delta(FAMILIES[family].by_name[t].shape, s, i)
        for i, (t, s) in enumerate(spectra.items())
    }
    base, ft = _write_pair(tmp_path, family, deltas)
    out = tmp_path / "x.safetensors"
    energy = 0.95
    ledger = extract(base, ft, str(out), energy=energy, dtype="fp32")
    needed = {t.target: t.rank_needed for t in ledger.targets}
    want = {t: _ref_rank(s, energy) for t, s in spectra.items()}
    assert needed == want
    assert ledger.rank == max(want.values()) == load_checkpoint(out).config.rank
    assert all(t.retained_energy >= energy for t in ledger.targets)
    assert len(ledger.skipped) == len(FAMILIES[family].targets) - len(spectra)


def test_threshold_skips_unchanged_and_tiny_changes_and_validates(tmp_path: Path) -> None:
    family = "tiny-small"
    deltas = _low_rank_deltas(family, 2)
    tiny = "model.transformer.layers.0.cross_attn.to_q"
    w = _w2d(official_base_arrays(family), family, tiny)
    deltas[tiny] = 1e-5 * np.linalg.norm(w) * _spectrum_delta(w.shape, [1.0], 7)
    base, ft = _write_pair(tmp_path, family, deltas)
    out = tmp_path / "x.safetensors"
    ledger = extract(base, ft, str(out), rank=2, threshold=1e-3)
    skipped = {t for t, _ in ledger.skipped}
    assert tiny in skipped and all(UNCHANGED in t for t in skipped - {tiny})
    ckpt = load_checkpoint(out)
    assert set(ckpt.targets()) == set(deltas) - {tiny}
    assert ckpt.config.alpha == ckpt.config.rank == 2 and ckpt.config.scale == 1
    result = validate_path(str(out))
    assert not [f for f in result.findings if f.severity in ("error", "warning")], result.findings
    again = extract(base, ft, str(tmp_path / "y.safetensors"), rank=2, threshold=0.0)
    assert tiny not in {t for t, _ in again.skipped}  # 0: only exactly unchanged are skipped


def test_lora_xs_is_the_projection_on_the_base_bases(tmp_path: Path) -> None:
    family, rank = "tiny-small", 3
    base, ft = _write_pair(tmp_path, family, _low_rank_deltas(family, 4, seed=5))
    out = tmp_path / "xs.safetensors"
    ledger = extract(base, ft, str(out), rank=rank, adapter_type="lora-xs", dtype="fp32")
    ckpt = load_checkpoint(out)
    assert ckpt.adapter_type == "lora-xs" and not ckpt.has_stored_bases(ledger.targets[0].target)
    b_arr, f_arr = load_file(base), load_file(ft)
    for result in ledger.targets:
        w0 = _w2d(b_arr, family, result.target)
        d = _w2d(f_arr, family, result.target) - w0
        u, v = ref_svd_bases(w0.astype(np.float32), rank)
        m = u.T @ d @ v
        got = np.asarray(ckpt.tensors[result.target]["M_xs"], np.float64)
        assert np.allclose(got, m, atol=1e-5 * np.abs(m).max()), result.target
        assert result.retained_energy == pytest.approx(np.sum(m**2) / np.sum(d**2), rel=1e-4)
    merged = tmp_path / "merged.safetensors"
    merge_checkpoint(
        base, [AdapterArg(str(out), 1.0)], str(merged), options=MergeOptions(dtype="fp32")
    )
    got_w = load_file(str(merged))
    target = ledger.targets[0].target
    w0 = _w2d(b_arr, family, target)
    u, v = ref_svd_bases(w0.astype(np.float32), rank)
    want = w0 + u @ (u.T @ (_w2d(f_arr, family, target) - w0) @ v) @ v.T
    assert np.allclose(_w2d(got_w, family, target), want, atol=1e-5 * np.abs(want).max())


def test_randomised_svd_is_bounded_by_the_exact_one() -> None:
    rng = np.random.default_rng(0)
    sigmas = [float(i) ** -1.0 for i in range(1, 201)]  # a slowly decaying spectrum
    d = _spectrum_delta((400, 300), sigmas, 1) + 1e-4 * rng.standard_normal((400, 300))
    exact = np.linalg.svd(d, compute_uv=False)
    total = float(np.sum(d * d))
    for rank in (4, 16, 48):
        found = top_svd(d, rank, exact_up_to=0)
        assert found.method == "randomised"
        best = float(np.sum(exact[:rank] ** 2))
        got = float(np.sum(found.s**2))
        assert got <= best * (1 + 1e-12)  # a projection never beats the optimum
        assert got >= best * (1 - 1e-4), (rank, got / best)  # and comes within 0.01% of it
        assert (best - got) / total < 1e-3
    picked, r = svd_for_energy(d, 0.9, exact_up_to=0)
    want = int(np.argmax(np.cumsum(exact**2) / total >= 0.9)) + 1
    assert picked.method == "randomised" and want <= r <= want + 1, (r, want)


def test_randomised_path_extracts_a_low_rank_finetune_exactly(tmp_path: Path) -> None:
    family = "tiny-medium"
    base, ft = _write_pair(tmp_path, family, _low_rank_deltas(family, 3))
    exact = extract(base, ft, str(tmp_path / "a.safetensors"), rank=3, dtype="fp32")
    sketch = extract(base, ft, str(tmp_path / "b.safetensors"), rank=3, dtype="fp32", exact_up_to=0)
    assert {t.method for t in sketch.targets} == {"randomised"}
    for a, b in zip(exact.targets, sketch.targets, strict=True):
        assert b.retained_energy == pytest.approx(a.retained_energy, abs=1e-9)
        assert b.residual < 1e-5


def test_mismatched_checkpoints_are_incompatible(tmp_path: Path) -> None:
    small = str(tmp_path / "small.safetensors")
    save_file(official_base_arrays("tiny-small"), small)
    medium = str(tmp_path / "medium.safetensors")
    save_file(official_base_arrays("tiny-medium"), medium)
    with pytest.raises(IncompatibleError, match="same model"):
        extract(small, medium, str(tmp_path / "x.safetensors"), rank=2)
    arrays = dict(official_base_arrays("tiny-small"))
    key = official_base_key("model.transformer.layers.0.ff.ff.2")
    arrays[key] = np.zeros((arrays[key].shape[0], arrays[key].shape[1] + 4), np.float16)
    odd = str(tmp_path / "odd.safetensors")
    save_file(arrays, odd)
    done = run_cli("extract", small, odd, "-o", str(tmp_path / "y.safetensors"), "--rank", "2")
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("\n") == 1 and "error" in done.stderr
    assert not (tmp_path / "y.safetensors").exists()


def test_identical_checkpoints_have_nothing_to_extract(tmp_path: Path) -> None:
    base, ft = _write_pair(tmp_path, "tiny-small", {})
    with pytest.raises(IncompatibleError, match="nothing to extract"):
        extract(base, ft, str(tmp_path / "x.safetensors"), rank=2)


def test_cli_json_and_exit_codes(tmp_path: Path) -> None:
    base, ft = _write_pair(tmp_path, "tiny-small", _low_rank_deltas("tiny-small", 2))
    out = tmp_path / "x.safetensors"
    done = run_cli("extract", base, ft, "-o", str(out), "--energy", "0.99", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["schema"] == 1 and doc["command"] == "extract"
    assert doc["rank"] == 2 and doc["alpha"] == 2 and doc["adapter_type"] == "lora"
    assert {t["target"] for t in doc["skipped"]} and doc["targets"][0]["retained_energy"] > 0.99
    again = run_cli("extract", base, ft, "-o", str(out), "--rank", "2")
    assert again.returncode == 2 and "exists" in again.stderr  # no --force: kept
    assert run_cli("extract", base, ft, "-o", str(out), "--rank", "2", "--force").returncode == 0
    onto_input = run_cli("extract", base, ft, "-o", ft, "--rank", "2", "--force")
    assert onto_input.returncode == 2
    both = run_cli("extract", base, ft, "-o", str(out), "--rank", "2", "--energy", "0.9")
    assert both.returncode == 2
    wide = run_cli("extract", base, ft, "-o", str(tmp_path / "w.safetensors"), "--rank", "7")
    assert wide.returncode == 2 and "at most 6" in wide.stderr
    missing = run_cli(
        "extract",
        base,
        str(tmp_path / "nope.safetensors"),
        "-o",
        str(out),
        "--rank",
        "2",
        "--force",
    )
    assert missing.returncode == 3


def test_usage_errors() -> None:
    with pytest.raises(UsageError, match="exactly one"):
        extract("a", "b", "c", rank=None, energy=None)
    with pytest.raises(UsageError, match="energy"):
        extract("a", "b", "c", energy=1.5)
    with pytest.raises(UsageError, match="--type"):
        extract("a", "b", "c", rank=2, adapter_type="dora-rows")


def test_lora_xs_energy_counts_the_leading_block_of_the_projection(tmp_path: Path) -> None:
    family = "tiny-medium"
    target = "model.transformer.layers.0.cross_attn.to_q"
    w0 = _w2d(official_base_arrays(family), family, target)
    u, v = ref_svd_bases(w0.astype(np.float32), min(w0.shape))
    core = np.zeros((u.shape[1], v.shape[1]))
    core[0, 0], core[2, 2], core[4, 1] = 1.0, 0.6, 0.3  # inside the leading 5x5 block
    base, ft = _write_pair(tmp_path, family, {target: 0.05 * u @ core @ v.T})
    energies = {0.5: 1, 0.8: 3, 0.99: 5}  # ‖block R‖² / ‖core‖²: 1/1.45, 1.36/1.45, 1
    for energy, want in energies.items():
        out = tmp_path / f"xs-{energy}.safetensors"
        ledger = extract(base, ft, str(out), energy=energy, adapter_type="lora-xs", dtype="fp32")
        assert ledger.rank == want == ledger.targets[0].rank_needed, energy
        assert ledger.targets[0].retained_energy >= energy


def test_naming_and_layout_of_the_two_checkpoints_need_not_match(tmp_path: Path) -> None:
    """An MLX base (Conv1d stored (out, k, in)) against an official fine-tune: same adapter."""
    family = "tiny-small"
    base, ft = _write_pair(tmp_path, family, _low_rank_deltas(family, 2))
    mlx_base = str(BASE_MLX)  # the same fp16 values as the official fixture, MLX naming
    same = extract(base, ft, str(tmp_path / "a.safetensors"), rank=2, dtype="fp32")
    cross = extract(mlx_base, ft, str(tmp_path / "b.safetensors"), rank=2, dtype="fp32")
    a, b = load_checkpoint(tmp_path / "a.safetensors"), load_checkpoint(tmp_path / "b.safetensors")
    assert [t.target for t in same.targets] == [t.target for t in cross.targets]
    for target in a.targets():
        for param, value in a.tensors[target].items():
            assert np.array_equal(value, b.tensors[target][param]), (target, param)
