"""The tiled merge kernel (`adapters.tiled`, numba conversions in `adapters.jit_casts`)
against the whole-tensor NumPy kernel it must reproduce and the float64 reference.

The tiles use the same float32 operations in the same order as `kernels`; only the BLAS
call on a block of rows may round the low-rank product differently on another BLAS, so
the bound asserted is one unit in the last place of the output type (and on this CI's
OpenBLAS every case here is bit-identical, which `test_merge_file_is_the_whole_kernels`
checks on whole files).
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from fixtures.generate import DATA_DIR
from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.kernels import NumpyAdapter, merge_to
from sa3ckpt.adapters.types import ADAPTER_TYPES
from sa3ckpt.io.safetensors import SafetensorsStreamWriter, open_safetensors
from sa3ckpt.io.writeback import start_writeback
from sa3ckpt.ops.merge import MergeOptions
from sa3ckpt.ops.merge.driver import AdapterArg, merge_checkpoint
from tests.helpers import TOLERANCE, random_params
from tests.reference_kernel import use_reference_kernel
from tests.reference_math import REFERENCES

pytestmark = pytest.mark.skipif(not tiled.available(), reason="numba (or F16C) not available")

NUMPY = {"F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32}


def _jit():
    from sa3ckpt.adapters import jit_casts

    return jit_casts


def _same_or_nan(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equal, except that NaN matches any NaN (payloads may be quieted)."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    nan = np.isnan(a32)
    return bool(
        np.array_equal(nan, np.isnan(b32))
        and np.array_equal(
            a.view(np.uint8).reshape(*a.shape, -1)[~nan],
            b.view(np.uint8).reshape(*b.shape, -1)[~nan],
        )
    )


def test_fp16_upcast_is_numpys_for_all_65536_values() -> None:
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    got = np.zeros((256, 256), np.float32)
    _jit().add_f16(got, bits)
    with np.errstate(invalid="ignore"):  # NaN inputs
        want = np.zeros((256, 256), np.float32) + bits.view(np.float16).astype(np.float32)
    assert _same_or_nan(got, want)


def test_bf16_upcast_is_ml_dtypes_for_all_65536_values() -> None:
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    got = np.zeros((256, 256), np.float32)
    _jit().add_bf16(got, bits)
    with np.errstate(invalid="ignore"):
        want = np.zeros((256, 256), np.float32) + bits.view(ml_dtypes.bfloat16).astype(np.float32)
    assert _same_or_nan(got, want)


def _sampled_floats() -> np.ndarray:
    """Every 4099th float32 bit pattern (all exponents, NaNs, infs, subnormals) plus random
    values around fp16's range and the rounding edges."""
    strided = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
    rng = np.random.default_rng(0)
    scaled = rng.standard_normal(200_000).astype(np.float32) * np.exp2(
        rng.integers(-30, 20, 200_000)
    ).astype(np.float32)
    edges = np.array(
        [65504, 65519.99, 65520, 1e9, np.inf, -np.inf, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 0, -0.0],
        np.float32,
    )
    values = np.concatenate([strided, scaled, edges])
    return values[: values.size // 64 * 64].reshape(64, -1)


@pytest.mark.parametrize("code", ["F16", "BF16", "F32"])
def test_output_rounding_is_numpys(code: str) -> None:
    values = _sampled_floats()
    rows, cols = np.ones(values.shape[0], np.float32), np.ones(values.shape[1], np.float32)
    out = np.empty(values.shape, np.float32 if code == "F32" else np.uint16)
    scale = {"F16": "scale_to_f16", "BF16": "scale_to_bf16", "F32": "scale_to_f32"}[code]
    finite = getattr(_jit(), scale)(values, rows, cols, out)
    with np.errstate(all="ignore"):
        want = values.astype(NUMPY[code])
    got = out.view(NUMPY[code])
    assert _same_or_nan(got, want)
    assert finite == bool(np.isfinite(want.astype(np.float32)).all()) is False


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    """Largest distance in units in the last place between two same-typed float arrays."""
    width = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
    ia, ib = a.view(width).astype(np.int64), b.view(width).astype(np.int64)
    # map sign-magnitude to a monotonic integer line
    top = np.int64(1) << (8 * a.dtype.itemsize - 1)
    ia = np.where(ia < 0, -(ia + top), ia)
    ib = np.where(ib < 0, -(ib + top), ib)
    return int(np.max(np.abs(ia - ib), initial=0))


def _tiled(plan, w0: np.ndarray, stored: str, out_code: str) -> tuple[np.ndarray, bool]:
    out = np.empty(w0.shape, NUMPY[out_code])
    bits = out if out_code == "F32" else out.view(np.uint16)
    view = w0 if stored == "F32" else w0.view(np.uint16)

    def sink(i0: int, rows: np.ndarray) -> None:
        bits[i0 : i0 + len(rows)] = rows

    finite = tiled.merge_rows(
        plan, w0.shape, stored, out_code, lambda i0, i1, _buf: view[i0:i1], sink
    )
    return out, finite


CASES = [
    (kind, semantics, strength)
    for kind in ADAPTER_TYPES
    for semantics, strength in (("runtime", 0.7), ("runtime", 1.0), ("blend", 1.0), ("delta", 0.5))
    if not (semantics == "delta" and ADAPTER_TYPES[kind].is_weight_decomposed)
]


@pytest.mark.parametrize(
    "codes", [("F16", "F16"), ("BF16", "BF16"), ("F32", "F32"), ("F16", "F32")]
)
@pytest.mark.parametrize(("kind", "semantics", "strength"), CASES)
def test_tiles_match_the_whole_tensor_kernel_and_the_reference(
    monkeypatch: pytest.MonkeyPatch, kind: str, semantics: str, strength: float, codes
) -> None:
    """Several tiles and a short last one (tile height 96 over 250 rows)."""
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 96 * 37)
    stored, out_code = codes
    fan_out, fan_in = 250, 37
    w0 = np.random.default_rng(11).standard_normal((fan_out, fan_in)).astype(NUMPY[stored])
    w64 = w0.astype(np.float32).astype(np.float64)
    p = random_params(kind, fan_out, fan_in, w64, 12)
    adapter = NumpyAdapter(
        ADAPTER_TYPES[kind], 1.5, {k: v.astype(np.float32) for k, v in p.items()}
    )
    plan = tiled.plan([(adapter, strength)], semantics)
    assert plan is not None
    got, finite = _tiled(plan, w0, stored, out_code)
    want, want_finite = merge_to(w0, [(adapter, strength)], semantics, out_code)
    assert finite and want_finite
    assert _ulps(got, want) <= 1
    ref = REFERENCES[semantics](w64, [(kind, p, 1.5, strength)])
    rounding = float(np.finfo(np.float16).eps) if out_code == "F16" else 0.0
    rounding = float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps) if out_code == "BF16" else rounding
    err = np.max(np.abs(got.astype(np.float64) - ref))
    assert err <= (TOLERANCE + rounding) * np.max(np.abs(ref))


