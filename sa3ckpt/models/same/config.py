"""Build-time settings of the SAME encoders (reference/same.md), and what follows from them.

Two named sizes exist: SAME-S (D 768, 6 blocks, the chunked attention schedule) for the small
SA3 models and SAME-L (D 1536, 12 blocks, a band over the whole sequence) for medium. Every
other number is shared: 256-sample patches of stereo audio (512 channels), 16 patches plus one
shared token per latent, 64-dim heads, a 3x GLU feed-forward and 256 latent channels.

The receptive field is derived from the attention reach rather than stated, so a scaled-down
test config declares its own (see `SameConfig.receptive_latents`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Schedule = Literal["chunked", "band"]
SCHEDULES: tuple[str, ...] = ("chunked", "band")


@dataclass(frozen=True)
class SameConfig:
    """One SAME encoder's shape and attention schedule.

    `chunk_groups` (chunked schedule): latents per attention chunk, 2 for SAME-S (34 tokens);
    the second half of the blocks runs on chunks shifted by half a chunk. `band_groups` (band
    schedule): the band half-width in groups, 1 for SAME-L (|i - j| <= 17 tokens).
    """

    name: str
    width: int  # D, the transformer width
    blocks: int
    schedule: Schedule
    head_dim: int = 64
    patch: int = 256  # samples per patch (per channel)
    group: int = 16  # patches per latent
    latent_channels: int = 256
    audio_channels: int = 2
    ff_mult: int = 3
    chunk_groups: int = 2
    band_groups: int = 1
    rope_base: float = 10_000.0

    def __post_init__(self) -> None:
        problems = {
            f"schedule must be one of {', '.join(SCHEDULES)}": self.schedule not in SCHEDULES,
            "head_dim must divide width": self.width % self.head_dim != 0,
            "head_dim must be a multiple of 4 (RoPE rotates half of its first half)": (
                self.head_dim % 4 != 0
            ),
            "blocks must be >= 1": self.blocks < 1,
            "chunk_groups must be even and >= 2 (the shift is half a chunk)": (
                self.schedule == "chunked" and (self.chunk_groups < 2 or self.chunk_groups % 2)
            ),
            "band_groups must be >= 1": self.schedule == "band" and self.band_groups < 1,
            "patch, group, latent_channels and audio_channels must be >= 1": min(
                self.patch, self.group, self.latent_channels, self.audio_channels
            )
            < 1,
        }
        bad = [why for why, failed in problems.items() if failed]
        if bad:
            raise ValueError(f"invalid SAME config {self.name!r}: {'; '.join(bad)}")

    # --- shapes ---------------------------------------------------------------------------

    @property
    def heads(self) -> int:
        return self.width // self.head_dim

    @property
    def rope_dims(self) -> int:
        """Head dims RoPE rotates: the first half of each head (32 of 64)."""
        return self.head_dim // 2

    @property
    def patch_channels(self) -> int:
        """Channels of one patch: audio_channels x patch (512), channel index c * patch + h."""
        return self.audio_channels * self.patch

    @property
    def tokens_per_group(self) -> int:
        """Tokens of one latent's group: its patches plus the shared token (17)."""
        return self.group + 1

    @property
    def ff_inner(self) -> int:
        return self.ff_mult * self.width

    @property
    def samples_per_latent(self) -> int:
        return self.patch * self.group

    # --- the schedule ---------------------------------------------------------------------

    @property
    def latents_multiple(self) -> int:
        """Latents the patch sequence is padded to a multiple of (2 for SAME-S, 1 for SAME-L).

        The padding latents are kept in the output, not cropped (21 latents of audio -> 22).
        """
        return self.chunk_groups if self.schedule == "chunked" else 1

    @property
    def pad_patches(self) -> int:
        """Patches the sequence is zero-padded to a multiple of (32 for SAME-S, 16 for L)."""
        return self.group * self.latents_multiple

    @property
    def chunk_tokens(self) -> int:
        """Tokens of one attention chunk (chunked schedule): 34 for SAME-S."""
        return self.chunk_groups * self.tokens_per_group

    @property
    def shift_tokens(self) -> int:
        """How far the second half's chunks are shifted: half a chunk, whole groups (17)."""
        return self.chunk_tokens // 2

    @property
    def split(self) -> int:
        """Blocks on aligned chunks; the rest run on shifted chunks (3 of 6 for SAME-S)."""
        return self.blocks // 2

    @property
    def band_tokens(self) -> int:
        """Band half-width in tokens (band schedule): |i - j| <= 17 for SAME-L."""
        return self.band_groups * self.tokens_per_group

    @property
    def reach_latents(self) -> tuple[int, int]:
        """(left, right): how many latents before and after its own one latent can depend on.

        Band: every block widens the reach by band_groups groups; the output token is the last
        of its group, so to the right it reaches blocks x band_groups whole groups, to the
        left one patch group less (the farthest token it reaches there is a shared token,
        constant at the input). Chunked: after the aligned chunks a latent depends on its own
        chunk; the shifted chunk it then sits in straddles two aligned chunks, so it sees
        chunk_groups latents on one side at most (the shifted pass repeats the same chunks,
        so more blocks do not widen it).
        """
        if self.schedule == "band":
            reach = self.blocks * self.band_groups
            return reach - 1, reach
        if self.blocks == 1:  # only aligned chunks
            return self.chunk_groups - 1, self.chunk_groups - 1
        return self.chunk_groups, self.chunk_groups

    @property
    def receptive_latents(self) -> int:
        """Latents one latent can depend on, its own included: a span of consecutive latents.

        Band: 2 x blocks x band_groups (24 for SAME-L, latents g-11 .. g+12). Chunked: two
        aligned chunks, 2 x chunk_groups (4 for SAME-S: latents 2k-2 .. 2k+1 for latent 2k,
        2k .. 2k+3 for 2k+1).
        """
        if self.schedule == "band":
            return 2 * self.blocks * self.band_groups
        return 2 * self.chunk_groups if self.blocks > 1 else self.chunk_groups

    @property
    def receptive_field(self) -> int:
        """The receptive field in samples (the `LatentEncoder` declaration)."""
        return self.receptive_latents * self.samples_per_latent

    def scaled(
        self, width: int, blocks: int, head_dim: int | None = None, name: str | None = None
    ) -> SameConfig:
        """A smaller config of the same schedule (for tests): width, depth and head size."""
        return replace(
            self,
            name=name or f"{self.name}-scaled",
            width=width,
            blocks=blocks,
            head_dim=self.head_dim if head_dim is None else head_dim,
        )


SAME_S = SameConfig("same-s", width=768, blocks=6, schedule="chunked")
SAME_L = SameConfig("same-l", width=1536, blocks=12, schedule="band")
CODECS: dict[str, SameConfig] = {c.name: c for c in (SAME_S, SAME_L)}


def codec_config(name: str) -> SameConfig:
    """The config of a named codec ('same-s' or 'same-l'); ValueError for another name."""
    try:
        return CODECS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}: expected {' or '.join(CODECS)}") from None


__all__ = ["CODECS", "SAME_L", "SAME_S", "SCHEDULES", "SameConfig", "Schedule", "codec_config"]
