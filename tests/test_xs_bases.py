"""XS bases: the official sign rule, fp32 SVD, digests, and the strict bases file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sa3ckpt.adapters.xs_bases import (
    FORMAT,
    XsBases,
    canonical_svd,
    canonicalize_signs,
    compute_bases,
    load_bases,
    save_bases,
    svd_bases,
    weight_sha256,
)
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.safetensors import open_safetensors, write_safetensors
from sa3ckpt.synth import synth_base
from sa3ckpt.targets import FAMILIES


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random orthogonal matrix (QR of a Gaussian, with R's diagonal signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _separated(rng: np.random.Generator, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An (m, n) float64 matrix with singular values 10, 9, ..., well apart, and those values."""
    k = min(m, n)
    s = 10.0 - np.arange(k) * (9.0 / k)
    w = _orthogonal(rng, m)[:, :k] @ np.diag(s) @ _orthogonal(rng, n)[:, :k].T
    return w, s


# --------------------------------------------------------------------------- sign rule


def test_sign_rule_flips_columns_whose_largest_entry_is_negative() -> None:
    u = np.array([[0.1, -0.9], [-0.8, 0.2], [0.3, 0.1]], dtype=np.float32)
    vh = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    cu, cvh = canonicalize_signs(u, vh)
    # column 0: largest |.| is -0.8 -> flip; column 1: -0.9 -> flip
    np.testing.assert_array_equal(cu, -u)
    np.testing.assert_array_equal(cvh, -vh)
    assert cu.dtype == np.float32 and cvh.dtype == np.float32


def test_sign_rule_keeps_columns_whose_largest_entry_is_positive() -> None:
    u = np.array([[0.1, 0.9], [-0.8, 0.2], [0.85, 0.1]])
    vh = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    cu, cvh = canonicalize_signs(u, vh)
    np.testing.assert_array_equal(cu, u)
    np.testing.assert_array_equal(cvh, vh)


def test_sign_rule_first_index_wins_on_ties() -> None:
    # column 0: |0.5| ties at rows 0 (+) and 2 (-): row 0 wins, keep.
    # column 1: |0.5| ties at rows 1 (-) and 2 (+): row 1 wins, flip.
    u = np.array([[0.5, 0.1], [0.1, -0.5], [-0.5, 0.5]])
    vh = np.array([[1.0, -1.0], [2.0, -2.0]])
    cu, cvh = canonicalize_signs(u, vh)
    np.testing.assert_array_equal(cu[:, 0], u[:, 0])
    np.testing.assert_array_equal(cu[:, 1], -u[:, 1])
    np.testing.assert_array_equal(cvh[0], vh[0])
    np.testing.assert_array_equal(cvh[1], -vh[1])


def test_sign_rule_zero_column_counts_as_positive() -> None:
    u = np.array([[0.0, -1.0], [0.0, 0.0]])
    vh = np.array([[5.0, -6.0], [7.0, 8.0]])
    cu, cvh = canonicalize_signs(u, vh)
    np.testing.assert_array_equal(cu[:, 0], [0.0, 0.0])
    assert not np.signbit(cu[:, 0]).any()  # not -0.0 either: the sign was +1
    np.testing.assert_array_equal(cvh[0], vh[0])  # zero column: +1, untouched
    np.testing.assert_array_equal(cu[:, 1], [1.0, -0.0])
    np.testing.assert_array_equal(cvh[1], -vh[1])


def test_sign_rule_matches_a_literal_reading_of_the_spec() -> None:
    rng = np.random.default_rng(3)
    u = rng.standard_normal((9, 5)).astype(np.float32)
    vh = rng.standard_normal((5, 7)).astype(np.float32)
    u[:, 2] = 0.0
    expected_u, expected_vh = u.copy(), vh.copy()
    for j in range(u.shape[1]):
        i = int(np.argmax(np.abs(u[:, j])))
        s = np.sign(u[i, j]) or 1.0
        expected_u[:, j] *= s
        expected_vh[j] *= s
    cu, cvh = canonicalize_signs(u, vh)
    np.testing.assert_array_equal(cu, expected_u)
    np.testing.assert_array_equal(cvh, expected_vh)


