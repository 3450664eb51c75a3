"""Codec adapter key spellings: file key <-> (canonical codec module, adapter param).

A codec module's canonical name is the official autoencoder's own module name
(`decoder.layers.3.transformers.0.self_attn.to_qkv`, targets/codec_families.py). Files
spell it in three dialects, mirroring the DiT ones:
- sa3: `<module>.parametrizations.weight.0.<param>`, the official LoRA parametrisation keys,
  with an optional root in front (`model.` as some writers add, `pretransform.model.` when
  the adapter was trained on the codec inside a full SA3 model); written without a root;
- peft: `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` /
  `.lora_magnitude_vector` (per-row magnitudes, so dora-rows only);
- sa3cpp: GGUF stems `ae.enc.N.self.qkv`, `ae.dec.N.ff.out`, ... after sa3.cpp's DiT stems
  (`dit.N.self.qkv`), plus `ae.enc.proj_out` / `ae.dec.proj_in` for the latent projections.
"""

from __future__ import annotations

import re

from sa3ckpt.adapters.types import ADAPTER_TYPES, BASIS_PARAMS
from sa3ckpt.targets.codec_families import BLOCK_MODULES, PART_LAYOUTS

DIALECTS = ("sa3", "peft", "sa3cpp")
SA3_ROOTS = ("pretransform.model.", "model.", "")
PEFT_PREFIX = "base_model.model."
SLOT = ".parametrizations.weight.0."
# every param any adapter type stores (ordered, unique), the XS bases included
PARAMS = tuple(
    dict.fromkeys([*(p for t in ADAPTER_TYPES.values() for p in t.params), *BASIS_PARAMS])
)
PEFT_PARAMS = {
    "lora_A.weight": "lora_A",
    "lora_B.weight": "lora_B",
    "lora_magnitude_vector.weight": "magnitude",
    "lora_magnitude_vector": "magnitude",
}
PEFT_WRITE = {
    "lora_A": "lora_A.weight",
    "lora_B": "lora_B.weight",
    "magnitude": "lora_magnitude_vector",
}
_MODULE = re.compile(r"^(encoder|decoder)\.layers\.\d+(?:\.[A-Za-z0-9_]+)*$")
# stem <-> module, independent of the size (block indices are carried through)
_STEM_TO_MODULE: dict[str, str] = {}
for _part, _layout in PART_LAYOUTS.items():
    _STEM_TO_MODULE[f"{_layout.stem_root}.{_layout.projection_stem}"] = _layout.projection
_MODULE_TO_STEM = {v: k for k, v in _STEM_TO_MODULE.items()}
_BLOCK_STEM = re.compile(r"^(ae\.enc|ae\.dec)\.(\d+)\.(.+)$")
_BLOCK_MODULE = re.compile(r"^((?:encoder|decoder)\.layers\.\d+\.transformers)\.(\d+)\.(.+)$")
_STEM_SUFFIX = {stem: module for module, (_, stem) in BLOCK_MODULES.items()}
_ROOT_OF_BLOCKS = {layout.blocks: layout.stem_root for layout in PART_LAYOUTS.values()}
_BLOCKS_OF_ROOT = {v: k for k, v in _ROOT_OF_BLOCKS.items()}


def to_sa3cpp_stem(module: str) -> str | None:
    """The sa3.cpp stem of a canonical codec module (None: no stem)."""
    if module in _MODULE_TO_STEM:
        return _MODULE_TO_STEM[module]
    m = _BLOCK_MODULE.match(module)
    if not m or m.group(1) not in _ROOT_OF_BLOCKS:
        return None
    stem = BLOCK_MODULES.get(m.group(3))
    return f"{_ROOT_OF_BLOCKS[m.group(1)]}.{m.group(2)}.{stem[1]}" if stem else None


def from_sa3cpp_stem(stem: str) -> str | None:
    """The canonical codec module of an sa3.cpp stem (None: not a codec stem)."""
    if stem in _STEM_TO_MODULE:
        return _STEM_TO_MODULE[stem]
    m = _BLOCK_STEM.match(stem)
    if not m or m.group(3) not in _STEM_SUFFIX:
        return None
    return f"{_BLOCKS_OF_ROOT[m.group(1)]}.{m.group(2)}.{_STEM_SUFFIX[m.group(3)]}"


def parse_codec_key(key: str) -> tuple[str, str, str] | None:
    """(canonical module, param, dialect) of a codec adapter key; None when it is not one."""
    if key.startswith(PEFT_PREFIX):
        rest = key[len(PEFT_PREFIX) :]
        for suffix, param in PEFT_PARAMS.items():
            if rest.endswith("." + suffix):
                module = rest[: -len(suffix) - 1]
                return (module, param, "peft") if _MODULE.match(module) else None
        return None
    if key.startswith("ae."):
        stem, _, param = key.rpartition(".")
        stem_module = from_sa3cpp_stem(stem)
        return (stem_module, param, "sa3cpp") if stem_module and param in PARAMS else None
    if SLOT not in key:
        return None
    head, _, param = key.partition(SLOT)
    if param not in PARAMS:
        return None
    for root in SA3_ROOTS:
        if head.startswith(root) and _MODULE.match(head[len(root) :]):
            return head[len(root) :], param, "sa3"
    return None


def codec_key(module: str, param: str, dialect: str) -> str:
    """The file key of (module, param) in `dialect` (ValueError where it has no spelling)."""
    if dialect == "sa3":
        return f"{module}{SLOT}{param}"
    if dialect == "peft":
        if param not in PEFT_WRITE:
            raise ValueError(f"PEFT has no spelling for {param!r} (only lora and dora-rows)")
        return f"{PEFT_PREFIX}{module}.{PEFT_WRITE[param]}"
    if dialect == "sa3cpp":
        stem = to_sa3cpp_stem(module)
        if stem is None:
            raise ValueError(f"{module} has no sa3.cpp stem")
        return f"{stem}.{param}"
    raise ValueError(f"unknown codec dialect {dialect!r} (known: {', '.join(DIALECTS)})")
