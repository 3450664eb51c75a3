"""Waveform -> latent boundary: input checks, alignment, masks, chunked encoding.

The test encoder is a strided Conv1d with integer weights fed audio in multiples of 1/4, so
every sum is exact in float32 whatever order a kernel adds in: chunked and whole-clip
encodings can be compared for bit equality, which is what "exact where the receptive field
allows" means.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from sa3ckpt.errors import UsageError
from sa3ckpt.models import build_dit
from sa3ckpt.models.toy_codec import StridedConvEncoder
from sa3ckpt.targets.families import FAMILIES
from sa3ckpt.train.encode_audio import (
    SAME_LATENT_CHANNELS,
    SAME_SAMPLES_PER_LATENT,
    SAMPLE_RATE,
    EncoderSpec,
    LatentEncoder,
    check_audio,
    chunk_plan,
    collate_clips,
    context_latents,
    encode_latents,
    latent_count,
    latent_mask,
    pad_to_alignment,
)
from sa3ckpt.train.loss import rectified_flow_loss

HOP = 4
LATENT_C = 3


def _encoder(seed: int = 0) -> StridedConvEncoder:
    enc = StridedConvEncoder(HOP, LATENT_C)
    rng = np.random.default_rng(seed)
    enc.conv.weight = mx.array(rng.integers(-2, 3, enc.conv.weight.shape).astype(np.float32))
    return enc


def _audio(batch: int, samples: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(-4, 5, (batch, samples, 2)) / 4).astype(np.float32)


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "audio,rate,match",
    [
        (np.zeros((100, 2), np.float32), 48_000, "48000 Hz; SA3 codecs expect 44100"),
        (np.zeros((100, 2), np.int16), SAMPLE_RATE, "int16 is not floating point"),
        (mx.zeros((100, 2), dtype=mx.int32), SAMPLE_RATE, "int32 is not floating point"),
        (np.zeros((100, 1), np.float32), SAMPLE_RATE, "1 channels in its last axis"),
        (np.zeros((2, 100), np.float32), SAMPLE_RATE, "channels-first"),
        (np.zeros((1, 2, 100), np.float32), SAMPLE_RATE, "channels-first"),
        (np.zeros((100,), np.float32), SAMPLE_RATE, "must be \\(samples, 2\\)"),
        (np.zeros((1, 1, 100, 2), np.float32), SAMPLE_RATE, "must be \\(samples, 2\\)"),
        (np.zeros((0, 2), np.float32), SAMPLE_RATE, "no samples"),
    ],
)
def test_check_audio_rejects_with_one_line(audio, rate: int, match: str) -> None:
    with pytest.raises(UsageError, match=match) as info:
        check_audio(audio, rate)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_check_audio_accepts_floats_as_float32_batches(dtype) -> None:
    out = check_audio(np.full((10, 2), 0.5, dtype), SAMPLE_RATE)
    assert out.shape == (1, 10, 2) and out.dtype == mx.float32
    batch = check_audio(mx.zeros((3, 10, 2), dtype=mx.bfloat16), SAMPLE_RATE)
    assert batch.shape == (3, 10, 2) and batch.dtype == mx.float32


def test_encode_checks_audio_too() -> None:
    with pytest.raises(UsageError, match="22050 Hz"):
        encode_latents(_encoder(), np.zeros((16, 2), np.float32), 22_050)


# --------------------------------------------------------------------------- bookkeeping


def test_latent_count_and_alignment() -> None:
    assert [latent_count(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    assert latent_count(44_100, SAME_SAMPLES_PER_LATENT) == 11  # one second of SAME latents
    audio = mx.ones((2, 10, 2))
    padded = pad_to_alignment(audio, 4)
    assert padded.shape == (2, 12, 2)
    assert np.all(np.array(padded[:, 10:]) == 0) and np.all(np.array(padded[:, :10]) == 1)
    assert pad_to_alignment(padded, 4) is padded


def test_latent_mask() -> None:
    mask = np.array(latent_mask([3, 1, 4], 4))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])


def test_collate_clips_pads_with_zeros() -> None:
    clips = [np.ones((5, 2), np.float32), np.ones((9, 2), np.float32)]
    batch, lengths = collate_clips(clips, SAMPLE_RATE)
    assert batch.shape == (2, 9, 2) and lengths == (5, 9)
    assert np.all(np.array(batch[0, 5:]) == 0)
    with pytest.raises(UsageError, match="no audio clips"):
        collate_clips([], SAMPLE_RATE)
    with pytest.raises(UsageError, match="pass single clips"):
        collate_clips([np.zeros((2, 5, 2), np.float32)], SAMPLE_RATE)


# --------------------------------------------------------------------------- encoding


def test_encode_shapes_and_mask_for_a_padded_batch() -> None:
    clips = [_audio(1, 10, 2)[0], _audio(1, 17, 3)[0], _audio(1, 4, 4)[0]]
    batch, lengths = collate_clips(clips, SAMPLE_RATE)
    out = encode_latents(_encoder(), batch, lengths=lengths)
    assert out.latents.shape == (3, 5, LATENT_C) and out.latents.dtype == mx.float32
    assert out.lengths == (3, 5, 1)  # ceil(valid / hop)
    np.testing.assert_array_equal(np.array(out.mask).sum(axis=1), [3, 5, 1])


def test_dit_latents_are_the_channels_first_view_the_dit_and_loss_take() -> None:
    """audio -> EncodedBatch -> DiT x and loss with no transpose of the caller's own."""
    clips = [_audio(1, 30, 2)[0], _audio(1, 13, 3)[0]]
    batch, lengths = collate_clips(clips, SAMPLE_RATE)
    enc = StridedConvEncoder(HOP, FAMILIES["tiny-small"].topology.io_channels)
    out = encode_latents(enc, batch, lengths=lengths)
    x = out.dit_latents
    b, frames, c = out.latents.shape
    assert x.shape == (b, c, frames)
    assert np.array_equal(np.array(x), np.swapaxes(np.array(out.latents), 1, 2))
    top = FAMILIES["tiny-small"].topology
    dit = build_dit("tiny-small", memory_tokens=2)
    cond = mx.zeros((b, 3, top.cond_token_dim))
    v = dit(x, mx.array([0.3, 0.7]), cond, mx.zeros((b, top.cond_token_dim)))
    assert v.shape == x.shape
    # the loss reads the same layout with the batch's (B, T) mask; padding frames do not count
    loss = rectified_flow_loss(v, x, out.mask)
    junk = mx.where(out.mask[:, None, :], x, 1e3)
    assert float(rectified_flow_loss(v, junk, out.mask)) == pytest.approx(float(loss), rel=1e-6)


