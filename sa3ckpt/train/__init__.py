"""Training helpers for SA3 adapters on the MLX DiT: timesteps, loss, CFG dropout, audio -> latents.

Latents are channels-first (B, C, T) with (B, T) masks, the DiT's layout, everywhere except
`EncodedBatch.latents` (channels-last, as encoders return them; `EncodedBatch.dit_latents` is
the DiT view).

The model itself lives in `sa3ckpt.models`; adapters are injected and saved with
`sa3ckpt.adapters` (`inject`, `to_checkpoint`) and `sa3ckpt.adapters.checkpoint`
(`save_checkpoint`). See docs/guides/training-mlx.md for an end-to-end example.
"""

from sa3ckpt.train.cfg_dropout import CFG_DROPOUT, cfg_dropout
from sa3ckpt.train.encode_audio import (
    SAMPLE_RATE,
    EncodedBatch,
    EncoderSpec,
    LatentEncoder,
    check_audio,
    chunk_plan,
    collate_clips,
    context_latents,
    encode_latents,
    latent_count,
    latent_mask,
    pad_to_alignment,
)
from sa3ckpt.train.latent_files import LatentBatch, LatentClip, latent_batch, read_latent_file
from sa3ckpt.train.loss import (
    DIT_CHANNEL_AXIS,
    NORMALISATIONS,
    noise_latents,
    per_sample_loss,
    rectified_flow_loss,
    rectified_flow_pair,
    velocity_target,
)
from sa3ckpt.train.rng import as_key
from sa3ckpt.train.timesteps import (
    SAMPLERS,
    SHIFTS,
    full_shift,
    sample_timesteps,
    shift_timesteps,
)

__all__ = [
    "CFG_DROPOUT",
    "DIT_CHANNEL_AXIS",
    "NORMALISATIONS",
    "SAMPLERS",
    "SAMPLE_RATE",
    "SHIFTS",
    "EncodedBatch",
    "EncoderSpec",
    "LatentBatch",
    "LatentClip",
    "LatentEncoder",
    "as_key",
    "cfg_dropout",
    "check_audio",
    "chunk_plan",
    "collate_clips",
    "context_latents",
    "encode_latents",
    "full_shift",
    "latent_batch",
    "latent_count",
    "latent_mask",
    "noise_latents",
    "pad_to_alignment",
    "per_sample_loss",
    "read_latent_file",
    "rectified_flow_loss",
    "rectified_flow_pair",
    "sample_timesteps",
    "shift_timesteps",
    "velocity_target",
]
