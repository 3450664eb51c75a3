"""combine: cat is exact for LoRA; svd re-factors with the right energy; refusals are clear."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters.checkpoint import load_checkpoint
from sa3ckpt.errors import UsageError
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.library.combine import combine, randomized_svd
from sa3ckpt.ops.merge.driver import AdapterArg
from sa3ckpt.ops.validate import validate_path
from sa3ckpt.synth import synth_adapter
from sa3ckpt.targets import FAMILIES
from tests.helpers import base_2d, run_cli
from tests.reference_math import ref_adapted, ref_svd_bases

FAM = FAMILIES["tiny-small"]
BASE = DATA_DIR / "bases" / "tiny-small.official.safetensors"
# tiny-medium: every target is at least 8 wide, so ranks up to 8 fit every target of the one-rank
# output (tiny-small has 6-wide targets: a rank-7 or rank-8 output is rank-exceeds-target there)
MEDIUM = FAMILIES["tiny-medium"]
MEDIUM_BASE = DATA_DIR / "bases" / "tiny-medium.official.safetensors"


def _path(stem: str, family: str = "tiny-small") -> str:
    return str(DATA_DIR / "adapters" / family / f"{stem}.safetensors")


def _delta(ckpt, target, weight: float = 1.0, family: str = "tiny-small") -> np.ndarray:
    """ΔW of one adapter at strength 1 in float64 (reference math, base for XS/DoRA)."""
    p = {k: np.asarray(v, np.float64) for k, v in ckpt.tensors[target.name].items()}
    w0 = base_2d(target, family)
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
    second = synth_adapter(MEDIUM, "lora", rank=3, alpha=5, seed=9, include=["layers.[0-1]."])
    second_path = tmp_path / "second.safetensors"
    write_safetensors(second_path, second.file_tensors(), second.metadata())
    out = tmp_path / "cat.safetensors"
    first_path = _path("lora", "tiny-medium")
    ledger = combine(
        [AdapterArg(first_path, 0.7), AdapterArg(str(second_path), -1.3)],
        str(out),
        method="cat",
        dtype="fp32",
    )
    assert ledger.rank == 7
    merged = load_checkpoint(out)
    assert merged.adapter_type == "lora" and merged.config.rank == 7 and merged.config.alpha == 7
    first, other = load_checkpoint(first_path), load_checkpoint(second_path)
    for target in MEDIUM.targets:
        want = _delta(first, target, 0.7, "tiny-medium")
        if target.name in other.tensors:
            want = want + _delta(other, target, -1.3, "tiny-medium")
        assert np.allclose(_out_delta(out, target), want, atol=1e-6), target.name
    assert merged.config.include == [
        t[len("model.") :] if t.startswith("model.") else t for t in merged.targets()
    ]
    assert [a["weight"] for a in merged.config.extra["combined_from"]] == [0.7, -1.3]


def test_cat_takes_xs_with_a_base(tmp_path: Path) -> None:
    out = tmp_path / "cat.safetensors"
    with pytest.raises(UsageError, match="--base"):
        combine([AdapterArg(_path("lora-xs"), 1.0)], str(out), method="cat")
    xs_path, lora_path = _path("lora-xs", "tiny-medium"), _path("lora", "tiny-medium")
    combine(
        [AdapterArg(xs_path, 1.0), AdapterArg(lora_path, 0.5)],
        str(out),
        method="cat",
        base_path=str(MEDIUM_BASE),
        dtype="fp32",
    )
    xs, lora = load_checkpoint(xs_path), load_checkpoint(lora_path)
    target = MEDIUM.by_name["model.transformer.layers.1.self_attn.to_qkv"]
    want = _delta(xs, target, 1.0, "tiny-medium") + _delta(lora, target, 0.5, "tiny-medium")
    assert np.allclose(_out_delta(out, target), want, atol=1e-5)


def test_cat_refuses_dora(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--method svd"):
        combine(
            [AdapterArg(_path("dora-rows"), 1.0)], str(tmp_path / "o.safetensors"), method="cat"
        )


def test_svd_of_lora_is_exact_at_full_rank_and_optimal_below(tmp_path: Path) -> None:
    paths = [_path("lora", "tiny-medium"), _path("lora.layers-0", "tiny-medium")]
    stack = [AdapterArg(paths[0], 1.0), AdapterArg(paths[1], 0.5)]
    full = tmp_path / "full.safetensors"
    ledger = combine(stack, str(full), method="svd", rank=8, dtype="fp32")
    assert min(ledger.retained.values()) == pytest.approx(1.0)
    low = tmp_path / "low.safetensors"
    ledger = combine(stack, str(low), method="svd", rank=2, dtype="fp32")
    a, b = load_checkpoint(paths[0]), load_checkpoint(paths[1])
    target = MEDIUM.by_name["model.transformer.layers.0.ff.ff.2"]
    dense = _delta(a, target, 1.0, "tiny-medium") + _delta(b, target, 0.5, "tiny-medium")
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
    dora_path, bora_path = _path("dora-rows", "tiny-medium"), _path("bora-xs", "tiny-medium")
    ledger = combine(
        [AdapterArg(dora_path, 0.6), AdapterArg(bora_path, 0.4)],
        str(out),
        method="svd",
        rank=8,  # the narrowest targets: 8 wide (DoRA deltas are full-rank: exact there)
        base_path=str(MEDIUM_BASE),
        dtype="fp32",
    )
    assert any("lora of that merged delta" in note for note in ledger.notes)
    d, b = load_checkpoint(dora_path), load_checkpoint(bora_path)
    target = MEDIUM.by_name["model.transformer.project_in"]  # 16 x 8: full rank fits
    dense = _delta(d, target, 0.6, "tiny-medium") + _delta(b, target, 0.4, "tiny-medium")
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


# --- property: every output combine writes passes validate --strict -----------------------------
# An sa3 adapter file has one rank for every target, and validate rejects a rank above any
# target's min(fan_out, fan_in) (rank-exceeds-target). So for every stack and every rank, combine
# either writes a file validate accepts, or refuses (exit 2, nothing written) naming the largest
# rank it accepts, which the family's target table predicts independently of combine's code.

STACKS: dict[str, tuple[str, list[tuple[str, float]]]] = {  # name: (family, [(stem, weight)])
    "small lora": ("tiny-small", [("lora", 1.0)]),
    "small lora + layers-0": ("tiny-small", [("lora", 1.0), ("lora.layers-0", 0.5)]),
    "small layers-0 x2": ("tiny-small", [("lora.layers-0", 1.0), ("lora.layers-0", -0.5)]),
    "small lora-xs + lora": ("tiny-small", [("lora-xs", 1.0), ("lora", 0.5)]),
    "small dora-rows + bora-xs": ("tiny-small", [("dora-rows", 0.6), ("bora-xs", 0.4)]),
    "small synth rank 6": ("tiny-small", [("synth-6", 1.0)]),
    "medium lora + layers-0": ("tiny-medium", [("lora", 1.0), ("lora.layers-0", 0.5)]),
    "medium lora-xs + lora": ("tiny-medium", [("lora-xs", 1.0), ("lora", 0.5)]),
    "medium dora-rows + bora-xs": ("tiny-medium", [("dora-rows", 0.6), ("bora-xs", 0.4)]),
    "medium synth rank 3 + lora + layers-0": (
        "tiny-medium",
        [("synth-3", 1.0), ("lora", 1.0), ("lora.layers-0", 1.0)],
    ),
}


def _stack_paths(family: str, stems: list[tuple[str, float]], tmp: Path) -> list[AdapterArg]:
    """Fixture stems as paths; `synth-R` is a seeded lora of rank R on every target."""
    args = []
    for stem, weight in stems:
        if stem.startswith("synth-"):
            rank = int(stem.removeprefix("synth-"))
            adapter = synth_adapter(FAMILIES[family], "lora", rank=rank, alpha=rank, seed=rank)
            path = tmp / f"{family}.{stem}.safetensors"
            write_safetensors(path, adapter.file_tensors(), adapter.metadata())
            args.append(AdapterArg(str(path), weight))
        else:
            args.append(AdapterArg(_path(stem, family), weight))
    return args


def _table_bounds(family: str, args: list[AdapterArg]) -> tuple[str, int, int]:
    """(narrowest target, its min(fan), largest svd rank) from the family's target table."""
    fam = FAMILIES[family]
    ckpts = [load_checkpoint(a.path) for a in args]
    targets = list(dict.fromkeys(t for c in ckpts for t in c.targets()))
    narrowest = min(targets, key=lambda t: min(fam.by_name[t].shape))
    width = min(fam.by_name[narrowest].shape)
    if any(c.kind.is_weight_decomposed for c in ckpts):
        useful = max(min(fam.by_name[t].shape) for t in targets)
    else:
        useful = max(
            min(min(fam.by_name[t].shape), sum(c.config.rank for c in ckpts if t in c.tensors))
            for t in targets
        )
    return narrowest, width, min(width, useful)