@pytest.mark.parametrize("seed", range(5))
def test_sign_rule_is_invariant_to_sign_flips(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((11, 6)).astype(np.float32)
    u, _, vh = np.linalg.svd(w, full_matrices=False)
    ref_u, ref_vh = canonicalize_signs(u, vh)
    for _ in range(4):
        d = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=u.shape[1])
        cu, cvh = canonicalize_signs(u * d, d[:, None] * vh)
        np.testing.assert_array_equal(cu, ref_u)
        np.testing.assert_array_equal(cvh, ref_vh)


def test_sign_rule_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        canonicalize_signs(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="do not fit"):
        canonicalize_signs(np.zeros(3), np.zeros((3, 3)))


# --------------------------------------------------------------------------- SVD bases


def test_svd_bases_follow_the_official_recipe_exactly() -> None:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((20, 8))
    u, _, vh = np.linalg.svd(w.astype(np.float32), full_matrices=False)
    u, vh = canonicalize_signs(u, vh)
    ur, vr = svd_bases(w, 5)
    np.testing.assert_array_equal(ur, u[:, :5])
    np.testing.assert_array_equal(vr, vh[:5].T)
    assert ur.dtype == np.float32 and vr.dtype == np.float32
    assert ur.flags.c_contiguous and vr.flags.c_contiguous


@pytest.mark.parametrize("low", [np.float16, ml_dtypes.bfloat16])
def test_svd_bases_same_for_low_precision_and_fp32_of_same_values(low: type) -> None:
    rng = np.random.default_rng(11)
    w_low = rng.standard_normal((16, 12)).astype(low)
    w32 = w_low.astype(np.float32)
    for a, b in zip(svd_bases(w_low, 6), svd_bases(w32, 6), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(40, 7), (7, 40), (13, 13)])
