"""Base-key dialects: how each base-checkpoint naming spells every tensor it holds.

A base naming (official full checkpoint, MLX optimized runtime, diffusers) is one
`BaseNaming` row: how to read a key as (canonical module, leaf as spelled), how to spell one
back, which leaves it spells differently from the official checkpoint (MLX writes RMSNorm
`gamma` as `weight`), and what evidence says a key belongs to it. Translating a tensor
between namings always goes through the canonical module and the official leaf, so every pair
of namings converts. Adapter keys live in `names.adapter_keys`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sa3ckpt.names.modules import (
    BLOCK_MODULES,
    BLOCK_PREFIX,
    CONDITIONER_ROOT,
    DIFFUSERS_BLOCK_PREFIX,
    DIFFUSERS_DURATION_EMBEDDER,
    DIT_ROOT,
    MLX_ARRAY_PREFIX,
    MLX_CONDITIONER_ARRAYS,
    SECONDS_CONDITIONER,
    TOP_LEVEL_MODULES,
    from_diffusers_dit_path,
    from_diffusers_path,
    from_mlx_module,
    to_diffusers_dit_path,
    to_diffusers_path,
    to_mlx_module,
)

Shape = tuple[int, ...]

OFFICIAL_DIT_PREFIX = "model.model."
OFFICIAL_CONDITIONER_PREFIX = "conditioner.conditioners."
# Official key prefix -> canonical root it stands for.
_OFFICIAL_ROOTS: tuple[tuple[str, str], ...] = (
    (OFFICIAL_DIT_PREFIX, DIT_ROOT),
    (OFFICIAL_CONDITIONER_PREFIX, CONDITIONER_ROOT),
)

# Leaves of plain network tensors (Linear/Conv weight and bias, RMSNorm gamma): a file whose
# keys all end like this holds a network, not an adapter.
BASE_LEAVES: frozenset[str] = frozenset(("weight", "bias", "gamma"))


def _leaf(key: str) -> str:
    return key.rpartition(".")[2]


def _is_norm_module(module: str) -> bool:
    """Whether a module's own name (its last path component) says it is a norm layer."""
    return "norm" in module.rpartition(".")[2]


@dataclass(frozen=True)
class LeafRename:
    """One leaf a naming spells differently from the official checkpoint.

    Official -> naming always renames (the naming has only this spelling); naming -> official
    needs `applies(module, shape)`, because the naming's spelling is shared with other leaves.
    """

    official: str
    spelled: str
    applies: Callable[[str, Shape], bool]
    why: str


@dataclass(frozen=True)
class BaseNaming:
    """One way of spelling base-checkpoint tensor keys.

    `parse` gives (canonical module, leaf as spelled) or None for keys outside the canonical
    modules; `format` spells (canonical module, leaf as spelled) or None when the naming has
    no place for it. Detection: a naming claims a file when at least `detect_share` of its keys
    (and at least one) satisfy `owns`; rows are tried in table order.
    """

    name: str
    description: str
    example: str
    parse: Callable[[str], tuple[str, str] | None]
    format: Callable[[str, str], str | None]
    renames: tuple[LeafRename, ...]
    owns: Callable[[str], bool]
    detect_share: float

    def to_official_leaf(self, module: str, leaf: str, shape: Shape) -> str:
        """The official leaf of a tensor spelled `leaf` here (shape decides ambiguous ones)."""
        for rule in self.renames:
            if rule.spelled == leaf and rule.applies(module, shape):
                return rule.official
        return leaf

    def from_official_leaf(self, leaf: str) -> str:
        """How this naming spells an official leaf."""
        for rule in self.renames:
            if rule.official == leaf:
                return rule.spelled
        return leaf


# --- official full checkpoint: `model.model.<DiT path>`, `conditioner.conditioners.<…>` -------


def parse_official_base_key(key: str) -> tuple[str, str] | None:
    """(canonical module, leaf param) of an official full base key, None if not under a root."""
    for prefix, root in _OFFICIAL_ROOTS:
        if key.startswith(prefix):
            module, _, param = key[len(prefix) :].rpartition(".")
            if not module:
                return None
            return root + module, param
    return None


def _format_official(module: str, param: str) -> str | None:
    for prefix, root in _OFFICIAL_ROOTS:
        if module.startswith(root):
            return f"{prefix}{module[len(root) :]}.{param}"
    return None


def official_base_key(target: str, param: str = "weight") -> str:
    """Key of a target's weight (or bias) in the official full base checkpoint."""
    key = _format_official(target, param)
    if key is None:
        raise ValueError(f"{target}: not a canonical target name")
    return key


def _owns_official(key: str) -> bool:
    return key.startswith(tuple(prefix for prefix, _ in _OFFICIAL_ROOTS))


