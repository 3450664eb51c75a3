"""The SAME-S and SAME-L codec encoders in MLX (reference/same.md) and their loader."""

from sa3ckpt.models.same.config import CODECS, SAME_L, SAME_S, SameConfig, codec_config
from sa3ckpt.models.same.encoder import SameEncoder
from sa3ckpt.models.same.loading import codec_sha256, load_same_encoder, weight_files

__all__ = [
    "CODECS",
    "SAME_L",
    "SAME_S",
    "SameConfig",
    "SameEncoder",
    "codec_config",
    "codec_sha256",
    "load_same_encoder",
    "weight_files",
]