def test_canonical_svd_reconstructs_and_is_orthonormal(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal(shape).astype(np.float32)
    u, s, vh = canonical_svd(w)
    k = min(shape)
    assert u.shape == (shape[0], k) and s.shape == (k,) and vh.shape == (k, shape[1])
    assert u.dtype == s.dtype == vh.dtype == np.float32
    recon = (u.astype(np.float64) * s) @ vh.astype(np.float64)
    assert np.abs(recon - w).max() <= 1e-5 * np.abs(w).max() * k
    r = max(1, k // 2)
    ur, vr = svd_bases(w, r)
    assert ur.shape == (shape[0], r) and vr.shape == (shape[1], r)
    np.testing.assert_allclose(ur.T.astype(np.float64) @ ur, np.eye(r), atol=1e-5)
    np.testing.assert_allclose(vr.T.astype(np.float64) @ vr, np.eye(r), atol=1e-5)


@pytest.mark.parametrize(("shape", "seed"), [((30, 9), 0), ((9, 30), 1), ((24, 24), 2)])
def test_svd_bases_agree_with_float64_svd(shape: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, s_true = _separated(rng, *shape)
    u64, s64, vh64 = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(s64, s_true, rtol=1e-12)
    u64, vh64 = canonicalize_signs(u64, vh64)
    r = min(shape)
    ur, vr = svd_bases(w, r)
    np.testing.assert_allclose(ur, u64, atol=1e-4)
    np.testing.assert_allclose(vr, vh64.T, atol=1e-4)
    _, s32, _ = canonical_svd(w)
    np.testing.assert_allclose(s32, s_true, rtol=1e-5)


@pytest.mark.parametrize("rank", [0, -1, 8, 100])
def test_svd_bases_rejects_out_of_range_rank(rank: int) -> None:
    w = np.ones((12, 7), dtype=np.float32)
    with pytest.raises(ValueError, match=re.escape("need 1 <= rank <= 7")):
        svd_bases(w, rank)


@pytest.mark.parametrize("rank", [2.0, True, "3", None])
def test_svd_bases_rejects_non_integer_rank(rank: object) -> None:
    with pytest.raises(ValueError, match="rank must be an integer"):
        svd_bases(np.ones((4, 4), dtype=np.float32), rank)  # type: ignore[arg-type]


def test_svd_bases_accepts_full_rank_and_numpy_integer_rank() -> None:
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    ur, vr = svd_bases(w, np.int64(4))
    assert ur.shape == (6, 4) and vr.shape == (4, 4)


def test_svd_bases_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="2-D"):
        svd_bases(np.ones((2, 3, 4), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="floating"):
        svd_bases(np.ones((3, 3), dtype=np.int32), 1)
    bad = np.ones((3, 3), dtype=np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        svd_bases(bad, 1)


# --------------------------------------------------------------------------- digests


def test_weight_sha256_separates_dtype_shape_and_values() -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = weight_sha256(w)
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert weight_sha256(w.copy()) == base
    assert weight_sha256(w.astype(np.float16)) != base
    assert weight_sha256(w.reshape(4, 3)) != base
    changed = w.copy()
    changed[2, 3] = np.nextafter(changed[2, 3], np.float32(100))
    assert weight_sha256(changed) != base


def test_weight_sha256_ignores_memory_layout_and_byte_order() -> None:
    w = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    base = weight_sha256(w)
    assert weight_sha256(np.asfortranarray(w)) == base
    assert weight_sha256(w.astype(">f4")) == base
    assert weight_sha256(w.T.copy().T) == base


# --------------------------------------------------------------------------- file round trip


@pytest.fixture
def tiny_weights() -> dict[str, np.ndarray]:
    fam = FAMILIES["tiny-small"]
    base = synth_base(fam, seed=0)
    return {t.name: base.weight_2d(t).astype(np.float16) for t in fam.targets}


def test_compute_save_load_round_trip(tmp_path: Path, tiny_weights: dict[str, np.ndarray]) -> None:
    fam = FAMILIES["tiny-small"]
    bases = compute_bases(tiny_weights, 3, "synthetic tiny-small seed 0 (fp16)")
    assert bases.targets() == [t.name for t in fam.targets]
    for target in fam.targets:
        got = bases.get(target.name)
        assert got is not None
        u, v = got
        assert u.shape == (target.shape[0], 3) and v.shape == (target.shape[1], 3)
        assert bases.base_dtype[target.name] == "F16"
    assert bases.get("model.no.such.layer") is None

    path = tmp_path / "bases.safetensors"
    save_bases(bases, path)
    with open_safetensors(path) as f:
        meta = f.metadata
        keys = f.keys()
    assert meta["format"] == FORMAT and meta["format_version"] == "1"
    assert meta["rank"] == "3"
    assert json.loads(meta["base_sha256"]) == bases.base_sha256
    assert json.loads(meta["base_xxh3"]) == bases.base_xxh3
    assert set(bases.base_xxh3) == set(bases.base_sha256)
    assert len(keys) == 2 * len(fam.targets)
    assert keys[:2] == [f"{fam.targets[0].name}.U", f"{fam.targets[0].name}.V"]

    loaded = load_bases(path)
    assert loaded.rank == 3
    assert loaded.source_base == "synthetic tiny-small seed 0 (fp16)"
    assert loaded.targets() == bases.targets()
    assert loaded.base_sha256 == bases.base_sha256
    assert loaded.base_xxh3 == bases.base_xxh3
    assert loaded.base_dtype == bases.base_dtype
    for target in bases.targets():
        for a, b in zip(loaded.bases[target], bases.bases[target], strict=True):
            assert a.dtype == np.float32
            np.testing.assert_array_equal(a, b)

    name = fam.targets[5].name
    w = tiny_weights[name]
    assert loaded.matches(name, w)
    assert not loaded.matches(name, w.astype(np.float32))  # same values, other base file
    modified = w.copy()
    modified[0, 0] = -modified[0, 0] if modified[0, 0] != 0 else np.float16(1)
    assert not loaded.matches(name, modified)
    assert not loaded.matches("model.no.such.layer", w)


def test_compute_bases_refuses_instead_of_skipping(tiny_weights: dict[str, np.ndarray]) -> None:
    # project_in (12, 8) allows rank 7, the conditioner Linear (10, 6) does not: the call
    # fails naming it rather than leaving it out.
    subset = {name: tiny_weights[name] for name in (_T1, _T2)}
    with pytest.raises(ValueError, match=rf"^{re.escape(_T2)}: rank 7 .*<= 6"):
        compute_bases(subset, 7, "x")
    with pytest.raises(ValueError, match=rf"^{re.escape(_T1)}: expected a 2-D"):
        compute_bases({_T1: np.zeros((2, 3, 4), dtype=np.float32)}, 1, "x")
    with pytest.raises(ValueError, match=rf"^{re.escape(_T1)}: .*NaN"):
        compute_bases({_T1: np.full((3, 3), np.inf, dtype=np.float32)}, 1, "x")
    with pytest.raises(ValueError, match="no weights"):
        compute_bases({}, 2, "x")
    with pytest.raises(ValueError, match="positive integer"):
        compute_bases(tiny_weights, 0, "x")


def test_save_bases_refuses_inconsistent_bases(tmp_path: Path) -> None:
    u = np.zeros((4, 2), dtype=np.float32)
    good = XsBases(2, "x", {"t": (u, u)}, {"t": "0" * 64}, {"t": "F32"})
    save_bases(good, tmp_path / "ok.safetensors")
    bad_dtype = XsBases(2, "x", {"t": (u, u.astype(np.float64))}, {"t": "0" * 64}, {"t": "F32"})
    with pytest.raises(ValueError, match="float32"):
        save_bases(bad_dtype, tmp_path / "a.safetensors")
    no_digest = XsBases(2, "x", {"t": (u, u)}, {}, {"t": "F32"})
    with pytest.raises(ValueError, match="base_sha256"):
        save_bases(no_digest, tmp_path / "b.safetensors")
    wrong_rank = XsBases(3, "x", {"t": (u, u)}, {"t": "0" * 64}, {"t": "F32"})
    with pytest.raises(ValueError, match="rank 3"):
        save_bases(wrong_rank, tmp_path / "c.safetensors")
    assert not (tmp_path / "a.safetensors").exists()


# --------------------------------------------------------------------------- malformed files

_T1 = "model.transformer.project_in"
_T2 = "conditioners.seconds_total.embedder.embedding.1"
Parts = tuple[dict[str, np.ndarray], dict[str, str]]


def _valid_parts() -> Parts:
    rng = np.random.default_rng(0)
    weights = {_T1: rng.standard_normal((12, 8)), _T2: rng.standard_normal((10, 6))}
    bases = compute_bases(weights, 2, "test")
    tensors: dict[str, np.ndarray] = {}
    for target, (u, v) in bases.bases.items():
        tensors[f"{target}.U"] = u
        tensors[f"{target}.V"] = v
    metadata = {
        "format": FORMAT,
        "format_version": "1",
        "rank": "2",
        "source_base": "test",
        "base_sha256": json.dumps(bases.base_sha256),
        "base_dtype": json.dumps(bases.base_dtype),
    }
    return tensors, metadata


def _drop_meta(key: str) -> Callable[[Parts], None]:
    def edit(parts: Parts) -> None:
        del parts[1][key]

    return edit


def _set_meta(key: str, value: str) -> Callable[[Parts], None]:
    def edit(parts: Parts) -> None:
        parts[1][key] = value

    return edit


def _drop_tensor(name: str) -> Callable[[Parts], None]:
    def edit(parts: Parts) -> None:
        del parts[0][name]

    return edit


def _set_tensor(name: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[Parts], None]:
    def edit(parts: Parts) -> None:
        parts[0][name] = value(parts[0].get(name, np.zeros((12, 2), dtype=np.float32)))

    return edit


def _drop_json_entry(key: str, target: str) -> Callable[[Parts], None]:
    def edit(parts: Parts) -> None:
        record = json.loads(parts[1][key])
        del record[target]
        parts[1][key] = json.dumps(record)

    return edit


def _add_json_entry(key: str, target: str, value: str) -> Callable[[Parts], None]:
    def edit(parts: Parts) -> None:
        record = json.loads(parts[1][key])
        record[target] = value
        parts[1][key] = json.dumps(record)

    return edit


def _no_tensors(parts: Parts) -> None:
    parts[0].clear()
    parts[1]["base_sha256"] = "{}"
    parts[1]["base_dtype"] = "{}"


def _nan(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[0, 0] = np.nan
    return out


MALFORMED: list[tuple[str, Callable[[Parts], None], str]] = [
    ("missing format", _drop_meta("format"), "missing metadata 'format'"),
    ("wrong format", _set_meta("format", "lora"), "metadata format is 'lora'"),
    ("missing version", _drop_meta("format_version"), "missing metadata 'format_version'"),
    ("future version", _set_meta("format_version", "2"), "unsupported format_version '2'"),
    ("missing rank", _drop_meta("rank"), "missing metadata 'rank'"),
    ("bad rank", _set_meta("rank", "two"), "metadata rank 'two' is not a positive integer"),
    ("zero rank", _set_meta("rank", "0"), "metadata rank '0' is not a positive integer"),
    ("missing source", _drop_meta("source_base"), "missing metadata 'source_base'"),
    ("missing sha", _drop_meta("base_sha256"), "missing metadata 'base_sha256'"),
    ("sha not json", _set_meta("base_sha256", "{oops"), "'base_sha256' is not valid JSON"),
    ("sha not object", _set_meta("base_sha256", "[]"), "'base_sha256' must be a JSON object"),
    (
        "sha value not str",
        _set_meta("base_sha256", json.dumps({_T1: 1})),
        f"'base_sha256': value for '{_T1}' is not a string",
    ),
    (
        "sha duplicate key",
        _set_meta("base_sha256", '{"a": "x", "a": "y"}'),
        "duplicate key 'a'",
    ),
    (
        "sha not hex",
        _add_json_entry("base_sha256", _T1, "XYZ"),
        f"base_sha256 for '{_T1}' is not 64 lowercase hex digits",
    ),
    ("dtype not json", _set_meta("base_dtype", ""), "'base_dtype' is not valid JSON"),
    (
        "dtype not floating",
        _add_json_entry("base_dtype", _T1, "I32"),
        f"base_dtype for '{_T1}' is 'I32'",
    ),
    ("U without V", _drop_tensor(f"{_T1}.V"), f"target '{_T1}' has U but no V"),
    ("V without U", _drop_tensor(f"{_T2}.U"), f"target '{_T2}' has V but no U"),
    (
        "rank mismatch",
        _set_tensor(f"{_T1}.U", lambda a: np.zeros((12, 3), dtype=np.float32)),
        f"tensor '{_T1}.U' has shape [12, 3], inconsistent with rank 2",
    ),
    (
        "too few rows",
        _set_tensor(f"{_T2}.V", lambda a: np.zeros((1, 2), dtype=np.float32)),
        f"tensor '{_T2}.V' has shape [1, 2], inconsistent with rank 2",
    ),
    (
        "not 2-D",
        _set_tensor(f"{_T1}.V", lambda a: a.reshape(-1)),
        f"tensor '{_T1}.V' has shape [16], inconsistent with rank 2",
    ),
    (
        "fp16 tensor",
        _set_tensor(f"{_T1}.U", lambda a: a.astype(np.float16)),
        f"tensor '{_T1}.U' is F16, expected F32",
    ),
    (
        "fp64 tensor",
        _set_tensor(f"{_T2}.V", lambda a: a.astype(np.float64)),
        f"tensor '{_T2}.V' is F64, expected F32",
    ),
    ("nan tensor", _set_tensor(f"{_T1}.U", _nan), f"tensor '{_T1}.U' contains NaN or inf"),
    (
        "unexpected tensor",
        _set_tensor(f"{_T1}.M", lambda a: a),
        f"unexpected tensor '{_T1}.M'",
    ),
    ("bare U", _set_tensor("U", lambda a: a), "unexpected tensor 'U'"),
    (
        "digest missing",
        _drop_json_entry("base_sha256", _T2),
        f"base_sha256 has no entry for target '{_T2}'",
    ),
    (
        "dtype missing",
        _drop_json_entry("base_dtype", _T1),
        f"base_dtype has no entry for target '{_T1}'",
    ),
    (
        "digest for absent target",
        _add_json_entry("base_sha256", "model.other", "0" * 64),
        "base_sha256 names target 'model.other', which has no bases",
    ),
    ("no tensors", _no_tensors, "no bases tensors in file"),
]


def test_valid_parts_load(tmp_path: Path) -> None:
    tensors, metadata = _valid_parts()
    path = tmp_path / "ok.safetensors"
    write_safetensors(path, tensors, metadata)
    assert load_bases(path).targets() == [_T1, _T2]


@pytest.mark.parametrize(("edit", "cause"), [pytest.param(e, c, id=i) for i, e, c in MALFORMED])
def test_malformed_bases_file(tmp_path: Path, edit: Callable[[Parts], None], cause: str) -> None:
    parts = _valid_parts()
    edit(parts)
    path = tmp_path / "bad.safetensors"
    write_safetensors(path, parts[0], parts[1])
    with pytest.raises(MalformedFileError) as info:
        load_bases(path)
    assert info.value.path == str(path)
    assert cause in info.value.cause
    assert "\n" not in info.value.cause


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(MalformedFileError):
        load_bases(path)
    with pytest.raises(MalformedFileError):
        load_bases(tmp_path / "missing.safetensors")


def test_the_fast_w0_digest_is_the_sha256_bytes_by_xxh3(
    tiny_weights: dict[str, np.ndarray],
) -> None:
    """base_xxh3 digests exactly what base_sha256 does (tag, dtype code, shape, C-order
    bytes), by XXH3-128; a different dtype or shape or value gives another digest."""
    import xxhash

    from sa3ckpt.adapters.xs_bases import weight_xxh3

    w = next(iter(tiny_weights.values()))
    want = xxhash.xxh3_128()
    want.update(b"sa3ckpt-weight-xxh3-128-v1\0F16\0")
    want.update(json.dumps(list(w.shape)).encode() + b"\0")
    want.update(np.ascontiguousarray(w).tobytes())
    assert weight_xxh3(w) == want.hexdigest()
    assert weight_xxh3(np.asfortranarray(w)) == weight_xxh3(w)
    assert weight_xxh3(w.astype(np.float32)) != weight_xxh3(w)
    assert weight_xxh3(w.reshape(w.shape[1], w.shape[0])) != weight_xxh3(w)
    bumped = w.copy()
    bumped.flat[0] = np.float16(float(bumped.flat[0]) + 1.0)
    assert weight_xxh3(bumped) != weight_xxh3(w)


def test_a_file_without_the_fast_digest_is_checked_by_sha256(
    tmp_path: Path, tiny_weights: dict[str, np.ndarray]
) -> None:
    """Files written before base_xxh3 existed load, and `matches` falls back to SHA-256."""
    bases = compute_bases(tiny_weights, 3, "old")
    bases.base_xxh3.clear()
    path = tmp_path / "old.safetensors"
    save_bases(bases, path)
    with open_safetensors(path) as f:
        assert "base_xxh3" not in f.metadata
    loaded = load_bases(path)
    assert loaded.base_xxh3 == {}
    target, w = next(iter(tiny_weights.items()))
    assert loaded.w0_digest(target) == ("sha256", loaded.base_sha256[target])
    assert loaded.matches(target, w)
    assert not loaded.matches(target, (w.astype(np.float32) * 1.01).astype(w.dtype))


@pytest.mark.parametrize(
    ("value", "why"),
    [("zz", "32 lowercase hex"), ('{"model.x": "ab"}', "32 lowercase hex"), ("[1]", "JSON object")],
)
def test_a_malformed_fast_digest_is_refused(
    tmp_path: Path, tiny_weights: dict[str, np.ndarray], value: str, why: str
) -> None:
    bases = compute_bases(tiny_weights, 3, "x")
    path = tmp_path / "b.safetensors"
    save_bases(bases, path)
    tensors = load_file(str(path))
    with open_safetensors(path) as f:
        meta = dict(f.metadata)
    if value.startswith("{"):
        target = next(iter(bases.base_xxh3))
        meta["base_xxh3"] = json.dumps({**bases.base_xxh3, target: "ab"})
    else:
        meta["base_xxh3"] = value
    save_file(tensors, str(path), meta)
    with pytest.raises(MalformedFileError, match="base_xxh3"):
        load_bases(path)
