"""`sa3ckpt encode` with the real SAME encoders (scaled-down, random weights).

Real-size SAME weights are hundreds of MB, so the named codecs are pointed at scaled configs
of the same schedules (`SameConfig.scaled`) for these tests: the command then runs the real
loader (official autoencoder file, strict) and the real encoder, in process, and what it
writes is compared with a direct library call. A subprocess run checks the named codec
refuses weights of another size (exit 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import AUDIO_DIR, DATA_DIR
from sa3ckpt.cli import main
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.models.same import SAME_L, SAME_S, codec_sha256, load_same_encoder
from sa3ckpt.models.same import config as same_config
from sa3ckpt.train import encode_latents
from sa3ckpt.train.latent_files import latent_batch, read_latent_file
from tests.helpers import run_cli
from tests.same_weights import official_tensors

pytest.importorskip("soundfile")
pytest.importorskip("soxr")

from sa3ckpt.io.audio import read_clip

AUDIO = DATA_DIR / AUDIO_DIR
SCALED = {
    "same-s": SAME_S.scaled(64, 6, name="same-s"),
    "same-l": SAME_L.scaled(64, 2, name="same-l"),
}
CLIPS = {
    "chirp-mono.wav": "chirp-mono.safetensors",
    "takes/tone-48k.flac": "takes/tone-48k.safetensors",
    "tone-stereo.wav": "tone-stereo.safetensors",
}


@pytest.fixture
def scaled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point both codec names at scaled configs; return {name: official weights file}."""
    files = {}
    for seed, (name, config) in enumerate(SCALED.items()):
        monkeypatch.setitem(same_config.CODECS, name, config)
        path = tmp_path / f"{name}.autoencoder.safetensors"
        write_safetensors(path, official_tensors(config, seed=40 + seed))
        files[name] = path
    return files


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    code = main(["encode", *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out else {}, err


@pytest.mark.parametrize("name", ["same-s", "same-l"])
def test_encode_equals_the_library_call(
    name: str, scaled: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "latents"
    code, doc, err = run_main(
        capsys, str(AUDIO), "-o", str(out), "--codec", name, "--weights", str(scaled[name])
    )
    assert code == 0, err
    assert doc["codec"]["sha256"] == codec_sha256(scaled[name])
    assert any("SAME encoder parameters loaded" in n for n in doc["codec"]["notes"])
    encoder, _ = load_same_encoder(scaled[name], codec=SCALED[name])
    block = SCALED[name].latents_multiple
    for source, rel in CLIPS.items():
        clip = read_clip(AUDIO / source)
        want = encode_latents(encoder, clip.samples, 44_100, chunk_latents=128)
        got = read_latent_file(out / rel)
        valid = want.lengths[0]
        assert got.valid == valid == -(-clip.samples.shape[0] // 4096), source
        assert got.latents.shape == (256, -(-valid // block) * block)  # SAME-S keeps its pad
        assert np.array_equal(got.latents, np.array(want.dit_latents[0])), source
    batch = latent_batch(sorted(out.rglob("*.safetensors")))
    assert np.array(batch.mask.sum(axis=1)).tolist() == [11, 9, 11]


@pytest.mark.parametrize(("name", "tolerance"), [("same-s", 0.0), ("same-l", 1e-5)])
def test_chunked_encoding_stays_within_the_receptive_field_bound(
    name: str,
    tolerance: float,
    scaled: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--chunk 8 with the codec's default overlap equals whole clips (up to float rounding)."""
    args = ["--codec", name, "--weights", str(scaled[name])]
    code, whole, err = run_main(  # whole clips at once
        capsys, str(AUDIO), "-o", str(tmp_path / "a"), "--chunk", "0", *args
    )
    assert code == 0, err
    code, chunked, err = run_main(
        capsys, str(AUDIO), "-o", str(tmp_path / "b"), "--chunk", "8", *args
    )
    assert code == 0, err
    assert whole["chunk_latents"] is None and whole["overlap_latents"] is None
    assert chunked["overlap_latents"] == 6  # twice the context (3 latents), even
    for rel in CLIPS.values():
        a = read_latent_file(tmp_path / "a" / rel).latents
        b = read_latent_file(tmp_path / "b" / rel).latents
        assert np.max(np.abs(a - b)) <= tolerance * np.max(np.abs(a)), rel


def test_same_s_chunks_must_follow_its_blocks(
    scaled: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--codec", "same-s", "--weights", str(scaled["same-s"]), "--chunk", "9"]
    code = main(["encode", str(AUDIO), "-o", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert code == 2 and "multiples of 2" in err
    assert not (tmp_path / "x").exists()


def test_fp16_run_through_the_real_loader(
    scaled: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--codec", "same-l", "--weights", str(scaled["same-l"])]
    assert run_main(capsys, str(AUDIO), "-o", str(tmp_path / "a"), *args)[0] == 0
    code, doc, err = run_main(
        capsys, str(AUDIO), "-o", str(tmp_path / "b"), "--dtype", "fp16", *args
    )
    assert code == 0, err
    assert any("float32->float16" in n for n in doc["codec"]["notes"])
    a = read_latent_file(tmp_path / "a" / "tone-stereo.safetensors").latents
    b = read_latent_file(tmp_path / "b" / "tone-stereo.safetensors").latents
    assert 0 < np.max(np.abs(a - b)) <= 2e-2 * np.max(np.abs(a))


@pytest.mark.parametrize("name", ["same-s", "same-l"])
def test_weights_of_another_size_are_refused(name: str, tmp_path: Path) -> None:
    """The named codec is the real size: the scaled tiny fixture is not it (exit 4)."""
    tiny = DATA_DIR / "kinds" / "tiny-same-s.encoder.safetensors"
    result = run_cli(
        "encode", str(AUDIO), "-o", str(tmp_path / "out"), "--codec", name, "--weights", str(tiny)
    )
    assert result.returncode == 4, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("sa3ckpt: error:") and name in line
    assert not (tmp_path / "out").exists()
