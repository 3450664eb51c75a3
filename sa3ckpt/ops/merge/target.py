"""One merge target through the tiled kernel: its stack resolved (XS bases from the adapter,
a bases file or one SVD of W0), its row tiles read from the base container and written to
the output (`io.tensor_rows`), whatever its layout (Linear, Conv1d of any kernel size in
PyTorch or MLX order, diffusers' reordered qkv rows) and container.

The base container's side is two calls: `BaseCheckpoint.stored_bytes(key)` (plain bytes in
a file: tiles are read where they lie) or `BaseCheckpoint.read(key)` (the whole tensor:
tiles are slices of it); the output's side is a writer's `write_at` (tiles written at their
place) or, for any other writer, the whole output tensor returned for its `write`.
W0 is held whole only when an XS adapter's bases must be rebuilt by an SVD of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters import tiled
from sa3ckpt.adapters.checkpoint import AdapterCheckpoint
from sa3ckpt.adapters.kernels import NumpyAdapter
from sa3ckpt.adapters.xs_bases import XsBases, canonical_svd, weight_hasher, weight_sha256
from sa3ckpt.adapters.xs_uniqueness import assess
from sa3ckpt.errors import IncompatibleError
from sa3ckpt.io.base_checkpoint import BaseCheckpoint
from sa3ckpt.io.tensor_rows import ArrayRows, FileRows, PositionalWriter, WriterRows
from sa3ckpt.layout import row_view
from sa3ckpt.ops.merge.ledger import MergeLedger


@dataclass
class TargetReport:
    """What one worker learnt about a target's XS bases, folded into the ledger by the writer."""

    sources: dict[str, int] = field(default_factory=dict)
    where: list[str] = field(default_factory=list)
    other_w0: bool = False
    digest: tuple[str, str] | None = None  # (name, hex) of the W0 a bases file recorded
    not_unique: list[dict[str, Any]] = field(default_factory=list)
    unknown: int = 0

    def record(self, target: str, ledger: MergeLedger) -> None:
        for label, count in self.sources.items():
            ledger.bases_sources[label] = ledger.bases_sources.get(label, 0) + count
        if self.where:
            ledger.bases_by_target[target] = "; ".join(dict.fromkeys(self.where))
        if self.other_w0:
            ledger.bases_other_w0.append(target)
        ledger.xs_not_unique += self.not_unique
        ledger.xs_uniqueness_unknown += self.unknown


