"""The MLX DiT equals an independent float64 NumPy reference written from dit.md.

The diffusers oracle (test_dit_oracle) covers 64-wide heads and kernel-1 convs only. Here the
MLX `sa3ckpt.models.DiT`, loaded with `load_dit` from an official full base written to a file,
is compared with `tests.reference_dit` for the tiny families (head widths 8 and 4, tiny-small
with Conv1d kernel 3) and two 64-wide configs with the real conditioning widths (standard and
differential attention), with distinct memory-token counts: fp32 MLX forward vs float64
reference, batch of five timesteps including 0 and 1, with and without local conditioning,
relative error ≤ 1e-5 per sample.

The comparison is shown to be sensitive to every fact the reference encodes: the reference with
block RMSNorm eps 1e-6, and with each rule of `Rules` perturbed in turn, must miss the MLX
output by far more than the tolerance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from sa3ckpt.models import LoadedDiT, load_dit
from sa3ckpt.synth import official_full_tensors
from sa3ckpt.targets.families import FAMILIES, Family
from sa3ckpt.targets.topology import Topology
from tests.reference_dit import (
    OFFICIAL,
    Rules,
    reference_conditioning,
    reference_dit,
    reference_seconds,
)

TOLERANCE = 1e-5
# A perturbed reference must miss by at least ten times the tolerance (the unperturbed one is
# within ~1e-6 of the MLX model on every config here).
VISIBLE = 10 * TOLERANCE
FRAMES = 10
CONTEXT_TOKENS = 7
TIMESTEPS = (0.0, 0.05, 0.5, 0.97, 1.0)


def _wide(name: str, differential: bool) -> Family:
    """64-wide heads with the real conditioning widths; only width and depth cut down."""
    top = Topology(embed_dim=128, depth=2, differential=differential)
    return Family(name, "reference test family", top, (), test_only=True)


# family -> (Family, memory tokens, seed)
CONFIGS: dict[str, tuple[Family, int, int]] = {
    "tiny-medium": (FAMILIES["tiny-medium"], 3, 11),
    "tiny-small": (FAMILIES["tiny-small"], 5, 12),
    "wide-small": (_wide("wide-small", False), 64, 13),
    "wide-medium": (_wide("wide-medium", True), 7, 14),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One config loaded both ways, with fixed inputs and the MLX outputs on them."""

    name: str
    weights: dict[str, np.ndarray]
    loaded: LoadedDiT
    head_dim: int
    inputs: dict[str, np.ndarray]
    mlx_out: dict[bool, np.ndarray]  # with_local -> (B, io, T)


