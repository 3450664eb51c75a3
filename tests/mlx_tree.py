"""A stand-in MLX model: any flat {runtime key: array} dict as a real nn.Module tree.

Lets apply/session tests run on the runtime naming (lists for `layers.N`, `seq.N`, plain
arrays under `cond`) without the full DiT definition.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten


class ArrayTree(nn.Module):
    """Holds arrays and child trees as attributes, like any MLX module would."""

    def __init__(self, tree: dict[str, Any]) -> None:
        super().__init__()
        for name, value in tree.items():
            setattr(self, name, _wrap(value))


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return ArrayTree(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def model_from_arrays(flat: dict[str, Any]) -> ArrayTree:
    return ArrayTree(tree_unflatten([(k, mx.array(v)) for k, v in flat.items()]))