# --- MLX optimized runtime: DiT path without root, `to_local_embed.seq.N`, `cond.*` arrays ----

# Base-only MLX arrays (not adapter targets) beside the seconds conditioner's: the prompt
# conditioner's learned padding embedding, same shape, which the official MLX pipeline's
# conditioner loader requires as `cond.padding_embedding`.
_MLX_BASE_ONLY_ARRAYS: dict[str, dict[str, str]] = {
    "conditioners.prompt": {"padding_embedding": "cond.padding_embedding"},
}
_MLX_ARRAYS: dict[str, dict[str, str]] = {**MLX_CONDITIONER_ARRAYS, **_MLX_BASE_ONLY_ARRAYS}
_MLX_ARRAY_TO_TARGET = {
    key: (target, param) for target, arrays in _MLX_ARRAYS.items() for param, key in arrays.items()
}
# What the official MLX pipeline's conditioner loader reads (`np.load` of the DiT file itself,
# prefix `cond.`): all three are required, and only an .npz can hold them for it.
MLX_PIPELINE_CONDITIONER_KEYS: tuple[str, ...] = (
    "cond.padding_embedding",
    "cond.seconds_total_weight",
    "cond.seconds_total_bias",
)


def parse_mlx_base_key(key: str) -> tuple[str, str] | None:
    """(canonical module, leaf param) of an MLX runtime base key.

    The `cond.*` arrays parse to the conditioner module they come from (the seconds
    Linear's weight and bias, the prompt conditioner's padding embedding); other `cond.*`
    keys have no module.
    """
    if key in _MLX_ARRAY_TO_TARGET:
        return _MLX_ARRAY_TO_TARGET[key]
    module, _, param = key.rpartition(".")
    if not module or (module + ".").startswith(MLX_ARRAY_PREFIX):
        return None
    return from_mlx_module(module), param


def _format_mlx(module: str, param: str) -> str | None:
    arrays = _MLX_ARRAYS.get(module)
    if arrays is not None:
        return arrays.get(param)
    mlx_module = to_mlx_module(module)
    return None if mlx_module is None else f"{mlx_module}.{param}"


def mlx_base_key(target: str, param: str = "weight") -> str:
    """Key of a target's weight (or bias) in an MLX runtime base (npz or safetensors)."""
    key = _format_mlx(target, param)
    if key is None:
        raise ValueError(f"{target}: no MLX runtime name for its {param}")
    return key


def _owns_mlx(key: str) -> bool:
    return parse_mlx_base_key(key) is not None and key.startswith(
        ("transformer.", MLX_ARRAY_PREFIX)
    )


# The MLX runtime renamed the official RMSNorm `gamma` to `weight`, so the inverse needs more
# than the name: a 1-D `weight` of a module whose name says "norm" is an RMSNorm scale. Linear
# weights are 2-D and Conv1d weights 3-D in both namings, so they never match this rule.
MLX_LEAF_RENAMES: tuple[LeafRename, ...] = (
    LeafRename(
        "gamma",
        "weight",
        lambda module, shape: len(shape) == 1 and _is_norm_module(module),
        "MLX spells RMSNorm gamma `weight`; 1-D + norm module name identifies it",
    ),
)


# --- diffusers StableAudio3DiTModel: paths inside the DiT model, `names.modules` rules -------

# A diffusers transformer folder spells the DiT's own tensors by their path inside
# `StableAudio3DiTModel` (the module rules, prompt padding embedding included, are
# `names.modules.to_diffusers_path`'s). The seconds conditioner lives in another pipeline
# component, so its Linear is spelled with that component's prefix
# (`duration_embedder.linear.weight`): a transformer folder has no home for it
# (`io.diffusers_folder.has_transformer_home`).
_DIFFUSERS_OTHER_COMPONENT = DIFFUSERS_DURATION_EMBEDDER + "."


def _split_leaf(canonical_key: str) -> tuple[str, str] | None:
    module, _, param = canonical_key.rpartition(".")
    return (module, param) if module else None


def parse_diffusers_base_key(key: str) -> tuple[str, str] | None:
    """(canonical module, leaf param) of a diffusers transformer (or duration embedder) key."""
    if key.startswith(_DIFFUSERS_OTHER_COMPONENT):
        canonical = from_diffusers_path(key)
        return None if canonical is None else _split_leaf(canonical)
    return _split_leaf(from_diffusers_dit_path(key))


def _format_diffusers(module: str, param: str) -> str | None:
    canonical = f"{module}.{param}"
    inside = to_diffusers_dit_path(canonical)
    if inside is not None:
        return inside
    path = to_diffusers_path(canonical)
    return path if path is not None and path.startswith(_DIFFUSERS_OTHER_COMPONENT) else None


def _owns_diffusers(key: str) -> bool:
    return key.startswith(DIFFUSERS_BLOCK_PREFIX)


