"""combine: cat is exact for LoRA; svd re-factors with the right energy; refusals are clear."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.errors import UsageError
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.combine import combine, randomized_svd
from sa3ckpt.ops.merge import AdapterArg
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import base_2d, run_cli
from tests.reference_math import ref_adapted, ref_svd_bases

FAM = FAMILIES["tiny-small"]
BASE = DATA_DIR / "bases" / "tiny-small.official.safetensors"


def _path(stem: str) -> str:
    return str(DATA_DIR / "adapters" / "tiny-small" / f"{stem}.safetensors")


def _delta(ckpt, target, weight: float = 1.0) -> np.ndarray:
    """ΔW of one adapter at strength 1 in float64 (reference math, base for XS/DoRA)."""
    p = {k: np.asarray(v, np.float64) for k, v in ckpt.tensors[target.name].items()}
    w0 = base_2d(target)
    if ckpt.kind.xs and "U" not in p:
        p["U"], p["V"] = ref_svd_bases(w0.astype(np.float32), ckpt.config.rank)
    return weight * (ref_adapted(w0, ckpt.adapter_type, p, ckpt.config.scale, 1.0) - w0)


def _out_delta(path: Path, target) -> np.ndarray:
    ckpt = load_checkpoint(path)
    p = ckpt.tensors[target.name]
    return (
        ckpt.config.scale
        * np.asarray(p["lora_B"], np.float64)
        @ np.asarray(p["lora_A"], np.float64)
    )


def test_cat_is_exact_for_lora(tmp_path: Path) -> None:
    second = synth_adapter(FAM, "lora", rank=3, alpha=5, seed=9, include=["layers.[0-1]."])
    second_path = tmp_path / "second.safetensors"
    write_safetensors(second_path, second.file_tensors(), second.metadata())
    out = tmp_path / "cat.safetensors"
    ledger = combine(
        [AdapterArg(_path("lora"), 0.7), AdapterArg(str(second_path), -1.3)],
        str(out),
        method="cat",
        dtype="fp32",
    )
    assert ledger.rank == 7
    merged = load_checkpoint(out)
    assert merged.adapter_type == "lora" and merged.config.rank == 7 and merged.config.alpha == 7
    first, other = load_checkpoint(_path("lora")), load_checkpoint(second_path)
    for target in FAM.targets:
        want = _delta(first, target, 0.7)
        if target.name in other.tensors:
            want = want + _delta(other, target, -1.3)
        assert np.allclose(_out_delta(out, target), want, atol=1e-6), target.name
    assert merged.config.include == [
        t[len("model.") :] if t.startswith("model.") else t for t in merged.targets()
    ]
    assert [a["weight"] for a in merged.config.extra["combined_from"]] == [0.7, -1.3]


def test_cat_takes_xs_with_a_base(tmp_path: Path) -> None:
    out = tmp_path / "cat.safetensors"
    with pytest.raises(UsageError, match="--base"):
        combine([AdapterArg(_path("lora-xs"), 1.0)], str(out), method="cat")
    combine(
        [AdapterArg(_path("lora-xs"), 1.0), AdapterArg(_path("lora"), 0.5)],
        str(out),
        method="cat",
        base_path=str(BASE),
        dtype="fp32",
    )
    xs, lora = load_checkpoint(_path("lora-xs")), load_checkpoint(_path("lora"))
    target = FAM.by_name["model.transformer.layers.2.self_attn.to_qkv"]
    want = _delta(xs, target) + _delta(lora, target, 0.5)
    assert np.allclose(_out_delta(out, target), want, atol=1e-5)


def test_cat_refuses_dora(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--method svd"):
        combine(
            [AdapterArg(_path("dora-rows"), 1.0)], str(tmp_path / "o.safetensors"), method="cat"
        )


def test_svd_of_lora_is_exact_at_full_rank_and_optimal_below(tmp_path: Path) -> None:
    stack = [AdapterArg(_path("lora"), 1.0), AdapterArg(_path("lora.layers-0"), 0.5)]
    full = tmp_path / "full.safetensors"
    ledger = combine(stack, str(full), method="svd", rank=8, dtype="fp32")
    assert min(ledger.retained.values()) == pytest.approx(1.0)
    low = tmp_path / "low.safetensors"
    ledger = combine(stack, str(low), method="svd", rank=2, dtype="fp32")
    a, b = load_checkpoint(_path("lora")), load_checkpoint(_path("lora.layers-0"))
    target = FAM.by_name["model.transformer.layers.0.ff.ff.2"]
    dense = _delta(a, target) + _delta(b, target, 0.5)
    assert np.allclose(_out_delta(full, target), dense, atol=1e-5)
    u, s, vt = np.linalg.svd(dense)
    best = (u[:, :2] * s[:2]) @ vt[:2]
    assert np.allclose(_out_delta(low, target), best, atol=1e-5)
    assert ledger.retained[target.name] == pytest.approx(
        np.sum(s[:2] ** 2) / np.sum(s**2), rel=1e-6
    )


def test_svd_of_dora_needs_the_base_and_says_what_it_makes(tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    with pytest.raises(UsageError, match="--base"):
        combine([AdapterArg(_path("dora-rows"), 1.0)], str(out), method="svd", rank=4)
    ledger = combine(
        [AdapterArg(_path("dora-rows"), 0.6), AdapterArg(_path("bora-xs"), 0.4)],
        str(out),
        method="svd",
        rank=12,  # the widest target: 12 x 12 (DoRA deltas are full-rank: exact here)
        base_path=str(BASE),
        dtype="fp32",
    )
    assert any("lora of that merged delta" in note for note in ledger.notes)
    d, b = load_checkpoint(_path("dora-rows")), load_checkpoint(_path("bora-xs"))
    target = FAM.by_name["model.transformer.layers.1.cross_attn.to_out"]  # 12 x 12: full rank fits
    dense = _delta(d, target, 0.6) + _delta(b, target, 0.4)
    assert np.allclose(_out_delta(out, target), dense, atol=1e-5)
    assert ledger.retained[target.name] == pytest.approx(1.0)


def test_randomized_svd_recovers_a_low_rank_matrix() -> None:
    rng = np.random.default_rng(0)
    m = rng.standard_normal((1500, 20)) @ rng.standard_normal(
        (20, 1200)
    ) + 1e-3 * rng.standard_normal((1500, 1200))
    u, s, vt = randomized_svd(m, 20)
    exact = np.linalg.svd(m, compute_uv=False)[:20]
    assert np.allclose(s, exact, rtol=1e-6)
    assert np.linalg.norm(m - (u * s) @ vt) / np.linalg.norm(m) < 2e-3


def test_cli_combine_output_validates(tmp_path: Path) -> None:
    out = tmp_path / "c.safetensors"
    # tiny-medium: its narrowest targets are 8 wide, so the rank-8 cat fits every target
    # (in tiny-small, 6-wide targets would make it rank-exceeds-target)
    medium = DATA_DIR / "adapters" / "tiny-medium"
    result = run_cli(
        "combine",
        str(medium / "lora.safetensors") + ":0.5",
        str(medium / "lora.layers-0.safetensors"),
        "-o",
        str(out),
        "--method",
        "cat",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rank"] == 8
    check = run_cli("validate", "--strict", str(out))
    assert check.returncode == 0, check.stdout
    bad = run_cli(
        "combine", _path("lora"), "-o", str(tmp_path / "d.safetensors"), "--method", "svd"
    )
    assert bad.returncode == 2 and "--rank" in bad.stderr
