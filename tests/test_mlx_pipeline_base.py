"""Official base -> MLX runtime -> official: every tensor of a complete official base (dit.md,
`synth.official_full_tensors`) survives bit for bit, and the MLX output holds what the official
MLX pipeline reads (its conditioner loader: `np.load` of the DiT file, `cond.*` arrays)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from sa3ckpt.io.base_checkpoint import open_base
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.names.base_keys import (
    MLX_PIPELINE_CONDITIONER_KEYS,
    mlx_to_official_base_key,
    official_to_mlx_base_key,
)
from sa3ckpt.names.modules import SECONDS_CONDITIONER
from sa3ckpt.ops.convert.bases import convert_base
from sa3ckpt.synth import official_full_tensors
from sa3ckpt.targets.families import Family
from sa3ckpt.targets.topology import Topology
from tests.helpers import run_cli

PADDING = "conditioner.conditioners.prompt.padding_embedding"
SECONDS_W = "conditioner.conditioners.seconds_total.embedder.embedding.1.weight"
SECONDS_B = "conditioner.conditioners.seconds_total.embedder.embedding.1.bias"


def _family(name: str, differential: bool, kernel: int) -> Family:
    """A complete-base family: 64-wide heads (official_full_shapes needs E % 64 == 0)."""
    topology = Topology(
        embed_dim=64,
        depth=2,
        differential=differential,
        io_channels=8,
        cond_token_dim=12,
        timestep_features=8,
        seconds_features=8,
        conv_kernel=kernel,
    )
    return Family(name, "complete-base test family", topology, (name,), test_only=True)


SHAPED = {
    "medium": _family("full-medium-64", True, 1),
    "small-k3": _family("full-small-64-k3", False, 3),
}


def _official(tmp_path: Path, shape: str, dtype: str) -> tuple[Path, dict[str, np.ndarray]]:
    tensors = official_full_tensors(SHAPED[shape], seed=3, dtype=dtype)
    path = tmp_path / "official.safetensors"
    write_safetensors(path, tensors, {"note": "synthetic"})
    return path, tensors


def _load(path: Path) -> dict[str, np.ndarray]:
    with open_base(path) as base:
        return {key: base.read(key) for key in base.tensors}


def _official_pipeline_conditioner(path: Path) -> dict[str, np.ndarray]:
    """What the official `load_conditioner_from_npz(ckpt, prefix="cond.")` reads: `np.load`
    of the DiT file itself, the three arrays as float32 (a KeyError if one is missing)."""
    z = np.load(path)
    return {
        name: z[f"cond.{name}"].astype(np.float32)
        for name in ("padding_embedding", "seconds_total_weight", "seconds_total_bias")
    }


def test_padding_embedding_maps_both_ways() -> None:
    assert official_to_mlx_base_key(PADDING) == "cond.padding_embedding"
    assert mlx_to_official_base_key("cond.padding_embedding", (768,)) == PADDING
    assert official_to_mlx_base_key(SECONDS_W) == "cond.seconds_total_weight"
    assert set(MLX_PIPELINE_CONDITIONER_KEYS) == {
        "cond.padding_embedding",
        "cond.seconds_total_weight",
        "cond.seconds_total_bias",
    }
    # Other prompt-conditioner tensors (the text encoder) still have no MLX spelling.
    assert official_to_mlx_base_key("conditioner.conditioners.prompt.model.weight") is None
    assert SECONDS_W.endswith(SECONDS_CONDITIONER.removeprefix("conditioners.") + ".weight")


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("shape", sorted(SHAPED))
@pytest.mark.parametrize("container", ["npz", "safetensors"])
def test_official_mlx_official_is_bit_exact_for_every_tensor(
    tmp_path: Path, shape: str, dtype: str, container: str
) -> None:
    if container == "npz" and dtype == "BF16":
        pytest.skip("numpy's .npz has no bfloat16")
    src, official = _official(tmp_path, shape, dtype)
    mlx_path = tmp_path / f"dit_test_f16.{container}"
    there = convert_base(src, mlx_path, to="mlx")
    assert there.dropped == [] and there.no_home == []
    back = tmp_path / "back.safetensors"
    again = convert_base(mlx_path, back, to="official")
    assert again.dropped == [] and again.tensors == len(official)
    got = _load(back)
    assert sorted(got) == sorted(official)  # no tensor lost or invented
    for key, want in official.items():
        assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
        assert got[key].tobytes() == want.tobytes(), key


@pytest.mark.parametrize("shape", sorted(SHAPED))
def test_npz_output_is_what_the_official_pipeline_loads(tmp_path: Path, shape: str) -> None:
    src, official = _official(tmp_path, shape, "F16")
    out = tmp_path / "dit_test_f16.npz"
    ledger = convert_base(src, out, to="mlx")
    assert ledger.notes == []  # nothing the pipeline would miss
    cond = _official_pipeline_conditioner(out)
    assert np.array_equal(cond["padding_embedding"], official[PADDING].astype(np.float32))
    assert np.array_equal(cond["seconds_total_weight"], official[SECONDS_W].astype(np.float32))
    assert np.array_equal(cond["seconds_total_bias"], official[SECONDS_B].astype(np.float32))
    # Its DiT loader (`mx.load`) sees the same arrays.
    dit = mx.load(str(out))
    assert set(MLX_PIPELINE_CONDITIONER_KEYS) <= set(dit)
    assert "transformer.rotary_pos_emb.inv_freq" in dit
    assert not any(key.startswith(("model.", "conditioner.")) for key in dit)


def test_safetensors_output_says_the_conditioner_needs_npz(tmp_path: Path) -> None:
    src, _ = _official(tmp_path, "medium", "F16")
    out = tmp_path / "dit.safetensors"
    ledger = convert_base(src, out, to="mlx")
    assert len(ledger.notes) == 1 and ".npz" in ledger.notes[0]
    assert any(line.startswith("note: ") and "np.load" in line for line in ledger.lines())
    with pytest.raises(ValueError):  # what the official conditioner loader would hit
        _official_pipeline_conditioner(out)
    assert set(MLX_PIPELINE_CONDITIONER_KEYS) <= set(mx.load(str(out)))  # still written


def test_missing_conditioner_arrays_are_named(tmp_path: Path) -> None:
    tensors = official_full_tensors(SHAPED["medium"], seed=1)
    del tensors[PADDING]
    src = tmp_path / "official.safetensors"
    write_safetensors(src, tensors)
    ledger = convert_base(src, tmp_path / "dit.npz", to="mlx")
    assert ledger.notes and "cond.padding_embedding" in ledger.notes[0]
    assert "seconds_total_weight in the output" not in ledger.notes[0]


def test_cli_json_reports_the_notes(tmp_path: Path) -> None:
    src, _ = _official(tmp_path, "medium", "F16")
    result = run_cli(
        "convert", str(src), "-o", str(tmp_path / "dit.safetensors"), "--to", "mlx", "--json"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["to"] == "mlx" and len(doc["notes"]) == 1 and "np.load" in doc["notes"][0]
