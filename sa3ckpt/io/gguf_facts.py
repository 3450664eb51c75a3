"""What sa3.cpp's model GGUFs hold besides tensors: architectures, KV fields, names, types.

Facts from the public sa3.cpp repository (tools/convert_dit.py, convert_conditioner.py,
gguf_meta.py, model_artifacts.py, src/dit.h, docs/DISTRIBUTION.md, the model cards), as data:

- A model is a DiT file (``general.architecture = "sa3-dit"``) plus a conditioner sidecar
  (``"sa3-conditioner"``: prompt padding embedding + seconds Linear) beside the shared text
  encoder; the SAME codec is ``"sa3-ae"``, adapters are ``"sa3-lora"``. sa3.cpp's loaders key
  on the architecture.
- The DiT loader (``DitConfig::from``) reads the hyper-parameter KVs in `DIT_KV` with the GGUF
  types there (``gguf_get_val_u32`` / ``_f32`` on a key of another type aborts);
  ``dit.differential`` and ``dit.local_dim`` may be missing (defaults true and 0).
- Every file carries the catalog fields of `general_kv` (``gguf_meta.add_general``);
  ``general.size_label`` only on the DiT. A training base (the ``-base`` checkpoints adapters
  are trained on) also has ``dit.training_base = true`` (BOOL; sa3.cpp's trainer refuses a
  DiT without it, and wants ``general.finetune = "<variant>-base"``) and the standard
  ``general.base_model.0.*`` fields naming the upstream repository and pinned revision.
- Encodings: the DiT is published F32, F16 (selected 2-D tensors F16, the rest F32) and
  quantised; the conditioner is always F32.

The derivation of the hyper-parameters from tensor shapes is ours (sa3.cpp's converter reads
them from model_config.json); they agree for the published models.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

DIT_ARCH = "sa3-dit"
CONDITIONER_ARCH = "sa3-conditioner"
CODEC_ARCH = "sa3-ae"
ADAPTER_ARCH = "sa3-lora"
BASE_ARCHES = (DIT_ARCH, CONDITIONER_ARCH)
MODEL_ARCHES = (DIT_ARCH, CONDITIONER_ARCH, CODEC_ARCH)

KEY_ARCH = "general.architecture"
KEY_TRAINING_BASE = "dit.training_base"
KEY_FINETUNE = "general.finetune"

VERSION = "v1.0"
LICENSE = "stabilityai-community"

# The published variants: (DiT size label, SAME suffix), upstream training-base repositories and
# the revisions sa3.cpp's training-base GGUFs pin.
VARIANTS: dict[str, tuple[str, str]] = {
    "medium": ("1.5B", "same-l"),
    "small-music": ("0.5B", "same-s"),
    "small-sfx": ("0.5B", "same-s"),
}
UPSTREAM_BASE_REVISIONS: dict[str, str] = {
    "medium": "b32993f73c3bdc3864043a72d8032606bba737c8",
    "small-music": "eab5ceee5ad9c1ed38800aff30a8e49d1161c539",
    "small-sfx": "cc5ddb990e30daa68336ac61c140c37c7033ab7c",
}
UPSTREAM_ORGANIZATION = "stabilityai"

# Constants sa3.cpp's DiT converter writes as they are (not from the config).
DIT_FLOAT_KV: dict[str, float] = {
    "dit.rope_base": 10000.0,
    "dit.norm_eps": 1e-5,
    "dit.qk_eps": 1e-6,
    "dit.time_min_freq": 0.5,
    "dit.time_max_freq": 10000.0,
}
# Every hyper-parameter KV of a DiT file in the converter's order, with its GGUF type.
DIT_KV: dict[str, str] = {
    "dit.io": "UINT32",
    "dit.dim": "UINT32",
    "dit.depth": "UINT32",
    "dit.heads": "UINT32",
    "dit.head_dim": "UINT32",
    "dit.cond_dim": "UINT32",
    "dit.mem_tokens": "UINT32",
    "dit.rot": "UINT32",
    "dit.time_dim": "UINT32",
    "dit.differential": "UINT32",
    "dit.local_dim": "UINT32",
    **dict.fromkeys(DIT_FLOAT_KV, "FLOAT32"),
}
# KVs the DiT loader may miss (it has a default for them).
DIT_OPTIONAL_KV = frozenset({"dit.differential", "dit.local_dim"})

# The conditioner sidecar: the seconds range (model_config.json's seconds_total min/max; the
# converter's defaults when the config has none, which is all a checkpoint alone tells) and the
# seconds feature width (the converter writes 256: the seconds Linear's fan_in in every
# published SA3 model; taken from that fan_in here so a file is consistent with its tensors).
CONDITIONER_KV: dict[str, str] = {
    "t5g.secs_min": "FLOAT32",
    "t5g.secs_max": "FLOAT32",
    "t5g.secs_dim": "UINT32",
}
DEFAULT_SECONDS_RANGE = (0.0, 384.0)

KvEntry = tuple[str, object, str]  # (key, value, GGUF value type name)


def size_label(n_params: int) -> str:
    """The gguf convention's parameter-count class, as sa3.cpp stamps it (1.5B, 0.5B, 35K)."""
    if n_params >= 1e8:
        text = f"{n_params / 1e9:.1f}B"
    elif n_params >= 1e5:
        text = f"{n_params / 1e6:.0f}M"
    else:
        text = f"{n_params / 1e3:.0f}K"
    return text.replace(".0B", "B")