def test_overflow_is_reported_not_certified() -> None:
    w0 = np.full((2, 3), 60000, np.float16)
    adapter = NumpyAdapter(
        ADAPTER_TYPES["lora"],
        1.0,
        {"lora_A": np.ones((1, 3), np.float32), "lora_B": np.full((2, 1), 9000, np.float32)},
    )
    plan = tiled.plan([(adapter, 1.0)], "runtime")
    out, finite = _tiled(plan, w0, "F16", "F16")
    assert not finite and np.isinf(out).all()
    out, finite = _tiled(plan, w0, "F16", "F32")
    assert finite and out[0, 0] == 69000


def test_cancelled_between_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 96 * 4)
    p = random_params("lora", 300, 4, np.ones((300, 4)), 1)
    adapter = NumpyAdapter(
        ADAPTER_TYPES["lora"], 1.0, {k: v.astype(np.float32) for k, v in p.items()}
    )
    plan = tiled.plan([(adapter, 1.0)], "runtime")
    stop = threading.Event()
    tiles: list[int] = []

    def sink(i0: int, rows: np.ndarray) -> None:
        tiles.append(i0)
        stop.set()

    w0 = np.zeros((300, 4), np.float16).view(np.uint16)
    with pytest.raises(tiled.Cancelled):
        tiled.merge_rows(plan, (300, 4), "F16", "F16", lambda a, b, _: w0[a:b], sink, stop)
    assert tiles == [0]


