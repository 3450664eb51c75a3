"""Load an adapter from any container: sa3/bare/mlx safetensors, PEFT folder, sa3.cpp GGUF,
legacy pickle (opt-in). Every reader ends in `checkpoint_from_raw`, so repairs, type
detection and the load ledger are the same whatever the source.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from sa3ckpt.adapters.checkpoint import AdapterCheckpoint, checkpoint_from_raw, load_checkpoint
from sa3ckpt.errors import MalformedFileError
from sa3ckpt.io.gguf_adapter import is_gguf
from sa3ckpt.io.safetensors import open_safetensors
from sa3ckpt.io.sources import (
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    is_peft_dir,
    peft_to_lora_config,
    read_json,
)
from sa3ckpt.layout import PEFT_CONV1D
from sa3ckpt.names.adapter_keys import ParsedKey, parse_adapter_key


def _load_peft(path: str, allow_pickle: bool) -> AdapterCheckpoint:
    """A PEFT folder: adapter_config.json + adapter_model.safetensors (Conv1d factors 3-D)."""
    config, notes = peft_to_lora_config(read_json(os.path.join(path, PEFT_CONFIG)), path)
    weights = os.path.join(path, PEFT_WEIGHTS)
    if not os.path.isfile(weights):
        raise MalformedFileError(path, f"PEFT folder without {PEFT_WEIGHTS}")
    reshaped = []
    with open_safetensors(weights) as f:
        raw: dict[str, np.ndarray] = {}
        for key in f:
            value = np.array(f.array(key))
            parsed = parse_adapter_key(key, "peft")
            # PEFT keeps Conv1d adapters as convolutions (A (r, in, k), B (out, r, 1),
            # magnitude (1, out, 1)); the rest of the project works on the canonical view.
            if isinstance(parsed, ParsedKey) and PEFT_CONV1D.is_stored(parsed.param, value.shape):
                value = PEFT_CONV1D.to_canonical(parsed.param, value)
                reshaped.append(key)
            raw[key] = value
    config.pop("peft_target_modules", None)
    ckpt = checkpoint_from_raw(raw, json.dumps(config), {}, path, dialects=("peft",))
    assert ckpt.ledger is not None
    ckpt.ledger.repairs += notes
    if reshaped:
        ckpt.ledger.repairs.append(
            f"{len(reshaped)} PEFT Conv1d tensors reshaped to the canonical view"
        )
    return ckpt


def _load_gguf(path: str, allow_pickle: bool) -> AdapterCheckpoint:
    from sa3ckpt.io.gguf_adapter import read_gguf_adapter

    adapter = read_gguf_adapter(path)
    kv = adapter.kv
    try:
        config = {
            "rank": int(kv["lora.rank"]),
            "alpha": float(kv["lora.alpha"]),
            "adapter_type": str(kv["lora.adapter_type"]),
            "include": [],
            "exclude": [],
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedFileError(
            path, f"sa3.cpp GGUF without usable lora.* fields ({exc})"
        ) from None
    metadata = {
        k: str(v) for k, v in kv.items() if not k.startswith(("lora.", "general.architecture"))
    }
    return checkpoint_from_raw(
        adapter.tensors, json.dumps(config), metadata, path, dialects=("sa3cpp",)
    )


def _load_file(path: str, allow_pickle: bool) -> AdapterCheckpoint:
    return load_checkpoint(path, allow_pickle=allow_pickle)


# (format, sniff, loader) — first match wins.
LOADERS: tuple[tuple[str, Callable[[str], bool], Callable[[str, bool], AdapterCheckpoint]], ...] = (
    ("peft", is_peft_dir, _load_peft),
    ("sa3cpp", is_gguf, _load_gguf),
    ("file", os.path.isfile, _load_file),
)


def load_adapter(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> AdapterCheckpoint:
    """Load an adapter from any supported container into canonical form."""
    spath = os.fspath(path)
    for _name, sniff, loader in LOADERS:
        if sniff(spath):
            return loader(spath, allow_pickle)
    if os.path.isdir(spath):
        raise MalformedFileError(spath, f"a folder, but not a PEFT adapter (no {PEFT_CONFIG})")
    raise MalformedFileError(spath, "no such file")
