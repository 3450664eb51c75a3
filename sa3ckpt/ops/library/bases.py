"""`sa3ckpt bases`: compute a base's XS bases once and keep them in a file, with provenance.

Each selected target's canonical 2-D weight (in its stored dtype) is upcast to fp32 and
decomposed with the official recipe (`adapters.xs_bases`); the file records the rank, a
sha256 of every W0's tensor data, the dtype the SVD ran in, σ_1..σ_{r+1} per target and the
sa3ckpt version. Two targets are decomposed at once with BLAS limited so that the two
workers share the cores (`sa3ckpt.threads`); only one weight per worker is in memory. The
ledger lists targets skipped (rank above min(fan_out, fan_in)) and targets whose bases are
not unique enough for another SVD to be sure to reproduce them (`adapters.xs_uniqueness`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.xs_bases import (
    XsBases,
    save_bases,
    svd_bases_with_spectrum,
    weight_sha256,
    weight_xxh3,
)
from sa3ckpt.adapters.xs_uniqueness import assess, summary_lines
from sa3ckpt.errors import IncompatibleError, UsageError
from sa3ckpt.io.atomic import check_output_path
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, open_base
from sa3ckpt.names.select import select
from sa3ckpt.progress import ProgressCallback, ProgressCounter
from sa3ckpt.threads import blas_limited_pool

DEFAULT_RANK = 16
"""The official trainer's default rank; a file of rank R serves every adapter of rank <= R."""

WORKERS = 2


@dataclass
class BasesLedger:
    """What `sa3ckpt bases` computed, skipped and flagged."""

    base: str
    output: str
    rank: int
    targets: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    not_unique: list[dict[str, Any]] = field(default_factory=list)
    base_tensors_sha256: str = ""
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"XS bases of rank {self.rank} for {len(self.targets)} targets of {self.base} "
            f"-> {self.output} ({self.seconds:.1f} s; SVD in fp32, sign rule as official)",
            f"base tensor data sha256 (all targets): {self.base_tensors_sha256}",
        ]
        out += [f"skipped {t}: {why}" for t, why in self.skipped]
        out += summary_lines(self.not_unique, len(self.targets))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "output": self.output,
            "rank": self.rank,
            "targets": self.targets,
            "skipped": [{"target": t, "reason": r} for t, r in self.skipped],
            "not_unique": self.not_unique,
            "base_tensors_sha256": self.base_tensors_sha256,
            "seconds": round(self.seconds, 3),
        }


def _selected(base: BaseCheckpoint, patterns: Sequence[str] | None) -> dict[str, str]:
    keys = base.weight_keys()
    try:
        chosen = select(list(keys), list(patterns or []), None)
    except ValueError as exc:
        raise UsageError(f"--targets: {exc}") from None
    return {t: keys[t] for t in chosen}


@dataclass(frozen=True)
class _Result:
    """One target's bases and W0 record; small (the weight itself is not kept)."""

    u: np.ndarray
    v: np.ndarray
    s: np.ndarray
    digest: str
    xxh3: str
    dtype: str
    shape: tuple[int, int]


def _one(base: BaseCheckpoint, key: str, rank: int) -> _Result:
    """The bases of one target from its canonical 2-D W0 in the stored dtype (worker thread)."""
    stored = base.read(key)
    w2d = np.ascontiguousarray(base.layout_of(stored.shape, key).to_canonical(stored))
    u, v, s = svd_bases_with_spectrum(w2d, rank)
    shape = (int(w2d.shape[0]), int(w2d.shape[1]))
    return _Result(u, v, s, weight_sha256(w2d), weight_xxh3(w2d), dtypes.code_for(w2d.dtype), shape)


def compute_bases_file(
    base_path: str,
    output: str,
    *,
    rank: int = DEFAULT_RANK,
    targets: Sequence[str] | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> BasesLedger:
    """Compute and write a bases file for a base checkpoint; return the ledger.

    progress: called with targets finished so far, of all (an SVD each: bytes say little).
    """
    started = time.perf_counter()
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UsageError(f"--rank must be a positive integer, got {rank!r}")
    if os.path.splitext(output)[1].lower() != ".safetensors":
        raise UsageError(f"output {output}: a bases file is safetensors: name it *.safetensors")
    check_output_path(output, inputs=[base_path], overwrite=force)
    with open_base(base_path) as base:
        ledger = BasesLedger(base_path, output, rank)
        chosen = _selected(base, targets)
        work: dict[str, str] = {}
        for target, key in chosen.items():
            shape = base.layout_of(base.tensors[key].shape, key).canonical_shape(
                base.tensors[key].shape
            )
            if rank > min(shape):
                ledger.skipped.append((target, f"rank {rank} > min{tuple(shape)}"))
            else:
                work[target] = key
        if not work:
            raise IncompatibleError(
                f"no target of {base_path} can take rank {rank}"
                + (f" among those matching {list(targets)}" if targets else "")
            )
        out = XsBases(rank=rank, source_base=os.path.basename(base_path), path=output)
        with blas_limited_pool(WORKERS) as pool:
            futures = {t: pool.submit(_one, base, k, rank) for t, k in work.items()}
            counter = ProgressCounter(progress, len(work), unit="targets")
            for target, future in list(futures.items()):
                r = future.result()
                del futures[target]  # drop the future so only the file's arrays stay alive
                out.bases[target] = (r.u, r.v)
                out.singular_values[target] = r.s
                out.base_sha256[target] = r.digest
                out.base_xxh3[target] = r.xxh3
                out.base_dtype[target] = r.dtype
                result = assess(target, r.s, rank, r.shape, r.u)
                if result.flagged:
                    ledger.not_unique.append({**result.to_json(), "line": result.line()})
                counter.advance(1, target)
        save_bases(out, output, inputs=[base_path], overwrite=force)
    ledger.targets = list(out.bases)
    ledger.base_tensors_sha256 = out.tensors_sha256()
    ledger.seconds = time.perf_counter() - started
    return ledger
