"""Adapter sources: one header-level view over every adapter file format.

inspect and validate must see shapes, dtypes and metadata without reading tensor data,
whatever the format. An `AdapterSource` offers exactly that (entries + metadata + the
lora_config text), and reads an array only when asked. Formats are rows in `FORMATS`:
a sniffing predicate and an opener, tried in order.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sa3ckpt import dtypes
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.gguf_adapter import is_gguf
from sa3ckpt.io.legacy_pickle import looks_like_pickle, read_legacy_ckpt
from sa3ckpt.io.safetensors import SafetensorsFile, open_safetensors

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


@dataclass
class AdapterSource:
    """A header-level view of one adapter file or folder; arrays are read on demand."""

    path: str
    format: str  # "safetensors" | "peft" | "pickle"
    size: int
    metadata: dict[str, str]
    entries: dict[str, TensorEntry]
    config_text: str | None
    config_origin: str  # where config_text came from, for evidence
    notes: list[str] = field(default_factory=list)
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


def _from_safetensors(path: str, handle: SafetensorsFile, fmt: str) -> AdapterSource:
    entries = {
        name: TensorEntry(name, info.dtype, tuple(info.shape), info.nbytes)
        for name, info in handle.header.tensors.items()
    }
    metadata = dict(handle.metadata)
    config_text = metadata.pop(CONFIG_KEY, None)
    return AdapterSource(
        path=path,
        format=fmt,
        size=handle.header.file_size,
        metadata=metadata,
        entries=entries,
        config_text=config_text,
        config_origin=f"metadata {CONFIG_KEY}",
        _reader=handle.array,
        _closer=handle.close,
    )


def _open_safetensors_file(path: str, allow_pickle: bool) -> AdapterSource:
    return _from_safetensors(path, open_safetensors(path), "safetensors")


def read_json(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> object:
    """A small JSON file (configs), size-limited, any failure a MalformedFileError."""
    path = Path(path)
    try:
        if path.stat().st_size > limit:
            raise MalformedFileError(path, f"larger than {limit} bytes")
        return json.loads(path.read_text(encoding="utf-8"))
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


def _open_peft_dir(path: str, allow_pickle: bool) -> AdapterSource:
    folder = Path(path)
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise MalformedFileError(path, f"PEFT folder without {PEFT_WEIGHTS}")
    config, notes = peft_to_lora_config(read_json(folder / PEFT_CONFIG), folder / PEFT_CONFIG)
    source = _from_safetensors(path, open_safetensors(weights), "peft")
    source.metadata.pop(CONFIG_KEY, None)
    source.config_text = json.dumps(config)
    source.config_origin = PEFT_CONFIG
    source.notes.extend(notes)
    return source


def _open_pickle(path: str, allow_pickle: bool) -> AdapterSource:
    legacy = read_legacy_ckpt(path, allow_pickle=allow_pickle)  # refuses unless allowed
    entries = {
        key: TensorEntry(key, dtypes.code_for(a.dtype), tuple(a.shape), a.nbytes)
        for key, a in legacy.tensors.items()
    }
    return AdapterSource(
        path=path,
        format="pickle",
        size=os.path.getsize(path),
        metadata=dict(legacy.extra),
        entries=entries,
        config_text=json.dumps(legacy.lora_config) if legacy.lora_config is not None else None,
        config_origin="pickled lora_config",
        notes=["read with torch.load(weights_only=True) after an explicit opt-in"],
        _reader=legacy.tensors.__getitem__,
    )


def _open_gguf(path: str, allow_pickle: bool) -> AdapterSource:
    """sa3.cpp GGUF: tensor names and shapes from the header; lora.* fields as the config."""
    from sa3ckpt.io.gguf_adapter import read_gguf_adapter, read_gguf_header

    kv, infos = read_gguf_header(path)
    entries = {
        name: TensorEntry(name, dtype_code, tuple(shape), 4 * math.prod(shape))
        for name, (shape, dtype_code) in infos.items()
    }
    config = None
    if all(k in kv for k in ("lora.rank", "lora.alpha", "lora.adapter_type")):
        config = json.dumps(
            {
                "rank": kv["lora.rank"],
                "alpha": kv["lora.alpha"],
                "adapter_type": kv["lora.adapter_type"],
                "include": [],
                "exclude": [],
            }
        )
    metadata = {k: str(v) for k, v in kv.items() if not k.startswith("lora.")}
    cache: dict[str, np.ndarray] = {}

    def read(key: str) -> np.ndarray:
        if not cache:
            cache.update(read_gguf_adapter(path).tensors)
        return cache[key]

    return AdapterSource(
        path=path,
        format="gguf",
        size=os.path.getsize(path),
        metadata=metadata,
        entries=entries,
        config_text=config,
        config_origin="GGUF lora.* fields",
        notes=["sa3.cpp GGUF: include/exclude are not recorded in this format"],
        _reader=read,
    )


def is_peft_dir(path: str) -> bool:
    """A folder holding a PEFT adapter_config.json: one adapter, not a folder to walk."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, PEFT_CONFIG))


def _is_file(path: str) -> bool:
    return os.path.isfile(path)


# (format, sniff, open) — first match wins; safetensors is the strict fallback for files.
FORMATS: tuple[tuple[str, Callable[[str], bool], Callable[[str, bool], AdapterSource]], ...] = (
    ("peft", is_peft_dir, _open_peft_dir),
    ("gguf", is_gguf, _open_gguf),
    ("pickle", looks_like_pickle, _open_pickle),
    ("safetensors", _is_file, _open_safetensors_file),
)


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    spath = os.fspath(path)
    return next((name for name, sniff, _ in FORMATS if sniff(spath)), None)


def open_adapter_source(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> AdapterSource:
    """Open any adapter file or PEFT folder header-only; MalformedFileError when unreadable."""
    spath = os.fspath(path)
    for _name, sniff, opener in FORMATS:
        if sniff(spath):
            return opener(spath, allow_pickle)
    if os.path.isdir(spath):
        raise MalformedFileError(spath, f"a folder, but not a PEFT adapter (no {PEFT_CONFIG})")
    raise MalformedFileError(spath, "no such file")


ADAPTER_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".gguf")


def walk_adapter_paths(paths: list[str]) -> list[str]:
    """Expand folders into the adapter files and PEFT folders below them (sorted, stable)."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path) or is_peft_dir(path):
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            peft = [d for d in dirs if is_peft_dir(os.path.join(root, d))]
            found.extend(os.path.join(root, d) for d in peft)
            dirs[:] = [d for d in dirs if d not in peft and not d.startswith(".")]
            found.extend(
                os.path.join(root, f) for f in sorted(files) if f.endswith(ADAPTER_SUFFIXES)
            )
    return found
