"""Load an adapter from any container the format registry knows: sa3/bare/mlx safetensors,
PEFT folder, sa3.cpp GGUF, legacy pickle (opt-in). `sa3ckpt.io.formats` reads the container
as stored; this module brings what a container stores differently to canonical form and
ends in `checkpoint_from_raw`, so repairs, type detection and the load ledger are the same
whatever the source.
"""

from __future__ import annotations

import os

from sa3ckpt.adapters.checkpoint import AdapterCheckpoint, checkpoint_from_raw
from sa3ckpt.io.formats import RawAdapter, load_raw
from sa3ckpt.layout import factor_layout
from sa3ckpt.names.adapter_keys import ParsedKey, parse_adapter_key


def _fold_convs(raw: RawAdapter) -> list[str]:
    """Dialects with a factor layout keep Conv1d adapters as convolutions (PEFT: A (r, in, k),
    B (out, r, 1), magnitude (1, out, 1)); the rest of the project works on the canonical
    view. Returns the keys reshaped."""
    reshaped = []
    for dialect in raw.dialects:
        layout = factor_layout(dialect)
        if layout is None:
            continue
        for key, value in raw.tensors.items():
            parsed = parse_adapter_key(key, dialect)
            if isinstance(parsed, ParsedKey) and layout.is_stored(parsed.param, value.shape):
                raw.tensors[key] = layout.to_canonical(parsed.param, value)
                reshaped.append(key)
    return reshaped


def canonical_checkpoint(
    raw: RawAdapter, dialects: tuple[str, ...] | None = None
) -> AdapterCheckpoint:
    """A checkpoint from a container read; `dialects` narrows the key spellings accepted."""
    reshaped = _fold_convs(raw)
    ckpt = checkpoint_from_raw(
        raw.tensors,
        raw.config_text,
        raw.metadata,
        raw.path,
        dialects=dialects or raw.dialects,
        config_origin=raw.config_origin,
    )
    assert ckpt.ledger is not None
    ckpt.ledger.repairs += raw.repairs
    if reshaped:
        ckpt.ledger.repairs.append(
            f"{len(reshaped)} Conv1d adapter tensors stored as convolutions "
            "reshaped to the canonical view"
        )
    return ckpt


def load_adapter(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> AdapterCheckpoint:
    """Load an adapter from any supported container into canonical form."""
    return canonical_checkpoint(load_raw(path, allow_pickle=allow_pickle))
