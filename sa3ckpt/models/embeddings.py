"""The conditioner: the seconds embedding and the prompt padding embedding (reference/dit.md 19-20).

It is not part of the DiT in the MLX runtime either: its three arrays live beside the DiT
weights as `cond.padding_embedding`, `cond.seconds_total_weight` (768, 256) and
`cond.seconds_total_bias`, so they are plain arrays here too (an `nn.Linear` would make
`inject` offer it as a DiT target under a name no checkpoint uses).

seconds -> clamp to [0, max_seconds] / max_seconds -> [cos | sin] of 2π s f (the timestep's
log-spaced frequencies) -> Linear(256, 768). That one vector is both the global
conditioning and the extra last context token; prompt positions the mask marks as padding
are replaced by the learned padding embedding, and the DiT then uses no attention mask.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from sa3ckpt.models.layers import fourier_features, fourier_frequencies

PROMPT_TOKENS = 256  # the official prompt length (T5 tokens), before the seconds token


class Conditioner(nn.Module):
    """Builds `cross_attn_cond` and `global_cond` for the DiT from prompt embeddings and seconds."""

    def __init__(self, cond_token_dim: int, seconds_features: int, max_seconds: float) -> None:
        super().__init__()
        self.padding_embedding = mx.zeros((cond_token_dim,))
        self.seconds_total_weight = mx.zeros((cond_token_dim, seconds_features))
        self.seconds_total_bias = mx.zeros((cond_token_dim,))
        self.max_seconds = float(max_seconds)
        # A fixed float32 table (numpy, so never a parameter): see layers.fourier_frequencies.
        self.seconds_frequencies = fourier_frequencies(seconds_features)

    def seconds_embedding(self, seconds: mx.array) -> mx.array:
        """seconds_total (B,) -> (B, cond_token_dim)."""
        s = mx.clip(seconds.astype(mx.float32), 0.0, self.max_seconds) / self.max_seconds
        feats = fourier_features(s, self.seconds_frequencies).astype(
            self.seconds_total_weight.dtype
        )
        return feats @ self.seconds_total_weight.T + self.seconds_total_bias

    def pad_prompt(
        self, prompt: mx.array, mask: mx.array | None, length: int | None = PROMPT_TOKENS
    ) -> mx.array:
        """prompt (B, S, D), mask (B, S) True = real token -> (B, length, D).

        Masked positions become the padding embedding; a prompt shorter than `length` is
        padded with it (None keeps S). Longer prompts are refused: the official tokenizer
        truncates before this point, so a longer one is a caller mistake.
        """
        b, s, d = prompt.shape
        pad = self.padding_embedding.astype(prompt.dtype)
        if mask is not None:
            if mask.shape != (b, s):
                raise ValueError(f"prompt mask has shape {mask.shape}, expected {(b, s)}")
            prompt = mx.where(mask.astype(mx.bool_)[..., None], prompt, pad)
        if length is None or s == length:
            return prompt
        if s > length:
            raise ValueError(f"prompt has {s} tokens, more than the {length} the DiT was built for")
        return mx.concatenate([prompt, mx.broadcast_to(pad, (b, length - s, d))], axis=1)

    def __call__(
        self,
        prompt: mx.array,
        seconds: mx.array,
        mask: mx.array | None = None,
        length: int | None = PROMPT_TOKENS,
    ) -> tuple[mx.array, mx.array]:
        """(cross_attn_cond (B, length + 1, D), global_cond (B, D)) as the official conditioner."""
        emb = self.seconds_embedding(seconds).astype(prompt.dtype)
        tokens = self.pad_prompt(prompt, mask, length)
        return mx.concatenate([tokens, emb[:, None, :]], axis=1), emb
