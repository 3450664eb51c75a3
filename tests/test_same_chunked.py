"""Chunked `encode_latents` with the real SAME encoders: exact at the default overlap.

`encode_latents` defaults the overlap to twice the context its encoder declares (from the
receptive field), rounds it to SAME-S's 2-latent blocks and starts every window on a block
boundary. With that overlap every kept latent is computed from a window holding its whole
receptive field, so stitched and whole-clip latents agree to float rounding (measured here:
the largest relative difference is asserted below 1e-6; docs/guides/encoding-audio.md has the
numbers at real size);
with a smaller overlap they do not, which shows the bound is not vacuous. Configs are scaled
(real heads, groups and schedules; SAME-S keeps its 6 blocks).
"""

from __future__ import annotations

import numpy as np
import pytest

from sa3ckpt.errors import UsageError
from sa3ckpt.models.same import SAME_L, SAME_S, SameEncoder
from sa3ckpt.train.encode_audio import context_latents, encode_latents
from tests.test_same_reference import _loaded

HOP = 4096
EXACT = 1e-6  # relative; float rounding of different window lengths only
CONFIGS = {"same-s": SAME_S.scaled(64, 6), "same-l": SAME_L.scaled(64, 3)}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def encoder(request: pytest.FixtureRequest) -> SameEncoder:
    return _loaded(CONFIGS[request.param], seed=41)


def _audio(latents: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((1, latents * HOP - 777, 2))).astype(np.float32)


def test_default_overlap_is_exact(encoder: SameEncoder) -> None:
    audio = _audio(41, seed=1)
    whole = encode_latents(encoder, audio)
    chunked = encode_latents(encoder, audio, chunk_latents=16)
    assert whole.latents.shape == chunked.latents.shape
    assert whole.lengths == chunked.lengths == (41,)
    # SAME-S keeps its padding latent: 41 latents of audio -> 42, the 42nd masked
    assert whole.latents.shape[1] == (42 if encoder.config.schedule == "chunked" else 41)
    assert relative(np.array(chunked.latents), np.array(whole.latents)) <= EXACT


def test_less_overlap_than_needed_is_an_approximation(encoder: SameEncoder) -> None:
    """SAME-L needs its reach (12 latents at real size, 3 here) kept from every inner edge;
    SAME-S, whose windows start on its chunk grid, only needs the edge latent dropped (the
    one paired with its copy in the shifted pass): overlap 2 is exact there, 0 is not."""
    audio = _audio(41, seed=2)
    whole = np.array(encode_latents(encoder, audio).latents)
    chunked = encoder.config.schedule == "chunked"
    short = np.array(
        encode_latents(
            encoder, audio, chunk_latents=16, overlap_latents=0 if chunked else 2
        ).latents
    )
    assert relative(short, whole) > 100 * EXACT
    if chunked:
        two = encode_latents(encoder, audio, chunk_latents=16, overlap_latents=2).latents
        assert relative(np.array(two), whole) <= EXACT


def test_default_overlap_follows_the_declared_field() -> None:
    """SAME-S: context 3 latents -> overlap 6; SAME-L: 23 -> 46 (from 4 and 24 latents)."""
    for config, context in ((SAME_S, 3), (SAME_L, 23)):
        assert context_latents(SameEncoder(config)) == context
    assert context_latents(SameEncoder(CONFIGS["same-l"])) == 5


def test_same_s_chunks_are_whole_blocks() -> None:
    encoder = SameEncoder(CONFIGS["same-s"])
    audio = _audio(20, seed=3)
    with pytest.raises(UsageError, match="blocks of 2 latents"):
        encode_latents(encoder, audio, chunk_latents=15)
    with pytest.raises(UsageError, match="blocks of 2 latents"):
        encode_latents(encoder, audio, chunk_latents=16, overlap_latents=7)


def test_batches_with_lengths_mask_the_padding(encoder: SameEncoder) -> None:
    audio = np.concatenate([_audio(9, seed=4), _audio(9, seed=5)])
    out = encode_latents(encoder, audio, lengths=[9 * HOP - 777, 3 * HOP])
    assert out.lengths == (9, 3)
    assert np.array(out.mask).sum(axis=1).tolist() == [9, 3]
    single = encode_latents(encoder, audio[1:])
    assert np.array_equal(np.array(out.latents[1]), np.array(single.latents[0]))


def test_encoders_declare_the_latent_encoder_protocol() -> None:
    from sa3ckpt.train.encode_audio import LatentEncoder

    for config in (SAME_S, SAME_L):
        encoder = SameEncoder(config)
        assert isinstance(encoder, LatentEncoder)
        assert (encoder.samples_per_latent, encoder.latent_channels) == (4096, 256)
    assert SameEncoder(SAME_S).latents_multiple == 2 and SameEncoder(SAME_L).latents_multiple == 1
