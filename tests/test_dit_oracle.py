"""The MLX DiT is the official SA3 DiT: forwards equal diffusers' `StableAudio3DiTModel`.

diffusers computes the official function once its three block RMSNorm eps are 1e-5
(reference/formats.md). Both models get the same random official weights: the MLX model
through `load_dit` of the official file, diffusers through a transformer folder written by
`sa3ckpt convert-base --to diffusers` (whose key and row-order mapping is tested on its own
against the real model in test_diffusers_base). fp32 forwards at several timesteps, with and
without local conditioning, for a small-shaped (standard attention) and a medium-shaped
(differential) config, must agree to 1e-5 relative. The seconds conditioner is checked
against diffusers' `StableAudio3DurationEmbedder`.

The one constant both sides share is the float32 Fourier frequency table: PyTorch's
linspace + exp rounds it a few ulp away from the float64 formula (how far depends on the
CPU's SIMD width) and, at angles of up to 2π·10⁴ rad that moves the top features by ~1e-2,
so the MLX model is given torch's table here (see `models.layers.fourier_frequencies`).
With each side's own table the difference is measured and bounded separately.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from sa3ckpt.models import load_dit
from sa3ckpt.models.layers import fourier_frequencies
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.synth import official_full_tensors
from sa3ckpt.targets.families import Family
from sa3ckpt.targets.topology import Topology

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

TOLERANCE = 1e-5
FRAMES = 12
TIMESTEPS = (0.0, 0.05, 0.5, 0.97, 1.0)
SHAPES = {
    # The real conditioning widths (768-d tokens, 256 Fourier features, 256 latent channels)
    # and 64-wide heads; only the width and depth are cut down.
    "small": Topology(embed_dim=128, depth=2, differential=False),
    "medium": Topology(embed_dim=128, depth=3, differential=True),
}
MEMORY_TOKENS = 64
# Largest relative output difference with each side's own frequency table (measured: see
# docs/library/models.md).
OWN_TABLE_BOUND = 1e-2


def _family(shape: str) -> Family:
    return Family(f"oracle-{shape}", "oracle test family", SHAPES[shape], (), test_only=True)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    shape = request.param
    folder = tmp_path_factory.mktemp(f"oracle-{shape}")
    official = folder / "official.safetensors"
    tensors = official_full_tensors(_family(shape), seed=7, memory_tokens=MEMORY_TOKENS)
    save_file(tensors, str(official))
    transformer = folder / "transformer"
    convert_base(official, transformer, to="diffusers")
    reference = diffusers.StableAudio3DiTModel.from_pretrained(str(transformer)).eval()
    for block in reference.transformer_blocks:
        for norm in (block.pre_norm, block.cross_attend_norm, block.ff_norm):
            assert norm.eps == 1e-6  # as shipped; the official DiT uses 1e-5
            norm.eps = 1e-5
    loaded = load_dit(official)
    loaded.dit.timestep_frequencies = _torch_frequency_table(loaded.dit.topology.timestep_features)
    return shape, loaded, reference, tensors


def _torch_frequency_table(features: int) -> np.ndarray:
    """The timestep frequencies as the official (and diffusers) PyTorch code rounds them."""
    ramp = torch.linspace(0.0, 1.0, features // 2, dtype=torch.float32)
    lo, hi = math.log(0.5), math.log(1e4)
    return torch.exp(ramp * (hi - lo) + lo).numpy()


def _inputs(top: Topology, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    local = rng.standard_normal((batch, top.local_cond_dim, FRAMES)).astype(np.float32)
    local[:, 0] = rng.integers(0, 2, (batch, FRAMES))  # a real 0/1 inpaint mask channel
    return {
        "x": rng.standard_normal((batch, top.io_channels, FRAMES)).astype(np.float32),
        "cross": rng.standard_normal((batch, 9, top.cond_token_dim)).astype(np.float32),
        "global": rng.standard_normal((batch, top.cond_token_dim)).astype(np.float32),
        "local": local,
    }


def _relative(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _forwards(
    loaded: Any, reference: Any, data: dict[str, np.ndarray], t: np.ndarray, local: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(ours, diffusers') fp32 outputs for the same inputs; local_add_cond None = no local add."""
    ours = loaded.dit(
        mx.array(data["x"]),
        mx.array(t),
        mx.array(data["cross"]),
        mx.array(data["global"]),
        None if local is None else mx.array(local),
    )
    with torch.no_grad():
        ref = reference(
            torch.from_numpy(data["x"]),
            torch.from_numpy(t),
            torch.from_numpy(data["cross"]),
            torch.from_numpy(data["global"]),
            local_add_cond=None if local is None else torch.from_numpy(local),
        ).sample.numpy()
    return np.array(ours), ref


