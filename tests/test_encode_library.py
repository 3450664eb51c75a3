"""The library under `sa3ckpt encode`: the audio reader, the codec table, latent files,
progress events and atomic output (in process, so failures can be injected)."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import sa3ckpt.models
from fixtures.audio import CLIPS, to_pcm16, tone
from fixtures.generate import AUDIO_DIR, DATA_DIR, TOY_CODEC
from sa3ckpt.errors import OutputError, UsageError
from sa3ckpt.io import safetensors as st_io
from sa3ckpt.models.toy_codec import StridedConvEncoder
from sa3ckpt.progress import ProgressEvent
from sa3ckpt.train.codecs import load_codec
from sa3ckpt.train.encode_dir import Chunking, encode_folder
from sa3ckpt.train.latent_files import latent_batch, read_latent_file

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from sa3ckpt.io.audio import AudioError, read_clip, resample  # noqa: E402

AUDIO = DATA_DIR / AUDIO_DIR
WEIGHTS = DATA_DIR / TOY_CODEC


@pytest.mark.parametrize(("rel", "seconds", "rate", "freqs", "sweep", "kind"), CLIPS)
def test_bundled_clips_decode_to_their_tones(
    rel: str, seconds: float, rate: int, freqs: tuple[float, ...], sweep: float, kind: str
) -> None:
    """Our WAV and VERBATIM-FLAC writers produce what libsndfile decodes bit for bit."""
    data, got_rate = sf.read(str(AUDIO / rel), dtype="int16", always_2d=True)
    assert got_rate == rate and sf.info(str(AUDIO / rel)).format == kind.upper()
    assert np.array_equal(data, to_pcm16(tone(seconds, rate, freqs, sweep=sweep)))


def test_mono_is_duplicated_exactly() -> None:
    clip = read_clip(AUDIO / "chirp-mono.wav")
    raw, _ = sf.read(str(AUDIO / "chirp-mono.wav"), dtype="float32", always_2d=True)
    assert clip.channels == "mono-duplicated" and not clip.resampled
    assert clip.samples.shape == (raw.shape[0], 2) and clip.samples.dtype == np.float32
    assert np.array_equal(clip.samples[:, 0], raw[:, 0])
    assert np.array_equal(clip.samples[:, 1], raw[:, 0])


def test_48k_is_resampled_to_44k1_keeping_the_tone() -> None:
    clip = read_clip(AUDIO / "takes" / "tone-48k.flac")
    assert clip.resampled and clip.source_rate == 48_000 and clip.source_frames == 36_000
    assert clip.samples.shape == (33_075, 2)  # 0.75 s at 44.1 kHz
    # the same continuous tone sampled at 44.1 kHz, away from the edges (resampler ringing)
    want = tone(0.75, 44_100, (330.0, 495.0), sweep=-100.0)
    error = np.max(np.abs(clip.samples[500:-500] - want[500:-500]))
    assert error < 1e-3, error


def test_resample_refuses_rates_outside_the_range() -> None:
    data = np.zeros((100, 2), np.float32)
    for rate in (0, 7_999, 400_000):
        with pytest.raises(AudioError, match="cannot be resampled"):
            resample(data, rate, "x.wav")
    assert resample(data, 44_100) is data


def test_nan_after_decoding_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nan.flac"
    data = np.zeros((1000, 2), np.float32)
    sf.write(str(path), data, 44_100, subtype="PCM_16")  # a FLAC cannot hold NaN
    assert read_clip(path).samples.shape == (1000, 2)
    wav = tmp_path / "nan.wav"
    data[10, 0] = np.nan
    sf.write(str(wav), data, 44_100, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"1 NaN/Inf samples in the file \(first at"):
        read_clip(wav)


def test_load_codec_runs_the_same_loader_through_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """same-l / same-s go through sa3ckpt.models.same's load_same_encoder and codec_sha256."""
    calls: list[tuple[str, str | None, mx.Dtype]] = []
    encoder = StridedConvEncoder(samples_per_latent=4096, latent_channels=256)

    class Ledger:
        def lines(self) -> list[str]:
            return ["every parameter loaded"]

    def load_same_encoder(path: str, codec: str | None = None, dtype: mx.Dtype = mx.float32):
        calls.append((path, codec, dtype))
        return encoder, Ledger()

    fake = types.SimpleNamespace(
        load_same_encoder=load_same_encoder, codec_sha256=lambda p: "ab" * 32
    )
    monkeypatch.setitem(sys.modules, "sa3ckpt.models.same", fake)
    monkeypatch.setattr(sa3ckpt.models, "same", fake, raising=False)
    weights = tmp_path / "same.safetensors"
    weights.write_bytes(b"x")
    codec = load_codec("same-s", weights, "bf16")
    assert calls == [(str(weights), "same-s", mx.bfloat16)]
    assert codec.encoder is encoder and codec.sha256 == "ab" * 32
    assert codec.notes == ("every parameter loaded",)