# --- sa3.cpp GGUF: compact `dit.*` names (DiT file), `te.*` names (conditioner sidecar) -------

# sa3.cpp's DiT converter renames every official DiT tensor it keeps: the adapter-target
# modules by their stems (`names.modules`), plus the norms, the adaLN table and the memory
# tokens below; it drops `rotary_pos_emb.inv_freq` (sa3.cpp recomputes it from `dit.rot` and
# `dit.rope_base`). Its conditioner converter writes the prompt padding embedding and the
# seconds Linear as `te.*`. Leaves keep their official spelling (RMSNorm `gamma`).
SA3CPP_DIT_PREFIX = "dit."
SA3CPP_CONDITIONER_PREFIX = "te."
# Per-block modules beside the adapter targets: canonical suffix after `layers.N.` -> sa3.cpp.
_SA3CPP_BLOCK_NORMS: dict[str, str] = {
    "pre_norm": "pre_norm",
    "ff_norm": "ff_norm",
    "cross_attend_norm": "cross_norm",
    "self_attn.q_norm": "self.q_norm",
    "self_attn.k_norm": "self.k_norm",
    "cross_attn.q_norm": "cross.q_norm",
    "cross_attn.k_norm": "cross.k_norm",
}
_SA3CPP_BLOCK: dict[str, str] = {
    **{m.canonical: m.sa3cpp for m in BLOCK_MODULES if m.sa3cpp},
    **_SA3CPP_BLOCK_NORMS,
}
_SA3CPP_BLOCK_BACK = {stem: canonical for canonical, stem in _SA3CPP_BLOCK.items()}
# Tensors that are a leaf of a module rather than a module's weight: (module, leaf) -> name.
# `{n}` is the block index.
_SA3CPP_BLOCK_LEAVES: dict[str, str] = {"to_scale_shift_gate": "ssg"}
_SA3CPP_FIXED: dict[tuple[str, str], str] = {
    ("model.transformer", "memory_tokens"): "dit.memory_tokens",
    ("conditioners.prompt", "padding_embedding"): "te.padding_embedding",
    (SECONDS_CONDITIONER, "weight"): "te.secs.weight",
    (SECONDS_CONDITIONER, "bias"): "te.secs.bias",
}
_SA3CPP_FIXED_BACK = {name: pair for pair, name in _SA3CPP_FIXED.items()}
# (module, leaf) sa3.cpp does not store because it recomputes them.
SA3CPP_RECOMPUTED: frozenset[tuple[str, str]] = frozenset(
    {("model.transformer.rotary_pos_emb", "inv_freq")}
)
_SA3CPP_TOP = {m.canonical: m.sa3cpp for m in TOP_LEVEL_MODULES if m.sa3cpp}
_SA3CPP_TOP_BACK = {stem: canonical for canonical, stem in _SA3CPP_TOP.items()}


def parse_sa3cpp_base_key(key: str) -> tuple[str, str] | None:
    """(canonical module, leaf) of an sa3.cpp DiT or conditioner GGUF tensor name."""
    fixed = _SA3CPP_FIXED_BACK.get(key)
    if fixed is not None:
        return fixed
    stem, _, leaf = key.rpartition(".")
    if not stem.startswith(SA3CPP_DIT_PREFIX):
        return None
    top = _SA3CPP_TOP_BACK.get(stem)
    if top is not None:
        return top, leaf
    head, _, rest = key[len(SA3CPP_DIT_PREFIX) :].partition(".")
    if not head.isdigit() or not rest:
        return None
    block = f"{BLOCK_PREFIX}{int(head)}"
    for official, spelled in _SA3CPP_BLOCK_LEAVES.items():
        if rest == spelled:
            return block, official
    suffix, _, leaf = rest.rpartition(".")
    canonical = _SA3CPP_BLOCK_BACK.get(suffix)
    return None if canonical is None else (f"{block}.{canonical}", leaf)


def _format_sa3cpp(module: str, leaf: str) -> str | None:
    fixed = _SA3CPP_FIXED.get((module, leaf))
    if fixed is not None:
        return fixed
    top = _SA3CPP_TOP.get(module)
    if top is not None:
        return f"{top}.{leaf}"
    if not module.startswith(BLOCK_PREFIX):
        return None
    head, _, suffix = module[len(BLOCK_PREFIX) :].partition(".")
    if not head.isdigit():
        return None
    if not suffix:
        spelled = _SA3CPP_BLOCK_LEAVES.get(leaf)
        return None if spelled is None else f"dit.{head}.{spelled}"
    stem = _SA3CPP_BLOCK.get(suffix)
    return None if stem is None else f"dit.{head}.{stem}.{leaf}"


