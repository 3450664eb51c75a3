"""Build-time settings of the MLX SA3 DiT: a family `Topology` plus the few non-shape knobs.

The `Topology` (sa3ckpt.targets) fixes every tensor shape, head width included; this adds
what no weight shape records: the memory-token count (a shape, but not of any target), the
norm epsilons and the seconds range. The defaults are the official model's
(reference/dit.md): block RMSNorms eps 1e-5, q/k norms eps 1e-6, 64 memory tokens,
seconds clamped to [0, 384].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sa3ckpt.targets.families import family as lookup_family
from sa3ckpt.targets.topology import Topology

ADALN_CHUNKS = 6  # scale/shift/gate for self-attention, then for the feed-forward


@dataclass(frozen=True)
class DiTConfig:
    """Everything needed to build a `DiT` (and its `Conditioner`)."""

    topology: Topology
    memory_tokens: int = 64  # learned tokens prepended to the latent sequence
    block_norm_eps: float = 1e-5  # pre_norm, cross_attend_norm, ff_norm
    qk_norm_eps: float = 1e-6  # per-head q/k RMSNorm
    max_seconds: float = 384.0  # seconds_total is clamped to [0, max] and scaled to [0, 1]

    def __post_init__(self) -> None:
        t = self.topology
        problems = {
            "head_dim must divide embed_dim": t.embed_dim % t.head_dim,
            "head_dim must be a multiple of 4 (RoPE rotates pairs of its first half)": t.head_dim
            % 4,
            f"global_mult must be {ADALN_CHUNKS} (adaLN chunks)": t.global_mult != ADALN_CHUNKS,
            "conv_kernel must be odd to keep the length": t.conv_kernel % 2 == 0,
            "timestep_features must be even (cos/sin pairs)": t.timestep_features % 2,
            "seconds_features must be even (cos/sin pairs)": t.seconds_features % 2,
            "memory_tokens must be >= 0": self.memory_tokens < 0,
            "max_seconds must be > 0": self.max_seconds <= 0,
        }
        bad = [why for why, failed in problems.items() if failed]
        if bad:
            raise ValueError(f"invalid DiT config ({t}): {'; '.join(bad)}")

    @property
    def heads(self) -> int:
        return self.topology.heads

    @property
    def head_dim(self) -> int:
        return self.topology.head_dim

    @classmethod
    def for_family(cls, name: str, **overrides: object) -> DiTConfig:
        """The config of a named family (`medium`, `small`, `tiny-medium`, ...)."""
        return cls(topology=lookup_family(name).topology, **overrides)  # type: ignore[arg-type]

    def with_topology(self, **changes: object) -> DiTConfig:
        """This config with some topology fields changed (tests build odd shapes this way)."""
        return replace(self, topology=replace(self.topology, **changes))  # type: ignore[arg-type]