@dataclass(frozen=True)
class Identity:
    """Which model a DiT or conditioner file is: variant and whether it is a training base."""

    variant: str
    training_base: bool = False

    @property
    def model(self) -> str:
        return f"stable-audio-3-{self.variant}" + ("-base" if self.training_base else "")

    @property
    def finetune(self) -> str:
        return f"{self.variant}-base" if self.training_base else self.variant


def general_kv(identity: Identity, component: str, n_params: int | None) -> list[KvEntry]:
    """The catalog fields for a `component` ("dit" | "conditioner") file, in sa3.cpp's order.

    The conditioner is the variant's (there is no training-base conditioner), without a size
    label; a training-base DiT adds the marker and the upstream `general.base_model.0.*`.
    """
    ident = identity if component == "dit" else Identity(identity.variant)
    label = "DiT" if component == "dit" else component
    entries: list[KvEntry] = [
        ("general.name", f"{ident.model} {label}", "STRING"),
        ("general.basename", f"{ident.model}-{component}", "STRING"),
        ("general.version", VERSION, "STRING"),
        ("general.license", LICENSE, "STRING"),
        (KEY_FINETUNE, ident.finetune, "STRING"),
    ]
    if n_params is not None:
        entries.append(("general.size_label", size_label(n_params), "STRING"))
    if component == "dit" and ident.training_base:
        upstream = f"stable-audio-3-{ident.variant}-base"
        entries += [
            (KEY_TRAINING_BASE, True, "BOOL"),
            ("general.base_model.count", 1, "UINT32"),
            ("general.base_model.0.name", upstream, "STRING"),
            ("general.base_model.0.organization", UPSTREAM_ORGANIZATION, "STRING"),
            (
                "general.base_model.0.version",
                UPSTREAM_BASE_REVISIONS.get(ident.variant, ""),
                "STRING",
            ),
            (
                "general.base_model.0.repo_url",
                f"https://huggingface.co/{UPSTREAM_ORGANIZATION}/{upstream}",
                "STRING",
            ),
        ]
    return entries


Shapes = Mapping[str, tuple[int, ...]]


def _block_depth(shapes: Shapes) -> int:
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"^dit\.(\d+)\.", k))}
    return max(blocks) + 1 if blocks else 0


def dit_kv(shapes: Shapes) -> list[KvEntry]:
    """The `dit.*` hyper-parameter KVs of a DiT with these tensors (sa3.cpp names, numpy
    shapes), as sa3.cpp's converter writes them; KeyError names a tensor that is missing."""
    dim, io = shapes["dit.proj_in.weight"]
    head_dim = shapes["dit.0.self.q_norm.gamma"][0]
    local = shapes.get("dit.0.local.0.weight")
    values: dict[str, object] = {
        "dit.io": io,
        "dit.dim": dim,
        "dit.depth": _block_depth(shapes),
        "dit.heads": dim // head_dim,
        "dit.head_dim": head_dim,
        "dit.cond_dim": shapes["dit.cond_embed.0.weight"][1],
        "dit.mem_tokens": shapes["dit.memory_tokens"][0],
        "dit.rot": head_dim // 2,
        "dit.time_dim": shapes["dit.time_embed.0.weight"][1],
        "dit.differential": int(shapes["dit.0.self.qkv.weight"][0] == 5 * dim),
        "dit.local_dim": 0 if local is None else local[1],
        **DIT_FLOAT_KV,
    }
    return [(key, values[key], gguf_type) for key, gguf_type in DIT_KV.items()]


def conditioner_kv(
    shapes: Shapes, seconds_range: tuple[float, float] = DEFAULT_SECONDS_RANGE
) -> list[KvEntry]:
    """The `t5g.*` KVs of a conditioner sidecar with these tensors."""
    values = {
        "t5g.secs_min": float(seconds_range[0]),
        "t5g.secs_max": float(seconds_range[1]),
        "t5g.secs_dim": shapes["te.secs.weight"][1],
    }
    return [(key, values[key], gguf_type) for key, gguf_type in CONDITIONER_KV.items()]


# --- encodings: which ggml type each tensor gets --------------------------------------------

ENCODINGS = ("F32", "F16")


