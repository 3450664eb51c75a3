"""Adapter types, detection, math, XS bases and trainable MLX modules.

Where each job lives:
- `types`: the eight adapter types as data; `detect`: the type from tensors; `config`:
  `lora_config`; `checkpoint`, `formats`: reading and writing adapter files; `xs_bases`.
- `formulas`: the MLX math, with the one DoRA/BoRA normaliser; `kernels`: the fused NumPy
  kernel of streaming merges.
- trainable modules: `params` (one target's parameter set), `wrappers` (AdaptedLinear,
  AdaptedConv1d), `injection` (into a module tree), `module_io` (to and from checkpoints).

The trainable-module API is re-exported here (`from sa3ckpt.adapters import inject`), loaded
on first use so that importing e.g. `sa3ckpt.adapters.types` does not pull in mlx.nn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sa3ckpt.adapters.formulas import decompose_weight, norm_scales
    from sa3ckpt.adapters.injection import adapter_modules, inject, trainable_parameters
    from sa3ckpt.adapters.module_io import load_into, state_dict, to_checkpoint
    from sa3ckpt.adapters.params import init_params
    from sa3ckpt.adapters.wrappers import (
        ADAPTED_TYPES,
        AdaptedConv1d,
        AdaptedLayer,
        AdaptedLinear,
    )

# Public name -> the module that is its home.
_HOMES: dict[str, str] = {
    "ADAPTED_TYPES": "wrappers",
    "AdaptedConv1d": "wrappers",
    "AdaptedLayer": "wrappers",
    "AdaptedLinear": "wrappers",
    "adapter_modules": "injection",
    "decompose_weight": "formulas",
    "init_params": "params",
    "inject": "injection",
    "load_into": "module_io",
    "norm_scales": "formulas",
    "state_dict": "module_io",
    "to_checkpoint": "module_io",
    "trainable_parameters": "injection",
}

__all__ = [
    "ADAPTED_TYPES",
    "AdaptedConv1d",
    "AdaptedLayer",
    "AdaptedLinear",
    "adapter_modules",
    "decompose_weight",
    "init_params",
    "inject",
    "load_into",
    "norm_scales",
    "state_dict",
    "to_checkpoint",
    "trainable_parameters",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
