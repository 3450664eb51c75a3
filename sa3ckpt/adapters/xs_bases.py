"""LoRA-XS bases: rebuild the frozen U_r / V_r of -xs adapters, and keep them in a file.

An -xs adapter stores only the small ``M_xs`` (rank, rank); its effect ``U_r @ M @ V_r.T``
needs the truncated singular vectors of the base weight it was trained on. The official saver
does not store them, so they must be rebuilt exactly as the official code builds them:

1. the 2-D view W0 (fan_out, fan_in) converted to float32;
2. ``U, S, Vh = svd(W0, full_matrices=False)``;
3. a deterministic sign per singular pair: for column j of U take ``i* = argmax_i |U[i, j]|``
   (first index on ties), ``s_j = sign(U[i*, j])`` with 0 -> +1, then ``U <- U * s`` and
   ``Vh <- s[:, None] * Vh`` (the product U S Vh is unchanged);
4. ``U_r = U[:, :r]``, ``V_r = Vh[:r].T``.

Why numpy and not MLX: the official code runs the SVD in fp32 (torch / LAPACK gesdd), and
``numpy.linalg.svd`` on a float32 array calls LAPACK's single-precision gesdd as well, so the
arithmetic matches. ``mlx.linalg.svd`` has no thin mode and always returns full matrices: for
a 12288x1536 layer that is a 12288x12288 U, about 600 MB, to keep 1536 columns of it.

Why a bases file: singular vectors are only reproducible to fp32 rounding across LAPACK builds
and depend on which W0 they came from (base vs ARC, fp16 vs fp32 checkpoint). Computing them
once and saving them, together with a digest of every W0 used, lets later steps use identical
bases and refuse a base they were not made from. The file is safetensors with our own
metadata (see `save_bases`); nothing official reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from sa3ckpt import __version__, dtypes
from sa3ckpt.adapters.types import BASIS_PARAMS
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.atomic import PathLike
from sa3ckpt.io.safetensors import object_and_duplicate, open_safetensors, write_safetensors
from sa3ckpt.names.adapter_keys import format_xs_bases_key, parse_xs_bases_key

FORMAT = "sa3ckpt-xs-bases"
"""Value of the ``format`` metadata key: what makes a safetensors file a bases file."""

FORMAT_VERSION = "1"
"""Value of ``format_version``; readers refuse versions they do not know."""

SVD_DTYPE = "F32"
"""The dtype every SVD here runs in (the official recipe upcasts W0 to float32 first)."""

SVD_DRIVER = "LAPACK gesdd (numpy.linalg.svd, thin)"
"""What computed the SVD, recorded in bases files so a later reader knows what to compare."""

SHA256_OF = "tensor data: each target's canonical 2-D weight bytes, dtype and shape"
"""What ``base_sha256`` digests (not the checkpoint file: containers and key order vary)."""

XXH3_OF = "the same tensor data as base_sha256, by XXH3-128: the check a merge makes"
"""What ``base_xxh3`` digests: the bytes ``base_sha256`` digests, with a fast hash.

Why a second digest: a merge with a bases file checks that the base's W0 is the one the
bases came from, which means hashing every byte of the base once (2.9 GB for medium).
SHA-256 runs at about 1-2 GB/s a core here, XXH3 at over 10: that check was a third of an
-xs merge's time. XXH3 is not cryptographic; it guards against a bases file made from
another base by mistake, which is what the check is for, while ``base_sha256`` stays the
file's identity of each W0. Files without it (older ones) are checked with SHA-256.
"""

ORIGIN_SA3CKPT = "sa3ckpt bases file"

_HASH_TAG = b"sa3ckpt-weight-sha256-v1"
_XXH3_TAG = b"sa3ckpt-weight-xxh3-128-v1"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_XXH3_HEX = re.compile(r"[0-9a-f]{32}")
_RANK_TEXT = re.compile(r"[1-9][0-9]*")


# --------------------------------------------------------------------------- the SVD


def _check_rank(rank: object, shape: tuple[int, int]) -> int:
    """``rank`` as an int in [1, min(shape)], or a ValueError that says what is allowed."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank must be an integer, got {rank!r}")
    limit = min(shape)
    if not 1 <= rank <= limit:
        raise ValueError(
            f"rank {rank} is out of range for a {shape[0]}x{shape[1]} weight "
            f"(need 1 <= rank <= {limit})"
        )
    return int(rank)


