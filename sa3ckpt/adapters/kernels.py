"""The adapter math as an in-place NumPy float32 kernel, for streaming merges.

`formulas` (MLX) is the differentiable implementation that training and live models use.
Merging a 2.9 GB base is a different job: it is bound by memory passes and fp16 <-> fp32
conversions, and NumPy ufuncs with `out=` fuse a conversion into the arithmetic, reuse
buffers and release the GIL (two targets merge in parallel), where MLX's CPU backend runs
the same passes 2-3x slower. Same formulas, float32 accumulation, one final cast; both
implementations are tested against the same independent float64 reference
(tests/reference_math.py).

Passes over a weight, for the common single DoRA adapter: the low-rank GEMM writes V' with
c·s folded into B; the base is added with its upcast fused in; one einsum gives the norms;
the normaliser's scale is fused into the final cast. Finiteness of the output is certified
from the norms (|w_ij| <= |a_i| · ‖v_i‖ · max|g|) and only checked element-wise when the
bound cannot rule out an overflow. Blend semantics adds one norm pass over each adapter's
incoming weight per magnitude (BoRA: a row pass and a column pass), skipped at s == 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.adapters.types import AdapterType

EPS = np.float32(1e-12)
Scales = tuple[np.ndarray | None, np.ndarray | None]


@dataclass(frozen=True)
class NumpyAdapter:
    """One adapter on one target for the NumPy kernel: type, c = alpha/rank, fp32 params."""

    kind: AdapterType
    scale: float
    params: Mapping[str, np.ndarray]

    def low_rank(self, factor: float = 1.0) -> np.ndarray:
        """factor · ΔW as a fresh float32 array, the factor folded into the small operand."""
        p = self.params
        f = np.float32(factor)
        if self.kind.xs:
            if "U" not in p or "V" not in p:
                raise ValueError(f"{self.kind.name} needs XS bases U/V")
            return (p["U"] @ (p["M_xs"] * f)) @ p["V"].T
        return (p["lora_B"] * f) @ p["lora_A"]


def _norms(v: np.ndarray, axis: int) -> np.ndarray:
    """L2 norms along an axis without a temporary the size of v."""
    return np.sqrt(np.einsum("ij,ij->i" if axis == 1 else "ij,ij->j", v, v))


def _scales(v: np.ndarray, kind: AdapterType, mags: Mapping[str, np.ndarray]) -> Scales:
    """(row scale, column scale) the type's normaliser applies to V' (None = 1)."""
    norm = kind.norm
    if norm is None:
        return None, None
    if norm == "rows":
        return mags["magnitude"] / (_norms(v, 1) + EPS), None
    if norm == "cols":
        return None, mags["magnitude"] / (_norms(v, 0) + EPS)
    rows = mags["magnitude_r"] / (_norms(v, 1) + EPS)
    # column norms of R = rows[:, None] * v without forming R: sqrt(Σ_i rows_i² v_ij²)
    cols_sq = np.einsum("ij,ij,i->j", v, v, rows * rows)
    return rows, mags["magnitude_c"] / (np.sqrt(cols_sq) + EPS)


NORM_BLOCK = 1024  # rows upcast at a time when a non-fp32 weight's norms are taken


def _norms_f32(w: np.ndarray, axis: int) -> np.ndarray:
    """Float32 L2 norms of any floating weight along an axis, upcasting one row block at a time.

    An fp16/bf16 base is never squared in its own precision, and never copied whole.
    """
    if w.dtype == np.float32:
        return _norms(w, axis)
    if axis == 1:
        parts = [
            _norms(dtypes.to_float32(w[i : i + NORM_BLOCK]), 1)
            for i in range(0, len(w), NORM_BLOCK)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
    sq = np.zeros(w.shape[1], np.float32)
    for i in range(0, len(w), NORM_BLOCK):
        block = dtypes.to_float32(w[i : i + NORM_BLOCK])
        sq += np.einsum("ij,ij->j", block, block)
    return np.sqrt(sq)


def _apply(v: np.ndarray, scales: Scales) -> None:
    rows, cols = scales
    if rows is not None:
        v *= rows[:, None]
    if cols is not None:
        v *= cols[None, :]


def _fresh_v(w0: np.ndarray, adapter: NumpyAdapter, strength: float) -> np.ndarray:
    """V' = W0 + c s ΔW as a new float32 array, W0's upcast fused into the add."""
    v = adapter.low_rank(adapter.scale * strength)
    np.add(v, w0, out=v, casting="unsafe")
    return v


# A chained semantics differs from another only in the magnitudes an adapter uses at strength
# s given its incoming weight W_in (the formulas' CHAIN_MAGNITUDES, here over NumPy arrays).
MagnitudeRule = Callable[[np.ndarray, NumpyAdapter, float], Mapping[str, np.ndarray]]


def stored_magnitudes(
    w_in: np.ndarray, adapter: NumpyAdapter, strength: float
) -> Mapping[str, np.ndarray]:
    """Runtime semantics: the magnitudes as stored."""
    return adapter.params


# The norm direction each magnitude parameter blends toward (plain norms of W_in).
BLEND_AXES: dict[str | None, tuple[tuple[str, int], ...]] = {
    None: (),
    "rows": (("magnitude", 1),),
    "cols": (("magnitude", 0),),
    "both": (("magnitude_r", 1), ("magnitude_c", 0)),
}


def blended_magnitudes(
    w_in: np.ndarray, adapter: NumpyAdapter, strength: float
) -> Mapping[str, np.ndarray]:
    """Blend semantics: m -> n + s (m − n), n the row / column norms of W_in itself.

    At s == 1 the stored magnitudes are returned untouched (bit-identical to runtime). BoRA's
    column magnitude needs W_in's column norms: a full pass over the columns.
    """
    axes = BLEND_AXES[adapter.kind.norm]
    if strength == 1 or not axes:
        return adapter.params
    s = np.float32(strength)
    blended = dict(adapter.params)
    for name, axis in axes:
        n = _norms_f32(w_in, axis)
        blended[name] = n + s * (adapter.params[name] - n)
    return blended


def _chain_pending(
    w0: np.ndarray, stack: Sequence[tuple[NumpyAdapter, float]], rule: MagnitudeRule
) -> tuple[np.ndarray | None, Scales]:
    """Chain W_i = f_i(W_{i-1}; s_i); the last normaliser's scales are returned, not applied.

    None for the weight means no adapter changed it (all bypassed): the result is W0.
    """
    w: np.ndarray | None = None
    pending: Scales = (None, None)
    for adapter, strength in stack:
        if strength == 0 and adapter.kind.is_weight_decomposed:
            continue  # exact bypass
        if w is None:
            mags = rule(w0, adapter, strength)
            w = _fresh_v(w0, adapter, strength)
        else:
            _apply(w, pending)
            mags = rule(w, adapter, strength)
            w += adapter.low_rank(adapter.scale * strength)
        pending = _scales(w, adapter.kind, mags)
    return w, pending


def runtime_pending(
    w0: np.ndarray, stack: Sequence[tuple[NumpyAdapter, float]]
) -> tuple[np.ndarray | None, Scales]:
    """Runtime: the chain with stored magnitudes."""
    return _chain_pending(w0, stack, stored_magnitudes)


def blend_pending(
    w0: np.ndarray, stack: Sequence[tuple[NumpyAdapter, float]]
) -> tuple[np.ndarray | None, Scales]:
    """Blend: the chain with each magnitude blended toward its incoming weight's norms."""
    return _chain_pending(w0, stack, blended_magnitudes)