def tensor_type(name: str, shape: tuple[int, ...], encoding: str) -> str:
    """The ggml type of a DiT tensor in an F32 or F16 file.

    F16 files convert the 2-D weights and keep vectors (norm scales, biases, the adaLN table)
    F32; the memory tokens stay F32 as in every sa3.cpp reduced-precision tier (its quantiser
    skips `*tokens*`), since sa3.cpp concatenates them with F32 activations.
    """
    if encoding == "F16" and len(shape) == 2 and "tokens" not in name:
        return "F16"
    return "F32"


# --- file names (docs/DISTRIBUTION.md) --------------------------------------------------------

_DIT_FILE = re.compile(
    r"^stable-audio-3-(?P<variant>[a-z0-9-]+?)(?P<base>-base)?-dit-[^-]+-v[\d.]+-(?P<enc>\w+)\.gguf$"
)
_MODEL_IN_NAME = re.compile(
    r"stable-audio-3-(?P<variant>medium|small-music|small-sfx)(?P<base>-base)?"
)


def dit_filename(identity: Identity, encoding: str, n_params: int) -> str:
    """The published DiT file name for this model, size and encoding."""
    size = VARIANTS.get(identity.variant, (size_label(n_params), ""))[0]
    return f"{identity.model}-dit-{size}-{VERSION}-{encoding.upper()}.gguf"


def conditioner_filename(variant: str) -> str:
    """The published conditioner sidecar name (always F32)."""
    return f"stable-audio-3-{variant}-conditioner-{VERSION}-F32.gguf"


def conditioner_beside(dit_path: str) -> str:
    """Where the conditioner sidecar of a DiT written to `dit_path` goes: the published name
    when the DiT has one, else `<stem>-conditioner.gguf` next to it."""
    import os

    folder, name = os.path.split(dit_path)
    match = _DIT_FILE.match(name)
    if match is not None:
        return os.path.join(folder, conditioner_filename(match.group("variant")))
    stem = name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
    return os.path.join(folder, f"{stem}-conditioner.gguf")


def identity_from_name(text: str) -> Identity | None:
    """The model a file or repository name spells (`stable-audio-3-medium-base`), if any."""
    match = _MODEL_IN_NAME.search(text)
    if match is None:
        return None
    return Identity(match.group("variant"), match.group("base") is not None)


def identity_from_kv(kv: Mapping[str, object]) -> Identity | None:
    """The model a DiT or conditioner GGUF says it is (`general.finetune`, the marker)."""
    finetune = kv.get(KEY_FINETUNE)
    if not isinstance(finetune, str) or not finetune:
        return None
    marker = kv.get(KEY_TRAINING_BASE) is True
    variant = finetune.removesuffix("-base")
    return Identity(variant, marker or finetune.endswith("-base"))


def n_params(shapes: Shapes) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


# --- what a model file says about itself (inspect, validate) ---------------------------------


def loader_kv_problems(
    arch: str | None, kv: Mapping[str, object], kv_types: Mapping[str, str]
) -> list[str]:
    """The KVs sa3.cpp's DiT / conditioner loader reads that are missing or of another type
    (it aborts on either), one sentence each."""
    schema = {DIT_ARCH: DIT_KV, CONDITIONER_ARCH: CONDITIONER_KV}.get(arch or "", {})
    problems: list[str] = []
    for key, want in schema.items():
        if key not in kv:
            if key not in DIT_OPTIONAL_KV:
                problems.append(f"no {key} ({want}): sa3.cpp's loader needs it")
        elif kv_types.get(key) != want:
            problems.append(f"{key} is {kv_types.get(key)}, sa3.cpp reads it as {want}")
    marker = kv.get(KEY_TRAINING_BASE)
    if KEY_TRAINING_BASE in kv and kv_types.get(KEY_TRAINING_BASE) != "BOOL":
        problems.append(f"{KEY_TRAINING_BASE} is {kv_types.get(KEY_TRAINING_BASE)}, not BOOL")
    elif (
        marker is True and kv.get(KEY_FINETUNE, "") and not str(kv[KEY_FINETUNE]).endswith("-base")
    ):
        problems.append(
            f"{KEY_TRAINING_BASE} is true but {KEY_FINETUNE} is {kv[KEY_FINETUNE]!r}: sa3.cpp's "
            "trainer wants '<variant>-base'"
        )
    return problems


def describe(
    arch: str | None,
    kv: Mapping[str, object],
    kv_types: Mapping[str, str],
    types: Mapping[str, str],
) -> dict[str, object]:
    """What an sa3.cpp model file is, as plain data: architecture, model, training-base flag,
    ggml tensor types (counted) and the loader-KV problems."""
    identity = identity_from_kv(kv)
    counts: dict[str, int] = {}
    for name in types.values():
        counts[name] = counts.get(name, 0) + 1
    return {
        "architecture": arch,
        "model": identity.model if identity else None,
        "finetune": kv.get(KEY_FINETUNE),
        "training_base": kv.get(KEY_TRAINING_BASE) is True,
        "tensor_types": dict(sorted(counts.items())),
        "problems": loader_kv_problems(arch, kv, kv_types),
    }
