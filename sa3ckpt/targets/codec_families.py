"""The SAME codec halves as model families: target tables of the encoder and the decoder.

Facts from the official autoencoder code (reference/same.md; module names as the official
`SAMEEncoder` / `SAMEDecoder` build them, checked against diffusers' AutoencoderSAME):
- encoder: `encoder.layers.0` is the transformer resampling block (a weight-normed 1x1
  `mapping` conv 512 -> D, `new_tokens`, and `transformers.N` blocks), `encoder.layers.1` / `.3`
  are parameter-free transposes, `encoder.layers.2` the Linear(D, 256) latent projection;
- decoder: `decoder.layers.0` / `.2` transposes, `decoder.layers.1` the Linear(256, D) latent
  projection, `decoder.layers.3` the resampling block (its `transformers.N` blocks, then the
  weight-normed `mapping` conv D -> 512);
- every transformer block has the same four Linears: `self_attn.to_qkv` (5D, D) bias-free
  (differential: q, k, v, q_diff, k_diff), `self_attn.to_out` (D, D) bias-free, the GLU
  `ff.ff.0.proj` (2·3D, D) and `ff.ff.2` (D, 3D), both with bias. DyT norms hold no matrix.
- SAME-S: D = 768 (128 x 6), 6 blocks per half; SAME-L: D = 1536 (256 x 6), 12 per half
  (the decoder's last 7 blocks use sin gating: same shapes).
The targets are the Linears: 4 per block + the latent projection = 25 (SAME-S) or 49
(SAME-L) per half. The mapping convs are not targets: they are legacy weight-normed
(`weight_g` / `weight_v`), so a `parametrizations.weight` adapter cannot attach to them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sa3ckpt.names.select import select

PATCH_CHANNELS = 512  # 2 audio channels x 256-sample patches
LATENT_CHANNELS = 256
HEAD_DIM = 64
FF_MULT = 3
PARTS = ("encoder", "decoder")


@dataclass(frozen=True)
class CodecSize:
    """A SAME codec size: transformer width D and blocks per half (reference/same.md)."""

    name: str
    width: int
    depth: int
    test_only: bool = False


CODEC_SIZES: dict[str, CodecSize] = {
    s.name: s
    for s in (
        CodecSize("SAME-S", 768, 6),
        CodecSize("SAME-L", 1536, 12),
        # toy sizes of the same layout, for the committed fixtures
        CodecSize("tiny-same-s", 8, 2, test_only=True),
        CodecSize("tiny-same-l", 16, 3, test_only=True),
    )
}

ShapeRule = Callable[[int], tuple[int, int]]

# per-block module -> ((fan_out, fan_in) from D, sa3.cpp stem suffix)
BLOCK_MODULES: dict[str, tuple[ShapeRule, str]] = {
    "self_attn.to_qkv": (lambda d: (5 * d, d), "self.qkv"),
    "self_attn.to_out": (lambda d: (d, d), "self.out"),
    "ff.ff.0.proj": (lambda d: (2 * FF_MULT * d, d), "ff.proj"),
    "ff.ff.2": (lambda d: (d, FF_MULT * d), "ff.out"),
}


@dataclass(frozen=True)
class PartLayout:
    """Where one half keeps its blocks and its latent projection, and its sa3.cpp stem root."""

    blocks: str  # module prefix of the transformer blocks
    projection: str  # the latent projection Linear
    projection_shape: Callable[[int], tuple[int, int]]
    stem_root: str  # sa3.cpp: `ae.enc` / `ae.dec`
    projection_stem: str


PART_LAYOUTS: dict[str, PartLayout] = {
    "encoder": PartLayout(
        "encoder.layers.0.transformers",
        "encoder.layers.2",
        lambda d: (LATENT_CHANNELS, d),
        "ae.enc",
        "proj_out",
    ),
    "decoder": PartLayout(
        "decoder.layers.3.transformers",
        "decoder.layers.1",
        lambda d: (d, LATENT_CHANNELS),
        "ae.dec",
        "proj_in",
    ),
}


@dataclass(frozen=True)
class CodecTarget:
    """One adapter-targetable Linear of a codec half (canonical 2-D (fan_out, fan_in))."""

    name: str  # the official module name, e.g. decoder.layers.3.transformers.0.self_attn.to_qkv
    layer_kind: str
    shape: tuple[int, int]
    sa3cpp_stem: str
    block: int | None
    module: str  # per-block suffix, or "projection"

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.shape


def _targets(size: CodecSize, part: str) -> tuple[CodecTarget, ...]:
    layout = PART_LAYOUTS[part]
    d = size.width
    out = [
        CodecTarget(
            f"{layout.blocks}.{i}.{module}",
            "linear",
            rule(d),
            f"{layout.stem_root}.{i}.{stem}",
            i,
            module,
        )
        for i in range(size.depth)
        for module, (rule, stem) in BLOCK_MODULES.items()
    ]
    projection = CodecTarget(
        layout.projection,
        "linear",
        layout.projection_shape(d),
        f"{layout.stem_root}.{layout.projection_stem}",
        None,
        "projection",
    )
    # table order = forward order: the encoder projects last, the decoder first
    return (*out, projection) if part == "encoder" else (projection, *out)


@dataclass(frozen=True)
class CodecFamily:
    """One half of one SAME size as a family: `same-l-decoder`, its targets and lookups."""

    name: str
    size: CodecSize
    part: str
    targets: tuple[CodecTarget, ...] = field(init=False)
    by_name: Mapping[str, CodecTarget] = field(init=False)

    def __post_init__(self) -> None:
        targets = _targets(self.size, self.part)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "by_name", {t.name: t for t in targets})

    @property
    def label(self) -> str:
        return f"{self.size.name} {self.part}"

    @property
    def test_only(self) -> bool:
        return self.size.test_only

    def target(self, name: str) -> CodecTarget | None:
        return self.by_name.get(name)

    def selected(self, include: list[str] | None, exclude: list[str] | None) -> list[CodecTarget]:
        """Targets an include/exclude selection covers, in table order."""
        return [self.by_name[n] for n in select((t.name for t in self.targets), include, exclude)]


def family_name(size: str, part: str) -> str:
    """`SAME-L` + `decoder` -> `same-l-decoder`."""
    return f"{size.lower()}-{part}"


CODEC_TARGET_FAMILIES: dict[str, CodecFamily] = {
    family_name(size.name, part): CodecFamily(family_name(size.name, part), size, part)
    for size in CODEC_SIZES.values()
    for part in PARTS
}
PUBLISHED_CODEC_FAMILIES = tuple(n for n, f in CODEC_TARGET_FAMILIES.items() if not f.test_only)


def codec_family(name: str) -> CodecFamily:
    """Look up a codec family by name, with an error listing the known ones."""
    try:
        return CODEC_TARGET_FAMILIES[name.lower()]
    except KeyError:
        known = ", ".join(CODEC_TARGET_FAMILIES)
        raise ValueError(f"unknown codec family {name!r} (known: {known})") from None


def families_for_part(part: str | None) -> list[CodecFamily]:
    """The families of one half (both halves when the part is unknown)."""
    return [f for f in CODEC_TARGET_FAMILIES.values() if part in (None, f.part)]
