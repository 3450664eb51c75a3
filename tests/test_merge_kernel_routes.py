"""Every merge route through the one tiled kernel writes the whole-tensor reference's bytes.

Routes: each base container (official safetensors; MLX safetensors and npz, whose Conv1d
rows are (k, in) and k = 3 in tiny-small; a sharded diffusers folder, whose medium to_qkv
row blocks are reordered), stacks of three mixed types under each semantics, -xs targets
with bases rebuilt from W0 and from a --bases file (whose W0 digest the tiles check), a
strength map with an exclusion, and a codec merge. The reference (`tests/reference_kernel`)
is the whole-tensor NumPy kernel run on the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.io.base_checkpoint import NpzStreamWriter
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.ops.convert import convert_base
from sa3ckpt.ops.library.bases import compute_bases_file
from sa3ckpt.ops.merge import MergeOptions, merge_checkpoint
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.synth import official_full_tensors, synth_adapter
from sa3ckpt.targets.families import Family
from sa3ckpt.targets.topology import Topology
from tests.reference_kernel import use_reference_kernel

BASES = DATA_DIR / "bases"
ADAPTERS = DATA_DIR / "adapters"


def _files(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return {path.name: path.read_bytes()}


def _both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base: Path, suffix: str, **kwargs
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    (tmp_path / "fast").mkdir()
    (tmp_path / "slow").mkdir()
    fast, slow = tmp_path / "fast" / f"out{suffix}", tmp_path / "slow" / f"out{suffix}"
    adapters = kwargs.pop("adapters")
    options = MergeOptions(**kwargs)
    ledger = merge_checkpoint(str(base), adapters, str(fast), options)
    with monkeypatch.context() as m:
        calls = use_reference_kernel(m)
        merge_checkpoint(str(base), adapters, str(slow), options)
    assert calls and ledger.merged
    return _files(fast), _files(slow)


def _stack(family: str, *members: tuple[str, float]) -> list[AdapterArg]:
    return [AdapterArg(str(ADAPTERS / family / f"{k}.safetensors"), s) for k, s in members]


@pytest.fixture(scope="module")
def npz_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.numpy import load_file

    path = tmp_path_factory.mktemp("npz") / "base.npz"
    with NpzStreamWriter(path) as writer:
        for key, value in load_file(str(BASES / "tiny-small.mlx.safetensors")).items():
            writer.write(key, value)
    return path


MEDIUM_64 = Family(
    "tiny-medium-64",
    "diffusers-shaped test family",
    Topology(
        embed_dim=64, depth=2, differential=True, io_channels=8, cond_token_dim=12,
        timestep_features=8, seconds_features=8,
    ),
    ("tiny-medium-64",),
    test_only=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def folder_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[AdapterArg]]:
    """A sharded diffusers folder of a differential (medium-shaped) DiT, and a stack for it."""
    from safetensors.numpy import save_file

    work = tmp_path_factory.mktemp("folder")
    official = work / "official.safetensors"
    save_file(official_full_tensors(MEDIUM_64, seed=0), str(official))
    convert_base(official, work / "transformer", to="diffusers", max_shard_size=200_000)
    stack = []
    for i, (kind, strength) in enumerate((("dora-cols", 0.5), ("dora-rows", 0.7), ("lora", 0.5))):
        a = synth_adapter(MEDIUM_64, kind, rank=4, alpha=4, seed=i)
        path = work / f"{kind}.safetensors"
        write_safetensors(path, a.file_tensors(), a.metadata())
        stack.append(AdapterArg(str(path), strength))
    return work / "transformer", stack


STACK = (("dora-rows-xs", 0.7), ("bora", 0.5), ("lora", 1.7))


@pytest.mark.parametrize("semantics", ["runtime", "blend", "delta"])
@pytest.mark.parametrize("container", ["official", "mlx", "npz"])
def test_small_bases_every_semantics(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    npz_base: Path,
    container: str,
    semantics: str,
) -> None:
    base = {
        "official": BASES / "tiny-small.official.safetensors",
        "mlx": BASES / "tiny-small.mlx.safetensors",
        "npz": npz_base,
    }[container]
    suffix = ".npz" if container == "npz" else ".safetensors"
    fast, slow = _both(
        tmp_path, monkeypatch, base, suffix, adapters=_stack("tiny-small", *STACK),
        semantics=semantics,
    )  # fmt: skip
    assert fast == slow


@pytest.mark.parametrize("semantics", ["runtime", "blend"])
def test_diffusers_folder_with_reordered_qkv_rows(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    folder_base: tuple[Path, list[AdapterArg]],
    semantics: str,
) -> None:
    base, stack = folder_base
    fast, slow = _both(tmp_path, monkeypatch, base, "", adapters=stack, semantics=semantics)
    assert len(fast) > 3 and fast == slow  # several shards, config, index


def test_xs_with_a_bases_file_and_an_fp32_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = BASES / "tiny-small.official.safetensors"
    bases = tmp_path / "bases.safetensors"
    compute_bases_file(str(base), str(bases), rank=4)
    stack = _stack("tiny-small", ("lora-xs", 0.5), ("bora-xs", 1.7), ("dora-cols-xs", 0.5))
    fast, slow = _both(
        tmp_path, monkeypatch, base, ".safetensors", adapters=stack, bases_path=str(bases),
        dtype="fp32",
    )  # fmt: skip
    assert fast == slow
    ledger = merge_checkpoint(
        str(base), stack, str(tmp_path / "again.safetensors"), MergeOptions(bases_path=str(bases))
    )
    assert ledger.bases_sources == {"bases file": 3 * len(ledger.merged)}
    assert ledger.bases_other_w0 == []  # the tiles' digest of W0 is the file's


@pytest.mark.parametrize("digest", ["xxh3", "sha256 only (an older file)"])
def test_a_bases_file_of_another_w0_is_reported(tmp_path: Path, digest: str) -> None:
    bases = tmp_path / "bases.safetensors"
    compute_bases_file(str(BASES / "tiny-small.mlx.safetensors"), str(bases), rank=4)
    if digest != "xxh3":  # drop the fast digest: the tiles hash W0 by SHA-256 instead
        from sa3ckpt.adapters.xs_bases import load_bases, save_bases

        older = load_bases(bases)
        older.base_xxh3.clear()
        save_bases(older, bases)
    other = tmp_path / "other.safetensors"
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(BASES / "tiny-small.official.safetensors"))
    first = next(k for k, v in tensors.items() if v.ndim == 2 and "to_qkv" in k)
    tensors[first] = (tensors[first].astype(np.float32) * 1.01).astype(tensors[first].dtype)
    save_file(tensors, str(other), {"format": "pt"})
    ledger = merge_checkpoint(
        str(other),
        _stack("tiny-small", ("lora-xs", 1.0)),
        str(tmp_path / "out.safetensors"),
        MergeOptions(bases_path=str(bases)),
    )
    assert [t for t in ledger.bases_other_w0 if "layers.0.self_attn.to_qkv" in t]
    assert len(ledger.bases_other_w0) == 1


def test_strength_map_and_exclude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = _stack("tiny-medium", ("dora-rows", 0.7), ("lora", 0.5))
    fast, slow = _both(
        tmp_path, monkeypatch, BASES / "tiny-medium.official.safetensors", ".safetensors",
        adapters=stack, strength_map=("layers.0.=0.5,cross_attn=1.7",),
        exclude=("2=layers.1.ff",), dtype="bf16",
    )  # fmt: skip
    assert fast == slow
