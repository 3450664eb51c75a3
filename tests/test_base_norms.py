"""The base norms the stack report takes, streamed tile by tile, against the whole-tensor ones.

`ops.merge.base_norms` reads each target's canonical rows where they lie (or tiles an
in-memory tensor) and sums squares in float64 with numba (`adapters.jit_norms`) or NumPy;
`ops.inspect.base_norms_of` of the whole float32 canonical weight is the definition. They
may differ only by the float64 summation order: within RTOL, checked for every weight of
tiny bases in each stored dtype (F16, BF16, F32; F64 upcast whole) and container
(safetensors official and MLX with its (k, in) Conv1d rows, npz uncompressed and compressed,
a diffusers folder with its reordered medium qkv row blocks, an sa3.cpp GGUF), with and
without numba, across tile boundaries; and a merge's stack report is the one the
whole-tensor norms give.
"""

from __future__ import annotations

import threading
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from fixtures.generate import DATA_DIR
from sa3ckpt import dtypes
from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.tiled_norms import row_col_norms
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, NpzStreamWriter, open_base
from sa3ckpt.io.safetensors import write_safetensors
from sa3ckpt.io.tensor_rows import ArrayRows
from sa3ckpt.layout import LAYOUTS, row_view
from sa3ckpt.ops.convert import convert_base
from sa3ckpt.ops.inspect import base_norms_of
from sa3ckpt.ops.merge import MergeOptions, merge_checkpoint
from sa3ckpt.ops.merge import driver as merge_driver
from sa3ckpt.ops.merge.base_norms import base_norms, target_norms
from sa3ckpt.ops.merge.target import canonical_w0
from sa3ckpt.strengths import AdapterArg
from sa3ckpt.synth import official_full_tensors
from sa3ckpt.targets.families import Family
from sa3ckpt.targets.topology import Topology

