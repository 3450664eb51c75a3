"""MLX model definitions named like the SA3 MLX runtime (adapter targets resolve to them)."""

from sa3ckpt.models.config import DiTConfig
from sa3ckpt.models.dit import (
    DIT_ONLY_EXCLUDE,
    DiT,
    build_dit,
    inpaint_local_cond,
    training_local_cond,
)

__all__ = [
    "DIT_ONLY_EXCLUDE",
    "DiT",
    "DiTConfig",
    "build_dit",
    "inpaint_local_cond",
    "training_local_cond",
]