def canonicalize_signs(u: np.ndarray, vh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fix the sign of each singular pair the way the official SA3 code does.

    An SVD determines each pair (U[:, j], Vh[j]) only up to a joint sign, and LAPACK builds
    may pick differently; the official rule makes the entry of largest magnitude in every
    column of U positive (first such entry on ties, +1 for an all-zero column). Flipping by
    +-1 is exact, so the result is bit-identical whatever signs the input had.

    ``u`` is (m, k) and ``vh`` (k, n); returns new arrays of the same dtypes.
    """
    u = np.asarray(u)
    vh = np.asarray(vh)
    if u.ndim != 2 or vh.ndim != 2 or u.shape[1] != vh.shape[0]:
        raise ValueError(f"U (m, k) and Vh (k, n) do not fit: got shapes {u.shape} and {vh.shape}")
    pivot = np.argmax(np.abs(u), axis=0)  # np.argmax returns the first index on ties
    lead = u[pivot, np.arange(u.shape[1])]
    # `where` rather than np.sign: 0 (and NaN) must count as +1, per the official rule.
    signs = np.where(lead < 0, -1.0, 1.0)
    return u * signs.astype(u.dtype), signs.astype(vh.dtype)[:, None] * vh


def canonical_svd(w2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The thin SVD (U, S, Vh) of ``w2d`` in float32 with canonical signs.

    Any floating dtype is accepted and upcast to float32 first, so an fp16 weight and the
    same values stored as fp32 give identical results. Raises ValueError for non-2-D,
    non-floating or non-finite input (LAPACK would fail or return garbage on NaN/inf).
    """
    w = np.asarray(w2d)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (fan_out, fan_in) weight, got shape {w.shape}")
    w32 = dtypes.to_float32(w)
    if not np.isfinite(w32).all():
        raise ValueError("weight contains NaN or inf values; its SVD is undefined")
    u, s, vh = np.linalg.svd(w32, full_matrices=False)
    u, vh = canonicalize_signs(u, vh)
    return u, s, vh


def svd_bases_with_spectrum(
    w2d: np.ndarray, rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U_r, V_r, S[: rank + 1]): the bases and the singular values that decide their uniqueness.

    One SVD gives both; σ_{r+1} (absent when ``rank == min(shape)``) is kept because the gap
    σ_r − σ_{r+1} says whether another SVD of the same W0 may pick another subspace
    (`sa3ckpt.adapters.xs_uniqueness`).
    """
    w = np.asarray(w2d)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (fan_out, fan_in) weight, got shape {w.shape}")
    r = _check_rank(rank, (w.shape[0], w.shape[1]))
    u, s, vh = canonical_svd(w)
    return (
        np.ascontiguousarray(u[:, :r]),
        np.ascontiguousarray(vh[:r].T),
        np.array(s[: r + 1], dtype=np.float32, copy=True),
    )


def svd_bases(w2d: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The XS bases (U_r (fan_out, rank), V_r (fan_in, rank)) of a weight, float32.

    ``w2d`` is the base weight's canonical 2-D view in any floating dtype. The rank is
    checked before the (expensive) SVD. Results are C-contiguous copies, so they do not pin
    the full U / Vh in memory.
    """
    w = np.asarray(w2d)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D (fan_out, fan_in) weight, got shape {w.shape}")
    r = _check_rank(rank, (w.shape[0], w.shape[1]))
    u, _, vh = canonical_svd(w)
    return np.ascontiguousarray(u[:, :r]), np.ascontiguousarray(vh[:r].T)


# --------------------------------------------------------------------------- digests


# digest name -> (hash constructor, domain tag): what `weight_hasher` primes
DIGESTS: dict[str, tuple[Callable[[], Any], bytes]] = {
    "sha256": (hashlib.sha256, _HASH_TAG),
    "xxh3": (xxhash.xxh3_128, _XXH3_TAG),
}


def weight_hasher(code: str, shape: Sequence[int], digest_name: str = "sha256") -> Any:
    """A hash object (`DIGESTS`) primed with `weight_sha256`'s header for a weight of this
    dtype code and shape: feed it the canonical bytes in C order (a streaming merge does,
    tile by tile)."""
    make, tag = DIGESTS[digest_name]
    digest = make()
    digest.update(tag + b"\0" + code.encode() + b"\0")
    digest.update(json.dumps([int(n) for n in shape]).encode() + b"\0")
    return digest


def weight_xxh3(w: np.ndarray) -> str:
    """`weight_sha256`'s bytes digested by XXH3-128 (hex): the fast check (`XXH3_OF`)."""
    return weight_sha256(w, "xxh3")


def weight_sha256(w: np.ndarray, digest_name: str = "sha256") -> str:
    """A hex SHA-256 identifying a weight exactly: its bytes, dtype and shape.

    The dtype code and shape are folded into the digest so that an fp16 weight and the same
    values in fp32 (or the same bytes under another shape) do not collide: their bases can
    differ, and they are different base checkpoints. Bytes are taken in C order and
    little-endian (the safetensors layout), whatever the array's memory layout, so a
    memory-mapped tensor and an in-memory copy of it hash the same. Pass the canonical 2-D
    view, as `compute_bases` does, so the digest does not depend on a checkpoint's layout.
    """
    array = np.asarray(w)
    digest = weight_hasher(dtypes.code_for(array.dtype), array.shape, digest_name)
    order = array.dtype.byteorder
    if order == ">" or (order == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.size:
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the container


@dataclass
class XsBases:
    """XS bases of several targets and a record of the W0 they came from.

    ``bases`` maps a canonical target name to (U (fan_out, k), V (fan_in, k)) with k >=
    ``rank`` columns; an adapter of rank r <= k uses the first r (`get`), which is exact: the
    sign rule is per column and columns are in singular-value order, so the first r columns
    of a rank-k basis are the rank-r basis. ``base_sha256`` and ``base_dtype`` map the same
    names to `weight_sha256` of the 2-D W0 and its safetensors dtype code; files made by other
    tools (the official ``svd_bases.pt``, sa3.cpp's bases GGUF) carry neither, so they stay
    empty and `matches` is False. ``singular_values`` holds σ_1..σ_{k+1} where known (our
    files; bases rebuilt from a base), for the uniqueness report. ``origin`` says what kind of
    file the bases came from and ``path`` which one; ``source_base`` is a free-form name of
    the base checkpoint, for people: the digests are what code should trust.
    """

    rank: int
    source_base: str
    bases: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    base_sha256: dict[str, str] = field(default_factory=dict)
    base_dtype: dict[str, str] = field(default_factory=dict)
    base_xxh3: dict[str, str] = field(default_factory=dict)  # optional (`XXH3_OF`)
    singular_values: dict[str, np.ndarray] = field(default_factory=dict)
    origin: str = ORIGIN_SA3CKPT
    path: str = ""
    svd_dtype: str = SVD_DTYPE
    tool: str = f"sa3ckpt {__version__}"

    def get(self, target: str, rank: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(U_r, V_r) of ``target`` (the first ``rank`` columns), or None when not covered.

        Raises ValueError when the file has fewer columns than ``rank``: padding or
        recomputing would silently give an adapter bases it was not trained with.
        """
        pair = self.bases.get(target)
        if pair is None or rank is None:
            return pair
        u, v = pair
        have = min(u.shape[1], v.shape[1])
        if rank > have:
            raise ValueError(
                f"{target}: the bases in {self.path or self.origin} have {have} columns, "
                f"the adapter needs rank {rank}"
            )
        if rank == u.shape[1] == v.shape[1]:
            return u, v
        return np.ascontiguousarray(u[:, :rank]), np.ascontiguousarray(v[:, :rank])

    def matches(self, target: str, w: np.ndarray) -> bool:
        """Whether ``w`` (the 2-D W0 of ``target``) is exactly the weight the bases came from.

        False for a target these bases do not cover or that has no recorded digest. Hashes
        the whole weight, so callers checking many targets of a large base pay one pass
        over its bytes.
        """
        recorded = self.w0_digest(target)
        return recorded is not None and recorded[1] == weight_sha256(w, recorded[0])

    def w0_digest(self, target: str) -> tuple[str, str] | None:
        """(digest name, hex) of the recorded W0 of ``target`` to check a base against: the
        fast XXH3 one when the file has it, else SHA-256; None when none is recorded."""
        if target in self.base_xxh3:
            return "xxh3", self.base_xxh3[target]
        if target in self.base_sha256:
            return "sha256", self.base_sha256[target]
        return None

    def record_w0(self, target: str, w2d: np.ndarray) -> None:
        """Record the digests and dtype code of the 2-D W0 ``target``'s bases came from."""
        self.base_sha256[target] = weight_sha256(w2d)
        self.base_xxh3[target] = weight_xxh3(w2d)
        self.base_dtype[target] = dtypes.code_for(np.asarray(w2d).dtype)

    def targets(self) -> list[str]:
        """The covered targets, in the order they were computed (and are stored)."""
        return list(self.bases)

    def add(self, target: str, w2d: np.ndarray) -> None:
        """Compute and record the bases of one target (streaming: one weight in memory)."""
        array = np.asarray(w2d)
        try:
            u, v, s = svd_bases_with_spectrum(array, self.rank)
        except ValueError as exc:
            raise ValueError(f"{target}: {exc}") from None
        self.bases[target] = (u, v)
        self.singular_values[target] = s
        self.record_w0(target, array)

    def tensors_sha256(self) -> str:
        """One digest of every per-target W0 digest, in target order: "the base" in one line."""
        digest = hashlib.sha256(_HASH_TAG + b"\0all\0")
        for target in sorted(self.base_sha256):
            digest.update(f"{target}\0{self.base_sha256[target]}\0".encode())
        return digest.hexdigest()


def compute_bases(weights: Mapping[str, np.ndarray], rank: int, source_base: str) -> XsBases:
    """XS bases of ``rank`` for every given weight (2-D views keyed by canonical target).

    Every target gets bases or the call fails: a weight too small for ``rank``, not 2-D,
    or not finite raises ValueError naming the target, rather than being skipped and then
    silently missing when an adapter needs it.
    """
    if not isinstance(source_base, str):
        raise ValueError(f"source_base must be a string, got {type(source_base).__name__}")
    if not weights:
        raise ValueError("no weights given: an empty bases file would be useless")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    arrays = {target: np.asarray(w) for target, w in weights.items()}
    # Check every shape before any SVD: a real base has hundreds of large SVDs, and a bad
    # target near the end should fail at once, not after all the others were computed.
    for target, array in arrays.items():
        if array.ndim != 2:
            raise ValueError(
                f"{target}: expected a 2-D (fan_out, fan_in) weight, got {array.shape}"
            )
        try:
            _check_rank(rank, (array.shape[0], array.shape[1]))
        except ValueError as exc:
            raise ValueError(f"{target}: {exc}") from None
    out = XsBases(rank=int(rank), source_base=source_base)
    for target, array in arrays.items():
        out.add(target, array)
    return out


# --------------------------------------------------------------------------- the file


def _check_for_save(bases: XsBases) -> None:
    """Refuse to write a file that `load_bases` would reject (programming errors)."""
    if isinstance(bases.rank, bool) or not isinstance(bases.rank, (int, np.integer)):
        raise ValueError(f"rank must be an integer, got {bases.rank!r}")
    if bases.rank < 1:
        raise ValueError(f"rank must be >= 1, got {bases.rank}")
    if not bases.bases:
        raise ValueError("no bases to save")
    names = set(bases.bases)
    records = [("base_sha256", bases.base_sha256), ("base_dtype", bases.base_dtype)]
    if bases.base_xxh3:
        records.append(("base_xxh3", bases.base_xxh3))
    for label, record in records:
        if set(record) != names:
            odd = sorted(names.symmetric_difference(record))[0]
            raise ValueError(f"{label} and bases cover different targets (e.g. {odd!r})")
    for target, (u, v) in bases.bases.items():
        if not target:
            raise ValueError("empty target name")
        for basis_param, array in zip(BASIS_PARAMS, (u, v), strict=True):
            array = np.asarray(array)
            if array.dtype != np.float32:
                raise ValueError(f"{target}.{basis_param}: must be float32, got {array.dtype}")
            if array.ndim != 2 or array.shape[1] != bases.rank or array.shape[0] < bases.rank:
                raise ValueError(
                    f"{target}.{basis_param}: shape {array.shape} does not fit rank {bases.rank}"
                )


def save_bases(
    bases: XsBases, path: PathLike, *, inputs: Sequence[PathLike] = (), overwrite: bool = True
) -> None:
    """Write ``bases`` as a bases file, atomically.

    Layout: tensors ``<target>.U`` (fan_out, rank) and ``<target>.V`` (fan_in, rank),
    float32, in target order; metadata ``format``, ``format_version``, ``rank``,
    ``source_base``, and ``base_sha256`` / ``base_dtype`` (and, when recorded, ``base_xxh3``)
    as JSON objects keyed by target.
    ``inputs`` are files the output must not overwrite (e.g. the base it was computed from).
    Raises ValueError for inconsistent ``bases``.
    """
    _check_for_save(bases)
    names = set(bases.bases)
    tensors: list[tuple[str, np.ndarray]] = []
    for target, (u, v) in bases.bases.items():
        for basis_param, array in zip(BASIS_PARAMS, (u, v), strict=True):
            tensors.append((format_xs_bases_key(target, basis_param), np.asarray(array)))
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rank": str(int(bases.rank)),
        "source_base": str(bases.source_base),
        "base_sha256": json.dumps(bases.base_sha256, sort_keys=True),
        "base_dtype": json.dumps(bases.base_dtype, sort_keys=True),
        "base_sha256_of": SHA256_OF,
        "base_tensors_sha256": bases.tensors_sha256(),
        "svd_dtype": bases.svd_dtype,
        "svd_driver": SVD_DRIVER,
        "tool": bases.tool,
    }
    if bases.base_xxh3:
        metadata["base_xxh3"] = json.dumps(bases.base_xxh3, sort_keys=True)
        metadata["base_xxh3_of"] = XXH3_OF
    spectra = {t: [float(x) for x in s] for t, s in bases.singular_values.items() if t in names}
    if spectra:
        metadata["singular_values"] = json.dumps(spectra, sort_keys=True)
    write_safetensors(path, tensors, metadata, inputs=inputs, overwrite=overwrite)


class _Bad(Exception):
    """Internal: a one-line cause, turned into MalformedFileError with the path attached."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj, duplicate = object_and_duplicate(pairs)
    if duplicate is not None:
        raise _Bad(f"duplicate key {duplicate!r} in JSON metadata")
    return obj


def _required(metadata: Mapping[str, str], key: str) -> str:
    value = metadata.get(key)
    if value is None:
        raise _Bad(f"missing metadata {key!r}")
    return value


def _json_str_map(metadata: Mapping[str, str], key: str) -> dict[str, str]:
    """Metadata ``key`` parsed as a JSON object of strings, or a _Bad naming the defect."""
    text = _required(metadata, key)
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" at char {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise _Bad(f"metadata {key!r} is not valid JSON{where}") from None
    if not isinstance(value, dict):
        raise _Bad(f"metadata {key!r} must be a JSON object of strings")
    for name, item in value.items():
        if not isinstance(item, str):
            raise _Bad(f"metadata {key!r}: value for {name!r} is not a string")
    return value


def _xxh3_map(metadata: Mapping[str, str]) -> dict[str, str]:
    """Optional ``base_xxh3`` metadata: target -> 32 lowercase hex digits."""
    if "base_xxh3" not in metadata:
        return {}
    found = _json_str_map(metadata, "base_xxh3")
    for target, digest in found.items():
        if not _XXH3_HEX.fullmatch(digest):
            raise _Bad(f"base_xxh3 for {target[:80]!r} is not 32 lowercase hex digits")
    return found


def _parse_metadata(metadata: Mapping[str, str]) -> tuple[int, str, dict[str, str], dict[str, str]]:
    fmt = metadata.get("format")
    if fmt is None:
        raise _Bad(f"missing metadata 'format' (not an {FORMAT} file)")
    if fmt != FORMAT:
        raise _Bad(f"metadata format is {fmt[:60]!r}, expected {FORMAT!r}")
    version = _required(metadata, "format_version")
    if version != FORMAT_VERSION:
        raise _Bad(f"unsupported format_version {version[:20]!r} (this reader knows 1)")
    rank_text = _required(metadata, "rank")
    if not _RANK_TEXT.fullmatch(rank_text):
        raise _Bad(f"metadata rank {rank_text[:20]!r} is not a positive integer")
    rank = int(rank_text)
    source_base = _required(metadata, "source_base")
    sha = _json_str_map(metadata, "base_sha256")
    for target, digest in sha.items():
        if not _SHA256_HEX.fullmatch(digest):
            raise _Bad(f"base_sha256 for {target!r} is not 64 lowercase hex digits")
    dtype_codes = _json_str_map(metadata, "base_dtype")
    for target, code in dtype_codes.items():
        if not (dtypes.is_known(code) and dtypes.is_floating(code)):
            raise _Bad(f"base_dtype for {target!r} is {code[:20]!r}, not a floating dtype code")
    return rank, source_base, sha, dtype_codes


def _spectra(metadata: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Optional ``singular_values`` metadata: target -> finite, non-negative σ list."""
    text = metadata.get("singular_values")
    if text is None:
        return {}
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, RecursionError):
        raise _Bad("metadata 'singular_values' is not valid JSON") from None
    if not isinstance(value, dict):
        raise _Bad("metadata 'singular_values' must be a JSON object of number lists")
    out: dict[str, np.ndarray] = {}
    for target, items in value.items():
        ok = (
            isinstance(items, list)
            and items
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items)
        )
        array = np.array(items if ok else [], dtype=np.float64)
        if not ok or not np.isfinite(array).all() or (array < 0).any():
            raise _Bad(f"singular_values for {target[:80]!r} is not a list of numbers >= 0")
        out[target] = array
    return out


