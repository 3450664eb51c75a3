"""lora_config fields sa3.cpp's KV schema cannot hold, carried in `sa3ckpt.*` KV fields.

sa3.cpp reads `lora.rank` (UINT32), `lora.alpha` (FLOAT32) and `lora.adapter_type`; nothing
else of lora_config has a field there. Without more, sa3 -> GGUF -> sa3 loses what other
tools rely on: `base_model` (family evidence), `baked_norms` / `norm_base` (whether the file's
`baked_vnorm_row` norms may be used, and from which base), and alpha's JSON type (a FLOAT32
makes 8 read back as 8.0, and 0.1 as 0.10000000149). These travel as extra KV fields that
sa3.cpp ignores, typed by their JSON value (`io.gguf_adapter` writes str as STRING, bool as
BOOL, int as INT64), and are read back into the config, not the metadata.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

# lora_config field -> the KV field carrying it. Order is the written order.
CONFIG_KV: dict[str, str] = {
    "base_model": "sa3ckpt.base_model",
    "baked_norms": "sa3ckpt.baked_norms",
    "norm_base": "sa3ckpt.norm_base",
}
# alpha as its JSON text ("8", "8.0", "0.1"): `lora.alpha` is FLOAT32, which keeps neither
# the JSON type nor every decimal value.
ALPHA_JSON_KV = "sa3ckpt.alpha_json"
CARRIED_KEYS: frozenset[str] = frozenset({*CONFIG_KV.values(), ALPHA_JSON_KV})
"""KV fields that are lora_config, not file metadata."""

_SCALARS = (str, bool, int, float)


def config_kv(extra: Mapping[str, object], alpha: int | float) -> dict[str, str | int | float]:
    """The `sa3ckpt.*` KV fields for a config's carried fields and alpha's JSON text.

    Only scalar values are carried (a KV field has one type); a field of another shape is
    left out rather than stringified into something that would not read back as itself.
    """
    out: dict[str, str | int | float] = {}
    for name, key in CONFIG_KV.items():
        value = extra.get(name)
        if isinstance(value, _SCALARS):
            out[key] = value
    out[ALPHA_JSON_KV] = json.dumps(alpha)
    return out


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


def carried_config(kv: Mapping[str, object]) -> dict[str, object]:
    """The lora_config fields carried in `kv` (absent ones are absent), values as written."""
    return {name: _plain(kv[key]) for name, key in CONFIG_KV.items() if key in kv}


def json_alpha(kv: Mapping[str, object], stored: object) -> object:
    """alpha as originally written, when `sa3ckpt.alpha_json` agrees with the FLOAT32 field.

    sa3.cpp uses `lora.alpha`, so it stays the truth: the JSON text is used only when it is a
    finite number that rounds to the stored FLOAT32 (another tool may have edited
    `lora.alpha` and left our field stale); otherwise the stored value is returned unchanged.
    """
    text = kv.get(ALPHA_JSON_KV)
    if not isinstance(text, str) or isinstance(stored, bool):
        return stored
    if not isinstance(stored, int | float | np.integer | np.floating):
        return stored
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return stored
    if isinstance(value, bool) or not isinstance(value, int | float):
        return stored
    if not math.isfinite(value) or abs(value) > float(np.finfo(np.float32).max):
        return stored
    return value if np.float32(value) == np.float32(stored) else stored
