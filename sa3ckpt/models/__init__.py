"""The SA3 DiT and its conditioner in MLX, named like the SA3 MLX runtime (see dit.py)."""

from sa3ckpt.models.config import DiTConfig
from sa3ckpt.models.dit import (
    DIT_ONLY_EXCLUDE,
    DiT,
    build_conditioner,
    build_dit,
    inpaint_local_cond,
    training_local_cond,
)
from sa3ckpt.models.embeddings import PROMPT_TOKENS, Conditioner
from sa3ckpt.models.loading import LoadedDiT, LoadLedger, load_dit

__all__ = [
    "DIT_ONLY_EXCLUDE",
    "PROMPT_TOKENS",
    "Conditioner",
    "DiT",
    "DiTConfig",
    "LoadLedger",
    "LoadedDiT",
    "build_conditioner",
    "build_dit",
    "inpaint_local_cond",
    "load_dit",
    "training_local_cond",
]