BASES = DATA_DIR / "bases"
ADAPTERS = DATA_DIR / "adapters"
RTOL = 1e-12  # float64 sums of up to a few hundred exact squares, in another order
CODES = {"F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64}

MEDIUM_64 = Family(
    "tiny-medium-64",
    "diffusers-shaped test family (differential: medium to_qkv row blocks reordered)",
    Topology(
        embed_dim=64, depth=2, differential=True, io_channels=8, cond_token_dim=12,
        timestep_features=8, seconds_features=8,
    ),
    ("tiny-medium-64",),
    test_only=True,
)  # fmt: skip


@pytest.fixture(params=[True, False], ids=["numba", "numpy"])
def jit(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both tile kernels: the compiled one where it runs, and NumPy's (`tiled.available()`
    false, as on an x86-64 CPU without F16C)."""
    if request.param and not tiled.available():
        pytest.skip("numba (or F16C) not available")
    if not request.param:
        monkeypatch.setattr(tiled, "_jit", lambda: None)
    assert tiled.available() is request.param
    return bool(request.param)


def _whole(base: BaseCheckpoint, key: str) -> dict[str, np.ndarray]:
    return base_norms_of(dtypes.to_float32(canonical_w0(base, key)))


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == {"rows", "cols"}
    for axis in ("rows", "cols"):
        assert got[axis].dtype == np.float64 and got[axis].shape == want[axis].shape
        np.testing.assert_allclose(got[axis], want[axis], rtol=RTOL, atol=0)


def _check_base(path: Path) -> BaseCheckpoint:
    """Every weight of the base: streamed norms (all at once, two workers) == whole-tensor."""
    base = open_base(str(path))
    keys = list(base.weight_keys().values())
    assert keys
    streamed = base_norms(base, keys)
    assert list(streamed) == keys
    for key in keys:
        _assert_close(streamed[key], _whole(base, key))
    return base


def _views(base: BaseCheckpoint) -> list:
    return [
        row_view(base.layout_of(base.tensors[k].shape, k), base.tensors[k].shape)
        for k in base.weight_keys().values()
    ]


@pytest.mark.parametrize("code", ["F16", "BF16", "F32"])
def test_tiles_against_the_whole_tensor_in_every_dtype(
    monkeypatch: pytest.MonkeyPatch, jit: bool, code: str
) -> None:
    """Several tiles and a short last one; values from subnormal to large, zero rows and
    columns, full fp32 mantissas."""
    fan = (500, 37)
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 96 * fan[1])
    assert tiled.tile_rows(fan[1]) == 96
    rng = np.random.default_rng(7)
    w = rng.standard_normal(fan) * np.exp(rng.uniform(-12, 6, fan))
    w[3] = 0
    w[:, 5] = 0
    w[10, :4] = 6e-8  # fp16 subnormal
    stored = w.astype(CODES[code])
    source = ArrayRows(row_view(LAYOUTS["linear"], fan), stored)
    got = row_col_norms(fan, code, source)
    _assert_close(got, base_norms_of(dtypes.to_float32(stored)))
    assert got["rows"][3] == 0 and got["cols"][5] == 0


def test_a_tile_kernel_takes_only_stored_codes() -> None:
    with pytest.raises(ValueError, match="F64"):
        row_col_norms((2, 2), "F64", lambda i0, i1, buf: buf)


@pytest.mark.parametrize("code", ["F16", "BF16", "F32", "F64"])
def test_official_safetensors_in_every_dtype(tmp_path: Path, jit: bool, code: str) -> None:
    """The official tiny-small base re-stored in each dtype (F32 with full mantissas)."""
    rng = np.random.default_rng(1)
    tensors = {
        k: (v.astype(np.float64) * (1 + 1e-3 * rng.standard_normal(v.shape))).astype(CODES[code])
        for k, v in load_file(str(BASES / "tiny-small.official.safetensors")).items()
    }
    path = tmp_path / f"base-{code}.safetensors"
    write_safetensors(path, tensors)
    base = _check_base(path)
    assert {base.tensors[k].dtype for k in base.weight_keys().values()} == {code}


def test_mlx_safetensors_with_k_in_conv_rows(jit: bool) -> None:
    base = _check_base(BASES / "tiny-small.mlx.safetensors")
    assert any(v.reshuffles for v in _views(base))  # Conv1d k=3 stored (out, k, in)


@pytest.mark.parametrize("compressed", [False, True], ids=["pread", "in-memory"])
def test_npz_members_read_in_place_or_whole(tmp_path: Path, jit: bool, compressed: bool) -> None:
    """Uncompressed members are read where they lie; compressed ones whole, then tiled."""
    path = tmp_path / "base.npz"
    tensors = load_file(str(BASES / "tiny-small.mlx.safetensors"))
    if compressed:
        np.savez_compressed(path, **tensors)
    else:
        with NpzStreamWriter(path) as writer:
            for key, value in tensors.items():
                writer.write(key, value)
    base = _check_base(path)
    located = [base.stored_bytes(k) is not None for k in base.weight_keys().values()]
    assert located == [not compressed] * len(located)


def test_diffusers_folder_with_reordered_qkv_rows(tmp_path: Path, jit: bool) -> None:
    from safetensors.numpy import save_file

    official = tmp_path / "official.safetensors"
    save_file(official_full_tensors(MEDIUM_64, seed=0), str(official))
    convert_base(official, tmp_path / "transformer", to="diffusers", max_shard_size=200_000)
    base = _check_base(tmp_path / "transformer")
    assert any(v.order is not None for v in _views(base))  # canonical rows from other blocks


def test_sa3cpp_gguf(jit: bool) -> None:
    _check_base(BASES / "tiny-small.sa3cpp.gguf")


def test_a_stopped_read_gives_up_between_tiles() -> None:
    base = open_base(str(BASES / "tiny-small.official.safetensors"))
    key = next(iter(base.weight_keys().values()))
    stop = threading.Event()
    stop.set()
    with pytest.raises(tiled.Cancelled):
        target_norms(base, key, stop)


def test_an_error_in_one_target_is_raised_after_the_others_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = open_base(str(BASES / "tiny-small.official.safetensors"))
    keys = list(base.weight_keys().values())
    broken = keys[len(keys) // 2]
    real = base.stored_bytes

    def stored_bytes(key: str) -> tuple[str, int] | None:
        if key == broken:
            return (str(BASES / "does-not-exist.safetensors"), 0)
        return real(key)

    monkeypatch.setattr(base, "stored_bytes", stored_bytes)
    with pytest.raises(FileNotFoundError):
        base_norms(base, keys)


@pytest.mark.parametrize("semantics", ["blend", "delta"])
def test_a_merge_reports_what_the_whole_tensor_norms_predict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, semantics: str
) -> None:
    """The driver's stack report from the streamed norms is the one `base_norms_of` gives;
    only the targets with a DoRA/BoRA adapter are read."""
    stack = [
        AdapterArg(str(ADAPTERS / "tiny-small" / f"{kind}.safetensors"), strength)
        for kind, strength in (("dora-rows", 1.7), ("bora", -0.5), ("lora", 0.5))
    ]
    base = str(BASES / "tiny-small.mlx.safetensors")
    options = MergeOptions(semantics=semantics)
    read: list[str] = []

    def recording(b: BaseCheckpoint, keys: list[str], workers: int) -> dict:
        read.extend(keys)
        return base_norms(b, keys, workers)

    monkeypatch.setattr(merge_driver, "base_norms", recording)
    streamed = merge_checkpoint(base, stack, str(tmp_path / "a.safetensors"), options)

    def whole(b: BaseCheckpoint, keys: list[str], workers: int) -> dict:
        return {key: _whole(b, key) for key in keys}

    monkeypatch.setattr(merge_driver, "base_norms", whole)
    reference = merge_checkpoint(base, stack, str(tmp_path / "b.safetensors"), options)
    assert streamed.stack is not None and reference.stack is not None
    assert streamed.stack.flips_predicted and streamed.stack.targets
    assert streamed.stack.to_json() == reference.stack.to_json()
    assert len(read) == len(streamed.stack.targets)