BASE = DATA_DIR / "bases" / "tiny-small.official.safetensors"
ADAPTERS = DATA_DIR / "adapters" / "tiny-small"


@pytest.mark.parametrize("kind", ["lora", "dora-rows", "dora-cols", "bora"])
@pytest.mark.parametrize("dtype", [None, "bf16", "fp32"])
def test_merge_file_is_the_whole_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, dtype: str | None
) -> None:
    """The tiled kernel and the whole-tensor reference write the same bytes."""
    adapter = str(ADAPTERS / f"{kind}.safetensors")
    fast, slow = tmp_path / "fast.safetensors", tmp_path / "slow.safetensors"
    merge_checkpoint(
        str(BASE), [AdapterArg(adapter, 0.8)], str(fast), options=MergeOptions(dtype=dtype)
    )
    calls = use_reference_kernel(monkeypatch)
    merge_checkpoint(
        str(BASE), [AdapterArg(adapter, 0.8)], str(slow), options=MergeOptions(dtype=dtype)
    )
    assert calls  # the reference ran
    with open_safetensors(fast) as a, open_safetensors(slow) as b:
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a.array(key).view(np.uint8), b.array(key).view(np.uint8)), key


def _specs():
    return [("a", "F32", (3, 4)), ("b", "F16", (5,)), ("empty", "F32", (0,)), ("c", "U8", (7,))]


def _arrays():
    rng = np.random.default_rng(1)
    return {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float16),
        "empty": np.zeros(0, np.float32),
        "c": np.arange(7, dtype=np.uint8),
    }


def test_positional_writes_in_any_order_equal_the_sequential_file(tmp_path: Path) -> None:
    arrays = _arrays()
    with SafetensorsStreamWriter(tmp_path / "seq.safetensors", _specs(), {"k": "v"}) as w:
        for name, _, _ in _specs():
            w.write(name, arrays[name])
    source = tmp_path / "source.bin"
    source.write_bytes(b"xx" + arrays["c"].tobytes())
    with SafetensorsStreamWriter(tmp_path / "pos.safetensors", _specs(), {"k": "v"}) as w:
        w.write_at("b", 0, arrays["b"])
        w.write_at("a", 16, arrays["a"][1:])  # rows 1-2 first, then row 0
        w.write_at("a", 0, arrays["a"][:1])
        w.write_at("empty", 0, arrays["empty"])
        fd = os.open(source, os.O_RDONLY)
        try:
            w.copy_from("c", fd, 2)
        finally:
            os.close(fd)
    assert (tmp_path / "pos.safetensors").read_bytes() == (
        tmp_path / "seq.safetensors"
    ).read_bytes()


def test_positional_writer_refuses_mixing_and_missing_tensors(tmp_path: Path) -> None:
    arrays = _arrays()
    out = tmp_path / "m.safetensors"
    with (
        pytest.raises(ValueError, match="cannot follow"),
        SafetensorsStreamWriter(out, _specs()) as w,
    ):
        w.write_at("b", 0, arrays["b"])
        w.write("a", arrays["a"])
    with pytest.raises(ValueError, match="outside"), SafetensorsStreamWriter(out, _specs()) as w:
        w.write_at("b", 4, arrays["b"])
    with (
        pytest.raises(ValueError, match="not written"),
        SafetensorsStreamWriter(out, _specs()) as w,
    ):
        w.write_at("a", 0, arrays["a"])
    assert list(tmp_path.iterdir()) == []


def test_start_writeback_is_best_effort(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 8192)
    fd = os.open(path, os.O_RDWR)
    try:
        start_writeback(fd, 0, 8192)
        start_writeback(fd, 0, 0)
    finally:
        os.close(fd)
    start_writeback(fd, 0, 4096)  # a closed descriptor: ignored, not raised
