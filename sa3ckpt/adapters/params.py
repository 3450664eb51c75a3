"""The trainable parameter set of one target: fresh values, XS bases, hyper-parameter checks.

Fresh parameters follow the official initialisation (../shared/reference/adapters.md): A is
kaiming-uniform, B and M_xs are zero and magnitudes are the norms of W0 (taken from the
formulas' own normaliser), so a freshly injected model reproduces the base model's output to
fp32 rounding. XS bases U, V are rebuilt from the base weight and kept frozen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from sa3ckpt.adapters.formulas import identity_magnitudes
from sa3ckpt.adapters.types import BASIS_PARAMS, AdapterType
from sa3ckpt.adapters.xs_bases import svd_bases


def _kaiming_uniform(shape: tuple[int, ...]) -> mx.array:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): kaiming-uniform with a = sqrt(5), as torch does."""
    bound = 1.0 / math.sqrt(shape[-1])
    return mx.random.uniform(-bound, bound, shape, dtype=mx.float32)


def _zeros(shape: tuple[int, ...]) -> mx.array:
    return mx.zeros(shape, dtype=mx.float32)


# How each low-rank parameter starts; magnitudes come from `identity_magnitudes`.
INITIALISERS: dict[str, Callable[[tuple[int, ...]], mx.array]] = {
    "lora_A": _kaiming_uniform,
    "lora_B": _zeros,
    "M_xs": _zeros,
}


def init_params(kind: AdapterType, w0: mx.array, rank: int) -> dict[str, mx.array]:
    """Fresh float32 parameters of one target, per the official initialisation.

    A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), B = 0, M_xs = 0, magnitudes = norms of W0 along
    the type's norm direction, so that f(W0; s) == W0 at the start. `w0` is the canonical
    2-D base weight; it is upcast to float32 first.
    """
    w0 = w0.astype(mx.float32)
    fan_out, fan_in = (int(n) for n in w0.shape)
    out = {
        name: INITIALISERS[name](kind.param_shape(name, fan_out, fan_in, rank))
        for name in kind.required
        if name in INITIALISERS
    }
    out.update(identity_magnitudes(w0, kind))
    return out


def xs_bases(w0: mx.array, rank: int) -> dict[str, mx.array]:
    """U, V of one target from its canonical 2-D base weight, as the official trainer does.

    The bases come from W0 exactly as stored (fp16 stays fp16 values; the upcast to fp32 is
    exact).
    """
    u, v = svd_bases(np.array(w0), rank)
    return dict(zip(BASIS_PARAMS, (mx.array(u), mx.array(v)), strict=True))


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number))


def check_hyper(rank: Any, alpha: Any, dropout: Any, strength: Any) -> None:
    """Reject hyper-parameters that would make a silently broken adapter."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    for label, value in (("alpha", alpha), ("strength", strength)):
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
    if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
