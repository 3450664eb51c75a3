"""Build-time settings of the MLX SA3 DiT: a family `Topology` plus the non-target knobs.

The `Topology` (sa3ckpt.targets) fixes every adapter-targetable shape; this adds what the
target table does not pin down (head count, memory tokens, RoPE, normalisation epsilon) so
tests can build the tiny families with a few small heads while the published sizes keep the
64-wide heads of the official model.
"""

from __future__ import annotations

from dataclasses import dataclass

from sa3ckpt.targets.families import family as lookup_family
from sa3ckpt.targets.topology import Topology

DEFAULT_HEAD_DIM = 64


@dataclass(frozen=True)
class DiTConfig:
    """Everything needed to build a `DiT`. `num_heads=None` means E // 64 (at least 1)."""

    topology: Topology
    num_heads: int | None = None
    memory_tokens: int = 4  # learned tokens prepended to the latent sequence
    rope: bool = True  # rotary position embedding on self-attention q/k
    norm_eps: float = 1e-6
    max_seconds: float = 256.0  # seconds_total is clipped to [0, max] and scaled to [0, 1]

    def __post_init__(self) -> None:
        t = self.topology
        heads = self.heads
        if heads < 1 or t.embed_dim % heads:
            raise ValueError(f"num_heads {heads} must be >= 1 and divide embed_dim {t.embed_dim}")
        if t.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd to keep the length, got {t.conv_kernel}")
        for label, n in (
            ("timestep_features", t.timestep_features),
            ("seconds_features", t.seconds_features),
        ):
            if n % 2:
                raise ValueError(f"{label} must be even (sin/cos pairs), got {n}")
        if self.memory_tokens < 0:
            raise ValueError(f"memory_tokens must be >= 0, got {self.memory_tokens}")

    @property
    def heads(self) -> int:
        if self.num_heads is not None:
            return self.num_heads
        return max(1, self.topology.embed_dim // DEFAULT_HEAD_DIM)

    @property
    def head_dim(self) -> int:
        return self.topology.embed_dim // self.heads

    @classmethod
    def for_family(cls, name: str, **overrides: object) -> DiTConfig:
        """The config of a named family (`medium`, `small`, `tiny-medium`, ...)."""
        return cls(topology=lookup_family(name).topology, **overrides)  # type: ignore[arg-type]