def test_batched_latents_equal_each_clip_encoded_alone() -> None:
    enc = _encoder()
    clips = [_audio(1, n, seed)[0] for seed, n in enumerate((13, 24, 7))]
    batch, lengths = collate_clips(clips, SAMPLE_RATE)
    together = encode_latents(enc, batch, lengths=lengths)
    for i, clip in enumerate(clips):
        alone = encode_latents(enc, clip)
        n = together.lengths[i]
        assert alone.lengths == (n,)
        assert np.array_equal(np.array(together.latents[i, :n]), np.array(alone.latents[0]))


@pytest.mark.parametrize("samples", [4 * 9, 4 * 9 - 3, 4 * 23 + 1, 4 * 40])
@pytest.mark.parametrize("chunk", [6, 7, 10])
def test_chunked_equals_unchunked_exactly(samples: int, chunk: int) -> None:
    enc = _encoder()
    audio = _audio(2, samples)
    whole = np.array(encode_latents(enc, audio).latents)
    chunked = encode_latents(enc, audio, chunk_latents=chunk)  # default overlap: exact
    assert np.array_equal(np.array(chunked.latents), whole)


def test_chunked_with_larger_overlap_is_exact_too() -> None:
    enc = _encoder()
    audio = _audio(1, 4 * 31)
    whole = np.array(encode_latents(enc, audio).latents)
    got = encode_latents(enc, audio, chunk_latents=9, overlap_latents=6).latents
    assert np.array_equal(np.array(got), whole)


