"""The merge kernel: any stack of adapters, under any semantics, one tile of rows at a time.

Every merge (DiT and codec, every container, every target kind) runs here; the whole-tensor
NumPy kernel (`kernels`) is only the reference this one is tested against, bit for bit.

Why tiles. A merge is bound by memory passes and fp16 <-> fp32 conversions, not by
arithmetic: the whole-tensor kernel makes a pass over the full fp32 weight for the GEMM,
the base add, each norm, each scale and the cast, and each pass leaves the cache. Here a
tile of rows (about TILE_ELEMENTS fp32 values, 2 MB, so it and its few companion buffers
stay in this core's cache) is read from the base, carried through the whole chain while it
is in cache and written out once, rounded once.

What a tile can finish alone. Row norms need whole rows: a tile has them. Column norms
need whole columns: no tile has them. So a chain of adapters is cut at each adapter that
needs a column statistic: a column-normalising type (dora-cols, bora, their -xs forms:
column sums of squares of V', weighted by BoRA's squared row scales) or, under blend
semantics, a magnitude that blends toward the column norms of the adapter's incoming weight.
Everything such an adapter needs is a vector of fan_in sums, so one pass over the tiles
accumulates it (and every other statistic the same cut needs), and the next pass recomputes
each tile from the base up to the next cut with the finished vectors applied. Passes per
target = 1 + the number of cuts: 1 for lora / dora-rows chains, 2 for one column
normaliser, 2 for any delta stack (its terms are all taken against W0, so every column
statistic is known after one pass). A pass that stops at a cut computes only the prefix of
the chain up to it.

Keep the fp32 state, or recompute? A chain's pass that stops at a cut keeps that cut's
V' tile (and its row scale) in one whole fp32 array, and the next pass resumes there
without touching the base: the largest medium weight is 75 MB in fp32 (KEEP_BYTES caps it
at 128 MB per target, two workers), and writing it and reading it back once cost 0.07 s
for a 12288 x 1536 weight here, where recomputing the prefix (re-reading the fp16 tile,
the upcast, one or two rank-16 GEMMs, the norms) cost 0.1-0.3 s: measured with
OPENBLAS_NUM_THREADS=1 on this loaded machine, dora-rows + bora + lora under runtime took
0.27 s kept vs 0.55 s recomputed, under blend 0.29 s vs 1.34 s. A delta stack recomputes its
normalised terms in its second pass (their V' are all against W0: one per term would
have to be kept). So a whole fp32 tensor is the right "tile" exactly between the passes of
a cut chain; within a pass the tile is a few hundred rows.

Exactness. The float32 operations and their order are `kernels`' own: the low-rank product
from the same BLAS call on a row block (tile heights are multiples of ROW_ALIGN so OpenBLAS
blocks a tile's rows as it blocks the whole weight's), the base added with its upcast fused
in, `np.einsum` row norms, column sums accumulated row after row as einsum does (and in
NORM_BLOCK row blocks where `kernels` upcasts an fp16/bf16 W0 a block at a time), the
scales applied as separate multiplies, one rounding to the output type. So the output is
the whole-tensor kernel's bit for bit on this machine; on another BLAS the low-rank product
may round differently in the last fp32 bit, so the tests also bound the difference to one
unit in the last place of the output type and check both against the float64 reference.

The fused conversions use numba (`jit_casts`); on an x86-64 CPU without F16C the same tile
loop runs with NumPy conversions (same bits, slower).
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.blas_accumulate import gemm_add
from sa3ckpt.adapters.kernels import BLEND_AXES, EPS, NORM_BLOCK, NumpyAdapter
from sa3ckpt.io.tensor_rows import bits_dtype

TILE_ELEMENTS = 1 << 19  # elements per tile: its fp32 rows (2 MB) stay in this core's cache
ROW_ALIGN = 96  # tile heights are multiples of OpenBLAS's sgemm row blocking (16, 24, 32, 48)

# A tile source fills the buffer with canonical stored rows [i0, i1) (or returns a view of
# them); a sink takes the output rows starting at i0.
RowSource = Callable[[int, int, np.ndarray], np.ndarray]
RowSink = Callable[[int, np.ndarray], None]

STORED_CODES = ("F16", "BF16", "F32")  # base dtypes the tiles read
OUTPUT_CODES = ("F16", "BF16", "F32")  # output dtypes they write


@cache
def _jit() -> Any:
    """The numba kernels (imported on first use), or None on an x86-64 CPU without F16C,
    where LLVM would need a runtime library call for the fp16 conversions."""
    try:
        import llvmlite.binding as llvm

        from sa3ckpt.adapters import jit_casts
    except ImportError:
        return None
    if platform.machine().lower() in ("x86_64", "amd64"):
        features = llvm.get_host_cpu_features()
        if not features.get("f16c", False):
            return None
    return jit_casts


def available() -> bool:
    """Whether the fused (numba) conversions run here; without them the tiles use NumPy's."""
    return _jit() is not None


