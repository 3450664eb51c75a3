"""The dtype table: codes, sizes, inverse lookup, exact upcasts and round-to-nearest casts."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from sa3ckpt import dtypes

EXPECTED = {
    "BOOL": (np.bool_, 1, False),
    "U8": (np.uint8, 1, False),
    "I8": (np.int8, 1, False),
    "U16": (np.uint16, 2, False),
    "I16": (np.int16, 2, False),
    "U32": (np.uint32, 4, False),
    "I32": (np.int32, 4, False),
    "U64": (np.uint64, 8, False),
    "I64": (np.int64, 8, False),
    "F16": (np.float16, 2, True),
    "BF16": (ml_dtypes.bfloat16, 2, True),
    "F32": (np.float32, 4, True),
    "F64": (np.float64, 8, True),
    "F8_E4M3": (ml_dtypes.float8_e4m3fn, 1, True),
    "F8_E5M2": (ml_dtypes.float8_e5m2, 1, True),
}


def test_table_has_exactly_the_expected_codes() -> None:
    assert set(dtypes.DTYPES) == set(EXPECTED)


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_code_properties(code: str) -> None:
    np_type, size, floating = EXPECTED[code]
    assert dtypes.numpy_dtype(code) == np.dtype(np_type)
    assert dtypes.itemsize(code) == size
    assert dtypes.is_floating(code) is floating
    assert dtypes.code_for(np.dtype(np_type)) == code
    assert dtypes.code_for(np_type) == code
    assert dtypes.is_known(code)


def test_numpy_dtypes_are_little_endian() -> None:
    for code in dtypes.DTYPES:
        assert dtypes.numpy_dtype(code).byteorder in "<|="
        assert dtypes.numpy_dtype(code).newbyteorder("<") == dtypes.numpy_dtype(code)


@pytest.mark.parametrize("bad", ["F17", "f32", "", None, 3])
def test_unknown_code_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="unknown safetensors dtype"):
        dtypes.numpy_dtype(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        dtypes.itemsize(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        dtypes.is_floating(bad)  # type: ignore[arg-type]
    assert not dtypes.is_known(bad)


def test_code_for_ignores_byte_order() -> None:
    assert dtypes.code_for(np.dtype(">f4")) == "F32"
    assert dtypes.code_for(np.dtype(">i8")) == "I64"
    assert dtypes.code_for(np.dtype("=u2")) == "U16"


@pytest.mark.parametrize("bad", [np.complex64, np.dtype("U3"), object, "not-a-dtype"])
def test_code_for_unsupported(bad: object) -> None:
    with pytest.raises(ValueError):
        dtypes.code_for(bad)


@pytest.mark.parametrize(
    ("name", "code"), [("fp16", "F16"), ("fp32", "F32"), ("bf16", "BF16"), ("FP64", "F64")]
)
def test_code_from_name(name: str, code: str) -> None:
    assert dtypes.code_from_name(name) == code


@pytest.mark.parametrize("bad", ["F16", "float16", "int8", ""])
def test_code_from_name_rejects_other_names(bad: str) -> None:
    with pytest.raises(ValueError, match="choose from fp16"):
        dtypes.code_from_name(bad)


def test_bf16_to_float32_is_exact_for_every_bit_pattern() -> None:
    bits = np.arange(1 << 16, dtype=np.uint16)
    bf = bits.view(ml_dtypes.bfloat16)
    f32 = dtypes.to_float32(bf)
    assert f32.dtype == np.float32
    finite = np.isfinite(f32)
    # bf16 is the top half of float32: widening is a 16-bit shift.
    assert np.array_equal(
        f32.view(np.uint32)[finite], bits[finite].astype(np.uint32) << np.uint32(16)
    )
    assert np.array_equal(np.isnan(f32), np.isnan(dtypes.cast(bf, "F64")))


@pytest.mark.parametrize(
    "np_type", [np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
)
def test_narrow_floats_round_trip_through_float32(np_type: type) -> None:
    size = np.dtype(np_type).itemsize
    uint = {1: np.uint8, 2: np.uint16}[size]
    values = np.arange(1 << (8 * size), dtype=uint).view(np_type)
    back = dtypes.cast(dtypes.to_float32(values), dtypes.code_for(np_type))
    keep = ~np.isnan(values.astype(np.float32))
    assert np.array_equal(back.view(uint)[keep], values.view(uint)[keep])


def test_to_float32_returns_float32_unchanged_and_rejects_ints() -> None:
    a = np.arange(3, dtype=np.float32)
    assert dtypes.to_float32(a) is a
    assert dtypes.to_float32(np.float64(0.1)).dtype == np.float32
    with pytest.raises(ValueError, match="floating"):
        dtypes.to_float32(np.arange(3))
    with pytest.raises(ValueError, match="floating"):
        dtypes.to_float32(np.array([True]))


def _rne_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Reference float32 -> bf16 round-to-nearest-even on the bit patterns (finite only)."""
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def test_cast_to_bf16_rounds_to_nearest_even() -> None:
    one = np.float32(1.0)
    ulp = np.float32(2.0**-7)  # bf16 spacing at 1.0
    x = np.array([one + ulp / 2, one + 3 * ulp / 2, one + ulp / 4, one + 3 * ulp / 4], np.float32)
    out = dtypes.cast(x, "BF16").astype(np.float32)
    assert out.tolist() == [1.0, 1.0 + 2 * float(ulp), 1.0, 1.0 + float(ulp)]

    rng = np.random.default_rng(0)
    y = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-30, 30, 100_000)).astype(np.float32)
    assert np.array_equal(dtypes.cast(y, "BF16").view(np.uint16), _rne_bf16_bits(y))


def test_cast_between_float_codes() -> None:
    x = np.array([0.1, -2.5, 65504.0, 1e6], dtype=np.float64)
    f16 = dtypes.cast(x, "F16")
    assert f16.dtype == np.float16
    assert f16.tolist()[:3] == np.array([0.1, -2.5, 65504.0], np.float16).tolist()
    assert np.isinf(f16[3])
    assert dtypes.cast(x, "F32").dtype == np.float32
    assert dtypes.cast(x, "F8_E5M2").dtype == np.dtype(ml_dtypes.float8_e5m2)
    same = np.zeros(2, np.float16)
    assert dtypes.cast(same, "F16") is same


def test_cast_rejects_non_float() -> None:
    with pytest.raises(ValueError, match="floating"):
        dtypes.cast(np.arange(3), "F32")
    with pytest.raises(ValueError, match="non-floating"):
        dtypes.cast(np.zeros(3, np.float32), "I32")
    with pytest.raises(ValueError, match="unknown"):
        dtypes.cast(np.zeros(3, np.float32), "F12")
