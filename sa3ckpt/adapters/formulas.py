"""The SA3 adapter math in MLX: merged weights and deltas for every adapter type.

Formulas are the official SA3 PyTorch ones (../shared/reference/adapters.md). Everything is
computed on the canonical 2-D (fan_out, fan_in) view in float32 and cast once at the end;
Conv1d callers convert layouts with `sa3ckpt.layout` before and after.

The DoRA/BoRA normaliser is written once (`NORM_STEPS`, `_normalise`): the merged weight, the
dropout split of the trainable modules and their fresh magnitudes all walk it. (The NumPy
streaming kernel in `kernels` keeps its own fused copy; it is tested against the same
float64 reference.)

Three fixed-strength semantics exist in the wild and all are named here:
- runtime: adapters chain in order, W_i = f_i(W_{i-1}; s_i) (official strength slider, sa3.cpp)
- blend:   the same chain, but each DoRA/BoRA magnitude m becomes n + s (m − n), n the matching
           norms of the adapter's incoming weight (official PyTorch with PR #102)
- delta:   W = W0 + Σ s_i (f_i(W0; 1) − W0) (official merge_loras_into_base_model)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import mlx.core as mx

from sa3ckpt.adapters.types import AdapterType
from sa3ckpt.semantics import info as semantics_info

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


# --------------------------------------------------------------------------- the normaliser

# Each norm direction as the steps of its normaliser, in order: which magnitude parameter
# sets the norms of which direction. BoRA normalises rows first, then the columns of the
# row-normalised R. Every use of the normaliser (the merged weight, the dropout split, the
# fresh magnitudes of a trainable module) walks this one table.
NORM_STEPS: dict[str | None, tuple[tuple[str, str], ...]] = {
    None: (),
    "rows": (("magnitude", "rows"),),
    "cols": (("magnitude", "cols"),),
    "both": (("magnitude_r", "rows"), ("magnitude_c", "cols")),
}
_NORMS: dict[str, Callable[[mx.array], mx.array]] = {"rows": row_norm, "cols": col_norm}


@dataclass(frozen=True)
class Scales:
    """The elementwise factor P = rows ⊙ cols a normaliser applies to V'; None stands for 1.

    rows is (fan_out, 1), cols is (1, fan_in). Keeping P as factors lets the dropout path
    scale W0 and the low-rank update separately, with the gradient through the norms (which
    depend on V', hence on the adapter).
    """

    rows: mx.array | None = None
    cols: mx.array | None = None

    def apply(self, w: mx.array) -> mx.array:
        """P ⊙ w."""
        if self.rows is not None:
            w = self.rows * w
        if self.cols is not None:
            w = w * self.cols
        return w


# The target norms of one normaliser step: (magnitude parameter, the current norms, kept 2-D)
# -> norms the step rescales to, broadcastable like the current norms.
TargetNorms = Callable[[str, mx.array], mx.array]


def _normalise(
    v: mx.array, kind: AdapterType, target: TargetNorms
) -> tuple[mx.array, Scales, dict[str, mx.array]]:
    """Run the type's normaliser on V': (P ⊙ V', P, the norms each step found, 1-D)."""
    w = v
    factors: dict[str, mx.array] = {}
    found: dict[str, mx.array] = {}
    for param, direction in NORM_STEPS[kind.norm]:
        norms = _NORMS[direction](w)
        found[param] = norms.reshape(-1)
        factors[direction] = target(param, norms) / (norms + EPS)
        w = factors[direction] * w
    return w, Scales(**factors), found


def _targets(magnitudes: Mapping[str, mx.array]) -> TargetNorms:
    """Target norms given by magnitude vectors (reshaped to the norms' 2-D orientation)."""
    return lambda param, norms: magnitudes[param].reshape(norms.shape)


def norm_scales(v: mx.array, kind: AdapterType, magnitudes: Mapping[str, mx.array]) -> Scales:
    """P, the factor the type's normaliser applies to V' with these magnitudes."""
    return _normalise(v, kind, _targets(magnitudes))[1]


def identity_magnitudes(w: mx.array, kind: AdapterType) -> dict[str, mx.array]:
    """The float32 magnitudes for which the type's normaliser leaves `w` as it is (to EPS).

    Row and/or column norms of `w` (BoRA: row norms, then the column norms of the
    row-normalised R); the official initialisation of a fresh adapter.
    """
    return _normalise(w.astype(mx.float32), kind, lambda param, norms: norms)[2]


# --------------------------------------------------------------------------- one adapter

# Chained semantics differ only in the magnitudes one adapter uses at strength s, given the
# weight that comes into it: runtime uses the stored ones, blend interpolates them toward the
# incoming weight's norms. This is the one place such a rule lives: `adapted_weight` and
# `decompose_weight` (the merge and the trainable modules) both read the magnitudes from
# here. (`delta` is not a chain: it evaluates each adapter at s = 1.)
MagnitudeRule = Callable[[mx.array, TargetAdapter, float], Mapping[str, mx.array]]


def stored_magnitudes(
    w_in: mx.array, adapter: TargetAdapter, strength: float
) -> Mapping[str, mx.array]:
    """Runtime semantics: the magnitudes as stored, whatever the strength."""
    return adapter.params


def blended_magnitudes(
    w_in: mx.array, adapter: TargetAdapter, strength: float
) -> Mapping[str, mx.array]:
    """Blend semantics: each magnitude m becomes n + s (m − n), n the plain norms of W_in.

    Every normaliser step blends toward the norms of the incoming weight itself in that
    step's direction (BoRA: m_r toward W_in's row norms, m_c toward W_in's column norms, not
    those of the row-normalised intermediate). s == 1 is the stored m exactly, with no norm
    computed; s is not clamped. Types without magnitudes keep their parameters as they are.
    """
    steps = NORM_STEPS[adapter.kind.norm]
    if strength == 1 or not steps:
        return adapter.params
    blended = dict(adapter.params)
    w32 = w_in.astype(mx.float32)
    for param, direction in steps:
        n = _NORMS[direction](w32).reshape(-1)
        blended[param] = n + strength * (adapter.params[param].astype(mx.float32) - n)
    return blended


CHAIN_MAGNITUDES: dict[str, MagnitudeRule] = {
    "runtime": stored_magnitudes,
    "blend": blended_magnitudes,
}


def bypassed(adapter: TargetAdapter, strength: float) -> bool:
    """DoRA/BoRA at s == 0: the official code returns W_in untouched, not renormalised."""
    return strength == 0 and adapter.kind.is_weight_decomposed


def _scaled_update(adapter: TargetAdapter, strength: float) -> mx.array:
    """c s ΔW in float32."""
    return (adapter.scale * strength) * adapter.low_rank().astype(mx.float32)


def _magnitudes(
    w_in: mx.array, adapter: TargetAdapter, strength: float, semantics: str
) -> Mapping[str, mx.array]:
    if semantics not in CHAIN_MAGNITUDES:
        raise ValueError(
            f"semantics {semantics!r} does not chain single adapters "
            f"(chained: {', '.join(CHAIN_MAGNITUDES)})"
        )
    return CHAIN_MAGNITUDES[semantics](w_in, adapter, strength)


def adapted_weight(
    w0: mx.array, adapter: TargetAdapter, strength: float, semantics: str = "runtime"
) -> mx.array:
    """f(W_in; s): the weight one adapter produces at strength s, in float32.

    DoRA/BoRA types bypass exactly at s == 0 (the official code returns W0 untouched there,
    rather than renormalising W0 with the stored magnitudes).
    """
    w0 = w0.astype(mx.float32)
    if bypassed(adapter, strength):
        return w0
    v = w0 + _scaled_update(adapter, strength)
    magnitudes = _magnitudes(w0, adapter, strength, semantics)
    return _normalise(v, adapter.kind, _targets(magnitudes))[0]


def decompose_weight(
    w0: mx.array, adapter: TargetAdapter, strength: float, semantics: str = "runtime"
) -> tuple[mx.array, mx.array]:
    """(P ⊙ W0, P ⊙ c s ΔW), float32, whose sum is `adapted_weight(w0, adapter, strength)`.

    This is the split the dropout path needs: the base part sees the clean input, the
    adapter part the dropped-out one. DoRA/BoRA types at s == 0 return (W0, 0), the exact
    bypass.
    """
    w0 = w0.astype(mx.float32)
    if bypassed(adapter, strength):
        return w0, mx.zeros_like(w0)
    delta = _scaled_update(adapter, strength)
    magnitudes = _magnitudes(w0, adapter, strength, semantics)
    scales = norm_scales(w0 + delta, adapter.kind, magnitudes)
    return scales.apply(w0), scales.apply(delta)


# --------------------------------------------------------------------------- several adapters


def merge_chain(
    w0: mx.array, adapters: Sequence[tuple[TargetAdapter, float]], semantics: str
) -> mx.array:
    """Chain adapters in order, W_i = f_i(W_{i-1}; s_i), under a chained semantics."""
    w = w0.astype(mx.float32)
    for adapter, strength in adapters:
        w = adapted_weight(w, adapter, strength, semantics)
    return w


def merge_runtime(w0: mx.array, adapters: Sequence[tuple[TargetAdapter, float]]) -> mx.array:
    """Chain adapters in order: W_i = f_i(W_{i-1}; s_i), stored magnitudes."""
    return merge_chain(w0, adapters, "runtime")


def merge_blend(w0: mx.array, adapters: Sequence[tuple[TargetAdapter, float]]) -> mx.array:
    """Chain adapters in order, magnitudes blended toward each incoming weight's norms."""
    return merge_chain(w0, adapters, "blend")


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
    "blend": merge_blend,
}

# The words for each semantics (meaning, the runtimes that use it) live in one table,
# `sa3ckpt.semantics.SEMANTICS_TABLE`, which help, docs, TUI and provenance read.
SEMANTICS_HELP: dict[str, str] = {name: semantics_info(name).line() for name in SEMANTICS}


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