class _NumpyCasts:
    """`jit_casts`' tile functions in NumPy: the same results, for CPUs numba cannot serve."""

    @staticmethod
    def _as(stored: np.ndarray, code: str) -> np.ndarray:
        return stored.view(dtypes.numpy_dtype(code))

    def upcast(self, code: str) -> Callable[[np.ndarray, np.ndarray], None]:
        return lambda out, stored: np.copyto(out, self._as(stored, code), casting="unsafe")

    def add(self, code: str) -> Callable[[np.ndarray, np.ndarray], None]:
        return lambda v, stored: np.add(v, self._as(stored, code), out=v, casting="unsafe")

    @staticmethod
    def add_column_squares(acc: np.ndarray, v: np.ndarray, weights: np.ndarray) -> None:
        for i in range(v.shape[0]):
            acc += (v[i] * v[i]) * weights[i]

    @staticmethod
    def add_column_squares_blocked(
        total: np.ndarray, partial: np.ndarray, v: np.ndarray, row0: int, block: int, rows: int
    ) -> None:
        for i in range(v.shape[0]):
            g = row0 + i
            if g % block == 0:
                partial[:] = 0
            partial += v[i] * v[i]
            if (g + 1) % block == 0 or g + 1 == rows:
                total += partial

    @staticmethod
    def scale_in_place(v: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        v *= rows[:, None]
        v *= cols[None, :]

    @staticmethod
    def add_delta_term(
        acc: np.ndarray,
        v: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        w0: np.ndarray,
        strength: np.float32,
        first: bool,
    ) -> None:
        v *= rows[:, None]
        v *= cols[None, :]
        v -= w0
        v *= strength
        if first:
            np.add(v, w0, out=acc)
        else:
            acc += v

    @staticmethod
    def add_plain_term(acc: np.ndarray, v: np.ndarray, w0: np.ndarray, first: bool) -> None:
        if first:
            np.add(v, w0, out=acc)
        else:
            acc += v

    def scale(self, code: str) -> Callable[..., bool]:
        def run(v: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> bool:
            w = (v * rows[:, None]) * cols[None, :]
            target = out.view(dtypes.numpy_dtype(code))
            np.copyto(target, w, casting="unsafe")
            return bool(np.isfinite(dtypes.to_float32(target)).all())

        return run


def _f32_add(v: np.ndarray, stored: np.ndarray) -> None:
    np.add(v, stored, out=v)


def _f32_upcast(out: np.ndarray, stored: np.ndarray) -> None:
    np.copyto(out, stored)


@dataclass(frozen=True)
class _Ops:
    """The tile operations for one (stored, output) dtype pair."""

    add: Callable[[np.ndarray, np.ndarray], None]  # v += float32(stored)
    upcast: Callable[[np.ndarray, np.ndarray], None]  # out = float32(stored)
    scale: Callable[..., bool]  # out = cast((v * rows) * cols), True if all finite
    column_squares: Callable[[np.ndarray, np.ndarray, np.ndarray], None]
    column_squares_blocked: Callable[..., None]
    scale_in_place: Callable[[np.ndarray, np.ndarray, np.ndarray], None]  # v = (v*rows)*cols
    add_delta_term: Callable[..., None]  # acc (+)= ((v*rows)*cols − W0)·s (+ W0 if first)
    add_plain_term: Callable[..., None]  # acc (+)= v (+ W0 if first)


def _ops(stored_code: str, out_code: str) -> _Ops:
    jit = _jit()
    if jit is None:
        casts = _NumpyCasts()
        return _Ops(
            _f32_add if stored_code == "F32" else casts.add(stored_code),
            _f32_upcast if stored_code == "F32" else casts.upcast(stored_code),
            casts.scale(out_code),
            casts.add_column_squares,
            casts.add_column_squares_blocked,
            casts.scale_in_place,
            casts.add_delta_term,
            casts.add_plain_term,
        )
    return _Ops(
        {"F16": jit.add_f16, "BF16": jit.add_bf16, "F32": _f32_add}[stored_code],
        {"F16": jit.upcast_f16, "BF16": jit.upcast_bf16, "F32": _f32_upcast}[stored_code],
        {"F16": jit.scale_to_f16, "BF16": jit.scale_to_bf16, "F32": jit.scale_to_f32}[out_code],
        jit.add_column_squares,
        jit.add_column_squares_blocked,
        jit.scale_in_place,
        jit.add_delta_term,
        jit.add_plain_term,
    )


@dataclass(frozen=True)
class Step:
    """One adapter as the tiles apply it: V' = W_in + left @ right, then its normaliser.

    left is (fan_out, r) with the factor folded in (c·s in a chain and for a plain delta
    term; c for a normalised delta term, whose strength weighs the term afterwards), right
    (r, fan_in): exactly the operands `NumpyAdapter.low_rank` multiplies. `blend` lists the
    magnitudes that blend toward the incoming weight's norms (name, axis), as `kernels`'
    BLEND_AXES, empty unless blend semantics at s != 1.
    """

    left: np.ndarray
    right: np.ndarray
    norm: str | None
    mags: Mapping[str, np.ndarray]
    strength: np.float32
    blend: tuple[tuple[str, int], ...] = ()

    @property
    def blas_ready(self) -> bool:
        """Whether `blas_accumulate` can take the operands as they are (float32, left
        C-contiguous, right C- or Fortran-contiguous)."""
        left, right = self.left, self.right
        return (
            left.dtype == right.dtype == np.float32
            and left.flags.c_contiguous
            and (right.flags.c_contiguous or right.flags.f_contiguous)
        )

    @property
    def needs_columns(self) -> bool:
        """Whether this step needs a whole-column statistic (a cut in the chain)."""
        return self.norm in ("cols", "both") or any(axis == 0 for _, axis in self.blend)


@dataclass(frozen=True)
class TilePlan:
    """What one target's tiles compute: `chain` (runtime / blend) or `delta` over `steps`;
    no steps means W0 itself (every adapter bypassed), cast to the output type."""

    mode: str  # "chain" | "delta"
    steps: tuple[Step, ...]

    @property
    def passes(self) -> int:
        """Passes over the tiles this plan takes (1 + its cuts; a delta's cuts are one)."""
        cuts = sum(s.needs_columns for s in self.steps)
        return 1 + (min(cuts, 1) if self.mode == "delta" else cuts)


def _operands(adapter: NumpyAdapter, factor: float) -> tuple[np.ndarray, np.ndarray]:
    f = np.float32(factor)
    p = adapter.params
    if adapter.kind.xs:
        if "U" not in p or "V" not in p:
            raise ValueError(f"{adapter.kind.name} needs XS bases U/V")
        return p["U"] @ (p["M_xs"] * f), p["V"].T
    return p["lora_B"] * f, p["lora_A"]


def plan(stack: Sequence[tuple[NumpyAdapter, float]], semantics: str) -> TilePlan:
    """The tile plan of a target's stack under a semantics (the kernels' bypass rules:
    runtime / blend skip a DoRA/BoRA at s == 0 exactly, delta every adapter at s == 0)."""
    if semantics not in ("runtime", "blend", "delta"):
        raise ValueError(f"unknown semantics {semantics!r}")
    steps = []
    for adapter, strength in stack:
        kind = adapter.kind
        if semantics == "delta":
            if strength == 0:
                continue
            if kind.is_weight_decomposed:  # s (f(W0; 1) − W0)
                left, right = _operands(adapter, adapter.scale * 1.0)
                step = Step(left, right, kind.norm, adapter.params, np.float32(strength))
            else:  # f(W0; 1) − W0 is exactly c ΔW: s folded into the product
                left, right = _operands(adapter, adapter.scale * strength)
                step = Step(left, right, None, adapter.params, np.float32(strength))
        else:
            if strength == 0 and kind.is_weight_decomposed:
                continue  # exact bypass
            left, right = _operands(adapter, adapter.scale * strength)
            blend = BLEND_AXES[kind.norm] if semantics == "blend" and strength != 1 else ()
            step = Step(left, right, kind.norm, adapter.params, np.float32(strength), blend)
        steps.append(step)
    return TilePlan("delta" if semantics == "delta" else "chain", tuple(steps))


KEEP_BYTES = 1 << 27  # a chain's fp32 state kept between passes up to 128 MB per target


def keep_state(tile_plan: TilePlan, shape: tuple[int, int]) -> bool:
    """Whether a chain keeps V' of each cut in fp32 for the next pass instead of recomputing
    it from the base (module docstring: cheaper once the prefix has a GEMM; bounded)."""
    cuts = tile_plan.mode == "chain" and tile_plan.passes > 1
    return cuts and 4 * shape[0] * shape[1] <= KEEP_BYTES


def kept_terms(tile_plan: TilePlan, shape: tuple[int, int]) -> tuple[int, ...]:
    """The column-normalised terms of a delta stack whose V' its first pass keeps in fp32
    for the second, which then skips their product and base add (all of them, or none when
    they would exceed KEEP_BYTES together)."""
    if tile_plan.mode != "delta" or tile_plan.passes < 2:
        return ()
    terms = tuple(k for k, s in enumerate(tile_plan.steps) if s.norm in ("cols", "both"))
    return terms if 4 * shape[0] * shape[1] * len(terms) <= KEEP_BYTES else ()


def tile_rows(fan_in: int) -> int:
    """Rows per tile: about TILE_ELEMENTS elements, a multiple of ROW_ALIGN."""
    rows = max(1, TILE_ELEMENTS // max(1, fan_in)) // ROW_ALIGN * ROW_ALIGN
    return max(ROW_ALIGN, rows)


class _Workspace(threading.local):
    """One thread's tile buffers and kept state, reused from target to target.

    Why: an array over glibc's mmap threshold is a fresh mapping each time, whose every
    page the kernel faults in and zeroes on first touch; the kept fp32 state of a cut chain
    alone (up to KEEP_BYTES a target) made that gigabytes of page faults over a medium
    merge. The buffers live as long as the thread (a merge's workers end with it);
    `release_buffers` frees the calling thread's. A tile handed to a sink is valid only
    during that call.
    """

    def __init__(self) -> None:
        self.slots: dict[str, np.ndarray] = {}

    def array(self, slot: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
        kind = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * kind.itemsize
        buf = self.slots.get(slot)
        if buf is None or buf.nbytes < nbytes:
            buf = self.slots[slot] = np.empty(max(nbytes, 64), np.uint8)
        return buf[:nbytes].view(kind).reshape(shape)


_WORKSPACE = _Workspace()


def release_buffers() -> None:
    """Free the calling thread's tile buffers and kept state (`_Workspace`)."""
    _WORKSPACE.slots.clear()


class Cancelled(Exception):
    """The merge was stopped (another tensor failed, or Ctrl-C) between two tiles."""


@dataclass
class _Columns:
    """The whole-column statistics of one target: finished vectors by key, and the sums
    the current pass accumulates. Keys: ("in", k) column sums of squares of step k's
    incoming weight (blend), ("v", k) of its V' (weighted by BoRA's squared row scales)."""

    fan_in: int
    done: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    sums: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    partial: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    def acc(self, key: tuple[str, int]) -> np.ndarray:
        if key not in self.sums:
            self.sums[key] = np.zeros(self.fan_in, np.float32)
        return self.sums[key]

    def block_partial(self, key: tuple[str, int]) -> np.ndarray:
        if key not in self.partial:
            self.partial[key] = np.zeros(self.fan_in, np.float32)
        return self.partial[key]


class _Target:
    """One target's tile buffers and the chain / delta arithmetic on a tile."""

    def __init__(
        self, tile_plan: TilePlan, shape: tuple[int, int], stored_code: str, out_code: str
    ) -> None:
        self.plan = tile_plan
        self.fan_out, self.fan_in = shape
        self.height = min(tile_rows(self.fan_in), max(1, self.fan_out))
        self.stored_code = stored_code
        self.ops = _ops(stored_code, out_code)
        self.gemm_add = gemm_add() if all(s.blas_ready for s in tile_plan.steps) else None
        h, n = self.height, self.fan_in
        ws = _WORKSPACE
        self.stored_buf = ws.array("stored", (h, n), bits_dtype(stored_code))
        self.v = ws.array("v", (h, n), np.float32)
        self.tmp = ws.array("tmp", (h, n), np.float32)
        self.w0 = ws.array("w0", (h, n), np.float32)
        self.acc = ws.array("acc", (h, n), np.float32)
        self.out = ws.array("out", (h, n), bits_dtype(out_code))
        self.ones_rows = np.ones(h, np.float32)
        self.ones_cols = np.ones(n, np.float32)
        self.cols = _Columns(n)
        # A chain cut across passes keeps V' of the cut in fp32 for the next pass
        # (`keep_state`): the tiles of the passes up to it are computed in place there.
        self.cut = 0
        self.kept: np.ndarray | None = None
        self.kept_rows: np.ndarray | None = None
        if keep_state(tile_plan, shape):
            self.kept = ws.array("kept", shape, np.float32)
            self.kept_rows = ws.array("kept_rows", (self.fan_out,), np.float32)
        self.kept_terms = {k: ws.array(f"kept{k}", shape, np.float32)
                           for k in kept_terms(tile_plan, shape)}  # fmt: skip
        self.kept_term_rows = {k: ws.array(f"kept{k}_rows", (self.fan_out,), np.float32)
                               for k in self.kept_terms}  # fmt: skip
        # blended column magnitudes by step, once their statistic is finished
        self.col_mags: dict[int, np.ndarray] = {}

    # -- pieces shared by both modes ------------------------------------------------------

    def _fresh(self, v: np.ndarray, step: Step, i0: int, i1: int, stored: np.ndarray) -> None:
        """v = W0 + left @ right on the tile, as `kernels._fresh_v`: with one BLAS call
        onto W0's upcast where it gives the same bits (`blas_accumulate`), else the
        product and then the add with the upcast fused in."""
        if self.gemm_add is not None:
            self.ops.upcast(v, stored)
            self.gemm_add(step.left[i0:i1], step.right, v)
        else:
            np.matmul(step.left[i0:i1], step.right, out=v)
            self.ops.add(v, stored)

    @staticmethod
    def _row_norms(v: np.ndarray) -> np.ndarray:
        return np.sqrt(np.einsum("ij,ij->i", v, v))

    def _scales(
        self,
        step: Step,
        k: int,
        v: np.ndarray,
        i0: int,
        i1: int,
        in_norms: np.ndarray | None,
        collect: bool,
    ) -> tuple[np.ndarray | None, np.ndarray | None, bool]:
        """(row scale, column scale, complete) of step k on the tile v = V'_k, as
        `kernels._scales`. in_norms: the incoming tile's row norms when a row magnitude
        blends toward them. A column statistic not yet finished is accumulated (with
        `collect`) and complete is False."""
        norm = step.norm
        rows = None
        if norm in ("rows", "both"):
            name = "magnitude" if norm == "rows" else "magnitude_r"
            mag = step.mags[name][i0:i1]
            if in_norms is not None:  # blend: n + s (m − n), n the incoming rows' norms
                mag = in_norms + step.strength * (mag - in_norms)
            rows = np.asarray(mag / (self._row_norms(v) + EPS), dtype=np.float32)
        if norm not in ("cols", "both"):
            return rows, None, True
        key = ("v", k)
        if key not in self.cols.done:
            if collect:
                weights = self.ones_rows[: i1 - i0] if rows is None else rows * rows
                self.ops.column_squares(self.cols.acc(key), v, weights)
            return rows, None, False
        return rows, self.cols.done[key], True

    def _in_columns(self, k: int, w_in: np.ndarray, i0: int) -> None:
        """Accumulate the column sums of squares of step k's incoming weight (blend), the
        way `kernels._norms_f32` takes them: in NORM_BLOCK row blocks for a non-fp32 W0."""
        key = ("in", k)
        if k == 0 and self.stored_code != "F32":
            partial = self.cols.block_partial(key)
            self.ops.column_squares_blocked(
                self.cols.acc(key), partial, w_in, i0, NORM_BLOCK, self.fan_out
            )
        else:
            self.ops.column_squares(self.cols.acc(key), w_in, self.ones_rows[: len(w_in)])

    def finish_pass(self) -> None:
        """Turn the sums of the pass just made into finished statistics: first the blended
        column magnitudes (n + s (m − n), n = W_in's column norms), then the column scales
        m / (‖V' column‖ + eps) that use them."""
        sums = self.cols.sums
        for (what, k), acc in sums.items():
            if what == "in":
                step = self.plan.steps[k]
                name = "magnitude" if step.norm == "cols" else "magnitude_c"
                n = np.sqrt(acc)
                self.col_mags[k] = n + step.strength * (step.mags[name] - n)
                self.cols.done[(what, k)] = n
        for (what, k), acc in sums.items():
            if what == "v":
                step = self.plan.steps[k]
                name = "magnitude" if step.norm == "cols" else "magnitude_c"
                blended = (name, 0) in step.blend
                mag = self.col_mags[k] if blended else step.mags[name]
                self.cols.done[(what, k)] = np.asarray(mag / (np.sqrt(acc) + EPS), np.float32)
        sums.clear()
        self.cols.partial.clear()

    # -- the two modes ----------------------------------------------------------------------

    def chain_tile(
        self, stored: np.ndarray | None, i0: int, i1: int, resume: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        """W_n = f_n(... f_1(W0)) of one tile, the last step's scales pending: (v, rows,
        cols), or None when the pass stops at a cut (its statistics accumulated; with a
        kept state, V' of the cut and its row scale are kept for the next pass, which
        resumes at `resume` = that cut without reading `stored`)."""
        n = i1 - i0
        # with a kept state the tile is computed where the next pass will resume from it
        v = self.v[:n] if self.kept is None else self.kept[i0:i1]
        tmp = self.tmp[:n]
        rows = cols = None
        steps = self.plan.steps
        for k in range(resume or 0, len(steps)):
            step = steps[k]
            if k == resume:  # resumed: V'_k (v is its kept rows) and its row scale
                assert self.kept is not None
                rows = None if self.kept_rows is None else self.kept_rows[i0:i1]
                if step.norm == "cols":
                    rows = None
                rows, cols, complete = rows, self.cols.done.get(("v", k)), True
            else:
                w_in = v
                if step.blend and k == 0:
                    assert stored is not None
                    w_in = self.w0[:n]
                    self.ops.upcast(w_in, stored)
                blocked = False
                if any(axis == 0 for _, axis in step.blend) and ("in", k) not in self.cols.done:
                    self._in_columns(k, w_in, i0)
                    blocked = True
                in_norms = None
                if any(axis == 1 for _, axis in step.blend):  # before V' overwrites v
                    in_norms = self._row_norms(w_in)
                if k == 0:
                    assert stored is not None
                    self._fresh(v, step, i0, i1, stored)
                elif self.gemm_add is not None:  # v += left @ right, one pass
                    self.gemm_add(step.left[i0:i1], step.right, v)
                else:
                    np.matmul(step.left[i0:i1], step.right, out=tmp)
                    v += tmp
                # a cut's V' column sums are taken in the same pass as its W_in column sums
                rows, cols, complete = self._scales(step, k, v, i0, i1, in_norms, True)
                if blocked or not complete:
                    self.cut = k
                    if self.kept_rows is not None and rows is not None:
                        self.kept_rows[i0:i1] = rows  # (v already is the kept rows)
                    return None
            if k == len(steps) - 1:
                return v, rows, cols
            # the normaliser's scales before the next adapter, as `kernels._apply`
            if rows is not None or cols is not None:
                self.ops.scale_in_place(
                    v,
                    self.ones_rows[:n] if rows is None else rows,
                    self.ones_cols if cols is None else cols,
                )
        raise AssertionError("a chain without steps")

    def delta_tile(self, stored: np.ndarray, i0: int, i1: int) -> np.ndarray | None:
        """W0 + Σ s_i (f_i(W0; 1) − W0) of one tile, as `kernels.delta_pending`; None
        when the pass only accumulates the normalised terms' column statistics."""
        n = i1 - i0
        acc, w0 = self.acc[:n], self.w0[:n]
        complete = all(("v", k) in self.cols.done or s.norm not in ("cols", "both")
                       for k, s in enumerate(self.plan.steps))  # fmt: skip
        if complete:
            self.ops.upcast(w0, stored)
        first = True
        for k, step in enumerate(self.plan.steps):
            if not complete and step.norm not in ("cols", "both"):
                continue  # this pass only collects column statistics
            kept = self.kept_terms.get(k)
            v = self.v[:n] if kept is None else kept[i0:i1]
            if step.norm is None:  # f(W0; 1) − W0 = c s ΔW: the product itself
                if self.gemm_add is not None:  # acc (W0 first) += left @ right
                    if first:
                        np.copyto(acc, w0)
                    self.gemm_add(step.left[i0:i1], step.right, acc)
                else:
                    np.matmul(step.left[i0:i1], step.right, out=v)
                    self.ops.add_plain_term(acc, v, w0, first)
            elif kept is not None and complete:  # V' and its row scale as the first pass kept
                rows = self.kept_term_rows[k][i0:i1] if step.norm == "both" else None
                self._add_term(acc, v, rows, self.cols.done[("v", k)], w0, step, first)
            else:  # f(W0; 1) − W0, weighted by s
                self._fresh(v, step, i0, i1, stored)
                rows, cols, _ = self._scales(step, k, v, i0, i1, None, not complete)
                if not complete:
                    if kept is not None and rows is not None:
                        self.kept_term_rows[k][i0:i1] = rows
                    continue
                self._add_term(acc, v, rows, cols, w0, step, first)
            first = False
        return acc if complete else None

    def _add_term(
        self,
        acc: np.ndarray,
        v: np.ndarray,
        rows: np.ndarray | None,
        cols: np.ndarray | None,
        w0: np.ndarray,
        step: Step,
        first: bool,
    ) -> None:
        """A normalised delta term s ((V' · rows) · cols − W0) into the sum (one pass)."""
        self.ops.add_delta_term(
            acc,
            v,
            self.ones_rows[: len(v)] if rows is None else rows,
            self.ones_cols if cols is None else cols,
            w0,
            step.strength,
            first,
        )


def merge_rows(
    tile_plan: TilePlan,
    shape: tuple[int, int],
    stored_code: str,
    out_code: str,
    source: RowSource,
    sink: RowSink,
    stop: threading.Event | None = None,
) -> bool:
    """Merge one target tile by tile; True when every output value is finite.

    stored_code / out_code: the base's and the output's dtype codes (STORED_CODES /
    OUTPUT_CODES). The source is read once per pass (`TilePlan.passes`); the sink receives
    each output tile once, in the last pass. `stop` is checked between tiles (raises
    Cancelled).
    """
    t = _Target(tile_plan, shape, stored_code, out_code)
    starts = range(0, t.fan_out, t.height)
    finite = True
    resume: int | None = None  # the cut a pass resumes at from the kept state
    with np.errstate(all="ignore"):
        while True:
            wrote = stopped = False
            for i0 in starts:
                if stop is not None and stop.is_set():
                    raise Cancelled
                i1 = min(i0 + t.height, t.fan_out)
                n = i1 - i0
                # a pass resumed from the kept state reads nothing from the base
                stored = None if resume is not None else source(i0, i1, t.stored_buf[:n])
                out = t.out[:n]
                if not tile_plan.steps:  # every adapter bypassed: W0, cast
                    assert stored is not None
                    t.ops.upcast(t.v[:n], stored)
                    finite &= bool(t.ops.scale(t.v[:n], t.ones_rows[:n], t.ones_cols, out))
                elif tile_plan.mode == "delta":
                    assert stored is not None
                    acc = t.delta_tile(stored, i0, i1)
                    if acc is None:
                        stopped = True
                        continue
                    finite &= bool(t.ops.scale(acc, t.ones_rows[:n], t.ones_cols, out))
                else:
                    got = t.chain_tile(stored, i0, i1, resume)
                    if got is None:
                        stopped = True
                        continue
                    v, rows, cols = got
                    rows = t.ones_rows[:n] if rows is None else rows
                    cols = t.ones_cols if cols is None else cols
                    finite &= bool(t.ops.scale(v, rows, cols, out))
                wrote = True
                sink(i0, out)
            if not stopped:
                return finite
            if wrote:  # a cut is the same for every tile: a pass stops all or none
                raise AssertionError("a tile pass both stopped and wrote")
            t.finish_pass()
            resume = t.cut if t.kept is not None else None


def merge_array(
    w2d: np.ndarray,
    stack: Sequence[tuple[NumpyAdapter, float]],
    semantics: str,
    out_code: str,
    stop: threading.Event | None = None,
) -> tuple[np.ndarray, bool]:
    """(merged canonical 2-D weight in dtype `out_code`, all values finite) of an in-memory
    W0: the tiles read from the array and write into the result."""
    stored_code = dtypes.code_for(w2d.dtype)
    if stored_code not in STORED_CODES:
        w2d, stored_code = dtypes.to_float32(w2d), "F32"
    w2d = np.ascontiguousarray(w2d)
    view = w2d if stored_code == "F32" else w2d.view(np.uint16)
    result = np.empty(w2d.shape, dtypes.numpy_dtype(out_code))
    bits = result if out_code == "F32" else result.view(np.uint16)
    shape = (int(w2d.shape[0]), int(w2d.shape[1]))

    def sink(i0: int, rows: np.ndarray) -> None:
        bits[i0 : i0 + len(rows)] = rows

    finite = merge_rows(
        plan(stack, semantics), shape, stored_code, out_code,
        lambda i0, i1, _buf: view[i0:i1], sink, stop,
    )  # fmt: skip
    return result, finite
