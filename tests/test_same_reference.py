"""The MLX SAME encoders against the independent float64 reference (tests/reference_same.py).

SAME-S cannot be checked against diffusers (it runs a band in every block and crops the
padding latent, reference/same.md), so its chunked schedule is checked here; SAME-L's band is
checked too. Both encoders load the random official-named weights through
`load_same_encoder`, so the key translation is part of what is compared. Configs keep the real
64-dim heads, patches and groups and cut width and depth (SAME-S keeps its 6 blocks).

Also here: the mutation checks (each single wrong fact moves the reference far beyond the
agreement bound, so the MLX encoder could not have that error and pass), and the receptive
field the encoder declares, measured by perturbing one latent's audio.
"""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import save_file

from sa3ckpt.models.same import SAME_L, SAME_S, SameConfig, SameEncoder, load_same_encoder
from tests import reference_same
from tests.same_weights import official_tensors

TOLERANCE = 1e-5  # relative: max |ours - reference| / max |reference|
CONFIGS = {
    "same-s": SAME_S.scaled(128, 6),
    "same-l": SAME_L.scaled(128, 3),
}
HOP = 4096


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SameConfig, dict[str, np.ndarray], SameEncoder]:
    config = CONFIGS[request.param]
    tensors = official_tensors(config, seed=11)
    path = tmp_path_factory.mktemp(request.param) / "autoencoder.safetensors"
    save_file(tensors, str(path))
    encoder, _ = load_same_encoder(path, config)
    return config, tensors, encoder


def _audio(seed: int, samples: int) -> np.ndarray:
    """(2, samples) stereo: noise plus a tone, left and right different."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 44_100
    tone = np.stack([np.sin(2 * np.pi * 220 * t), np.cos(2 * np.pi * 331 * t)])
    return (0.25 * rng.standard_normal((2, samples)) + 0.3 * tone).astype(np.float32)


def _ours(encoder: SameEncoder, audio: np.ndarray) -> np.ndarray:
    """(2, N) -> (256, T) through the channels-last MLX encoder."""
    return np.array(encoder(mx.array(audio.T[None])))[0].T


def test_agrees_with_the_float64_reference(case: tuple) -> None:
    config, tensors, encoder = case
    audio = _audio(1, 21 * HOP - 1000)  # 21 latents of audio, the last one partial
    expected = reference_same.encode(tensors, audio, config.schedule)
    got = _ours(encoder, audio)
    assert got.shape == expected.shape
    assert relative(got, expected) <= TOLERANCE  # measured: 7.7e-7 (S), 5.0e-7 (L)


def test_a_batch_is_its_clips(case: tuple) -> None:
    config, tensors, encoder = case
    clips = [_audio(2, 8 * HOP), _audio(3, 8 * HOP)]
    batch = np.array(encoder(mx.array(np.stack([c.T for c in clips]))))
    for row, clip in zip(batch, clips, strict=True):
        assert relative(row.T, reference_same.encode(tensors, clip, config.schedule)) <= TOLERANCE


def test_same_s_keeps_the_padding_latent() -> None:
    """21 latents of audio in -> 22 out on SAME-S (2-latent chunks); 21 on SAME-L."""
    for config, count in ((CONFIGS["same-s"], 22), (CONFIGS["same-l"], 21)):
        encoder = SameEncoder(config)
        out = encoder(mx.zeros((1, 21 * HOP, 2)))
        assert out.shape == (1, count, 256)
    assert SameEncoder(CONFIGS["same-s"])(mx.zeros((1, 22 * HOP, 2))).shape == (1, 22, 256)


MUTATIONS = [
    "band_instead_of_chunks",
    "crop_padding_latent",
    "copy_every_block",
    "rope_interleaved",
    "diffusers_qkv_order",
]


@pytest.fixture(scope="module")
def same_s_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, np.ndarray, np.ndarray]:
    """SAME-S weights, an odd-length clip and the MLX encoder's latents of it."""
    config = CONFIGS["same-s"]
    tensors = official_tensors(config, seed=11)
    path = tmp_path_factory.mktemp("mutations") / "ae.safetensors"
    save_file(tensors, str(path))
    encoder, _ = load_same_encoder(path, config)
    audio = _audio(4, 9 * HOP - 1000)
    return tensors, audio, _ours(encoder, audio)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_reference_catches_a_single_wrong_fact(mutation: str, same_s_run: tuple) -> None:
    """Each wrong fact puts the reference > 10x the bound away from the MLX encoder."""
    tensors, audio, got = same_s_run
    variant = reference_same.Variant(**{mutation: True})
    wrong = reference_same.encode(tensors, audio, "chunked", variant)
    if mutation == "crop_padding_latent":
        assert (got.shape[1], wrong.shape[1]) == (10, 9)
        return
    assert relative(got, wrong) > 10 * TOLERANCE


def test_rope_restarting_is_no_fact_of_the_function(same_s_run: tuple) -> None:
    """Positions over the whole sequence give the same latents (attention within a chunk
    sees only position differences): the restart is a precision choice, not a fact."""
    tensors, audio, got = same_s_run
    shifted = reference_same.encode(
        tensors, audio, "chunked", reference_same.Variant(rope_not_restarting=True)
    )
    assert relative(got, shifted) <= TOLERANCE


def _loaded(config: SameConfig, seed: int) -> SameEncoder:
    """An encoder with random official weights, through the real loader."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/ae.safetensors"
        save_file(official_tensors(config, seed=seed, decoder=False), path)
        encoder, _ = load_same_encoder(path, config)
    return encoder


# --- the receptive field, measured --------------------------------------------------------------


def _dependence(encoder: SameEncoder, latents: int) -> dict[int, set[int]]:
    """Output latent -> the latents whose audio changes it (one batch row per perturbation)."""
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((latents * HOP, 2)).astype(np.float32) * 0.3
    rows = np.repeat(audio[None], latents + 1, axis=0)
    for source in range(latents):
        rows[source + 1, source * HOP : (source + 1) * HOP] += 0.5
    out = np.array(encoder(mx.array(rows)))
    changed = np.abs(out[1:] - out[:1]).max(axis=2) > 0  # (source, output latent)
    return {i: {int(j) for j in np.nonzero(changed[:, i])[0]} for i in range(latents)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_declared_receptive_field_is_the_measured_one(name: str) -> None:
    """Latent i depends on the audio of latent j only within the declared reach, and the
    widest dependence spans exactly `receptive_latents` latents."""
    config = CONFIGS[name].scaled(64, CONFIGS[name].blocks)
    encoder = _loaded(config, seed=3)
    left, right = config.reach_latents
    spans = []
    for out, sources in _dependence(encoder, 12).items():
        assert min(sources) >= out - left and max(sources) <= out + right
        spans.append(max(sources) - min(sources) + 1)
    assert max(spans) == config.receptive_latents
    assert encoder.receptive_field == config.receptive_latents * HOP


def test_the_real_codecs_declare_their_fields() -> None:
    """SAME-S: 4 latents (reach 2 either side); SAME-L: 24 (11 before, 12 after)."""
    assert (SAME_S.receptive_latents, SAME_S.reach_latents) == (4, (2, 2))
    assert (SAME_L.receptive_latents, SAME_L.reach_latents) == (24, (11, 12))
    assert dataclasses.replace(SAME_S, blocks=1).receptive_latents == 2