def test_progress_counts_milliseconds_of_audio(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    codec = load_codec("toy", WEIGHTS)
    encode_folder(AUDIO, tmp_path / "out", codec, progress=events.append)
    assert [e.unit for e in events] == ["audio_ms"] * 3
    assert events[-1].done == events[-1].total == 1000 + 750 + 1000
    assert [e.item for e in events] == [
        "1/3 chirp-mono.wav",
        "2/3 takes/tone-48k.flac",
        "3/3 tone-stereo.wav",
    ]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """Atomic output: a write failing halfway leaves neither the latent file nor a temp file."""
    codec = load_codec("toy", WEIGHTS)
    src = Path(shutil.copytree(AUDIO, tmp_path / "audio"))
    out = tmp_path / "out"
    real = st_io.SafetensorsStreamWriter.write

    def failing(self: st_io.SafetensorsStreamWriter, name: str, array: np.ndarray) -> None:
        real(self, name, array)  # the data is in the temp file, the commit never comes
        raise failure

    monkeypatch.setattr(st_io.SafetensorsStreamWriter, "write", failing)
    with pytest.raises(OutputError if isinstance(failure, OSError) else KeyboardInterrupt):
        encode_folder(src, out, codec)
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_latent_batch_pads_and_masks(tmp_path: Path) -> None:
    codec = load_codec("toy", WEIGHTS)
    out = tmp_path / "out"
    encode_folder(AUDIO, out, codec, chunking=Chunking(None, None))
    paths = sorted(out.rglob("*.safetensors"))
    batch = latent_batch(paths)
    assert batch.latents.shape == (3, 8, 11) and batch.mask.shape == (3, 11)
    assert np.array(batch.mask.sum(axis=1)).tolist() == [11, 9, 11]
    assert np.array(batch.seconds).tolist() == [1.0, 0.75, 1.0]
    short = read_latent_file(paths[1])
    assert np.array_equal(np.array(batch.latents[1, :, :9]), short.latents)
    assert not np.any(np.array(batch.latents[1, :, 9:]))


def test_without_the_audio_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(UsageError, match=r"needs soundfile: install the audio extra"):
        read_clip(AUDIO / "tone-stereo.wav")


def test_the_bar_shows_seconds_of_audio() -> None:
    import io

    from rich.console import Console

    from sa3ckpt.cli.progress import ProgressBar

    now = [0.0]
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    bar = ProgressBar("encode", console, clock=lambda: now[0], live=False)
    now[0] = 2.0  # past the delay: the first event draws
    bar(ProgressEvent(1_000, 2_750, "audio_ms", "1/3 chirp-mono.wav"))
    bar(ProgressEvent(1_750, 2_750, "audio_ms", "2/3 takes/tone-48k.flac"))
    bar.close(ok=True)
    text = out.getvalue()
    assert "1.0/2.8 s audio" in text and "2.8/2.8 s audio" in text
    assert "2/3 takes/tone-48k.flac" in text
