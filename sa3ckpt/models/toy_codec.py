"""A toy waveform encoder with the SAME codec's interface, for tests and examples.

It is one strided Conv1d, so its receptive field is known exactly and chunked encoding can
be checked against whole-clip encoding bit for bit. It is not a real codec: no weights, no
decoder, and latents carry no meaning.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


class StridedConvEncoder(nn.Module):
    """(B, N, 2) audio -> (B, N / hop, channels) latents via Conv1d(k=3·hop, stride=hop, pad=hop).

    Latent j sees samples [(j − 1)·hop, (j + 2)·hop): its own hop plus one hop either side,
    so `receptive_field` is 3·hop.
    """

    def __init__(self, samples_per_latent: int = 4, latent_channels: int = 3) -> None:
        super().__init__()
        hop = int(samples_per_latent)
        self.samples_per_latent = hop
        self.latent_channels = int(latent_channels)
        self.receptive_field = 3 * hop
        self.conv = nn.Conv1d(2, latent_channels, 3 * hop, stride=hop, padding=hop, bias=False)

    def __call__(self, audio: mx.array) -> mx.array:
        return self.conv(audio)
