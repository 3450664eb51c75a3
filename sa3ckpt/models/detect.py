"""Which DiT a set of tensors is: its `Topology`, memory-token count and family name.

Read off the MLX-named shapes alone, so any file of the SA3 topology is recognised, a
published size or not. A handful of adapter-target weights fix every size (`_DEFINING`); the
two sizes that only non-target tensors record (the head width, from the q/k norms, and the
seconds feature count, from the seconds Linear) are taken from a family that matches on
everything else when the file lacks them, so an old target-only base or a diffusers
transformer folder without its duration embedder still gets the right model built, and the
completeness check then names what is missing instead of failing on the first key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from sa3ckpt.errors import IncompatibleError
from sa3ckpt.targets.families import FAMILIES
from sa3ckpt.targets.topology import Topology

Shape = tuple[int, ...]

LAYER_PREFIX = "transformer.layers."
MEMORY_TOKENS = "transformer.memory_tokens"
HEAD_NORM = "self_attn.q_norm.weight"  # (head_dim,) in every block
SECONDS_WEIGHT = "cond.seconds_total_weight"  # (cond_token_dim, seconds_features)
_BLOCK0 = LAYER_PREFIX + "0."

# MLX key -> what its shape fixes: the tensors no SA3 base (complete or target-only) lacks.
_DEFINING: dict[str, str] = {
    "transformer.project_in.weight": "width and latent channels",
    _BLOCK0 + "self_attn.to_qkv.weight": "attention kind",
    _BLOCK0 + "ff.ff.2.weight": "feed-forward width",
    "to_cond_embed.0.weight": "conditioning token width",
    "to_timestep_embed.0.weight": "timestep features",
    "transformer.global_cond_embedder.2.weight": "adaLN chunks",
    "preprocess_conv.weight": "conv kernel",
}
# Official values for sizes a file may not record and no family pins down.
_FALLBACK_HEAD_DIM = 64


@dataclass(frozen=True)
class Detected:
    """A file's topology, memory tokens, family name and how the sizes were found."""

    topology: Topology
    memory_tokens: int | None  # None: the file has no memory tokens
    family: str
    notes: tuple[str, ...] = field(default=())


def _block_depth(shapes: Mapping[str, Shape]) -> int:
    """1 + the highest block index of any tensor: a stray or truncated last block then shows
    as that block's missing tensors, not as a shallower model with unknown keys."""
    found = [
        int(index)
        for key in shapes
        if key.startswith(LAYER_PREFIX)
        for index in [key[len(LAYER_PREFIX) :].partition(".")[0]]
        if index.isdigit()
    ]
    return max(found) + 1 if found else 0


def _matching_family(partial: Topology, unknown: tuple[str, ...]) -> str | None:
    """The family equal to `partial` once its `unknown` fields are taken from the family."""
    for name, fam in FAMILIES.items():
        filled = dataclasses.replace(partial, **{f: getattr(fam.topology, f) for f in unknown})
        if filled == fam.topology:
            return name
    return None


def family_name(topology: Topology) -> str:
    """The family whose topology this is, or a description of an unnamed one."""
    name = _matching_family(topology, ())
    if name is not None:
        return name
    t = topology
    kind = "differential" if t.differential else "standard"
    return (
        f"custom (E={t.embed_dim}, depth {t.depth}, {t.heads} heads of {t.head_dim}, "
        f"{kind} attention, io {t.io_channels}, cond {t.cond_token_dim})"
    )


def detect(shapes: Mapping[str, Shape], path: str, spell: Mapping[str, str]) -> Detected:
    """The DiT described by MLX-named `shapes`; `spell` gives the file's key for an MLX key
    (for messages). Raises IncompatibleError when a defining tensor is missing."""
    missing = [key for key in _DEFINING if key not in shapes]
    if missing:
        named = ", ".join(f"{spell.get(k, k)} ({_DEFINING[k]})" for k in missing)
        raise IncompatibleError(f"{path}: not an SA3 DiT: cannot read its sizes without {named}")
    embed, io = shapes["transformer.project_in.weight"]
    qkv = shapes[_BLOCK0 + "self_attn.to_qkv.weight"][0]
    head = shapes.get(_BLOCK0 + HEAD_NORM)
    seconds = shapes.get(SECONDS_WEIGHT)
    partial = Topology(
        embed_dim=embed,
        depth=_block_depth(shapes),
        differential=qkv == 5 * embed,
        io_channels=io,
        cond_token_dim=shapes["to_cond_embed.0.weight"][1],
        timestep_features=shapes["to_timestep_embed.0.weight"][1],
        seconds_features=seconds[1] if seconds is not None else 0,
        global_mult=shapes["transformer.global_cond_embedder.2.weight"][0] // embed,
        ff_mult=shapes[_BLOCK0 + "ff.ff.2.weight"][1] // embed,
        conv_kernel=shapes["preprocess_conv.weight"][1],
        head_dim=head[0] if head is not None else _FALLBACK_HEAD_DIM,
    )
    unknown = tuple(
        name for name, value in (("head_dim", head), ("seconds_features", seconds)) if value is None
    )
    topology, notes = _fill_unknown(partial, unknown)
    memory = shapes.get(MEMORY_TOKENS)
    return Detected(
        topology, None if memory is None else memory[0], family_name(topology), tuple(notes)
    )


# What a size not in the file defaults to when no family matches (the official relations).
_DEFAULTS = {
    "head_dim": lambda t: _FALLBACK_HEAD_DIM,
    "seconds_features": lambda t: t.timestep_features,
}
_WHERE = {
    "head_dim": "no q/k norm in the file",
    "seconds_features": "no seconds Linear in the file",
}


def _fill_unknown(partial: Topology, unknown: tuple[str, ...]) -> tuple[Topology, list[str]]:
    if not unknown:
        return partial, []
    name = _matching_family(partial, unknown)
    if name is not None:
        source = FAMILIES[name].topology
        values = {f: getattr(source, f) for f in unknown}
        origin = f"from family {name}, which matches every size the file records"
    else:
        values = {f: _DEFAULTS[f](partial) for f in unknown}
        origin = "the official relation (no family matches)"
    notes = [f"{f} = {values[f]} ({_WHERE[f]}; {origin})" for f in unknown]
    return dataclasses.replace(partial, **values), notes
