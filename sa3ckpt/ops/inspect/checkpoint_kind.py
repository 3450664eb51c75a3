"""What kind of checkpoint a file is: the one table, for inspect, validate and the TUI.

`io.formats.identify` answers "adapter, base or unknown" from the key spelling alone. That
is not enough to tell a user what they opened: an MLX DiT file, an official base without
its conditioner, a conditioner-only file, the SAME codec's encoder or decoder weights, and a
LoRA trained on a codec half (lora_config `target` "encoder"/"decoder", sa3.cpp stems
`ae.enc.*` / `ae.dec.*`) all need their own one-line answer, and only one of them — the SA3
DiT adapter — is what the adapter rules judge. Each kind is one row of `KINDS` (label,
badge, explanation, whether the adapter rules apply, whether merge takes it as a base); the
decision is data over the keys and shapes read from the header, never tensor data.

Codec sizes are rows of `CODEC_FAMILIES` (width and depth of the SAME transformer,
targets/codec_families.py). A codec adapter is a checked adapter kind: its targets and
shapes are matched against the codec target tables (ops.codec_adapter), which name its
family (`same-l-decoder`: "an adapter on the SAME-L decoder").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sa3ckpt.errors import MalformedFileError, Sa3ckptError
from sa3ckpt.io.base_checkpoint import BaseCheckpoint, npz_header, open_base
from sa3ckpt.io.formats import (
    ADAPTER,
    BASE,
    GGUF_MODEL,
    PICKLE,
    identify,
    open_adapter_source,
    sniff,
    sniff_format,
)
from sa3ckpt.io.gguf_base import open_gguf_model
from sa3ckpt.io.gguf_facts import CODEC_ARCH
from sa3ckpt.io.safetensors import read_header
from sa3ckpt.io.sources import AdapterSource
from sa3ckpt.names.base_keys import parse_base_key
from sa3ckpt.names.modules import CONDITIONER_ROOT, DIT_ROOT
from sa3ckpt.ops.codec import analyze_codec
from sa3ckpt.targets.codec_families import CODEC_SIZES, CODEC_TARGET_FAMILIES, CodecSize

Shape = tuple[int, ...]

# --- the kinds --------------------------------------------------------------------------------

DIT_ADAPTER = "dit-adapter"
FULL_BASE = "full-base"
DIT_WEIGHTS = "dit-weights"
CONDITIONER_ONLY = "conditioner-only"
CODEC_WEIGHTS = "codec-weights"
CODEC_ADAPTER = "codec-adapter"
PICKLE_FILE = "pickle"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Kind:
    """One kind of checkpoint file.

    `dit_adapter`: the adapter rules (validate) apply; `base`: merge reads it as a base.
    `badge` is the short word a UI shows; `explain` the sentence after the label.
    """

    name: str
    label: str
    badge: str
    explain: str
    dit_adapter: bool = False
    base: bool = False
    codec_adapter: bool = False


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            DIT_ADAPTER,
            "SA3 DiT adapter",
            "ADAPTER",
            "for the SA3 DiT and its seconds conditioner",
            dit_adapter=True,
        ),
        Kind(
            FULL_BASE,
            "full SA3 base",
            "BASE",
            "the DiT and its conditioner: merge adapters into it",
            base=True,
        ),
        Kind(
            DIT_WEIGHTS,
            "SA3 DiT weights",
            "BASE",
            "the DiT alone (like the MLX runtime's dit_<name>_f16.npz): merge writes "
            "its DiT targets",
            base=True,
        ),
        Kind(
            CONDITIONER_ONLY,
            "SA3 conditioner weights",
            "BASE",
            "no DiT: merge can only reach the seconds conditioner",
            base=True,
        ),
        Kind(
            CODEC_WEIGHTS,
            "codec weights",
            "CODEC",
            "the SAME audio codec, not the DiT",
        ),
        Kind(
            CODEC_ADAPTER,
            "codec adapter",
            "CODEC-LORA",
            "LoRA on a SAME codec half, not the DiT: checked against the codec target "
            "tables, merged into codec weights",
            codec_adapter=True,
        ),
        Kind(
            PICKLE_FILE,
            "legacy pickle",
            "PICKLE",
            "a torch pickle: read only with --allow-pickle (pickles can run code)",
        ),
        Kind(UNKNOWN, "unknown", "?", "no SA3 adapter, base or codec tensors recognised"),
    )
}


# --- codec families and parts -----------------------------------------------------------------


# The SAME sizes (width D, blocks per half); kept under this name for the kind fixtures.
CODEC_FAMILIES = CODEC_SIZES
CodecFamily = CodecSize

# Module roots of the codec halves, as a file spells them (the official autoencoder's own
# file, the pretransform inside a full SA3 checkpoint) -> part.
CODEC_ROOTS: tuple[tuple[str, str], ...] = (
    ("encoder.", "encoder"),
    ("decoder.", "decoder"),
    ("pretransform.model.encoder.", "encoder"),
    ("pretransform.model.decoder.", "decoder"),
    ("model.encoder.", "encoder"),  # an adapter's `model.` root in front of a codec module
    ("model.decoder.", "decoder"),
    ("base_model.model.encoder.", "encoder"),  # PEFT's prefix
    ("base_model.model.decoder.", "decoder"),
    ("ae.enc.", "encoder"),  # sa3.cpp GGUF stems
    ("ae.dec.", "decoder"),
)
# lora_config `target` values (adapters.md: dit|decoder|encoder) naming a codec part.
CODEC_TARGETS = {"encoder": "encoder", "decoder": "decoder", "autoencoder": "autoencoder"}
PRETRANSFORM_PREFIX = "pretransform."
# A SAME layer: the differential self-attention projection `to_qkv`, (5D, D). Official
# autoencoder files number them `encoder.layers.0.transformers.N` (the resampling block's
# stack), diffusers `encoder.blocks.0.transformers.N`, the MLX runtime `blocks.N`.
_QKV = re.compile(
    r"(?:^|\.)(?:layers|blocks|transformers)\.(\d+)\.(?:self_attn|attn)\.to_qkv\.weight$"
)
# Tensors only the SAME codec has (weight-normed mapping conv, soft-norm bottleneck).
_CODEC_LEAVES = ("weight_g", "weight_v", "running_std", "scaling_factor")


def codec_part(key: str) -> str | None:
    """The codec half a key belongs to, by its module root."""
    return next((part for root, part in CODEC_ROOTS if key.startswith(root)), None)


@dataclass(frozen=True)
class CodecLayout:
    """One way a weights file lays out SAME codec keys: module roots -> half.

    `closed`: the roots carry no codec prefix (the keys are the encoder's own module names),
    so a file is in this layout only when every one of its keys falls under a root; `note`
    names the layout in the kind's detail (empty for the official one).
    """

    name: str
    roots: tuple[tuple[str, str], ...]
    closed: bool = False
    note: str = ""

    def parts(self, keys: Iterable[str]) -> list[str] | None:
        """The half of each key under a root; None when a closed layout does not fit."""
        keys = list(keys)
        found = [next((p for r, p in self.roots if k.startswith(r)), None) for k in keys]
        if self.closed and (not keys or None in found):
            return None
        return [p for p in found if p is not None]


# Codec weights layouts, tried in order. The official autoencoder (and the pretransform of a
# full SA3 checkpoint) roots each half; the official MLX runtime's encoder file
# (`same_{s,l}_encoder_f32.npz`, models/same/names.py) has no root: `mapping.weight`,
# `new_tokens`, `blocks.N.…`, `project_out`, `bottleneck.*`.
CODEC_LAYOUTS: tuple[CodecLayout, ...] = (
    CodecLayout("official", CODEC_ROOTS),
    CodecLayout(
        "mlx-encoder",
        (
            ("mapping.", "encoder"),
            ("new_tokens", "encoder"),
            ("blocks.", "encoder"),
            ("project_out.", "encoder"),
            ("bottleneck.", "encoder"),
        ),
        closed=True,
        note="MLX runtime encoder file",
    ),
)


def _parts_name(parts: Iterable[str]) -> str | None:
    found = set(parts)
    if "autoencoder" in found or {"encoder", "decoder"} <= found:
        return "autoencoder"
    return next(iter(found), None)


def codec_family(shapes: Mapping[str, Shape]) -> tuple[CodecFamily | None, int | None, int]:
    """(family, width, depth) of a codec file from its `to_qkv` weights (5D, D) per block."""
    widths: set[int] = set()
    blocks: dict[str | None, set[int]] = {}
    for key, shape in shapes.items():
        match = _QKV.search(key)
        if match and len(shape) == 2 and shape[0] == 5 * shape[1]:
            widths.add(shape[1])
            blocks.setdefault(codec_part(key), set()).add(int(match.group(1)))
    depth = max((len(b) for b in blocks.values()), default=0)
    if len(widths) != 1:
        return None, None, depth
    width = widths.pop()
    fam = next((f for f in CODEC_FAMILIES.values() if f.width == width and f.depth == depth), None)
    return fam, width, depth


# --- the answer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindReport:
    """What a file is: its kind, and for codec files the half and family; `detail` adds what
    the file holds. `line` is the one sentence inspect and the TUI show."""

    kind: str
    part: str | None = None  # encoder | decoder | autoencoder (codec files)
    # a CODEC_FAMILIES size (codec weights) or a codec target family name (codec adapters)
    family: str | None = None
    detail: str = ""

    @property
    def row(self) -> Kind:
        return KINDS[self.kind]

    @property
    def label(self) -> str:
        row = self.row
        if self.kind == CODEC_WEIGHTS:
            fam = self.family or "SAME (size not recognised)"
            return f"{fam} {self.part or 'codec'} weights"
        if self.kind == CODEC_ADAPTER and self.family in CODEC_TARGET_FAMILIES:
            return f"an adapter on the {CODEC_TARGET_FAMILIES[self.family].label}"
        if self.kind == CODEC_ADAPTER and self.part:
            return f"codec adapter ({self.part})"
        return row.label

    @property
    def line(self) -> str:
        text = f"{self.label}: {self.row.explain}"
        return f"{text} ({self.detail})" if self.detail else text

    @property
    def is_dit_adapter(self) -> bool:
        return self.row.dit_adapter

    @property
    def is_codec_adapter(self) -> bool:
        return self.row.codec_adapter

    def not_a_dit_adapter(self) -> str:
        """The validate message for every other kind."""
        return f"not an SA3 DiT adapter: {self.line}"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "label": self.label,
            "part": self.part,
            "family": self.family,
            "detail": self.detail,
            "dit_adapter": self.is_dit_adapter,
            "codec_adapter": self.is_codec_adapter,
            "line": self.line,
        }


def _config_target(config_text: str | None) -> str | None:
    """lora_config's `target` field, if the config is a JSON object that has a string one."""
    if not config_text:
        return None
    try:
        raw = json.loads(config_text)
    except (ValueError, RecursionError):
        return None
    target = raw.get("target") if isinstance(raw, dict) else None
    return target.strip().lower() if isinstance(target, str) else None


def adapter_kind(keys: Iterable[str], config_text: str | None) -> KindReport:
    """A DiT adapter, or a codec adapter (config target a codec half, or codec-rooted keys)."""
    target = _config_target(config_text)
    parts = [p for p in (codec_part(k) for k in keys) if p is not None]
    if target in CODEC_TARGETS:
        return KindReport(
            CODEC_ADAPTER, CODEC_TARGETS[target], detail=f"lora_config target {target!r}"
        )
    if parts:
        return KindReport(CODEC_ADAPTER, _parts_name(parts), detail=f"{len(parts)} codec keys")
    return KindReport(DIT_ADAPTER)


def source_kind(source: AdapterSource) -> KindReport:
    """The kind of an opened adapter view (its keys and config), header only; a codec
    adapter also gets its codec family from its shapes (ops.codec_adapter)."""
    found = adapter_kind(source.entries, source.config_text)
    if found.kind != CODEC_ADAPTER:
        return found
    codec = analyze_codec(source)
    if codec.family is None:
        return found
    return KindReport(CODEC_ADAPTER, codec.part, codec.family.name, found.detail)


def base_kind(base: BaseCheckpoint) -> KindReport:
    """Full base, DiT weights or conditioner weights, by which roots the keys fall under."""
    dit = cond = 0
    pretransform = False
    for key in base.tensors:
        parsed = parse_base_key(key, base.naming)
        module = parsed[0] if parsed else ""
        if module.startswith(DIT_ROOT):
            dit += 1
        elif module.startswith(CONDITIONER_ROOT):
            cond += 1
        pretransform = pretransform or key.startswith(PRETRANSFORM_PREFIX)
    extra = ", with the pretransform (SAME codec)" if pretransform else ""
    naming = f"{base.naming} naming"
    if not dit:
        return KindReport(CONDITIONER_ONLY, detail=f"{cond} conditioner tensors, {naming}")
    if not cond:
        return KindReport(DIT_WEIGHTS, detail=f"{dit} DiT tensors, no conditioner, {naming}{extra}")
    if base.naming != "official":  # the MLX DiT file (dit_<name>_f16.npz) carries cond.* arrays
        return KindReport(
            DIT_WEIGHTS, detail=f"{dit} DiT tensors + {cond} conditioner arrays, {naming}{extra}"
        )
    return KindReport(FULL_BASE, detail=f"{dit} DiT + {cond} conditioner tensors, {naming}{extra}")


def weights_kind(shapes: Mapping[str, Shape]) -> KindReport:
    """Codec weights (SAME encoder/decoder keys and layers, in a `CODEC_LAYOUTS` layout) or
    unknown, from names and shapes."""
    marked = any(_QKV.search(k) or k.rpartition(".")[2] in _CODEC_LEAVES for k in shapes)
    for layout in CODEC_LAYOUTS if marked else ():
        parts = layout.parts(shapes)
        if not parts:
            continue
        fam, width, depth = codec_family(shapes)
        size = f"width {width}, {depth} blocks" if width else f"{depth} blocks"
        held = ", ".join(x for x in (layout.note, f"{len(shapes)} tensors", size) if x)
        return KindReport(CODEC_WEIGHTS, _parts_name(parts), fam.name if fam else None, held)
    return KindReport(UNKNOWN, detail=f"{len(shapes)} tensors")


@dataclass(frozen=True)
class WeightsHeader:
    """A weights file's header: key -> (dtype code, shape), and its metadata."""

    format: str
    tensors: dict[str, tuple[str, Shape]]
    metadata: dict[str, str]


def _safetensors_header(path: str) -> WeightsHeader:
    header = read_header(path)
    tensors = {k: (v.dtype, tuple(v.shape)) for k, v in header.tensors.items()}
    return WeightsHeader("safetensors", tensors, dict(header.metadata))


def _npz_weights_header(path: str) -> WeightsHeader:
    return WeightsHeader("npz", {k: (t.dtype, t.shape) for k, t in npz_header(path).items()}, {})


# The containers codec weights come in, by format-registry name: their header readers.
WEIGHTS_HEADERS: dict[str, Callable[[str], WeightsHeader]] = {
    "safetensors": _safetensors_header,
    "npz": _npz_weights_header,
}


def weights_header(path: str | os.PathLike[str]) -> WeightsHeader | None:
    """The header of a safetensors or npz file (None for other containers); raises
    MalformedFileError for one that cannot be read."""
    row = sniff(os.fspath(path))
    read = WEIGHTS_HEADERS.get(row.name) if row is not None else None
    return None if read is None else read(os.fspath(path))


def _header_shapes(path: str) -> dict[str, Shape] | None:
    """Key -> shape of a safetensors or npz file (None for other containers)."""
    header = weights_header(path)
    return None if header is None else {k: shape for k, (_, shape) in header.tensors.items()}


def _gguf_codec_kind(path: str) -> KindReport | None:
    """An sa3.cpp SAME codec GGUF (`general.architecture` sa3-ae: the whole autoencoder)."""
    if sniff(path) is None or sniff_format(path) != GGUF_MODEL:
        return None
    opened = open_gguf_model(path)
    try:
        if opened.architecture != CODEC_ARCH:
            return None
        counts: dict[str, int] = {}
        for name in opened.types.values():
            counts[name] = counts.get(name, 0) + 1
        types = ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))
        detail = f"sa3.cpp SAME codec GGUF ({CODEC_ARCH}), {len(opened.shapes)} tensors ({types})"
        return KindReport(CODEC_WEIGHTS, "autoencoder", None, detail)
    finally:
        opened.close()


def identify_kind(path: str | os.PathLike[str]) -> KindReport:
    """The kind of `path` from headers only; never raises (unreadable files are `unknown`)."""
    spath = os.fspath(path)
    found = identify(spath)
    try:
        if found.kind == PICKLE:
            return KindReport(PICKLE_FILE)
        if found.kind == BASE:
            with open_base(spath) as base:
                return base_kind(base)
        if found.kind == ADAPTER:
            with open_adapter_source(spath) as source:
                return source_kind(source)
        codec = _gguf_codec_kind(spath)
        if codec is not None:
            return codec
        shapes = _header_shapes(spath)
    except (Sa3ckptError, OSError) as exc:
        cause = exc.cause if isinstance(exc, MalformedFileError) else str(exc)
        return KindReport(UNKNOWN, detail=" ".join(cause.split()))
    if shapes is None:
        return KindReport(UNKNOWN, detail=found.reason)
    return weights_kind(shapes)
