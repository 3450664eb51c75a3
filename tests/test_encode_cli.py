"""`sa3ckpt encode` as a user runs it: exit codes, the JSON ledger, files written, resuming.

The codec is the toy strided conv with the bundled random weights (the SAME encoders have
their own tests); what is checked here is the command's bookkeeping around any encoder: one
latent file per clip at the mirrored path, the provenance in its metadata, bad clips failing
alone, resumed runs skipping what is done and re-encoding what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fixtures.audio import tone, wav_bytes
from fixtures.generate import AUDIO_DIR, DATA_DIR, TOY_CODEC, toy_codec_tensors
from sa3ckpt.io.safetensors import write_safetensors
from tests.helpers import run_cli

sf = pytest.importorskip("soundfile")
soxr = pytest.importorskip("soxr")

AUDIO = DATA_DIR / AUDIO_DIR
WEIGHTS = DATA_DIR / TOY_CODEC
BUNDLED = {
    "chirp-mono.wav": "chirp-mono.safetensors",
    "takes/tone-48k.flac": "takes/tone-48k.safetensors",
    "tone-stereo.wav": "tone-stereo.safetensors",
}


def encode(src: Path, out: Path, *extra: str, weights: Path = WEIGHTS) -> Any:
    return run_cli(
        "encode", str(src), "-o", str(out), "--codec", "toy", "--weights", str(weights), *extra
    )


def encode_json(src: Path, out: Path, *extra: str, weights: Path = WEIGHTS) -> tuple[int, dict]:
    result = encode(src, out, "--json", *extra, weights=weights)
    return result.returncode, json.loads(result.stdout)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clips(doc: dict) -> dict[str, dict]:
    return {c["source"]: c for c in doc["clips"]}


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    """A writable copy of the bundled clips."""
    return Path(shutil.copytree(AUDIO, tmp_path / "audio"))


def test_bundled_audio_encodes_with_provenance(audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents"
    code, doc = encode_json(audio, out)
    assert code == 0
    assert doc["command"] == "encode" and doc["schema"] == 1
    assert doc["summary"] == {
        "clips": 3,
        "encoded": 3,
        "skipped": 0,
        "failed": 0,
        "mono_duplicated": 1,
        "resampled": 1,
    }
    assert doc["codec"]["sha256"] == sha256(WEIGHTS)
    by = clips(doc)
    assert {k: v["output"] for k, v in by.items()} == BUNDLED
    assert by["chirp-mono.wav"]["channels"] == "mono-duplicated"
    assert by["chirp-mono.wav"]["source_channels"] == 1
    assert by["takes/tone-48k.flac"]["resampled"] is True
    assert by["takes/tone-48k.flac"]["source_rate"] == 48_000
    assert by["tone-stereo.wav"]["resampled"] is False

    for source, rel in BUNDLED.items():
        meta = _metadata(out / rel)
        info = sf.info(str(audio / source))
        frames_44k = round(info.frames * 44_100 / info.samplerate)
        assert meta["valid_latents"] == str(-(-frames_44k // 4096)), source
        assert meta["source_samples"] == str(info.frames)
        assert meta["source_rate"] == str(info.samplerate)
        assert meta["codec"] == "toy" and meta["codec_sha256"] == sha256(WEIGHTS)
        assert meta["source_sha256"] == sha256(audio / source)
        assert meta["sa3ckpt_version"] and meta["format"] == "sa3ckpt-latents"


def _metadata(path: Path) -> dict[str, str]:
    from sa3ckpt.io.safetensors import read_header

    header = read_header(path)
    (info,) = header.tensors.values()
    assert info.dtype == "F32" and info.shape[0] == 8  # channels-first (C, T)
    assert info.shape[1] == int(header.metadata["valid_latents"])
    return header.metadata


def test_text_ledger_says_mono_and_resampling(audio: Path, tmp_path: Path) -> None:
    result = encode(audio, tmp_path / "latents")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    mono = next(x for x in lines if "chirp-mono.wav" in x)
    assert mono.startswith("encoded") and "mono duplicated to stereo" in mono
    resampled = next(x for x in lines if "tone-48k.flac" in x)
    assert "resampled 48000 -> 44100 Hz" in resampled
    assert lines[-1].startswith("3 clips: 3 encoded, 0 skipped")
    assert result.stderr == ""


def test_latents_equal_the_library_call(audio: Path, tmp_path: Path) -> None:
    import mlx.core as mx

    from sa3ckpt.models.toy_codec import StridedConvEncoder
    from sa3ckpt.train import encode_latents
    from sa3ckpt.train.latent_files import read_latent_file

    out = tmp_path / "latents"
    assert encode(audio, out, "--chunk", "5").returncode == 0
    weight = toy_codec_tensors()["conv.weight"]
    encoder = StridedConvEncoder(samples_per_latent=4096, latent_channels=8)
    encoder.conv.weight = mx.array(weight).astype(mx.float32)
    for source, rel in BUNDLED.items():
        data, rate = sf.read(str(audio / source), dtype="float32", always_2d=True)
        if rate != 44_100:
            data = soxr.resample(data, rate, 44_100, quality="VHQ").astype(np.float32)
        if data.shape[1] == 1:
            data = np.repeat(data, 2, axis=1)
        want = np.array(encode_latents(encoder, data, 44_100).dit_latents[0])
        got = read_latent_file(out / rel)
        assert np.array_equal(got.latents, want), source  # chunked = whole clip, exactly


def test_chunked_and_whole_clip_runs_agree(audio: Path, tmp_path: Path) -> None:
    from sa3ckpt.train.latent_files import read_latent_file

    assert encode(audio, tmp_path / "a", "--chunk", "0").returncode == 0
    assert encode(audio, tmp_path / "b", "--chunk", "6", "--overlap", "4").returncode == 0
    for rel in BUNDLED.values():
        a = read_latent_file(tmp_path / "a" / rel)
        b = read_latent_file(tmp_path / "b" / rel)
        assert a.metadata["chunk_latents"] == "none" and b.metadata["chunk_latents"] == "6"
        assert np.array_equal(a.latents, b.latents), rel


def test_a_second_run_skips_and_an_edited_clip_is_redone(audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents"
    assert encode_json(audio, out)[0] == 0
    before = {rel: (out / rel).stat().st_mtime_ns for rel in BUNDLED.values()}
    code, doc = encode_json(audio, out)
    assert code == 0 and doc["summary"]["skipped"] == 3 and doc["summary"]["encoded"] == 0
    assert all(c["reason"] == "already encoded" for c in doc["clips"])
    assert clips(doc)["chirp-mono.wav"]["channels"] == "mono-duplicated"  # from the metadata
    assert {rel: (out / rel).stat().st_mtime_ns for rel in BUNDLED.values()} == before

    (audio / "tone-stereo.wav").write_bytes(wav_bytes(tone(0.5, 44_100, (100.0, 200.0)), 44_100))
    code, doc = encode_json(audio, out)
    by = clips(doc)
    assert code == 0 and doc["summary"]["encoded"] == 1 and doc["summary"]["skipped"] == 2
    assert by["tone-stereo.wav"]["reason"] == "re-encoded: source_sha256 changed"
    assert _metadata(out / "tone-stereo.safetensors")["valid_latents"] == "6"


def test_other_weights_re_encode_everything(audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents"
    assert encode_json(audio, out)[0] == 0
    other = tmp_path / "other-codec.safetensors"
    tensors = toy_codec_tensors(seed=5)
    write_safetensors(other, tensors)
    code, doc = encode_json(audio, out, weights=other)
    assert code == 0 and doc["summary"]["encoded"] == 3
    assert {c["reason"] for c in doc["clips"]} == {"re-encoded: codec_sha256 changed"}
    assert _metadata(out / "tone-stereo.safetensors")["codec_sha256"] == sha256(other)
    code, doc = encode_json(audio, out, "--force", weights=other)
    assert code == 0 and doc["summary"]["encoded"] == 3
    assert {c["reason"] for c in doc["clips"]} == {"re-encoded: --force"}


def _bad_clips(folder: Path) -> dict[str, str]:
    """Write bad clips into `folder`; return {name: words the failure must contain}."""
    nan = tone(0.2, 44_100, (440.0, 440.0))
    nan[100, 1] = np.nan
    inf = tone(0.2, 44_100, (440.0,))
    inf[5, 0] = np.inf
    files = {
        "nan.wav": (wav_bytes(nan, 44_100, float32=True), "1 NaN/Inf samples in the file"),
        "inf-mono.wav": (wav_bytes(inf, 44_100, float32=True), "NaN/Inf samples"),
        "empty.wav": (wav_bytes(np.zeros((0, 2)), 44_100), "no samples (zero-length audio)"),
        "corrupt.flac": (b"fLaC" + bytes(range(256)) * 4, "unreadable audio"),
        "not-audio.wav": (b"hello, world\n", "unreadable audio"),
        "surround.wav": (wav_bytes(tone(0.1, 44_100, (1.0, 2.0, 3.0)), 44_100), "3 channels"),
        "phone.wav": (wav_bytes(tone(0.5, 4_000, (300.0, 300.0)), 4_000), "4000 Hz cannot be"),
    }
    for name, (payload, _) in files.items():
        (folder / name).write_bytes(payload)
    return {name: words for name, (_, words) in files.items()}


def test_bad_clips_fail_alone_with_one_line_each(audio: Path, tmp_path: Path) -> None:
    bad = _bad_clips(audio)
    out = tmp_path / "latents"
    result = encode(audio, out, "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    by = clips(doc)
    assert doc["summary"]["failed"] == len(bad) and doc["summary"]["encoded"] == 3
    for name, words in bad.items():
        assert by[name]["status"] == "failed" and words in by[name]["reason"], by[name]
        assert by[name]["output"] is None
    errors = result.stderr.splitlines()
    assert len(errors) == len(bad)
    for name, words in bad.items():
        line = next(x for x in errors if f"/{name}:" in x)
        assert line.startswith(f"sa3ckpt: error: {audio / name}: ") and words in line
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(BUNDLED.values())  # the good ones, and no temp file


def test_a_failed_run_resumes_the_failed_clips_only(audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents"
    (audio / "later.wav").write_bytes(b"not yet")
    assert encode_json(audio, out)[0] == 1
    (audio / "later.wav").write_bytes(wav_bytes(tone(0.3, 44_100, (500.0, 600.0)), 44_100))
    code, doc = encode_json(audio, out)
    assert code == 0
    assert clips(doc)["later.wav"]["status"] == "encoded" and doc["summary"]["skipped"] == 3


def test_a_foreign_file_at_the_output_is_kept_without_force(audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "latents"
    out.mkdir()
    foreign = out / "tone-stereo.safetensors"
    write_safetensors(foreign, {"x": np.zeros(3, np.float32)})
    before = foreign.read_bytes()
    code, doc = encode_json(audio, out)
    assert code == 1 and "not an sa3ckpt latent file" in clips(doc)["tone-stereo.wav"]["reason"]
    assert foreign.read_bytes() == before
    assert encode_json(audio, out, "--force")[0] == 0
    assert _metadata(foreign)["codec"] == "toy"


def test_two_clips_with_one_output_name(audio: Path, tmp_path: Path) -> None:
    shutil.copy(audio / "tone-stereo.wav", audio / "tone-stereo.flac.wav")
    sf.write(str(audio / "tone-stereo.flac"), np.zeros((4096, 2), np.float32), 44_100)
    code, doc = encode_json(audio, tmp_path / "latents")
    by = clips(doc)
    assert code == 1
    assert by["tone-stereo.flac"]["status"] == "encoded"  # sorted first, so it owns the name
    assert by["tone-stereo.wav"]["reason"] == (
        "same output tone-stereo.safetensors as tone-stereo.flac"
    )


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--codec", "toy", "--weights", str(WEIGHTS)], 3, "audio folder not found"),
        (["--codec", "mp3", "--weights", str(WEIGHTS)], 2, "invalid choice"),
        (["--codec", "toy", "--weights", "missing.safetensors"], 3, "codec weights not found"),
        (
            ["--codec", "toy", "--weights", str(WEIGHTS), "--chunk", "4", "--overlap", "3"],
            2,
            "even",
        ),
        (["--codec", "toy", "--weights", str(WEIGHTS), "--chunk", "6"], 0, ""),
        (["--codec", "toy", "--weights", str(WEIGHTS), "--chunk", "4"], 2, "too small"),
        (
            ["--codec", "toy", "--weights", str(WEIGHTS), "--chunk", "0", "--overlap", "2"],
            2,
            "--chunk",
        ),
    ],
)
def test_usage_errors(audio: Path, tmp_path: Path, args: list[str], code: int, words: str) -> None:
    src = tmp_path / "nowhere" if words == "audio folder not found" else audio
    result = run_cli("encode", str(src), "-o", str(tmp_path / "out"), *args)
    assert result.returncode == code, result.stderr
    if code:
        (line,) = result.stderr.splitlines()
        assert line.startswith("sa3ckpt: error:") and words in line


def test_an_empty_folder_and_a_single_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = encode(tmp_path / "empty", tmp_path / "out")
    assert result.returncode == 2 and "no audio files" in result.stderr
    code, doc = encode_json(AUDIO / "tone-stereo.wav", tmp_path / "one")
    assert code == 0 and [c["output"] for c in doc["clips"]] == ["tone-stereo.safetensors"]
    assert (tmp_path / "one" / "tone-stereo.safetensors").is_file()


def test_not_a_toy_codec_file_is_refused(audio: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.safetensors"
    write_safetensors(wrong, {"conv.weight": np.zeros((8, 100, 2), np.float16)})
    result = encode(audio, tmp_path / "out", weights=wrong)
    assert result.returncode == 4 and "(channels, 3 * hop, 2)" in result.stderr


def test_fp16_run_is_close_to_fp32(audio: Path, tmp_path: Path) -> None:
    from sa3ckpt.train.latent_files import read_latent_file

    assert encode(audio, tmp_path / "a").returncode == 0
    code, doc = encode_json(audio, tmp_path / "b", "--dtype", "fp16")
    assert code == 0 and doc["codec"]["dtype"] == "fp16"
    for rel in BUNDLED.values():
        a = read_latent_file(tmp_path / "a" / rel).latents
        b = read_latent_file(tmp_path / "b" / rel)
        assert b.metadata["dtype"] == "fp16" and b.latents.dtype == np.float32
        assert np.max(np.abs(a - b.latents)) <= 1e-2 * np.max(np.abs(a)), rel
    code, doc = encode_json(audio, tmp_path / "b")  # the dtype is part of the resume key
    assert {c["reason"] for c in doc["clips"]} == {"re-encoded: dtype changed"}


def test_the_docs_example_prints_what_the_docs_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encode page's first example, run from a scratch repository root, prints its block."""
    import re

    root = Path(__file__).resolve().parent.parent
    section = (root / "docs" / "commands" / "encode.md").read_text(encoding="utf-8")
    block = re.search(
        r"^```(?:console)?\n\$ sa3ckpt (encode .*?)\n(.*?)^```$", section, flags=re.S | re.M
    )
    assert block, "the encode page has no example"
    (tmp_path / "fixtures").symlink_to(DATA_DIR.parent, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    root = str(DATA_DIR.parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    result = run_cli(*block.group(1).split())
    assert result.returncode == 0, result.stderr
    assert result.stdout == block.group(2)
