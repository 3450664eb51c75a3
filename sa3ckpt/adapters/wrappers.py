"""Trainable SA3 adapters as MLX modules: one wrapper per layer kind, over one shared base.

A wrapper keeps the original layer as a frozen child (`base`) and holds the adapter's own
parameters under their canonical names (`lora_A`, `lora_B`, `M_xs`, `magnitude`,
`magnitude_r`, `magnitude_c`), so the path of every trainable array already says which file
key it becomes. The weights come from `sa3ckpt.adapters.formulas` (`adapted_weight` at
inference, `decompose_weight` for the dropout path), the same code that merges and measures
adapters, so a trained module and its saved checkpoint cannot disagree about the math; the
wrappers hold no normaliser of their own.

Dropout follows the official code: it is applied to the input of the adapter path only. For
DoRA/BoRA types the adapted weight is written as P ⊙ (W0 + c s ΔW), where P is the
elementwise scale the type's normaliser applies, and the layer output as
layer(x, P ⊙ W0) + layer(dropout(x), P ⊙ c s ΔW).

The strength semantics (`runtime` by default, or `blend`) says which magnitudes a strength
other than 1 uses; each wrapper sees the base layer's weight as its incoming weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import mlx.core as mx
import mlx.nn as nn

from sa3ckpt.adapters.formulas import (
    CHAIN_MAGNITUDES,
    TargetAdapter,
    adapted_weight,
    bypassed,
    decompose_weight,
)
from sa3ckpt.adapters.params import check_hyper, init_params, xs_bases
from sa3ckpt.adapters.types import BASIS_PARAMS, AdapterType
from sa3ckpt.adapters.types import adapter_type as lookup_type
from sa3ckpt.layout import LAYOUTS, base_layout


def check_semantics(semantics: str) -> None:
    """A live module runs one adapter on its own base weight: only chained semantics apply.

    (`delta` is a rule for merging several adapters against one W0, not a module's forward.)
    """
    if semantics not in CHAIN_MAGNITUDES:
        raise ValueError(
            f"adapter modules take semantics {' or '.join(CHAIN_MAGNITUDES)}, not {semantics!r}"
        )


class WeightView(NamedTuple):
    """How a stored layer weight reaches the canonical 2-D (fan_out, fan_in) view and back."""

    to_2d: Callable[[mx.array], mx.array]
    from_2d: Callable[[mx.array], mx.array]


def weight_view(layout: str, weight: mx.array) -> WeightView:
    """The canonical-view converters for a weight stored in `layout`.

    The only place the wrappers touch `sa3ckpt.layout`; the layout row knows its kernel axis.
    """
    row = LAYOUTS[layout]
    kernel_size = row.kernel_size(tuple(weight.shape))
    return WeightView(row.to_canonical, lambda w2d: row.from_canonical(w2d, kernel_size))


class AdaptedLayer(nn.Module):
    """What every wrapper shares: checks, parameters, the adapter views and the forward.

    Subclasses name the layer they wrap (`LAYER`) and its weight layout (`LAYOUT`) and say
    how to run it with a canonical 2-D weight (`_layer`, `_base_fp32`).
    """

    LAYER: ClassVar[type[nn.Module]]
    LAYOUT: ClassVar[str]

    def __init__(
        self,
        base: nn.Module,
        adapter_type: str,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        strength: float = 1.0,
        semantics: str = "runtime",
    ) -> None:
        super().__init__()
        if not isinstance(base, self.LAYER):
            raise ValueError(
                f"{type(self).__name__} wraps an nn.{self.LAYER.__name__}, "
                f"got {type(base).__name__}"
            )
        kind = lookup_type(adapter_type)
        check_hyper(rank, alpha, dropout, strength)
        check_semantics(semantics)
        problem = self.refusal(base, kind, int(rank))
        if problem:
            raise ValueError(problem)
        self.base = base
        self.kind = kind
        self.adapter_type = kind.name
        self.rank = int(rank)
        self.alpha = alpha
        self.dropout = float(dropout)
        self.strength = float(strength)
        self.semantics = semantics
        w0 = self.base_weight_2d()
        self.fan_out, self.fan_in = (int(n) for n in w0.shape)
        if kind.xs:
            for name, value in xs_bases(w0, self.rank).items():
                setattr(self, name, value)
            self.freeze(recurse=False, keys=list(BASIS_PARAMS))
        for name, value in init_params(kind, w0, self.rank).items():
            setattr(self, name, value)
        # Frozen last, so a constructor that fails leaves the layer as it was.
        self.base.freeze()
        mx.eval(self.parameters())

    # ---- can this layer take this adapter?

    @classmethod
    def refusal(cls, base: nn.Module, kind: AdapterType, rank: int) -> str | None:
        """Why `base` cannot take this adapter, or None; injection asks before wrapping."""
        weight = base.weight
        if not mx.issubdtype(weight.dtype, mx.floating):
            return f"base weight must be floating point, got {weight.dtype}"
        problem = cls._layer_refusal(base)
        if problem:
            return problem
        fan_out, fan_in = weight_view(cls.LAYOUT, weight).to_2d(weight).shape
        if kind.xs and rank > min(fan_out, fan_in):
            return f"{kind.name} rank {rank} exceeds min(fan_out, fan_in) = {min(fan_out, fan_in)}"
        return None

    @classmethod
    def _layer_refusal(cls, base: nn.Module) -> str | None:
        """A layer kind's own restriction (e.g. grouped convolutions), or None."""
        return None

    # ---- views of the adapter

    @property
    def scale(self) -> float:
        """c = alpha / rank."""
        return self.alpha / self.rank

    @property
    def param_names(self) -> tuple[str, ...]:
        """The canonical (saved, trainable) parameter names of this adapter type."""
        return self.kind.required

    def adapter_params(self) -> dict[str, mx.array]:
        """The trainable adapter parameters by canonical name (no XS bases)."""
        return {name: self[name] for name in self.kind.required}

    def adapter(self) -> TargetAdapter:
        """This module's adapter as a formulas `TargetAdapter` (with U, V for XS types)."""
        params = self.adapter_params()
        if self.kind.xs:
            params.update({name: self[name] for name in BASIS_PARAMS})
        return TargetAdapter(self.kind, self.scale, params)

    def _view(self) -> WeightView:
        return weight_view(self.LAYOUT, self.base.weight)

    def base_weight_2d(self) -> mx.array:
        """The base weight's canonical 2-D (fan_out, fan_in) view in float32."""
        return self._view().to_2d(self.base.weight).astype(mx.float32)

    def merged_weight(self, strength: float | None = None) -> mx.array:
        """f(W0; s) on the canonical 2-D view, float32 (s defaults to `self.strength`)."""
        s = self.strength if strength is None else strength
        return adapted_weight(self.base_weight_2d(), self.adapter(), s, self.semantics)

    def _extra_repr(self) -> str:
        return (
            f"{self.adapter_type}, rank={self.rank}, alpha={self.alpha}, "
            f"dropout={self.dropout}, strength={self.strength}, semantics={self.semantics}"
        )

    # ---- layer specifics (subclasses)

    def _layer(self, x: mx.array, w2d: mx.array) -> mx.array:
        """The layer applied with a canonical 2-D fp32 weight, no bias."""
        raise NotImplementedError

    def _base_fp32(self, x: mx.array) -> mx.array:
        """The base layer in fp32 with its stored weight (the exact s == 0 bypass)."""
        raise NotImplementedError

    def _low_rank_apply(self, x: mx.array) -> mx.array | None:
        """x @ ΔW.T without materialising ΔW, when the layer allows it (else None)."""
        return None

    def _bias(self) -> mx.array | None:
        return self.base["bias"].astype(mx.float32) if "bias" in self.base else None

    def _with_bias(self, y: mx.array) -> mx.array:
        bias = self._bias()
        return y if bias is None else y + bias

    # ---- forward

    def _dropped(self, x: mx.array) -> mx.array:
        keep = 1.0 - self.dropout
        mask = mx.random.bernoulli(keep, x.shape)
        return (mask * x) * (1.0 / keep)

    def __call__(self, x: mx.array) -> mx.array:
        x32 = x.astype(mx.float32)
        s = self.strength
        adapter = self.adapter()
        if bypassed(adapter, s):
            y = self._base_fp32(x32)
        elif self.dropout == 0 or not self.training:
            y = self._with_bias(self._layer(x32, self.merged_weight(s)))
        else:
            y = self._dropout_forward(x32, adapter, s)
        return y.astype(x.dtype)

    def _dropout_forward(self, x: mx.array, adapter: TargetAdapter, s: float) -> mx.array:
        w0 = self.base_weight_2d()
        dropped = self._dropped(x)
        if not self.kind.is_weight_decomposed:
            low = self._low_rank_apply(dropped)
            if low is not None:
                return self._with_bias(self._layer(x, w0) + (self.scale * s) * low)
        base_part, delta_part = decompose_weight(w0, adapter, s, self.semantics)
        return self._with_bias(self._layer(x, base_part) + self._layer(dropped, delta_part))


class AdaptedLinear(AdaptedLayer):
    """An `nn.Linear` with an SA3 adapter: y = x @ f(W0; s).T + b, computed in fp32."""

    LAYER = nn.Linear
    LAYOUT = base_layout("mlx", "linear").name

    def _layer(self, x: mx.array, w2d: mx.array) -> mx.array:
        return x @ w2d.T

    def _base_fp32(self, x: mx.array) -> mx.array:
        weight = self.base.weight.astype(mx.float32)
        bias = self._bias()
        return x @ weight.T if bias is None else mx.addmm(bias, x, weight.T)

    def _low_rank_apply(self, x: mx.array) -> mx.array | None:
        if self.kind.xs:
            return ((x @ self["V"]) @ self["M_xs"].T) @ self["U"].T
        return (x @ self["lora_A"].T) @ self["lora_B"].T


class AdaptedConv1d(AdaptedLayer):
    """An `nn.Conv1d` (groups == 1) with an SA3 adapter on its canonical (out, in*k) view.

    Stride, padding and dilation are read from the base layer at every call, so the wrapper
    convolves exactly like the layer it replaces.
    """

    LAYER = nn.Conv1d
    LAYOUT = base_layout("mlx", "conv1d").name

    @classmethod
    def _layer_refusal(cls, base: nn.Module) -> str | None:
        groups = getattr(base, "groups", 1)
        if groups != 1:
            # The SA3 adapter math is defined on the full (out, in*k) weight; a grouped
            # weight is block-diagonal there, and an adapter would break that structure.
            return f"AdaptedConv1d supports groups == 1 only, got groups={groups}"
        return None

    @property
    def kernel_size(self) -> int:
        return LAYOUTS[self.LAYOUT].kernel_size(tuple(self.base.weight.shape))

    def _conv(self, x: mx.array, weight: mx.array) -> mx.array:
        b = self.base
        return mx.conv1d(x, weight, b.stride, b.padding, b.dilation, 1)

    def _layer(self, x: mx.array, w2d: mx.array) -> mx.array:
        return self._conv(x, self._view().from_2d(w2d))

    def _base_fp32(self, x: mx.array) -> mx.array:
        return self._with_bias(self._conv(x, self.base.weight.astype(mx.float32)))


# The wrapper of each adaptable layer kind, in the order injection tries them.
ADAPTED_TYPES: tuple[type[AdaptedLayer], ...] = (AdaptedLinear, AdaptedConv1d)


def wrapper_for(layer: nn.Module) -> type[AdaptedLayer] | None:
    """The wrapper class that adapts this layer kind, or None (not adaptable)."""
    for cls in ADAPTED_TYPES:
        if isinstance(layer, cls.LAYER):
            return cls
    return None
