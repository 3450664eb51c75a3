"""How each weights file spells the SAME encoder's parameters (one table per naming).

Three namings carry the same numbers:

- official: the autoencoder module of stable-audio-tools, `encoder.layers.0` (the
  resampling block: `mapping.weight_g/_v/bias`, `new_tokens`, `transformers.N.{pre_norm,
  self_attn, ff_norm, ff.ff.0.proj, ff.ff.2}`), `encoder.layers.2` (the output Linear;
  layers 1 and 3 are parameter-free transposes), `bottleneck.{scaling_factor, bias,
  running_std, noise_scaling_factor}` (the last unused: `UNUSED`). A full SA3 checkpoint
  holds the same keys under `pretransform.model.`.
  Each block may carry its RoPE table `rope.inv_freq` (a persistent buffer upstream).
- mlx: the official MLX runtime's `same_{s,l}_encoder_f32.npz` (`mapping.weight` with the
  weight norm folded, (D, 512, 1); `blocks.N.{pre_norm, attn, ff_norm, ff.glu_proj,
  ff.proj_out}`, `project_out`, `bottleneck.*`) - our module's own names. The runtime's
  encoder module is not public; these names are those of the official extractor that
  writes the file (optimized/tflite/build/extract/extract_same_{s,l}_encoder_weights.py),
  whose decoder twin matches the MLX decoder file as the official cpu-amx tool reads it.
- diffusers: `AutoencoderSAME` (`encoder.blocks.0.{mapping, new_tokens, transformers.N.
  {norm_attn, attn, norm_ff, ff.proj_in, ff.proj_out}}`, `encoder.proj`, `bottleneck.
  {scale, bias, running_std}`), with `to_qkv` rows reordered to [q, q2, k, k2, v].

Everything here is names and shapes; `loading` reads the tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

OFFICIAL = "official"
MLX = "mlx"
DIFFUSERS = "diffusers"
NAMINGS = (OFFICIAL, MLX, DIFFUSERS)
PRETRANSFORM_PREFIX = "pretransform.model."  # the codec inside a full SA3 checkpoint

# Leaves of one block: our module path -> the naming's, under the block root.
_BLOCK_LEAVES: dict[str, dict[str, str]] = {
    OFFICIAL: {
        "pre_norm": "pre_norm",
        "attn.to_qkv": "self_attn.to_qkv",
        "attn.to_out": "self_attn.to_out",
        "attn.q_norm": "self_attn.q_norm",
        "attn.k_norm": "self_attn.k_norm",
        "ff_norm": "ff_norm",
        "ff.glu_proj": "ff.ff.0.proj",
        "ff.proj_out": "ff.ff.2",
    },
    DIFFUSERS: {
        "pre_norm": "norm_attn",
        "attn.to_qkv": "attn.to_qkv",
        "attn.to_out": "attn.to_out",
        "attn.q_norm": "attn.q_norm",
        "attn.k_norm": "attn.k_norm",
        "ff_norm": "norm_ff",
        "ff.glu_proj": "ff.proj_in",
        "ff.proj_out": "ff.proj_out",
    },
}
_BLOCK_ROOT = {
    OFFICIAL: "encoder.layers.0.transformers.{i}.",
    DIFFUSERS: "encoder.blocks.0.transformers.{i}.",
    MLX: "blocks.{i}.",
}
# Parameters outside the blocks: our name -> the naming's.
_TOP: dict[str, dict[str, str]] = {
    OFFICIAL: {
        "mapping.bias": "encoder.layers.0.mapping.bias",
        "new_tokens": "encoder.layers.0.new_tokens",
        "project_out.weight": "encoder.layers.2.weight",
        "project_out.bias": "encoder.layers.2.bias",
        "bottleneck.scaling_factor": "bottleneck.scaling_factor",
        "bottleneck.bias": "bottleneck.bias",
        "bottleneck.running_std": "bottleneck.running_std",
    },
    DIFFUSERS: {
        "mapping.bias": "encoder.blocks.0.mapping.bias",
        "new_tokens": "encoder.blocks.0.new_tokens",
        "project_out.weight": "encoder.proj.weight",
        "project_out.bias": "encoder.proj.bias",
        "bottleneck.scaling_factor": "bottleneck.scale",
        "bottleneck.bias": "bottleneck.bias",
        "bottleneck.running_std": "bottleneck.running_std",
    },
}
MAPPING_WEIGHT = "mapping.weight"
# The weight-normed mapping conv (official, diffusers): two tensors fold into our weight.
WEIGHT_NORM = {
    OFFICIAL: ("encoder.layers.0.mapping.weight_g", "encoder.layers.0.mapping.weight_v"),
    DIFFUSERS: ("encoder.blocks.0.mapping.weight_g", "encoder.blocks.0.mapping.weight_v"),
}
QKV_LEAF = "attn.to_qkv.weight"
# Where the encoder's own keys live (a key there that is no parameter is refused) and the
# decoder's (named as not used).
ENCODER_ROOTS = {
    OFFICIAL: ("encoder.", "bottleneck."),
    DIFFUSERS: ("encoder.", "bottleneck."),
    MLX: ("",),
}
DECODER_ROOT = "decoder."


@dataclass(frozen=True)
class Unused:
    """A key the official module registers that the encoder never reads: why, and its shape
    rule (`fits`, worded in `shape`), so a tensor of another shape is still refused."""

    reason: str
    shape: str
    fits: Callable[[tuple[int, ...]], bool]


# Per naming: keys (under the encoder roots) the official module always registers and the
# encoder does not use, so a state-dict export of it (and a full SA3 checkpoint) loads. The
# soft-norm bottleneck registers `noise_scaling_factor`, an nn.Parameter of shape
# (1, noise_augment_dim, 1): empty when noise_augment_dim is 0 (the released SA3 codecs);
# only decoding with noise augmentation reads it. diffusers' AutoencoderSAME has no such
# parameter (its bottleneck is scale, bias, running_std).
UNUSED: dict[str, dict[str, Unused]] = {
    OFFICIAL: {
        "bottleneck.noise_scaling_factor": Unused(
            "the bottleneck's noise-augmentation scale (1, noise_augment_dim, 1); only decoding "
            "with noise_augment_dim > 0 reads it, encoding never (empty when it is 0)",
            "(1, noise_augment_dim, 1)",
            lambda shape: len(shape) == 3 and shape[0] == 1 and shape[2] == 1,
        ),
    },
}
# A block's RoPE table in the official spelling (checked against ours, then not used).
_ROPE_TABLE = re.compile(r"^encoder\.layers\.0\.transformers\.(\d+)\.rope\.inv_freq$")
_BLOCK_INDEX = {
    OFFICIAL: re.compile(r"^encoder\.layers\.0\.transformers\.(\d+)\."),
    DIFFUSERS: re.compile(r"^encoder\.blocks\.0\.transformers\.(\d+)\."),
    MLX: re.compile(r"^blocks\.(\d+)\."),
}
_BLOCK_PARAM = re.compile(r"^blocks\.(\d+)\.(.+)\.(\w+)$")


@dataclass(frozen=True)
class Spelling:
    """A naming plus the prefix its keys carry (`pretransform.model.` in a full SA3 file)."""

    naming: str
    prefix: str = ""

    def key(self, param: str) -> str | None:
        """The input key of one of our parameters (None: mapping.weight in a weight-normed
        naming, which comes from two keys: `WEIGHT_NORM`)."""
        if self.naming == MLX:
            return param
        if param == MAPPING_WEIGHT:
            return None
        match = _BLOCK_PARAM.match(param)
        if match is None:
            return self.prefix + _TOP[self.naming][param]
        index, module, leaf = match.groups()
        root = _BLOCK_ROOT[self.naming].format(i=index)
        return f"{self.prefix}{root}{_BLOCK_LEAVES[self.naming][module]}.{leaf}"

    def weight_norm_keys(self) -> tuple[str, str] | None:
        """(weight_g, weight_v) keys of the mapping conv, or None (MLX: folded)."""
        pair = WEIGHT_NORM.get(self.naming)
        return None if pair is None else (self.prefix + pair[0], self.prefix + pair[1])

    def strip(self, key: str) -> str | None:
        """The key without the prefix, or None when it lacks it."""
        return key[len(self.prefix) :] if key.startswith(self.prefix) else None

    def unused(self, key: str) -> Unused | None:
        """The `UNUSED` entry of a key this naming's module registers but the encoder never
        reads, else None."""
        bare = self.strip(key)
        return None if bare is None else UNUSED.get(self.naming, {}).get(bare)

    def in_encoder(self, key: str) -> bool:
        bare = self.strip(key)
        return bare is not None and bare.startswith(ENCODER_ROOTS[self.naming])

    def in_decoder(self, key: str) -> bool:
        bare = self.strip(key)
        return bare is not None and self.naming != MLX and bare.startswith(DECODER_ROOT)

    def rope_table_block(self, key: str) -> int | None:
        """The block index of an official per-block RoPE table key, else None."""
        bare = self.strip(key)
        match = _ROPE_TABLE.match(bare or "") if self.naming == OFFICIAL else None
        return int(match.group(1)) if match else None

    def block_indices(self, keys: Iterable[str]) -> set[int]:
        """Indices of the blocks the keys hold (for sizing a file's model)."""
        pattern = _BLOCK_INDEX[self.naming]
        found = set()
        for key in keys:
            bare = self.strip(key)
            match = pattern.match(bare or "")
            if match:
                found.add(int(match.group(1)))
        return found


def detect_spelling(keys: Iterable[str], folder: bool) -> Spelling | None:
    """The naming of a weights file from its keys (a diffusers folder is always diffusers)."""
    keys = list(keys)
    if folder:
        return Spelling(DIFFUSERS)
    for prefix in ("", PRETRANSFORM_PREFIX):
        if any(k.startswith(prefix + "encoder.layers.0.") for k in keys):
            return Spelling(OFFICIAL, prefix)
    if any(k.startswith("encoder.blocks.0.") for k in keys):
        return Spelling(DIFFUSERS)
    if any(_BLOCK_INDEX[MLX].match(k) for k in keys) and MAPPING_WEIGHT in keys:
        return Spelling(MLX)
    return None


def diffusers_qkv_to_official(rows: int) -> list[slice]:
    """Row blocks of a diffusers `to_qkv` ([q, q2, k, k2, v]) in official order
    ([q, k, v, q_diff, k_diff]); `rows` = 5 D."""
    width = rows // 5
    order = (0, 2, 4, 1, 3)
    return [slice(i * width, (i + 1) * width) for i in order]


__all__ = [
    "DIFFUSERS",
    "MLX",
    "NAMINGS",
    "OFFICIAL",
    "PRETRANSFORM_PREFIX",
    "UNUSED",
    "Spelling",
    "Unused",
    "detect_spelling",
    "diffusers_qkv_to_official",
]
