"""The SA3 adapter target modules as naming data, independent of any model size.

A canonical target name is the official PyTorch module name with its root: `model.` for the
DiT (relative to the DiT wrapper) and `conditioners.` for the conditioner. Everything that
differs between runtimes (MLX module paths, sa3.cpp stems, diffusers module paths) hangs off
these two tables, so a new runtime is a new column, not new code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIT_ROOT = "model."
CONDITIONER_ROOT = "conditioners."
BLOCK_PREFIX = "model.transformer.layers."
# The two canonical roots by the name users give them (`merge --only dit|conditioner`).
ROOTS: dict[str, str] = {"dit": DIT_ROOT, "conditioner": CONDITIONER_ROOT}

SECONDS_CONDITIONER = "conditioners.seconds_total.embedder.embedding.1"


@dataclass(frozen=True)
class ModuleName:
    """One adapter-targetable module: its canonical name (or per-block suffix) and stems.

    `sa3cpp` is None for modules sa3.cpp has no stem for (the conditioner). `diffusers` is the
    module's path in diffusers' SA3 pipeline: for per-block rows the suffix after
    `transformer_blocks.N.`, for DiT rows the path inside `StableAudio3DiTModel`, for the
    conditioner the path from the pipeline (a separate model, `duration_embedder`).
    """

    canonical: str
    sa3cpp: str | None
    layer_kind: str  # "linear" | "conv1d"
    diffusers: str


# Per-block modules: canonical suffix after `model.transformer.layers.N.`, sa3.cpp suffix after
# `dit.N.`. Order is the order of the coverage map's columns.
BLOCK_MODULES: tuple[ModuleName, ...] = (
    ModuleName("self_attn.to_qkv", "self.qkv", "linear", "self_attn.to_qkv"),
    ModuleName("self_attn.to_out", "self.out", "linear", "self_attn.to_out"),
    ModuleName("cross_attn.to_q", "cross.q", "linear", "cross_attn.to_q"),
    ModuleName("cross_attn.to_kv", "cross.kv", "linear", "cross_attn.to_kv"),
    ModuleName("cross_attn.to_out", "cross.out", "linear", "cross_attn.to_out"),
    ModuleName("ff.ff.0.proj", "ff.proj", "linear", "ff.proj_in"),
    ModuleName("ff.ff.2", "ff.out", "linear", "ff.proj_out"),
    ModuleName("to_local_embed.0", "local.0", "linear", "to_local_embed.0"),
    ModuleName("to_local_embed.2", "local.2", "linear", "to_local_embed.2"),
)

# Three-letter abbreviations of the per-block modules for tables and grids (CLI coverage
# table, TUI coverage grid): short enough for a four-column cell, and one spelling everywhere.
BLOCK_MODULE_SHORT: dict[str, str] = {
    "self_attn.to_qkv": "qkv",
    "self_attn.to_out": "sao",
    "cross_attn.to_q": "caq",
    "cross_attn.to_kv": "ckv",
    "cross_attn.to_out": "cao",
    "ff.ff.0.proj": "ff0",
    "ff.ff.2": "ff2",
    "to_local_embed.0": "le0",
    "to_local_embed.2": "le2",
}


def short_block_module(suffix: str) -> str:
    """The abbreviation of a per-block module suffix (its last part, cut, if not tabled)."""
    return BLOCK_MODULE_SHORT.get(suffix, suffix.rsplit(".", 1)[-1][:3])


# Top-level DiT modules (full canonical names) in a stable display order.
TOP_LEVEL_MODULES: tuple[ModuleName, ...] = (
    ModuleName("model.to_timestep_embed.0", "dit.time_embed.0", "linear", "to_timestep_embed.0"),
    ModuleName("model.to_timestep_embed.2", "dit.time_embed.2", "linear", "to_timestep_embed.2"),
    ModuleName("model.to_cond_embed.0", "dit.cond_embed.0", "linear", "to_cond_embed.0"),
    ModuleName("model.to_cond_embed.2", "dit.cond_embed.2", "linear", "to_cond_embed.2"),
    ModuleName("model.to_global_embed.0", "dit.global_embed.0", "linear", "to_global_embed.0"),
    ModuleName("model.to_global_embed.2", "dit.global_embed.2", "linear", "to_global_embed.2"),
    ModuleName("model.transformer.project_in", "dit.proj_in", "linear", "proj_in"),
    ModuleName("model.transformer.project_out", "dit.proj_out", "linear", "proj_out"),
    ModuleName(
        "model.transformer.global_cond_embedder.0", "dit.gce.0", "linear", "global_cond_embedder.0"
    ),
    ModuleName(
        "model.transformer.global_cond_embedder.2", "dit.gce.2", "linear", "global_cond_embedder.2"
    ),
    ModuleName("model.preprocess_conv", "dit.pre_conv", "conv1d", "preprocess_conv"),
    ModuleName("model.postprocess_conv", "dit.post_conv", "conv1d", "postprocess_conv"),
)

CONDITIONER_MODULES: tuple[ModuleName, ...] = (
    ModuleName(SECONDS_CONDITIONER, None, "linear", "duration_embedder.linear"),
)

# Underfit's default target filter: the 7 attention / feed-forward Linears of every block plus
# the seconds conditioner Linear (medium 169, small 141).
UNDERFIT_DEFAULT_INCLUDE: tuple[str, ...] = (
    "self_attn.to_qkv",
    "self_attn.to_out",
    "cross_attn.to_q",
    "cross_attn.to_kv",
    "cross_attn.to_out",
    "ff.ff.0.proj",
    "ff.ff.2",
    "seconds_total",
)

_BLOCK_RE = re.compile(r"^model\.transformer\.layers\.(\d+)\.(.+)$")
_STEM_BLOCK_RE = re.compile(r"^dit\.(\d+)\.(.+)$")

_BLOCK_BY_SUFFIX = {m.canonical: m for m in BLOCK_MODULES}
_BLOCK_BY_STEM = {m.sa3cpp: m for m in BLOCK_MODULES}
_FIXED_BY_CANONICAL = {m.canonical: m for m in TOP_LEVEL_MODULES + CONDITIONER_MODULES}
_FIXED_BY_STEM = {m.sa3cpp: m for m in TOP_LEVEL_MODULES if m.sa3cpp}


def root_of(canonical: str) -> str | None:
    """ "dit" or "conditioner" for a canonical name, None when it has neither root."""
    for name, root in ROOTS.items():
        if canonical.startswith(root):
            return name
    return None


def strip_dit_root(canonical: str) -> str:
    """The module name without the `model.` root (the DiT's own module path); conditioner
    names keep their root. This is how bare keys and root-less include patterns spell it."""
    return canonical[len(DIT_ROOT) :] if canonical.startswith(DIT_ROOT) else canonical


def short_label(canonical: str) -> str:
    """A short label for a top-level or conditioner target: its sa3.cpp stem without `dit.`
    when it has one, `cond.<name>` for conditioner modules, else the last two components."""
    stem = to_sa3cpp_stem(canonical)
    if stem is not None:
        return stem.removeprefix("dit.")
    if canonical.startswith(CONDITIONER_ROOT):
        return "cond." + canonical[len(CONDITIONER_ROOT) :].split(".", 1)[0]
    return ".".join(canonical.split(".")[-2:])


def block_target(block: int, suffix: str) -> str:
    """Canonical name of a per-block module, e.g. (3, "ff.ff.2")."""
    return f"{BLOCK_PREFIX}{block}.{suffix}"


def split_block(canonical: str) -> tuple[int, str] | None:
    """(block index, per-block suffix) for a per-block canonical name, else None."""
    match = _BLOCK_RE.match(canonical)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def module_info(canonical: str) -> ModuleName | None:
    """The naming row of a canonical target, or None when the name is not a known module."""
    if canonical in _FIXED_BY_CANONICAL:
        return _FIXED_BY_CANONICAL[canonical]
    split = split_block(canonical)
    if split is None:
        return None
    return _BLOCK_BY_SUFFIX.get(split[1])


def to_sa3cpp_stem(canonical: str) -> str | None:
    """sa3.cpp stem for a canonical target; None when sa3.cpp has no stem (or name unknown)."""
    fixed = _FIXED_BY_CANONICAL.get(canonical)
    if fixed is not None:
        return fixed.sa3cpp
    split = split_block(canonical)
    if split is None or split[1] not in _BLOCK_BY_SUFFIX:
        return None
    return f"dit.{split[0]}.{_BLOCK_BY_SUFFIX[split[1]].sa3cpp}"


def from_sa3cpp_stem(stem: str) -> str | None:
    """Canonical target for an sa3.cpp stem, or None when the stem is unknown."""
    fixed = _FIXED_BY_STEM.get(stem)
    if fixed is not None:
        return fixed.canonical
    match = _STEM_BLOCK_RE.match(stem)
    if match is None or match.group(2) not in _BLOCK_BY_STEM:
        return None
    return block_target(int(match.group(1)), _BLOCK_BY_STEM[match.group(2)].canonical)


# MLX optimized runtime module paths: the DiT path without `model.`, with the local-embed
# Sequential spelled `seq`; the conditioner Linear has no module, its arrays live under `cond.`.
MLX_ARRAY_PREFIX = "cond."
MLX_CONDITIONER_NAMES = {SECONDS_CONDITIONER: "cond.seconds_total"}
MLX_CONDITIONER_ARRAYS = {
    SECONDS_CONDITIONER: {"weight": "cond.seconds_total_weight", "bias": "cond.seconds_total_bias"}
}
_MLX_RULES: tuple[tuple[re.Pattern[str], str, re.Pattern[str], str], ...] = (
    # (canonical -> mlx pattern, replacement, mlx -> canonical pattern, replacement)
    (
        re.compile(r"(^|\.)to_local_embed\.(\d+)(?=$|\.)"),
        r"\1to_local_embed.seq.\2",
        re.compile(r"(^|\.)to_local_embed\.seq\.(\d+)(?=$|\.)"),
        r"\1to_local_embed.\2",
    ),
)
_MLX_CONDITIONER_BY_NAME = {v: k for k, v in MLX_CONDITIONER_NAMES.items()}


def to_mlx_module(canonical: str) -> str | None:
    """MLX runtime path of a canonical module (None for names outside both roots)."""
    if canonical in MLX_CONDITIONER_NAMES:
        return MLX_CONDITIONER_NAMES[canonical]
    if not canonical.startswith(DIT_ROOT):
        return None
    path = canonical[len(DIT_ROOT) :]
    for forward, replacement, _, _ in _MLX_RULES:
        path = forward.sub(replacement, path)
    return path


def from_mlx_module(path: str) -> str:
    """Canonical name of an MLX runtime module path (any DiT path maps; `cond.*` is special)."""
    if path in _MLX_CONDITIONER_BY_NAME:
        return _MLX_CONDITIONER_BY_NAME[path]
    for _, _, backward, replacement in _MLX_RULES:
        path = backward.sub(replacement, path)
    return DIT_ROOT + path


def mlx_has_module(canonical: str) -> bool:
    """False for targets the MLX runtime folds into plain arrays (the seconds conditioner)."""
    return canonical not in MLX_CONDITIONER_NAMES


# --- diffusers (0.42+: `StableAudio3DiTModel` and `StableAudio3DurationEmbedder`) -------------
# A diffusers path is a path from the pipeline: `transformer.<path in StableAudio3DiTModel>` for
# the DiT, `duration_embedder.<…>` for the seconds conditioner (a separate model there). Module
# renames come from the `diffusers` column of the rows above; blocks are
# `transformer.layers.N.` -> `transformer_blocks.N.`; the rest of the DiT only loses `model.`.
# The same rules spell tensor keys (`….weight`), since they only rewrite module prefixes.
DIFFUSERS_TRANSFORMER = "transformer"
DIFFUSERS_DURATION_EMBEDDER = "duration_embedder"
DIFFUSERS_BLOCK_PREFIX = "transformer_blocks."

# Base-only paths that are not adapter targets but move like them (no `transformer.` in
# diffusers; the prompt padding embedding moves from the conditioner into the DiT).
_DIFFUSERS_EXTRA_DIT: dict[str, str] = {
    "model.transformer.memory_tokens": "memory_tokens",
    "model.transformer.rotary_pos_emb": "rotary_pos_emb",
}
_DIFFUSERS_EXTRA_CONDITIONER: dict[str, str] = {
    "conditioners.prompt.padding_embedding": "transformer.prompt_padding_embedding",
}

_DIFFUSERS_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_DIFFUSERS_DIT_RENAMES: tuple[tuple[str, str], ...] = tuple(
    (m.canonical, m.diffusers) for m in TOP_LEVEL_MODULES
) + tuple(_DIFFUSERS_EXTRA_DIT.items())
_DIFFUSERS_BLOCK_RENAMES: tuple[tuple[str, str], ...] = tuple(
    (m.canonical, m.diffusers) for m in BLOCK_MODULES
)
_DIFFUSERS_PIPELINE_RENAMES: tuple[tuple[str, str], ...] = tuple(
    (m.canonical, m.diffusers) for m in CONDITIONER_MODULES
) + tuple(_DIFFUSERS_EXTRA_CONDITIONER.items())


# The children of `StableAudio3DiTModel` (modules and root parameters): the first component of
# every path inside it. A path starting otherwise (`model.`, `transformer.`) is not diffusers'.
DIFFUSERS_DIT_CHILDREN: frozenset[str] = frozenset(
    {m.diffusers.split(".", 1)[0] for m in TOP_LEVEL_MODULES}
    | {path.split(".", 1)[0] for path in _DIFFUSERS_EXTRA_DIT.values()}
    | {DIFFUSERS_BLOCK_PREFIX.rstrip("."), "timestep_features", "prompt_padding_embedding"}
)


def _swap_prefix(path: str, pairs: tuple[tuple[str, str], ...], forward: bool) -> str | None:
    """`path` with the first matching module prefix swapped (whole components only)."""
    for official, diffusers in pairs:
        old, new = (official, diffusers) if forward else (diffusers, official)
        if path == old or path.startswith(old + "."):
            return new + path[len(old) :]
    return None


def _to_transformer_path(canonical: str) -> str | None:
    split = split_block(canonical)
    if split is not None:
        block, rest = split
        inner = _swap_prefix(rest, _DIFFUSERS_BLOCK_RENAMES, forward=True) or rest
        return f"{DIFFUSERS_BLOCK_PREFIX}{block}.{inner}"
    if not canonical.startswith(DIT_ROOT):
        return None
    renamed = _swap_prefix(canonical, _DIFFUSERS_DIT_RENAMES, forward=True)
    return renamed if renamed is not None else canonical[len(DIT_ROOT) :]


def _from_transformer_path(path: str) -> str:
    match = _DIFFUSERS_BLOCK_RE.match(path)
    if match is not None:
        rest = match.group(2)
        inner = _swap_prefix(rest, _DIFFUSERS_BLOCK_RENAMES, forward=False) or rest
        return block_target(int(match.group(1)), inner)
    renamed = _swap_prefix(path, _DIFFUSERS_DIT_RENAMES, forward=False)
    return renamed if renamed is not None else DIT_ROOT + path


def to_diffusers_path(canonical: str) -> str | None:
    """Pipeline path of a canonical module or tensor key: `transformer.…` for the DiT (and the
    prompt padding embedding), `duration_embedder.linear…` for the seconds conditioner; None
    when diffusers has no place for it."""
    moved = _swap_prefix(canonical, _DIFFUSERS_PIPELINE_RENAMES, forward=True)
    if moved is not None:
        return moved
    inner = _to_transformer_path(canonical)
    return None if inner is None else f"{DIFFUSERS_TRANSFORMER}.{inner}"


def from_diffusers_path(path: str) -> str | None:
    """Canonical name of a pipeline path (`transformer.…`, `duration_embedder.…`), None for
    paths in no component sa3ckpt knows."""
    moved = _swap_prefix(path, _DIFFUSERS_PIPELINE_RENAMES, forward=False)
    if moved is not None:
        return moved
    prefix = DIFFUSERS_TRANSFORMER + "."
    if not path.startswith(prefix):
        return None
    return _from_transformer_path(path[len(prefix) :])


def to_diffusers_dit_path(canonical: str) -> str | None:
    """Path inside `StableAudio3DiTModel` of a canonical module or tensor key (what its
    `diffusion_pytorch_model.safetensors` and a LoRA file after `transformer.` spell); None
    for names that live elsewhere (the seconds conditioner) or have no diffusers place."""
    path = to_diffusers_path(canonical)
    prefix = DIFFUSERS_TRANSFORMER + "."
    return path[len(prefix) :] if path is not None and path.startswith(prefix) else None


def from_diffusers_dit_path(path: str) -> str:
    """Canonical name of a path inside `StableAudio3DiTModel` (module or tensor key)."""
    canonical = from_diffusers_path(f"{DIFFUSERS_TRANSFORMER}.{path}")
    assert canonical is not None  # every transformer path has a canonical spelling
    return canonical


def diffusers_component(canonical: str) -> str | None:
    """The diffusers pipeline component holding a canonical module (`transformer` or
    `duration_embedder`), None when diffusers has no place for it."""
    path = to_diffusers_path(canonical)
    return None if path is None else path.split(".", 1)[0]


def diffusers_target(path: str) -> str | None:
    """The canonical module of a pipeline path spelled exactly as diffusers spells it, else
    None: readers of diffusers-named keys accept nothing else (an official path under a
    `transformer.` prefix is not a diffusers path, though the rules would map it)."""
    component, _, inside = path.partition(".")
    if component == DIFFUSERS_TRANSFORMER and inside.split(".", 1)[0] not in DIFFUSERS_DIT_CHILDREN:
        return None
    canonical = from_diffusers_path(path)
    if canonical is None or to_diffusers_path(canonical) != path:
        return None
    return canonical


def diffusers_suffix_clashes(path: str, depth: int) -> list[str]:
    """Other DiT module paths (blocks 0..depth-1) ending in `.<path>`: the modules PEFT would
    also adapt for a `target_modules` list naming `path` (it matches names as suffixes, so
    the top-level `proj_in` also names every block's `ff.proj_in`)."""
    paths = [m.diffusers for m in TOP_LEVEL_MODULES] + [
        f"{DIFFUSERS_BLOCK_PREFIX}{block}.{m.diffusers}"
        for block in range(depth)
        for m in BLOCK_MODULES
    ]
    return [p for p in paths if p != path and p.endswith("." + path)]