def _assert_validates(path: Path) -> None:
    result = validate_path(str(path))
    assert result.status(strict=True) == "pass", [
        (f.rule, f.severity, f.message) for f in result.findings
    ]


@pytest.mark.parametrize("stack", list(STACKS))
def test_every_svd_output_validates_and_every_refusal_names_the_largest_rank(
    tmp_path: Path, stack: str
) -> None:
    family, stems = STACKS[stack]
    args = _stack_paths(family, stems, tmp_path)
    base = str(DATA_DIR / "bases" / f"{family}.official.safetensors")
    _, _, largest = _table_bounds(family, args)
    widest = max(min(t.shape) for t in FAMILIES[family].targets)
    for rank in range(1, widest + 2):
        out = tmp_path / f"svd-{rank}.safetensors"
        run = functools.partial(combine, args, str(out), method="svd", rank=rank, base_path=base)
        if rank > largest:
            with pytest.raises(UsageError, match=f"--rank {rank} .*at most {largest} "):
                run()
            assert not out.exists()
            continue
        ledger = run()
        assert ledger.rank == rank
        _assert_validates(out)


@pytest.mark.parametrize("stack", [s for s in STACKS if "dora" not in s])
def test_every_cat_output_validates_or_cat_is_refused_for_svd(tmp_path: Path, stack: str) -> None:
    family, stems = STACKS[stack]
    args = _stack_paths(family, stems, tmp_path)
    base = str(DATA_DIR / "bases" / f"{family}.official.safetensors")
    narrowest, width, largest = _table_bounds(family, args)
    summed = sum(load_checkpoint(a.path).config.rank for a in args)
    out = tmp_path / "cat.safetensors"
    if summed > width:
        with pytest.raises(UsageError) as refused:
            combine(args, str(out), method="cat", base_path=base)
        message = str(refused.value)
        assert f"rank {summed}" in message and f"{narrowest} holds at most {width}" in message
        assert f"--method svd --rank R with R <= {largest}" in message
        assert not out.exists()
        return
    assert combine(args, str(out), method="cat", base_path=base).rank == summed
    _assert_validates(out)


def test_the_stacks_reach_both_sides_of_every_bound(tmp_path: Path) -> None:
    """The property above is only as good as its cases: some cats fit, some are refused, and
    some svd bounds come from the shapes, some from the input ranks."""
    cat_fits, svd_by_shape, svd_by_ranks = set(), set(), set()
    for name, (family, stems) in STACKS.items():
        args = _stack_paths(family, stems, tmp_path)
        _, width, largest = _table_bounds(family, args)
        cat_fits.add(sum(load_checkpoint(a.path).config.rank for a in args) <= width)
        (svd_by_shape if largest == width else svd_by_ranks).add(name)
    assert cat_fits == {True, False}
    assert svd_by_shape and svd_by_ranks
