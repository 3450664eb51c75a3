"""Conversion: adapters between every dialect, bases between every naming.

Owns the `--to` targets per input kind and which runtime reads each, the adapter converter
(proven by reconstruction before it is committed), the diffusers LoRA writer and the base
converter (official, MLX runtime, diffusers).
"""

from sa3ckpt.ops.convert.adapters import (
    ADAPTER_TARGETS,
    ConvertLedger,
    convert_adapter,
)
from sa3ckpt.ops.convert.bases import (
    BaseConvertLedger,
    TensorPlan,
    convert_base,
    convert_tensor,
    plan_conversion,
)
from sa3ckpt.ops.convert.targets import (
    ConvertTarget,
    refused_for,
    targets_for,
)

__all__ = [
    "ADAPTER_TARGETS",
    "BaseConvertLedger",
    "ConvertLedger",
    "ConvertTarget",
    "TensorPlan",
    "convert_adapter",
    "convert_base",
    "convert_tensor",
    "plan_conversion",
    "refused_for",
    "targets_for",
]