@pytest.mark.parametrize("with_local", [False, True], ids=["no-local", "local"])
def test_forward_equals_the_official_dit(models: Any, with_local: bool) -> None:
    shape, loaded, reference, _ = models
    top = loaded.dit.topology
    t = np.array(TIMESTEPS, dtype=np.float32)
    data = _inputs(top, len(t), seed=3)
    local = data["local"] if with_local else None
    ours_np, ref = _forwards(loaded, reference, data, t, local)
    assert ours_np.shape == ref.shape == data["x"].shape
    for i, ti in enumerate(TIMESTEPS):
        err = _relative(ours_np[i], ref[i])
        assert err <= TOLERANCE, f"{shape} t={ti} local={with_local}: relative error {err:.2e}"


def test_local_conditioning_changes_the_output(models: Any) -> None:
    """Guard against a test that passes because local_add_cond is ignored on both sides."""
    _, loaded, _, _ = models
    data = _inputs(loaded.dit.topology, 2, seed=5)
    args = [mx.array(data[k]) for k in ("x",)] + [mx.array([0.3, 0.7])]
    cond = [mx.array(data["cross"]), mx.array(data["global"])]
    plain = np.array(loaded.dit(*args, *cond))
    local = np.array(loaded.dit(*args, *cond, mx.array(data["local"])))
    assert _relative(local, plain) > 1e-3


def test_seconds_conditioner_equals_diffusers_duration_embedder(models: Any) -> None:
    pipelines = pytest.importorskip("diffusers.pipelines.stable_audio_3.modeling_stable_audio_3")
    _, loaded, _, tensors = models
    weight = tensors["conditioner.conditioners.seconds_total.embedder.embedding.1.weight"]
    bias = tensors["conditioner.conditioners.seconds_total.embedder.embedding.1.bias"]
    embedder = pipelines.StableAudio3DurationEmbedder(output_dim=weight.shape[0])
    loaded.conditioner.seconds_frequencies = embedder.freqs.numpy()
    with torch.no_grad():
        embedder.linear.weight.copy_(torch.from_numpy(weight))
        embedder.linear.bias.copy_(torch.from_numpy(bias))
        seconds = np.array([0.0, 1.5, 30.0, 190.0, 384.0, 500.0, -3.0], dtype=np.float32)
        ref = embedder(torch.from_numpy(seconds)).numpy()
    ours = np.array(loaded.conditioner.seconds_embedding(mx.array(seconds)))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_frequency_table_is_the_float64_formula_rounded_once() -> None:
    for features in (6, 8, 256):
        half = features // 2
        exact = [
            math.exp(math.log(0.5) + i / (half - 1) * (math.log(1e4) - math.log(0.5)))
            for i in range(half)
        ]
        ours = fourier_frequencies(features)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, np.array(exact, dtype=np.float64).astype(np.float32))
        # torch's float32 linspace, multiply-add and exp land within tens of ulp of it
        ulps = np.abs(ours.view(np.int32) - _torch_frequency_table(features).view(np.int32))
        assert int(ulps.max()) <= 32


def test_own_tables_differ_only_by_the_rounding_of_the_top_frequencies(models: Any) -> None:
    """Each side with its own table: the outputs still agree to the (measured) bound that
    a tens-of-ulp change of the frequency table allows, and exactly at t = 0 (all angles 0)."""
    shape, loaded, reference, _ = models
    top = loaded.dit.topology
    t = np.array(TIMESTEPS, dtype=np.float32)
    data = _inputs(top, len(t), seed=11)
    saved = loaded.dit.timestep_frequencies
    loaded.dit.timestep_frequencies = fourier_frequencies(top.timestep_features)
    try:
        ours, ref = _forwards(loaded, reference, data, t, None)
    finally:
        loaded.dit.timestep_frequencies = saved
    errors = [_relative(ours[i], ref[i]) for i in range(len(t))]
    assert errors[0] <= TOLERANCE
    print(f"{shape}: own-table relative differences {[f'{e:.1e}' for e in errors]}")
    assert max(errors) <= OWN_TABLE_BOUND, errors
