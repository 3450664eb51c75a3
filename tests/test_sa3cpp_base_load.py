"""load_dit and verify take an sa3.cpp DiT GGUF (+ its conditioner sidecar GGUF)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlx.utils import tree_flatten

from fixtures.generate import DATA_DIR
from sa3ckpt.models import load_dit
from sa3ckpt.ops.convert import convert_base
from sa3ckpt.ops.merge import MergeOptions, merge_checkpoint
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.targets.topology import rotary_inv_freq

pytest.importorskip("gguf")

FAMILY = "tiny-medium"
INV_FREQ = "transformer.rotary_pos_emb.inv_freq"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("load")
    official = root / "official.safetensors"
    convert_base(
        DATA_DIR / "bases" / f"{FAMILY}.official-full.safetensors",
        official,
        to="official",
        dtype="fp32",
    )
    dit = root / "dit.gguf"
    convert_base(official, dit, to="sa3cpp")
    return {"official": official, "dit": dit, "cond": root / "dit-conditioner.gguf"}


def _params(module: object) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(module.parameters())}  # type: ignore[attr-defined]


def test_load_dit_reads_the_gguf_pair_as_the_official_base(files: dict[str, Path]) -> None:
    ours = load_dit(files["dit"], conditioner=files["cond"])
    ref = load_dit(files["official"])
    got, want = _params(ours.dit), _params(ref.dit)
    assert set(got) == set(want)
    for name, value in got.items():
        if name != INV_FREQ:
            assert np.array_equal(value, want[name]), name
    rot = ref.dit.topology.rope_dim
    assert np.array_equal(got[INV_FREQ], rotary_inv_freq(rot).astype(np.float32))
    assert ours.conditioner is not None and ref.conditioner is not None
    for name, value in _params(ours.conditioner).items():
        assert np.array_equal(value, _params(ref.conditioner)[name]), name
    assert ours.ledger.naming == "sa3cpp" and ours.ledger.container == "gguf"
    assert str(files["cond"]) in ours.ledger.sources
    assert any("dit.rot" in note for note in ours.ledger.notes)


def test_without_its_sidecar_the_gguf_loads_without_a_conditioner(files: dict[str, Path]) -> None:
    loaded = load_dit(files["dit"])
    assert loaded.conditioner is None
    assert set(loaded.ledger.conditioner_missing) == {
        "cond.padding_embedding",
        "cond.seconds_total_weight",
        "cond.seconds_total_bias",
    }


def test_verify_passes_a_merge_into_the_gguf(files: dict[str, Path], tmp_path: Path) -> None:
    adapter = DATA_DIR / "adapters" / FAMILY / "dora-cols.safetensors"
    merged = tmp_path / "merged.gguf"
    merge_checkpoint(
        str(files["dit"]),
        [AdapterArg(str(adapter), 0.9)],
        str(merged),
        MergeOptions(conditioner=str(files["cond"])),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sa3ckpt",
            "verify",
            str(files["dit"]),
            f"{adapter}:0.9",
            str(merged),
            "--conditioner",
            str(files["cond"]),
            "--merged-conditioner",
            str(tmp_path / "merged-conditioner.gguf"),
            "--quiet",
            "--strict",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "with conditioner" in done.stdout
