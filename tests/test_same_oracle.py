"""The MLX SAME-L encoder is the official one: its latents equal diffusers' `AutoencoderSAME`.

diffusers 0.42's `AutoencoderSAME` computes the official SAME-L encoder bit for bit
(reference/same.md), so it is the oracle. Both sides get the same random official weights:
the MLX encoder through `load_same_encoder` of the official autoencoder file, diffusers
through its own state dict under the names same.md lists (`tests/same_weights.to_diffusers`,
[q, q2, k, k2, v] rows), loaded strictly. A SAME-L-shaped config (64-dim heads, 16-patch
groups, the ±17-token band, width 384, 3 blocks), fp32, a few seconds of stereo audio whose
length is no multiple of the hop: relative error ≤ 1e-5.

For SAME-S diffusers is not the oracle: it runs the band in every block and crops the padding
latent. The second test pins that down: diffusers' SAME-S-shaped model equals our encoder
with the band schedule and the padding latent cropped, and differs from the official
chunked one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from sa3ckpt.models.same import SAME_L, SAME_S, SameConfig, SameEncoder, load_same_encoder
from tests.same_weights import diffusers_kwargs, official_tensors, to_diffusers

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

TOLERANCE = 1e-5
SAMPLES = 3 * 44_100 + 123  # 3 s and a bit: 33 latents, the last one partial
HOP = 4096


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _audio(batch: int, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 44_100
    tone = np.stack([np.sin(2 * np.pi * 110 * t), np.sin(2 * np.pi * 165 * t + 1.0)], axis=-1)
    return (0.2 * rng.standard_normal((batch, samples, 2)) + 0.4 * tone).astype(np.float32)


def _diffusers_model(config: SameConfig, tensors: dict[str, np.ndarray]) -> Any:
    model = diffusers.AutoencoderSAME(**diffusers_kwargs(config)).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_diffusers(tensors).items()}
    model.load_state_dict(state, strict=True)
    return model


def _diffusers_encode(model: Any, audio: np.ndarray) -> np.ndarray:
    """(B, N, 2) -> (B, T, 256), through diffusers' channels-first encode."""
    with torch.no_grad():
        sample = torch.from_numpy(np.ascontiguousarray(audio.transpose(0, 2, 1)))
        return model.encode(sample).latents.numpy().transpose(0, 2, 1)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers' legacy weight_norm
def test_same_l_equals_diffusers(tmp_path: Any) -> None:
    config = SAME_L.scaled(384, 3)
    tensors = official_tensors(config, seed=21)
    path = tmp_path / "autoencoder.safetensors"
    save_file(tensors, str(path))
    encoder, ledger = load_same_encoder(path, config)
    assert ledger.naming == "official"
    audio = _audio(1, SAMPLES, seed=0)
    ours = np.array(encoder(mx.array(audio)))
    theirs = _diffusers_encode(_diffusers_model(config, tensors), audio)
    assert ours.shape == theirs.shape == (1, -(-SAMPLES // HOP), 256)
    assert relative(ours, theirs) <= TOLERANCE  # measured: 8.9e-7 (docs/guides/encoding-audio.md)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_diffusers_same_s_is_the_band_schedule_cropped(tmp_path: Any) -> None:
    config = SAME_S.scaled(192, 4)
    tensors = official_tensors(config, seed=22)
    path = tmp_path / "encoder.safetensors"
    save_file(tensors, str(path))
    official, _ = load_same_encoder(path, config)
    band = SameEncoder(dataclasses.replace(config, schedule="band"))
    band.load_weights(_flat(official))
    samples = 9 * HOP - 500  # 9 latents: SAME-S pads to 10
    audio = _audio(1, samples, seed=1)
    theirs = _diffusers_encode(_diffusers_model(config, tensors), audio)
    as_band = np.array(band(mx.array(audio)))
    ours = np.array(official(mx.array(audio)))
    assert theirs.shape[1] == 9 and ours.shape[1] == 10
    assert relative(as_band, theirs) <= TOLERANCE
    assert relative(ours[:, :9], theirs) > 100 * TOLERANCE


def _flat(module: SameEncoder) -> list[tuple[str, mx.array]]:
    from mlx.utils import tree_flatten

    return tree_flatten(module.parameters())  # type: ignore[return-value]