def _inputs(top: Topology, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = len(TIMESTEPS)
    local = rng.standard_normal((batch, top.local_cond_dim, FRAMES)).astype(np.float32)
    local[:, 0] = rng.integers(0, 2, (batch, FRAMES))  # a 0/1 inpaint mask channel
    cross = rng.standard_normal((batch, CONTEXT_TOKENS, top.cond_token_dim)).astype(np.float32)
    return {
        "x": rng.standard_normal((batch, top.io_channels, FRAMES)).astype(np.float32),
        "t": np.array(TIMESTEPS, dtype=np.float32),
        "cross": cross,
        "global": rng.standard_normal((batch, top.cond_token_dim)).astype(np.float32),
        "local": local,
    }


def _mlx_forward(loaded: LoadedDiT, data: dict[str, np.ndarray], with_local: bool) -> np.ndarray:
    local = mx.array(data["local"]) if with_local else None
    out = loaded.dit(
        mx.array(data["x"]),
        mx.array(data["t"]),
        mx.array(data["cross"]),
        mx.array(data["global"]),
        local,
    )
    return np.array(out)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    name = request.param
    fam, memory, seed = CONFIGS[name]
    weights = official_full_tensors(fam, seed=seed, memory_tokens=memory)
    path: Path = tmp_path_factory.mktemp(f"ref-{name}") / "official.safetensors"
    save_file(weights, str(path))
    loaded = load_dit(path, dtype=mx.float32)
    data = _inputs(fam.topology, seed)
    outs = {flag: _mlx_forward(loaded, data, flag) for flag in (False, True)}
    return Case(name, weights, loaded, fam.topology.head_dim, data, outs)


def _reference(case: Case, with_local: bool, **kwargs: Any) -> np.ndarray:
    d = case.inputs
    return reference_dit(
        case.weights,
        d["x"],
        d["t"],
        d["cross"],
        d["global"],
        d["local"] if with_local else None,
        head_dim=case.head_dim,
        **kwargs,
    )


def _per_sample_errors(ours: np.ndarray, ref: np.ndarray) -> list[float]:
    return [
        float(np.linalg.norm(o - r) / np.linalg.norm(r)) for o, r in zip(ours, ref, strict=True)
    ]


@pytest.mark.parametrize("with_local", [False, True], ids=["no-local", "local"])
def test_mlx_forward_equals_the_float64_reference(case: Case, with_local: bool) -> None:
    ours = case.mlx_out[with_local]
    ref = _reference(case, with_local)
    assert ours.shape == ref.shape == case.inputs["x"].shape
    errors = _per_sample_errors(ours, ref)
    for ti, err in zip(TIMESTEPS, errors, strict=True):
        assert err <= TOLERANCE, f"{case.name} t={ti} local={with_local}: relative error {err:.2e}"


def test_local_conditioning_is_exercised(case: Case) -> None:
    """Guard: with and without local_add_cond are different functions on these inputs."""
    errors = _per_sample_errors(case.mlx_out[False], case.mlx_out[True])
    assert min(errors) > VISIBLE, errors


def test_block_norm_eps_is_visible(case: Case) -> None:
    """The official block RMSNorm eps is 1e-5; diffusers' shipped 1e-6 must fail the check."""
    errors = _per_sample_errors(case.mlx_out[True], _reference(case, True, block_eps=1e-6))
    assert max(errors) > VISIBLE, errors


# Each perturbation of one fact of dit.md, and the configs where it changes the function
# (interleaved and half-split RoPE coincide for a single rotated pair: tiny-small's 4-wide
# heads rotate 2 dims; the q/k/v block orders exist only with differential attention; only
# tiny-small has a Conv1d kernel > 1).
ALL = tuple(sorted(CONFIGS))
DIFFERENTIAL = ("tiny-medium", "wide-medium")
STANDARD = ("tiny-small", "wide-small")
MUTATIONS: dict[str, tuple[Rules, tuple[str, ...]]] = {
    "gate-sigmoid-of-gate": (dataclasses.replace(OFFICIAL, gate="plain"), ALL),
    "local-before-cross": (dataclasses.replace(OFFICIAL, local_placement="before_cross"), ALL),
    "local-on-memory-tokens": (dataclasses.replace(OFFICIAL, local_on_memory=True), ALL),
    "rope-interleaved": (
        dataclasses.replace(OFFICIAL, rope_layout="interleaved"),
        ("tiny-medium", "wide-medium", "wide-small"),
    ),
    "rope-all-head-dims": (dataclasses.replace(OFFICIAL, rope_all_dims=True), ALL),
    "qk-norm-after-rope": (dataclasses.replace(OFFICIAL, qk_norm_before_rope=False), ALL),
    "fourier-sin-first": (dataclasses.replace(OFFICIAL, fourier_order="sin_cos"), ALL),
    # the same features with the angle in float64: the float32 angle rounding is part of the
    # official function (up to ~1e-3 per feature at the top frequency)
    "fourier-angle-float64": (dataclasses.replace(OFFICIAL, fourier_angle_fp32=False), ALL),
    "modulation-shift-first": (
        dataclasses.replace(
            OFFICIAL,
            modulation_order=("shift_sa", "scale_sa", "gate_sa", "shift_ff", "scale_ff", "gate_ff"),
        ),
        ALL,
    ),
    "no-per-block-modulation": (dataclasses.replace(OFFICIAL, per_block_modulation=False), ALL),
    "self-qkv-diffusers-order": (
        dataclasses.replace(OFFICIAL, self_qkv_differential=("q", "q2", "k", "k2", "v")),
        DIFFERENTIAL,
    ),
    "cross-kv-v-second": (
        dataclasses.replace(OFFICIAL, cross_kv_differential=("k", "v", "k2")),
        DIFFERENTIAL,
    ),
    "self-standard-kqv": (
        dataclasses.replace(OFFICIAL, self_qkv_standard=("k", "q", "v")),
        STANDARD,
    ),
    "ff-gate-first": (dataclasses.replace(OFFICIAL, ff_value_first=False), ALL),
    "memory-tokens-appended": (dataclasses.replace(OFFICIAL, memory_first=False), ALL),
    "conv-flipped": (dataclasses.replace(OFFICIAL, conv_flipped=True), ("tiny-small",)),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_fact_is_seen_by_the_comparison(case: Case, mutation: str) -> None:
    rules, configs = MUTATIONS[mutation]
    if case.name not in configs:
        pytest.skip(f"{mutation} does not change the function of {case.name}")
    errors = _per_sample_errors(case.mlx_out[True], _reference(case, True, rules=rules))
    assert max(errors) > VISIBLE, f"{mutation} on {case.name}: {errors}"


def test_a_rule_the_config_does_not_read_leaves_the_reference_unchanged(case: Case) -> None:
    """Sanity of the table: a rule a config never reads leaves the reference unchanged."""
    unread = (
        dataclasses.replace(OFFICIAL, self_qkv_standard=("k", "q", "v"))
        if case.name in DIFFERENTIAL
        else dataclasses.replace(OFFICIAL, self_qkv_differential=("q2", "k2", "v", "q", "k"))
    )
    np.testing.assert_array_equal(_reference(case, True, rules=unread), _reference(case, True))


ATTENTION_PROJECTIONS = (
    ".self_attn.to_qkv.weight",
    ".cross_attn.to_q.weight",
    ".cross_attn.to_kv.weight",
)


@pytest.mark.parametrize("name", ["tiny-medium", "tiny-small"])
def test_qk_norm_eps_with_small_queries_and_keys(name: str, tmp_path: Path) -> None:
    """With the attention projections scaled down, q and k have a mean square near the q/k norm
    eps, so the eps (1e-6) decides the output: MLX still equals the reference, and the
    reference with eps 1e-5 misses it."""
    fam, memory, seed = CONFIGS[name]
    weights = official_full_tensors(fam, seed=seed, memory_tokens=memory)
    for key in weights:
        if key.endswith(ATTENTION_PROJECTIONS):
            weights[key] = weights[key] * np.float32(1e-2)
    path = tmp_path / "official.safetensors"
    save_file(weights, str(path))
    loaded = load_dit(path, dtype=mx.float32)
    data = _inputs(fam.topology, seed)
    case = Case(name, weights, loaded, fam.topology.head_dim, data, {})
    ours = _mlx_forward(loaded, data, True)
    assert max(_per_sample_errors(ours, _reference(case, True))) <= TOLERANCE
    assert max(_per_sample_errors(ours, _reference(case, True, qk_eps=1e-5))) > VISIBLE


def test_seconds_conditioner_equals_the_reference(case: Case) -> None:
    assert case.loaded.conditioner is not None
    seconds = np.array([0.0, 1.5, 30.0, 190.0, 384.0, 500.0, -3.0], dtype=np.float32)
    ours = np.array(case.loaded.conditioner.seconds_embedding(mx.array(seconds)))
    ref = reference_seconds(case.weights, seconds)
    assert ours.shape == ref.shape
    for s, err in zip(seconds, _per_sample_errors(ours, ref), strict=True):
        assert err <= TOLERANCE, f"{case.name} seconds={s}: relative error {err:.2e}"


def test_conditioning_equals_the_reference(case: Case) -> None:
    cond = case.loaded.conditioner
    assert cond is not None
    top = CONFIGS[case.name][0].topology
    rng = np.random.default_rng(5)
    prompt = rng.standard_normal((3, CONTEXT_TOKENS, top.cond_token_dim)).astype(np.float32)
    mask = np.ones((3, CONTEXT_TOKENS), dtype=bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    seconds = np.array([10.0, 47.0, 384.0], dtype=np.float32)
    cross, glob = cond(mx.array(prompt), mx.array(seconds), mx.array(mask), length=CONTEXT_TOKENS)
    ref_cross, ref_glob = reference_conditioning(case.weights, prompt, mask, seconds)
    np.testing.assert_allclose(np.array(cross), ref_cross, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(glob), ref_glob, rtol=1e-5, atol=1e-6)