def _load(path: str) -> XsBases:
    with open_safetensors(path) as f:
        rank, source_base, sha, dtype_codes = _parse_metadata(f.metadata)
        xxh3 = _xxh3_map(f.metadata)
        spectra = _spectra(f.metadata)
        svd_dtype = f.metadata.get("svd_dtype", SVD_DTYPE)
        tool = f.metadata.get("tool", "")
        found: dict[str, dict[str, np.ndarray]] = {}
        for name in f:
            parsed = parse_xs_bases_key(name)
            if parsed is None or parsed[1] not in BASIS_PARAMS:
                raise _Bad(f"unexpected tensor {name[:80]!r} (expected <target>.U or <target>.V)")
            info = f.info(name)
            if info.dtype != "F32":
                raise _Bad(f"tensor {name[:80]!r} is {info.dtype}, expected F32")
            if len(info.shape) != 2 or info.shape[1] != rank or info.shape[0] < rank:
                raise _Bad(
                    f"tensor {name[:80]!r} has shape {list(info.shape)}, inconsistent with "
                    f"rank {rank} (expected [n >= {rank}, {rank}])"
                )
            array = np.array(f.array(name), dtype=np.float32, copy=True)
            if not np.isfinite(array).all():
                raise _Bad(f"tensor {name[:80]!r} contains NaN or inf values")
            target, basis_param = parsed
            found.setdefault(target, {})[basis_param] = array
    if not found:
        raise _Bad("no bases tensors in file")
    bases: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for target, pair in found.items():
        for basis_param in BASIS_PARAMS:
            if basis_param not in pair:
                other = "U" if basis_param == "V" else "V"
                raise _Bad(f"target {target[:80]!r} has {other} but no {basis_param}")
        bases[target] = (pair["U"], pair["V"])
    records = [("base_sha256", sha), ("base_dtype", dtype_codes)]
    if xxh3:
        records.append(("base_xxh3", xxh3))
    for label, record in records:
        missing = [t for t in bases if t not in record]
        if missing:
            raise _Bad(f"{label} has no entry for target {missing[0][:80]!r}")
        extra = [t for t in record if t not in bases]
        if extra:
            raise _Bad(f"{label} names target {extra[0][:80]!r}, which has no bases")
    return XsBases(
        rank=rank,
        source_base=source_base,
        bases=bases,
        base_sha256={t: sha[t] for t in bases},
        base_dtype={t: dtype_codes[t] for t in bases},
        base_xxh3={t: xxh3[t] for t in bases} if xxh3 else {},
        singular_values={t: s for t, s in spectra.items() if t in bases},
        path=path,
        svd_dtype=svd_dtype,
        tool=tool,
    )


def load_bases(path: PathLike) -> XsBases:
    """Read a bases file written by `save_bases`, strictly.

    Anything off (not a bases file, unknown version, bad JSON metadata, a target with only
    one of U / V, shapes that contradict the rank, non-float32 or non-finite tensors, digests
    that do not cover exactly the stored targets) raises `MalformedFileError` with a one-line
    cause: bases feed every -xs merge, and a silently wrong basis corrupts the result.
    Orthonormality is not checked; it holds to fp32 rounding for bases we write.
    """
    spath = os.fspath(path)
    try:
        return _load(spath)
    except _Bad as exc:
        raise MalformedFileError(spath, str(exc)) from None


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "XsBases",
    "canonical_svd",
    "canonicalize_signs",
    "compute_bases",
    "load_bases",
    "save_bases",
    "svd_bases",
    "svd_bases_with_spectrum",
    "weight_sha256",
]
