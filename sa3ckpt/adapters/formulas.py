"""The SA3 adapter math in MLX: merged weights and deltas for every adapter type.

Formulas are the official SA3 PyTorch ones (../shared/reference/adapters.md). Everything is
computed on the canonical 2-D (fan_out, fan_in) view in float32 and cast once at the end;
Conv1d callers convert layouts with `sa3ckpt.layout` before and after.

Two multi-adapter semantics exist in the wild and both are named here:
- runtime: adapters chain in order, W_i = f_i(W_{i-1}; s_i) (official strength slider, sa3.cpp)
- delta:   W = W0 + Σ s_i (f_i(W0; 1) − W0) (official merge_loras_into_base_model)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import mlx.core as mx

from sa3ckpt.adapters.types import AdapterType

EPS = 1e-12


@dataclass(frozen=True)
class TargetAdapter:
    """One adapter on one target: its type, scale c = alpha / rank, and fp32 parameters.

    For XS types `params` must hold the bases U (fan_out, r) and V (fan_in, r); callers
    resolve them from the checkpoint, a bases file or the base weight (see `checkpoint`).
    Magnitudes are 1-D (legacy 2-D magnitudes are squeezed on load).
    """

    kind: AdapterType
    scale: float
    params: Mapping[str, mx.array]

    def low_rank(self) -> mx.array:
        """The un-scaled low-rank update: B @ A, or U @ M_xs @ V.T for XS types."""
        p = self.params
        if self.kind.xs:
            missing = [name for name in ("U", "V") if name not in p]
            if missing:
                raise ValueError(f"{self.kind.name} needs XS bases {'/'.join(missing)}")
            return p["U"] @ p["M_xs"] @ p["V"].T
        return p["lora_B"] @ p["lora_A"]


def row_norm(v: mx.array) -> mx.array:
    """L2 norm of every row, kept 2-D (fan_out, 1)."""
    return mx.sqrt(mx.sum(mx.square(v), axis=1, keepdims=True))


def col_norm(v: mx.array) -> mx.array:
    """L2 norm of every column, kept 2-D (1, fan_in)."""
    return mx.sqrt(mx.sum(mx.square(v), axis=0, keepdims=True))


def _no_norm(v: mx.array, p: Mapping[str, mx.array]) -> mx.array:
    return v


def _rows(v: mx.array, p: Mapping[str, mx.array]) -> mx.array:
    return p["magnitude"][:, None] * v / (row_norm(v) + EPS)


def _cols(v: mx.array, p: Mapping[str, mx.array]) -> mx.array:
    return p["magnitude"][None, :] * v / (col_norm(v) + EPS)


def _both(v: mx.array, p: Mapping[str, mx.array]) -> mx.array:
    r = p["magnitude_r"][:, None] * v / (row_norm(v) + EPS)
    return p["magnitude_c"][None, :] * r / (col_norm(r) + EPS)


# How each norm direction turns V' = W0 + c s ΔW into the adapted weight.
NORMALIZERS: dict[str | None, Callable[[mx.array, Mapping[str, mx.array]], mx.array]] = {
    None: _no_norm,
    "rows": _rows,
    "cols": _cols,
    "both": _both,
}


def adapted_weight(w0: mx.array, adapter: TargetAdapter, strength: float) -> mx.array:
    """f(W0; s): the weight one adapter produces at strength s, in float32.

    DoRA/BoRA types bypass exactly at s == 0 (the official code returns W0 untouched there,
    rather than renormalising W0 with the stored magnitudes).
    """
    w0 = w0.astype(mx.float32)
    if strength == 0 and adapter.kind.is_weight_decomposed:
        return w0
    v = w0 + (adapter.scale * strength) * adapter.low_rank().astype(mx.float32)
    return NORMALIZERS[adapter.kind.norm](v, adapter.params)


def merge_runtime(w0: mx.array, adapters: Sequence[tuple[TargetAdapter, float]]) -> mx.array:
    """Chain adapters in order: W_i = f_i(W_{i-1}; s_i)."""
    w = w0.astype(mx.float32)
    for adapter, strength in adapters:
        w = adapted_weight(w, adapter, strength)
    return w


def merge_delta(w0: mx.array, adapters: Sequence[tuple[TargetAdapter, float]]) -> mx.array:
    """W0 + Σ s_i (f_i(W0; 1) − W0): order-independent, each adapter judged against W0."""
    base = w0.astype(mx.float32)
    w = base
    for adapter, strength in adapters:
        w = w + strength * (adapted_weight(base, adapter, 1.0) - base)
    return w


SEMANTICS: dict[str, Callable[[mx.array, Sequence[tuple[TargetAdapter, float]]], mx.array]] = {
    "runtime": merge_runtime,
    "delta": merge_delta,
}

SEMANTICS_HELP: dict[str, str] = {
    "runtime": "adapters chained in order, strength inside each (official slider, sa3.cpp)",
    "delta": "W0 + Σ s·(f(W0; 1) − W0), order-independent (official merge_loras_into_base_model)",
}


def merge(
    w0: mx.array,
    adapters: Sequence[tuple[TargetAdapter, float]],
    semantics: str = "runtime",
    dtype: mx.Dtype | None = None,
) -> mx.array:
    """Merged 2-D weight under the named semantics, cast once to `dtype` (default: W0's)."""
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown semantics {semantics!r} (known: {', '.join(SEMANTICS)})")
    merged = SEMANTICS[semantics](w0, adapters)
    return merged.astype(dtype if dtype is not None else w0.dtype)


def weight_delta(
    w0: mx.array,
    adapters: Sequence[tuple[TargetAdapter, float]],
    semantics: str = "runtime",
) -> mx.array:
    """ΔW = merged − W0 in float32 (what inspect --stats and combine measure)."""
    return SEMANTICS[semantics](w0, adapters) - w0.astype(mx.float32)
