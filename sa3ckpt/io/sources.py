"""Adapter sources: the header-level view every adapter format is opened as.

inspect and validate must see shapes, dtypes and metadata without reading tensor data,
whatever the format. An `AdapterSource` offers exactly that (entries + metadata + the
lora_config text), and reads an array only when asked. Which formats exist and how each is
opened is the registry's job (`sa3ckpt.io.formats`); this module holds the view itself and
the PEFT config translation both of the registry's reads share.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sa3ckpt.errors import MalformedFileError, Sa3ckptError
from sa3ckpt.io.bytesource import exists, read_small
from sa3ckpt.io.remote import is_folder, is_url

CONFIG_KEY = "lora_config"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MAX_JSON_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """What a header says about one tensor."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class TypedField:
    """A container field as stored: its value and the container's type name for it.

    GGUF KV fields are typed (UINT32, FLOAT32, STRING, ...) and a runtime may insist on the
    type, not only the value (sa3.cpp aborts on an INT32 `lora.rank`), so validate needs both.
    """

    value: object
    type: str


@dataclass
class AdapterSource:
    """A header-level view of one adapter file or folder; arrays are read on demand."""

    path: str
    format: str  # a row name of sa3ckpt.io.formats.FORMATS
    size: int
    metadata: dict[str, str]
    entries: dict[str, TensorEntry]
    config_text: str | None
    config_origin: str  # where config_text came from, for evidence
    notes: list[str] = field(default_factory=list)
    fields: dict[str, TypedField] = field(default_factory=dict)  # typed container fields (GGUF KV)
    _reader: Callable[[str], np.ndarray] | None = None
    _closer: Callable[[], None] | None = None

    def array(self, key: str) -> np.ndarray:
        """The tensor's data (memory-mapped where the format allows); valid until close()."""
        if self._reader is None:
            raise ValueError(f"{self.path}: no tensor data available")
        return self._reader(key)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> AdapterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_json(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> object:
    """A small JSON file (configs), size-limited, any failure a MalformedFileError."""
    try:
        return json.loads(read_small(path, limit).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedFileError(
            path, f"not readable JSON ({' '.join(str(exc).split())})"
        ) from None


def peft_to_lora_config(
    raw: object, path: str | os.PathLike[str]
) -> tuple[dict[str, object], list[str]]:
    """A lora_config equivalent of a PEFT adapter_config.json, with notes on what it implies.

    rsLoRA scales by alpha / sqrt(r); the equivalent plain alpha is lora_alpha * sqrt(r), so
    alpha / rank comes out the same. `use_dora` means per-output-row magnitudes: dora-rows.
    """
    if not isinstance(raw, dict):
        raise MalformedFileError(path, "adapter_config.json is not a JSON object")
    r, lora_alpha = raw.get("r"), raw.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise MalformedFileError(path, f"adapter_config.json r {r!r} is not a positive integer")
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, int | float):
        raise MalformedFileError(
            path, f"adapter_config.json lora_alpha {lora_alpha!r} is not a number"
        )
    notes = []
    alpha: float = lora_alpha
    if raw.get("use_rslora"):
        alpha = lora_alpha * math.sqrt(r)
        notes.append(f"rsLoRA: scale lora_alpha/sqrt(r) = {lora_alpha / math.sqrt(r):.6g}")
    if raw.get("rank_pattern") or raw.get("alpha_pattern"):
        notes.append("per-layer rank_pattern/alpha_pattern are not representable in sa3 files")
    config: dict[str, object] = {
        "rank": r,
        "alpha": alpha,
        "adapter_type": "dora-rows" if raw.get("use_dora") else "lora",
        "include": [],
        "exclude": [],
        "peft_target_modules": raw.get("target_modules"),
    }
    return config, notes


def is_peft_dir(path: str | os.PathLike[str]) -> bool:
    """A folder holding a PEFT adapter_config.json: one adapter, not a folder to walk."""
    if is_url(os.fspath(path)):
        return is_folder(os.fspath(path)) and exists_quietly(os.path.join(path, PEFT_CONFIG))
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, PEFT_CONFIG))


def exists_quietly(path: str | os.PathLike[str]) -> bool:
    """`bytesource.exists` for sniffing: a URL that fails otherwise than 404 is not there
    as far as sniffing goes (the reader that follows reports the failure)."""
    try:
        return exists(path)
    except Sa3ckptError:
        return False