class Rebuilt:
    """One canonical SVD of a target's W0 for the whole stack (not one per adapter).

    Computed on first use at the largest rank any adapter of the stack needs; smaller ranks
    are its leading columns, which is exact (see `XsBases.get`).
    """

    def __init__(self, w2d: Callable[[], np.ndarray], max_rank: int) -> None:
        self._w2d = w2d  # the canonical W0, read only if an SVD is needed
        self._max_rank = max_rank
        self.u: np.ndarray | None = None
        self.s: np.ndarray | None = None
        self.vh: np.ndarray | None = None

    def __call__(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        if self.u is None:
            u, s, vh = canonical_svd(self._w2d())
            keep = min(self._max_rank, s.size)
            self.u, self.s, self.vh = u[:, :keep].copy(), s[: keep + 1].copy(), vh[:keep].copy()
        assert self.u is not None and self.vh is not None
        return np.ascontiguousarray(self.u[:, :rank]), np.ascontiguousarray(self.vh[:rank].T)


def _uniqueness(
    report: TargetReport,
    target: str,
    ckpt: AdapterCheckpoint,
    strength: float,
    source: str,
    shape: tuple[int, int],
    bases: XsBases | None,
    rebuilt: Rebuilt,
    u: np.ndarray,
    m_xs: np.ndarray,
) -> None:
    """Flag bases another SVD of this W0 may pick differently (not for stored bases)."""
    rank = ckpt.config.rank
    sigma = rebuilt.s if source == "base SVD" else None
    if source == "bases file" and bases is not None:
        sigma = bases.singular_values.get(target)
    need = rank + 1 if rank < min(shape) else rank
    if sigma is None or sigma.size < need:
        report.unknown += 1
        return
    result = assess(target, sigma, rank, shape, u)
    if result.flagged:
        doc = result.to_json()
        doc["adapter"] = ckpt.path
        doc["effect_bound"] = result.effect_bound(m_xs, ckpt.config.scale * strength)
        doc["line"] = f"{result.line()} (adapter {ckpt.path})"
        report.not_unique.append(doc)


def target_stack(
    base: BaseCheckpoint,
    key: str,
    w2d: Callable[[], np.ndarray],
    shape: tuple[int, int],
    target: str,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    bases: XsBases | None,
) -> tuple[list[tuple[NumpyAdapter, float]], TargetReport]:
    """The kernel's stack on one target (XS bases resolved, one SVD for the whole stack) and
    what was learnt about its bases: where they came from, uniqueness, and whether a bases
    file's W0 digest must be checked (`TargetReport.digest`, for the caller: the tiles hash
    W0 as they read it). `w2d` gives the canonical W0, called only for an SVD."""
    dtype_code = base.tensors[key].dtype
    report = TargetReport()
    ranks = [c.config.rank for c, _ in ckpts if target in c.tensors and c.kind.xs]
    rebuilt = Rebuilt(w2d, max(ranks, default=1))
    if bases is not None and ranks:
        report.digest = bases.w0_digest(target)
    stack = []
    for ckpt, strength in ckpts:
        if target not in ckpt.tensors:
            continue
        try:
            adapter, source = ckpt.numpy_adapter(target, bases=bases, rebuild=rebuilt)
        except ValueError as exc:
            raise IncompatibleError(str(exc)) from None
        if source != "-":
            label = f"{source} ({dtype_code} base)" if source == "base SVD" else source
            report.sources[label] = report.sources.get(label, 0) + 1
            report.where.append(_where(source, ckpt, bases, dtype_code))
            if source != "stored":
                p = adapter.params
                _uniqueness(
                    report, target, ckpt, strength, source, shape, bases, rebuilt, p["U"], p["M_xs"]
                )
        stack.append((adapter, strength))
    return stack, report


def _where(source: str, ckpt: AdapterCheckpoint, bases: XsBases | None, dtype_code: str) -> str:
    """Per-target ledger text: where one adapter's U/V came from."""
    if source == "bases file" and bases is not None:
        return f"loaded from {bases.path} ({bases.origin})"
    if source == "base SVD":
        return f"rebuilt from base (SVD of the {dtype_code} W0 in fp32)"
    return f"stored in {ckpt.path}"


def canonical_w0(base: BaseCheckpoint, key: str) -> np.ndarray:
    """A base weight in the canonical 2-D view, as stored (dtype kept)."""
    stored = base.read(key)
    return np.ascontiguousarray(base.layout_of(stored.shape, key).to_canonical(stored))


def merge_target(
    base: BaseCheckpoint,
    key: str,
    code: str,
    target: str,
    ckpts: Sequence[tuple[AdapterCheckpoint, float]],
    semantics: str,
    bases: XsBases | None,
    writer: PositionalWriter | None = None,
    stop: threading.Event | None = None,
) -> tuple[np.ndarray | None, TargetReport]:
    """Merge one target tile by tile into dtype `code` (a worker thread).

    With a positional `writer` the tiles are written at their place and None is returned;
    without, the merged tensor in its stored layout. Raises IncompatibleError when a merged
    value is NaN/Inf (nothing is written then: the caller's output is discarded).
    """
    info = base.tensors[key]
    view = row_view(base.layout_of(info.shape, key), info.shape)
    fan = (view.fan_out, view.fan_in)
    whole: list[np.ndarray] = []

    def w0() -> np.ndarray:
        if not whole:
            whole.append(canonical_w0(base, key))
        return whole[0]

    stack, report = target_stack(base, key, w0, fan, target, ckpts, bases)
    stored_code = info.dtype
    where = base.stored_bytes(key)
    closing: FileRows | None = None
    source: Any
    if stored_code not in tiled.STORED_CODES:  # e.g. fp64: merged from an fp32 copy
        if report.digest is not None:
            report.other_w0 = report.digest[1] != weight_sha256(w0(), report.digest[0])
        source, stored_code = _canonical_rows(dtypes.to_float32(w0()), fan), "F32"
    elif whole:  # read whole for an SVD: tiles are slices of it
        source = _canonical_rows(whole[0], fan)
    elif where is not None:
        source = closing = FileRows(view, stored_code, where[0], where[1], key)
    else:
        source = ArrayRows(view, base.read(key))
    digest = None
    if report.digest is not None and not report.other_w0:
        digest = _Digest(source, stored_code, fan, report.digest[0])
        source = digest
    work_code = code if code in tiled.OUTPUT_CODES else "F32"
    out: np.ndarray | None = None
    if writer is not None and work_code == code:
        sink: Any = WriterRows(view, code, writer, key)
    else:
        out = np.empty(info.shape, dtypes.numpy_dtype(work_code))
        sink = ArrayRows(view, out).put
    try:
        finite = tiled.merge_rows(
            tiled.plan(stack, semantics), fan, stored_code, work_code, source, sink, stop
        )
    finally:
        if closing is not None:
            closing.close()
    if not finite:
        raise IncompatibleError(f"merged weight of {target} has NaN/Inf; nothing was written")
    if digest is not None and report.digest is not None:
        report.other_w0 = report.digest[1] != digest.hexdigest()
    if out is not None and work_code != code:
        out = dtypes.cast(out, code)
    if out is not None and writer is not None:
        writer.write_at(key, 0, out)
        return None, report
    return out, report


def _canonical_rows(w2d: np.ndarray, fan: tuple[int, int]) -> ArrayRows:
    """Row tiles of a canonical 2-D array in memory."""
    from sa3ckpt.layout import LAYOUTS

    return ArrayRows(row_view(LAYOUTS["linear"], fan), w2d)


class _Digest:
    """A row source that also hashes W0's canonical bytes as the first pass reads them in
    order (`xs_bases.weight_sha256` of the canonical 2-D view, by the digest the bases file
    recorded: XXH3 when it has one), for a bases file's check."""

    def __init__(self, source: Any, code: str, fan: tuple[int, int], digest_name: str) -> None:
        self.source = source
        self.hasher = weight_hasher(code, fan, digest_name)
        self.next_row = 0

    def __call__(self, i0: int, i1: int, buf: np.ndarray) -> np.ndarray:
        rows = self.source(i0, i1, buf)
        if i0 == self.next_row:
            self.hasher.update(np.ascontiguousarray(rows).reshape(-1).view(np.uint8).data)
            self.next_row = i1
        return rows

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()
