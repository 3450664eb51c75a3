"""diffusers LoRA files: `pytorch_lora_weights.safetensors` and the duration-embedder sidecar.

diffusers (0.42) has SA3's `StableAudio3DiTModel` but no SA3 LoRA loading; the file layout
its LoRA loaders read for every other transformer is still the convention a diffusers user
expects: keys `transformer.<module>.lora_A.weight` / `.lora_B.weight` /
`.lora_magnitude_vector`, and the header metadata `lora_adapter_metadata`, a JSON object of
`peft.LoraConfig` arguments each prefixed with its component (`transformer.r`,
`transformer.lora_alpha`, ...). Without that metadata diffusers takes lora_alpha = r.

An sa3ckpt diffusers output is a folder, like diffusers' own `save_lora_weights`: the DiT's
LoRA in `pytorch_lora_weights.safetensors`, and, only when asked, the seconds conditioner's
in `duration_embedder_lora_weights.safetensors`. The conditioner Linear belongs to another
pipeline component (`duration_embedder`, a `StableAudio3DurationEmbedder`) for which diffusers
has no LoRA hook at all, so it gets its own file with its own prefix and metadata: a generic
loader of the main file never meets keys of another model.

Reading takes that folder, or a lone LoRA file (named `pytorch_lora_weights.safetensors`, or
carrying `lora_adapter_metadata`). Only the container lives here; the key spelling is the
`diffusers` dialect in `names.adapter_keys`, the row order of medium `to_qkv` `layout.ROW_ORDERS`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import numpy as np

from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.bytesource import is_dir, is_file
from sa3ckpt.io.safetensors import read_header, write_safetensors
from sa3ckpt.io.sources import exists_quietly, peft_to_lora_config
from sa3ckpt.names.modules import DIFFUSERS_DURATION_EMBEDDER, DIFFUSERS_TRANSFORMER

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
SIDECAR_WEIGHTS = "duration_embedder_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
# Which file of the folder holds each pipeline component's LoRA.
COMPONENT_FILES: dict[str, str] = {
    DIFFUSERS_TRANSFORMER: LORA_WEIGHTS,
    DIFFUSERS_DURATION_EMBEDDER: SIDECAR_WEIGHTS,
}
METADATA_ORIGIN = f"{METADATA_KEY} metadata"
NO_METADATA_NOTE = (
    f"no {METADATA_KEY}: rank from lora_B, lora_alpha = r (what diffusers assumes without it)"
)


def is_diffusers_lora(path: str | os.PathLike[str]) -> bool:
    """A folder holding `pytorch_lora_weights.safetensors`, or such a file itself (by name, or
    by its `lora_adapter_metadata` header field)."""
    spath = os.fspath(path)
    if is_dir(spath):
        return exists_quietly(os.path.join(spath, LORA_WEIGHTS))
    if not is_file(spath):
        return False
    if os.path.basename(spath) == LORA_WEIGHTS:
        return True
    try:
        return METADATA_KEY in read_header(spath).metadata
    except (MalformedFileError, OSError):
        return False


def lora_files(path: str | os.PathLike[str]) -> list[str]:
    """The safetensors files of a diffusers LoRA: the main file, then the sidecar if present."""
    spath = os.fspath(path)
    if not is_dir(spath):
        return [spath]
    files = [os.path.join(spath, name) for name in COMPONENT_FILES.values()]
    return [f for f in files if exists_quietly(f)]


def pack_metadata(component: str, kwargs: Mapping[str, object]) -> str:
    """The `lora_adapter_metadata` text for one component (keys `<component>.<argument>`)."""
    packed = {f"{component}.{key}": value for key, value in kwargs.items()}
    return json.dumps(packed, indent=2, sort_keys=True)


def unpack_metadata(text: str, path: str) -> dict[str, dict[str, object]]:
    """`lora_adapter_metadata` as LoraConfig arguments per component prefix."""
    try:
        packed = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedFileError(path, f"{METADATA_KEY} is not JSON ({exc})") from None
    if not isinstance(packed, dict):
        raise MalformedFileError(path, f"{METADATA_KEY} is not a JSON object")
    out: dict[str, dict[str, object]] = {}
    for key, value in packed.items():
        component, _, argument = key.partition(".")
        if not argument:
            raise MalformedFileError(path, f"{METADATA_KEY} key {key!r} has no component prefix")
        out.setdefault(component, {})[argument] = value
    return out


# The LoraConfig arguments every component of one sa3ckpt adapter must agree on.
_SHARED_ARGUMENTS = ("r", "lora_alpha", "use_dora", "use_rslora")


def _inferred_arguments(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, object]:
    """What diffusers derives without metadata: r from lora_B, lora_alpha = r."""
    ranks = {int(shape[1]) for k, shape in shapes.items() if ".lora_B" in k and len(shape) > 1}
    if len(ranks) != 1:
        return {}
    rank = ranks.pop()
    use_dora = any(".lora_magnitude_vector" in k for k in shapes)
    return {"r": rank, "lora_alpha": rank, "use_dora": use_dora}


def lora_config(
    metadata_texts: Mapping[str, str | None], shapes: Mapping[str, tuple[int, ...]], path: str
) -> tuple[dict[str, object], list[str]]:
    """The lora_config equivalent of the files' metadata (by file path), with notes.

    Components must agree on rank, alpha and the DoRA / rsLoRA flags (sa3 files have one of
    each); without any metadata the config is what diffusers would assume.
    """
    arguments: dict[str, object] | None = None
    where = ""
    for file, text in metadata_texts.items():
        if text is None:
            continue
        for component, kwargs in unpack_metadata(text, file).items():
            shared = {k: kwargs.get(k) for k in _SHARED_ARGUMENTS}
            if arguments is None:
                arguments, where = dict(kwargs), f"{os.path.basename(file)} {component}"
                continue
            mine = {k: arguments.get(k) for k in _SHARED_ARGUMENTS}
            if shared != mine:
                raise MalformedFileError(
                    path, f"{component} LoRA metadata {shared} disagrees with {where} {mine}"
                )
    notes: list[str] = []
    if arguments is None:
        arguments = _inferred_arguments(shapes)
        if not arguments:
            raise MalformedFileError(path, f"no {METADATA_KEY} and no single lora_B rank")
        notes.append(NO_METADATA_NOTE)
    config, peft_notes = peft_to_lora_config(arguments, path)
    config["peft_target_modules"] = pipeline_target_modules(metadata_texts)
    return config, notes + peft_notes


def pipeline_target_modules(
    metadata_texts: Mapping[str, str | None],
) -> list[str] | str | None:
    """Every component's `target_modules` as one rule over pipeline paths
    (`transformer.<module>`): a list when all are lists, else one regular expression."""
    rules: dict[str, object] = {}
    for file, text in metadata_texts.items():
        if text is not None:
            for component, kwargs in unpack_metadata(text, file).items():
                rules[component] = kwargs.get("target_modules")
    if not rules or any(rule is None for rule in rules.values()):
        return None
    lists = {c: rule for c, rule in rules.items() if isinstance(rule, list)}
    if len(lists) == len(rules):
        return sorted(f"{c}.{m}" for c, rule in lists.items() for m in rule)
    parts = []
    for component, rule in rules.items():
        if isinstance(rule, list):  # PEFT list rule: the name or a trailing part of it
            rule = "(?:.*\\.)?(?:" + "|".join(re.escape(m) for m in rule) + ")"
        parts.append(re.escape(component + ".") + f"(?:{rule})")
    return "|".join(f"(?:{p})" for p in parts)


def write_lora_folder(
    folder: str,
    tensors_by_component: Mapping[str, Mapping[str, np.ndarray]],
    arguments_by_component: Mapping[str, Mapping[str, object]],
) -> list[str]:
    """Write each component's LoRA file into a new folder; returns the files written."""
    os.makedirs(folder, exist_ok=False)
    written = []
    for component, tensors in tensors_by_component.items():
        if not tensors:
            continue
        file = os.path.join(folder, COMPONENT_FILES[component])
        metadata = {
            "format": "pt",
            METADATA_KEY: pack_metadata(component, arguments_by_component[component]),
        }
        write_safetensors(file, dict(tensors), metadata)
        written.append(file)
    return written
