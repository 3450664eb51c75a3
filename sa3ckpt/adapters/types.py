"""The eight SA3 adapter types as data: parameters, shapes and which norm each type uses.

A type is a row here, so detection, validation, synthesis and the math all agree on what
a type's tensors are and how big they must be. Code asks a row (`kind.xs`, `kind.is_dora`,
`kind.norm`) instead of testing the spelling of its name.

Names used across the package, one meaning each: `adapter_type` is a canonical type name
(str, as in lora_config and JSON); `kind` is the AdapterType row; `layer_kind` is
"linear" | "conv1d"; `basis_param` is "U" | "V"; `dtype_code` is a safetensors dtype code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ShapeFn = Callable[[int, int, int], tuple[int, ...]]

# Shape of each canonical parameter given (fan_out, fan_in, rank). `magnitude` depends on
# the type's norm direction, so it is resolved per type below.
PARAM_SHAPES: dict[str, ShapeFn] = {
    "lora_A": lambda o, i, r: (r, i),
    "lora_B": lambda o, i, r: (o, r),
    "M_xs": lambda o, i, r: (r, r),
    "magnitude_r": lambda o, i, r: (o,),
    "magnitude_c": lambda o, i, r: (i,),
    "U": lambda o, i, r: (o, r),
    "V": lambda o, i, r: (i, r),
    "baked_vnorm_row": lambda o, i, r: (o,),
}
_MAGNITUDE_SHAPE: dict[str, ShapeFn] = {
    "rows": lambda o, i, r: (o,),
    "cols": lambda o, i, r: (i,),
}


@dataclass(frozen=True)
class AdapterType:
    """One adapter type: required params, optional extras, norm direction, XS or not.

    norm: None (plain additive), "rows" (m per output row), "cols" (m per input column),
    "both" (BoRA: rows then columns).
    """

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    norm: str | None
    xs: bool

    @property
    def is_weight_decomposed(self) -> bool:
        """DoRA/BoRA types renormalise and have the exact s == 0 bypass."""
        return self.norm is not None

    @property
    def is_dora(self) -> bool:
        """DoRA: one magnitude vector, along rows or columns (the orientation is the variant)."""
        return self.norm in _MAGNITUDE_SHAPE

    @property
    def params(self) -> tuple[str, ...]:
        """Every parameter a file of this type may store: required, then optional."""
        return (*self.required, *self.optional)

    @property
    def signature(self) -> frozenset[str]:
        """The required parameter set: what a target's tensors reveal of the type."""
        return frozenset(self.required)

    def param_shape(self, param: str, fan_out: int, fan_in: int, rank: int) -> tuple[int, ...]:
        if param == "magnitude":
            if self.norm not in _MAGNITUDE_SHAPE:
                raise ValueError(f"{self.name} has no single magnitude")
            return _MAGNITUDE_SHAPE[self.norm](fan_out, fan_in, rank)
        return PARAM_SHAPES[param](fan_out, fan_in, rank)

    def shapes(self, fan_out: int, fan_in: int, rank: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the required params for one target."""
        return {p: self.param_shape(p, fan_out, fan_in, rank) for p in self.required}


_LORA = ("lora_A", "lora_B")
_XS = ("M_xs",)
BASIS_PARAMS = ("U", "V")  # the frozen XS bases: W0 ~ U S Vᵀ; every `basis_param` is one

ADAPTER_TYPES: dict[str, AdapterType] = {
    t.name: t
    for t in (
        AdapterType("lora", _LORA, (), None, False),
        AdapterType("dora-rows", (*_LORA, "magnitude"), ("baked_vnorm_row",), "rows", False),
        AdapterType("dora-cols", (*_LORA, "magnitude"), (), "cols", False),
        AdapterType("bora", (*_LORA, "magnitude_r", "magnitude_c"), (), "both", False),
        AdapterType("lora-xs", _XS, BASIS_PARAMS, None, True),
        AdapterType(
            "dora-rows-xs", (*_XS, "magnitude"), (*BASIS_PARAMS, "baked_vnorm_row"), "rows", True
        ),
        AdapterType("dora-cols-xs", (*_XS, "magnitude"), BASIS_PARAMS, "cols", True),
        AdapterType("bora-xs", (*_XS, "magnitude_r", "magnitude_c"), BASIS_PARAMS, "both", True),
    )
}

# Names found in the wild that stand for a type. `dora` is resolved by magnitude shape (see
# adapters.md); the mapping here is the fallback when the shape cannot tell.
ALIASES: dict[str, str] = {"dora": "dora-rows", "dora-xs": "dora-rows-xs", "xs": "lora-xs"}


def adapter_type(name: str) -> AdapterType:
    """Look up a canonical type name (aliases are resolved by the caller, with a warning)."""
    try:
        return ADAPTER_TYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown adapter type {name!r} (known: {', '.join(ADAPTER_TYPES)})"
        ) from None


def type_for(norm: str | None, xs: bool) -> AdapterType:
    """The type with this norm direction and XS-ness (e.g. the DoRA variant of another)."""
    for kind in ADAPTER_TYPES.values():
        if kind.norm == norm and kind.xs == xs:
            return kind
    raise ValueError(f"no adapter type with norm {norm!r} and xs={xs}")