def test_too_little_overlap_breaks_the_seams() -> None:
    """The exactness above is earned: without overlap the window edges show."""
    enc = _encoder()
    audio = _audio(1, 4 * 30)
    whole = np.array(encode_latents(enc, audio).latents)
    cut = np.array(encode_latents(enc, audio, chunk_latents=6, overlap_latents=0).latents)
    assert cut.shape == whole.shape and not np.array_equal(cut, whole)


def test_context_latents_from_receptive_field() -> None:
    assert context_latents(_encoder()) == 2  # field 3·hop reaches 2·hop beyond its own hop
    assert context_latents(EncoderSpec(lambda a: a, 4, 4, 1)) == 0
    assert context_latents(EncoderSpec(lambda a: a, 4, 9, 1)) == 2


@pytest.mark.parametrize(
    "total,chunk,overlap", [(5, 8, 2), (8, 8, 2), (9, 8, 2), (30, 8, 4), (31, 7, 0), (100, 10, 6)]
)
def test_chunk_plan_tiles_the_timeline(total: int, chunk: int, overlap: int) -> None:
    plan = chunk_plan(total, chunk, overlap)
    assert plan[0][1] == 0 and plan[-1][2] == total
    for (start, keep_from, keep_to), nxt in zip(plan, [*plan[1:], None], strict=True):
        assert 0 <= start <= keep_from < keep_to <= min(start + chunk, total)
        if nxt is not None:
            assert nxt[1] == keep_to  # contiguous, no gaps or duplicates
            assert start + chunk - keep_to >= overlap // 2  # dropped margin at the right edge
            assert nxt[1] - nxt[0] >= overlap // 2  # ... and at the next window's left edge
    if total > chunk:
        assert all(start + chunk <= total for start, _, _ in plan)  # windows are full length


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"chunk_latents": 6, "overlap_latents": 3}, "even overlap_latents"),
        ({"chunk_latents": 6, "overlap_latents": 6}, "even overlap_latents"),
        ({"chunk_latents": 0, "overlap_latents": 0}, "chunk_latents >= 1"),
        ({"chunk_latents": 4}, "too small for this encoder"),
        ({"lengths": [0]}, "lengths must be"),
        ({"lengths": [41]}, "lengths must be"),
        ({"lengths": [4, 4]}, "lengths must be"),
    ],
)
def test_encode_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        encode_latents(_encoder(), _audio(1, 40), **kwargs)


def test_encoder_protocol_and_spec() -> None:
    assert isinstance(_encoder(), LatentEncoder)
    spec = EncoderSpec(lambda a: a[:, ::SAME_SAMPLES_PER_LATENT, :1] * 0 + 1)
    assert isinstance(spec, LatentEncoder)
    assert (spec.samples_per_latent, spec.latent_channels) == (4096, SAME_LATENT_CHANNELS)
    tiny = EncoderSpec(lambda a: mx.repeat(a[:, ::4, :1], 5, axis=2), 4, 4, 5)
    out = encode_latents(tiny, np.ones((10, 2), np.float32))
    assert out.latents.shape == (1, 3, 5)


def test_encoder_contract_violations() -> None:
    wrong = EncoderSpec(lambda a: a[:, ::2], 4, 4, 2)  # returns hop 2, declares hop 4
    with pytest.raises(ValueError, match="encoder returned shape"):
        encode_latents(wrong, np.ones((8, 2), np.float32))
    with pytest.raises(ValueError, match="samples_per_latent must be a positive int"):
        encode_latents(EncoderSpec(lambda a: a, 0, 4, 2), np.ones((8, 2), np.float32))