def sa3cpp_base_key(target: str, param: str = "weight") -> str:
    """Name of a target's weight (or bias) in an sa3.cpp DiT or conditioner GGUF."""
    key = _format_sa3cpp(target, param)
    if key is None:
        raise ValueError(f"{target}: no sa3.cpp name for its {param}")
    return key


def _owns_sa3cpp(key: str) -> bool:
    return parse_sa3cpp_base_key(key) is not None


def is_sa3cpp_conditioner_key(key: str) -> bool:
    """Whether an sa3.cpp base tensor lives in the conditioner sidecar (not the DiT file)."""
    return key.startswith(SA3CPP_CONDITIONER_PREFIX)


BASE_NAMINGS: dict[str, BaseNaming] = {
    n.name: n
    for n in (
        BaseNaming(
            "official",
            "official full checkpoint: model.model.<DiT path>, conditioner.conditioners.<…>",
            "model.model.transformer.layers.0.self_attn.to_qkv.weight",
            parse_official_base_key,
            _format_official,
            (),
            _owns_official,
            0.5,
        ),
        BaseNaming(
            "diffusers",
            "diffusers StableAudio3DiTModel: no root, transformer_blocks.N, proj_in/out, "
            "ff.proj_in/out, to_qkv rows [q|q2|k|k2|v] (medium)",
            "transformer_blocks.0.self_attn.to_qkv.weight",
            parse_diffusers_base_key,
            _format_diffusers,
            (),
            _owns_diffusers,
            0.5,
        ),
        BaseNaming(
            "sa3cpp",
            "sa3.cpp GGUF: dit.N.self.qkv, dit.pre_conv (kernel 1 squeezed), dit.N.ssg, "
            "te.* in the conditioner sidecar",
            "dit.0.self.qkv.weight",
            parse_sa3cpp_base_key,
            _format_sa3cpp,
            (),
            _owns_sa3cpp,
            0.5,
        ),
        BaseNaming(
            "mlx",
            "MLX optimized runtime: no root, to_local_embed.seq.N, RMSNorm weight, cond.* arrays",
            "transformer.layers.0.self_attn.to_qkv.weight",
            parse_mlx_base_key,
            _format_mlx,
            MLX_LEAF_RENAMES,
            _owns_mlx,
            0.0,
        ),
    )
}


def base_naming(name: str) -> BaseNaming:
    """Look up a base naming with a clear error listing the known ones."""
    try:
        return BASE_NAMINGS[name]
    except KeyError:
        known = ", ".join(BASE_NAMINGS)
        raise ValueError(f"unknown base naming {name!r} (known: {known})") from None


def parse_base_key(key: str, naming: str) -> tuple[str, str] | None:
    """(canonical module, leaf as spelled) of a base key in a naming, None outside the modules."""
    return base_naming(naming).parse(key)


def translate_base_key(key: str, shape: Shape, source: str, target: str) -> str | None:
    """The key of the same tensor in another naming; None when `target` has no spelling for it.

    Same naming in and out keeps every key, including ones outside the canonical modules.
    """
    if source == target:
        return key
    src, dst = base_naming(source), base_naming(target)
    parsed = src.parse(key)
    if parsed is None:
        return None
    module, leaf = parsed
    official = src.to_official_leaf(module, leaf, shape)
    return dst.format(module, dst.from_official_leaf(official))


def official_to_mlx_base_key(key: str) -> str | None:
    """MLX runtime key of any official full-base tensor (targets and the rest), if it has one.

    RMSNorm `.gamma` becomes `.weight`; the seconds conditioner's Linear becomes the plain
    `cond.seconds_total_weight` / `_bias` arrays and the prompt padding embedding
    `cond.padding_embedding`; other conditioner tensors (the text encoder) have no MLX
    spelling known to us and return None.
    """
    return translate_base_key(key, (), "official", "mlx")


def mlx_to_official_base_key(key: str, shape: Shape) -> str | None:
    """Official key of an MLX runtime tensor (the shape tells RMSNorm scales from weights)."""
    return translate_base_key(key, shape, "mlx", "official")


def detect_base_naming(keys: Sequence[str]) -> str | None:
    """The first naming that owns enough of the keys (official needs half), else None."""
    for naming in BASE_NAMINGS.values():
        owned = sum(naming.owns(k) for k in keys)
        if owned and owned >= math.floor(len(keys) * naming.detect_share):
            return naming.name
    return None


def looks_like_base_key(key: str) -> bool:
    """Whether a key reads as a network tensor rather than an adapter tensor.

    True for official full-base keys, MLX `cond.*` arrays and any key whose leaf is a plain
    network leaf (weight, bias, gamma), which covers the MLX runtime's DiT keys.
    """
    return (
        parse_official_base_key(key) is not None
        or key.startswith(MLX_ARRAY_PREFIX)
        or _leaf(key) in BASE_LEAVES
    )
