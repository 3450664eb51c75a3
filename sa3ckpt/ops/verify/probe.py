"""The fixed inputs `sa3ckpt verify` runs the DiT on, and running one model on them.

A merge is checked at the output, so the inputs only have to exercise every weight, not to
sound like anything: batch 1, a few frames of random latents, two timesteps, and both kinds of
local conditioning the DiT sees (the training-time all-ones mask, and an inpainting mask
with a given latent, which is the only input that reaches every column of `to_local_embed`).
The prompt is random too (24 tokens and 8 masked ones that become the padding embedding);
with a conditioner the seconds token and global conditioning come from it, so a merged
seconds conditioner is checked as well. Values come from NumPy's seeded generator (stable
across releases and machines), not from MLX's, so a seed means the same inputs everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from sa3ckpt import mlx_streams
from sa3ckpt.models import Conditioner, DiT, inpaint_local_cond, training_local_cond
from sa3ckpt.targets.topology import Topology
from sa3ckpt.threads import cores

DEFAULT_SEED = 0
DEFAULT_FRAMES = 8
TIMESTEPS = (0.25, 0.75)  # one case each, paired with LOCAL_CONDS in order
LOCAL_CONDS = ("training", "inpainting")
PROMPT_TOKENS = 24  # real prompt tokens
PADDING_TOKENS = 8  # masked tokens after them (replaced by the padding embedding)
SECONDS = 30.0  # seconds_total, inside the conditioner's clamp range


@dataclass(frozen=True)
class ProbeCase:
    """One forward: a timestep, latents and local conditioning (batch 1)."""

    t: float
    local: str  # a LOCAL_CONDS name
    x: mx.array  # (1, io, frames)
    local_add_cond: mx.array  # (1, io + 1, frames)

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "local_add_cond": self.local}


@dataclass(frozen=True)
class Probe:
    """Every input of a verify run; the same object drives every model state."""

    seed: int
    frames: int
    cases: tuple[ProbeCase, ...]
    prompt: mx.array  # (1, PROMPT_TOKENS + PADDING_TOKENS, cond_token_dim)
    mask: mx.array  # (1, PROMPT_TOKENS + PADDING_TOKENS), True = real token
    seconds: float
    random_cross_attn_cond: mx.array  # used when the runs cannot both use a conditioner
    random_global_cond: mx.array

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch": 1,
            "frames": self.frames,
            "cases": [c.to_json() for c in self.cases],
            "prompt_tokens": PROMPT_TOKENS,
            "padding_tokens": PADDING_TOKENS,
            "seconds": self.seconds,
        }

    def line(self) -> str:
        cases = ", ".join(f"t {c.t:g} ({c.local} local cond)" for c in self.cases)
        return f"seed {self.seed}, batch 1, {self.frames} frames; {cases}"


def _inpainting(latent: np.ndarray, frames: int) -> mx.array:
    """[mask | masked latent]: the first half given (mask 0), the second half generated."""
    mask = (np.arange(frames) >= frames // 2).astype(np.float32)[None, :]
    given = latent * (1.0 - mask)[:, None, :]
    return inpaint_local_cond(mx.array(given), mx.array(mask))


def make_probe(topology: Topology, seed: int = DEFAULT_SEED, frames: int = DEFAULT_FRAMES) -> Probe:
    """The inputs for a DiT of `topology` (seeded, float32)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    rng = np.random.default_rng(seed)
    io, dim = topology.io_channels, topology.cond_token_dim

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    cases: list[ProbeCase] = []
    for t, local in zip(TIMESTEPS, LOCAL_CONDS, strict=True):
        x = mx.array(normal(1, io, frames))
        if local == "training":
            cond = training_local_cond(1, frames, io)
        else:
            cond = _inpainting(normal(1, io, frames), frames)
        cases.append(ProbeCase(t, local, x, cond))
    tokens = PROMPT_TOKENS + PADDING_TOKENS
    mask = np.arange(tokens)[None, :] < PROMPT_TOKENS
    # Materialised now, so no case graph recomputes them (and none depends on a stream).
    mx.eval([(c.x, c.local_add_cond) for c in cases])
    return Probe(
        seed=seed,
        frames=frames,
        cases=tuple(cases),
        prompt=mx.array(normal(1, tokens, dim)),
        mask=mx.array(mask),
        seconds=SECONDS,
        random_cross_attn_cond=mx.array(normal(1, tokens + 1, dim)),
        random_global_cond=mx.array(normal(1, dim)),
    )


def run_probe(dit: DiT, conditioner: Conditioner | None, probe: Probe) -> list[np.ndarray]:
    """The DiT's float32 output (1, io, frames) for every case.

    With a conditioner, cross-attention and global conditioning are built by it from the
    probe's prompt and seconds (so its arrays are part of what is compared); without, the
    probe's random ones are used. The cases are built on separate MLX streams, one per core,
    and evaluated together, each stream's matrix products on cores // streams BLAS threads
    (one each on two cores: 1.8 s for the real-size small probe where one stream on two
    BLAS threads took 4.4 s, on a loaded machine). `mlx_streams.blas_share` sets that count
    where the streams' own threads read it; a thread-local limit set here would not reach
    them, and two streams ran two MKL threads each until it did. The results are those of
    one after the other, bit for bit. All from this thread: streams belong to the thread
    that made them.
    """
    if conditioner is not None:
        cross, glob = conditioner(
            probe.prompt, mx.array([probe.seconds], dtype=mx.float32), probe.mask, length=None
        )
    else:
        cross, glob = probe.random_cross_attn_cond, probe.random_global_cond
    mx.eval(cross, glob, dit.parameters())
    count = min(len(probe.cases), cores())
    streams = mlx_streams.cpu_streams(count)
    outputs = []
    for index, case in enumerate(probe.cases):
        with mx.stream(streams[index % len(streams)]):
            t = mx.array([case.t], dtype=mx.float32)
            y = dit(case.x, t, cross, glob, case.local_add_cond).astype(mx.float32)
            outputs.append(y)
    with mlx_streams.blas_share(streams):
        mx.eval(outputs)
    return [np.array(y, dtype=np.float32) for y in outputs]


__all__ = ["DEFAULT_FRAMES", "DEFAULT_SEED", "Probe", "ProbeCase", "make_probe", "run_probe"]
