"""The SA3 DiT and its conditioner in MLX, named like the SA3 MLX runtime (see dit.py), and
the SAME codec encoders (`models.same`) that turn audio into its latents."""

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
from sa3ckpt.models.same import (
    SAME_L,
    SAME_S,
    SameConfig,
    SameEncoder,
    codec_sha256,
    load_same_encoder,
)

__all__ = [
    "DIT_ONLY_EXCLUDE",
    "PROMPT_TOKENS",
    "SAME_L",
    "SAME_S",
    "Conditioner",
    "DiT",
    "DiTConfig",
    "LoadLedger",
    "LoadedDiT",
    "SameConfig",
    "SameEncoder",
    "build_conditioner",
    "build_dit",
    "codec_sha256",
    "inpaint_local_cond",
    "load_dit",
    "load_same_encoder",
    "training_local_cond",
]
