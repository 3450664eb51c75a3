"""The XS bases uniqueness bound: flags near-degenerate spectra and really bounds the change
of bases (and of the merged ΔW) under a perturbation of the size it assumes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sa3ckpt.adapters.xs_bases import canonicalize_signs
from sa3ckpt.adapters.xs_uniqueness import FP32_UNIT_ROUNDOFF, assess


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _bases64(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    u, _, vh = np.linalg.svd(w, full_matrices=False)
    u, vh = canonicalize_signs(u, vh)
    return u[:, :rank], vh[:rank].T


def test_equal_singular_values_at_the_rank_are_flagged_as_undetermined() -> None:
    result = assess("t", [5.0, 3.0, 2.0, 2.0, 1.0], 3, (64, 32))
    assert result.flagged and result.subspace_gap == 0.0
    assert result.column_bounds[2] == 2.0 and result.worst_column == 3
    assert result.relative_effect_bound >= 4.0


def test_well_separated_spectrum_is_not_flagged() -> None:
    result = assess("t", [10.0, 8.0, 6.0, 4.0, 2.0], 4, (64, 32))
    assert not result.flagged
    assert result.subspace_gap == pytest.approx(0.5)
    assert result.column_bound < 1e-5


def test_full_rank_has_no_subspace_gap() -> None:
    result = assess("t", [3.0, 2.0, 1.0], 3, (3, 8))
    assert result.subspace_gap is None and not result.flagged


def test_too_few_singular_values_is_an_error() -> None:
    with pytest.raises(ValueError, match="need 4 singular values"):
        assess("t", [3.0, 2.0, 1.0], 3, (8, 8))


def test_opposite_sign_near_tie_in_a_column_makes_its_sign_fragile() -> None:
    u = np.zeros((4, 2))
    u[:, 0] = [0.7, -0.7 + 1e-9, 0.1, 0.1]
    u[:, 1] = [0.9, 0.1, 0.1, 0.1]
    result = assess("t", [4.0, 2.0, 1.0], 2, (4, 4), u)
    assert result.sign_fragile == (1,)
    assert result.column_bounds[0] == 2.0 and result.column_bounds[1] < 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bound_holds_for_a_perturbation_of_the_assumed_size(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n, rank = 48, 32, 4
    sigma = np.linspace(1.0, 0.05, n)
    sigma[rank] = sigma[rank - 1] * (1 - 3e-5)  # σ_r and σ_{r+1} nearly equal
    w = (_orthogonal(rng, m)[:, :n] * sigma) @ _orthogonal(rng, n).T
    result = assess("t", sigma[: rank + 1], rank, (m, n))
    assert result.flagged and result.column_bound < 2.0  # close, but bounded
    e = FP32_UNIT_ROUNDOFF * math.sqrt(min(m, n)) * sigma[0]
    u, v = _bases64(w, rank)
    m_xs = rng.standard_normal((rank, rank))
    worst_ratio = 0.0
    for _ in range(20):
        noise = rng.standard_normal((m, n))
        perturbed = w + noise * (e / np.linalg.norm(noise, 2))
        u2, v2 = _bases64(perturbed, rank)
        for j in range(rank):
            moved = max(np.linalg.norm(u[:, j] - u2[:, j]), np.linalg.norm(v[:, j] - v2[:, j]))
            assert moved <= result.column_bounds[j] * (1 + 1e-6) + 1e-12
        change = np.linalg.norm(u @ m_xs @ v.T - u2 @ m_xs @ v2.T)
        bound = result.effect_bound(m_xs, 1.0)
        assert change <= bound
        worst_ratio = max(worst_ratio, change / bound)
    assert worst_ratio > 1e-3  # the bound is not vacuous by orders of magnitude


def test_bases_summary_lists_the_worst_few_and_json_keeps_every_target(tmp_path) -> None:
    """A base of degenerate spectra (every weight a constant matrix: σ_2 = σ_3 = ... = 0):
    the terminal says how many, the worst few and what it means; --json lists them all."""
    from safetensors.numpy import load_file, save_file

    from fixtures.generate import DATA_DIR
    from sa3ckpt.adapters.xs_uniqueness import WORST_SHOWN
    from sa3ckpt.ops.library import compute_bases_file

    tensors = load_file(str(DATA_DIR / "bases" / "tiny-small.official.safetensors"))
    flat = {k: (np.ones_like(v) if v.ndim >= 2 else v) for k, v in tensors.items()}
    base = tmp_path / "flat.safetensors"
    save_file(flat, str(base), {"format": "pt"})
    ledger = compute_bases_file(str(base), str(tmp_path / "bases.safetensors"), rank=2)
    flagged = len(ledger.not_unique)
    assert flagged == len(ledger.targets) > WORST_SHOWN
    lines = ledger.lines()
    head = [line for line in lines if "may not be unique" in line]
    assert head == [
        f"{flagged} of {flagged} targets have close singular values, so their XS bases may not "
        f"be unique; the worst {WORST_SHOWN}:"
    ]
    listed = [line for line in lines if line.startswith("  ") and "(rank 2)" in line]
    assert len(listed) == WORST_SHOWN
    assert any(line.startswith("  for a merge:") for line in lines)
    assert len(ledger.to_json()["not_unique"]) == flagged