def delta_pending(
    w0: np.ndarray, stack: Sequence[tuple[NumpyAdapter, float]]
) -> tuple[np.ndarray | None, Scales]:
    """W0 + Σ s_i (f_i(W0; 1) − W0); None when every term is zero (the result is W0)."""
    acc: np.ndarray | None = None
    for adapter, strength in stack:
        if strength == 0:
            continue
        if not adapter.kind.is_weight_decomposed:  # f(W0; 1) − W0 is exactly c ΔW
            term = adapter.low_rank(adapter.scale * strength)
        else:
            term = _fresh_v(w0, adapter, 1.0)
            _apply(term, _scales(term, adapter.kind, adapter.params))
            np.subtract(term, w0, out=term, casting="unsafe")
            term *= np.float32(strength)
        if acc is None:
            acc = term
            np.add(acc, w0, out=acc, casting="unsafe")
        else:
            acc += term
    return acc, (None, None)


PENDING = {"runtime": runtime_pending, "delta": delta_pending, "blend": blend_pending}


def merge_f32(
    w0: np.ndarray, stack: Sequence[tuple[NumpyAdapter, float]], semantics: str
) -> np.ndarray:
    """The merged weight in float32 (for tests and callers that want it uncast)."""
    w, scales = PENDING[semantics](w0, stack)
    if w is None:
        return w0.astype(np.float32)
    _apply(w, scales)
    return w


def _certified_finite(w: np.ndarray, scales: Scales, out_max: float) -> bool:
    """True when |output| <= out_max for sure, from row norms and the pending scales."""
    rows, cols = scales
    bound = _norms(w, 1)
    if rows is not None:
        bound = bound * np.abs(rows)
    if cols is not None:
        bound = bound * np.max(np.abs(cols), initial=0.0)
    top = float(np.max(bound, initial=0.0))
    return np.isfinite(top) and top <= out_max


def merge_to(
    w0: np.ndarray, stack: Sequence[tuple[NumpyAdapter, float]], semantics: str, code: str
) -> tuple[np.ndarray, bool]:
    """(merged weight cast once to dtype `code`, all output values finite).

    Floating-point warnings are silenced: non-finite results are reported by the flag,
    which callers turn into a one-line error.
    """
    with np.errstate(all="ignore"):
        return _merge_block(w0, stack, semantics, dtypes.numpy_dtype(code))


def _merge_block(
    w0: np.ndarray,
    stack: Sequence[tuple[NumpyAdapter, float]],
    semantics: str,
    target: np.dtype,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    w, scales = PENDING[semantics](w0, stack)
    if out is None:
        out = np.empty(w0.shape, dtype=target)
    if w is None:  # nothing applied: W0 itself, cast only if asked
        np.copyto(out, w0, casting="unsafe")
        return out, bool(np.isfinite(dtypes.to_float32(out)).all())
    rows, cols = scales
    if rows is not None and cols is not None:
        w *= rows[:, None]
        scales = (None, cols)
    rows, cols = scales
    if rows is not None:
        np.multiply(w, rows[:, None], out=out, casting="unsafe")
    elif cols is not None:
        np.multiply(w, cols[None, :], out=out, casting="unsafe")
    else:
        np.copyto(out, w, casting="unsafe")
    if _certified_finite(w, scales, dtypes.finfo_max(dtypes.code_for(target))):
        return out, True
    return out, bool(np.isfinite(dtypes.to_float32(out)).all())
